//! W10, dependencies (informational rows, no target in the spec), three
//! variants on 2 workers:
//!
//! - **chain**: `n` no-op tasks, task `i` after task `i - 1`, built as one
//!   [`Graph`] (task by task, a parent may finish and be forgotten before
//!   its child is submitted, which `after` rejects; a graph is admitted at
//!   once) and submitted; then every handle awaited. Metric tasks/s over
//!   "first `Graph::add` .. last outcome". Checks: every body ran exactly
//!   once and in chain order (body `i` finds a shared counter at `i` and
//!   moves it to `i + 1`), every handle answered `Ok(i)`, and the edges
//!   held: the first task waits on a gate, opened only after the program
//!   has read `stats().waiting == n - 1` (the fan: `n + 1`); without edges
//!   FIFO order alone would pass the order check. Floor: `n`
//!   spawned tokio tasks linked by oneshot channels, task `i` awaits task
//!   `i - 1`'s value, takes a `Semaphore(workers)` permit, checks the same
//!   counter and sends `i` on; its first task waits on the same gate.
//! - **fan**: one root, `n` children after it, one join after all `n`
//!   children (one task with `n` parents: the engine keeps a count of
//!   parents left per waiting task, O(1) per finished parent, so a single
//!   join is the sensible shape), all in one `Graph`. Metric tasks/s over
//!   `n + 2` tasks. Checks: every child ran after the root, the join ran
//!   after every child, each exactly once, values `0..=n + 1`. Floor: the
//!   root sends on a `watch` channel the children wait on; each child
//!   (under the semaphore) then reports on an mpsc channel, and the join
//!   task receives `n` reports.
//! - **pending**: the heap a waiting dependent costs. A root task is
//!   scheduled 1 hour ahead, then `n` no-op dependents are submitted with
//!   `.after(&root)` (a typed edge, the common form) and kept waiting; heap
//!   per dependent is measured like W5 measures heap per pending task.
//!   Variant `pending-any`: the same with ordering-only edges
//!   (`After::any(root.id())`, no slot for the root's value). The
//!   reference ("floor" side) is corral's own plain pending task: W5's
//!   corral program at the same `n`. At the end corral is `cancel()`led:
//!   the root and every dependent must answer `Shutdown`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corral::{After, Graph, GraphHandles, Node, TaskError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::{sleep, Instant};

use super::{check_corral, check_floor, finish, running_cluster, NoopHandle, Outcome, Report};
use crate::alloc::{reset_peak, snapshot};

/// The pending variant's distance to the root's start time.
const AHEAD: Duration = Duration::from_secs(3600);

fn rate_report(tasks: usize, start: Instant) -> Report {
    let secs = start.elapsed().as_secs_f64();
    let mut r = Report::default();
    r.set("rate", tasks as f64 / secs).set("secs", secs);
    r
}

/// Moves `next` from `i` to `i + 1`; counts a violation if it was not at `i`.
fn step(next: &AtomicU64, i: u64, bad: &AtomicUsize) {
    if next.compare_exchange(i, i + 1, SeqCst, SeqCst).is_err() {
        bad.fetch_add(1, SeqCst);
    }
}

/// The handles of `nodes`, in order.
fn take_all(
    hs: &mut GraphHandles,
    nodes: &[Node<u64, Infallible>],
) -> Result<Vec<NoopHandle>, String> {
    nodes
        .iter()
        .map(|n| hs.take(n).ok_or_else(|| format!("no handle for {n:?}")))
        .collect()
}

/// The chain through corral.
pub async fn chain_corral(n: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let next = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let mut nodes: Vec<Node<u64, Infallible>> = Vec::with_capacity(n);
    let start = Instant::now();
    let mut graph = Graph::new(&cluster);
    let gate = Arc::new(Semaphore::new(0));
    let (g, nx, b) = (gate.clone(), next.clone(), bad.clone());
    let head = cluster.task(move |_| gated(g.clone(), nx.clone(), b.clone()));
    nodes.push(graph.add(head).map_err(|e| format!("add 0: {e}"))?);
    for i in 1..n as u64 {
        let (next, bad) = (next.clone(), bad.clone());
        let task = cluster.task(move |_| {
            step(&next, i, &bad);
            async move { Ok::<u64, Infallible>(i) }
        });
        let prev = &nodes[nodes.len() - 1];
        nodes.push(
            graph
                .add(task.after(prev))
                .map_err(|e| format!("add {i}: {e}"))?,
        );
    }
    let mut hs = graph.submit().map_err(|e| format!("submit: {e}"))?;
    let waiting = cluster.stats().waiting;
    gate.add_permits(1);
    check_corral(take_all(&mut hs, &nodes)?, 0).await?;
    let mut r = rate_report(n, start);
    chain_checks(&mut r, n, &next, &bad);
    held_back(&mut r, waiting, n - 1);
    finish(cluster).await?;
    Ok(r)
}

/// The first task of a chain or fan: runs when the gate opens, so that the
/// program can first check that every other task is waiting (a missing
/// edge would let tasks run at once in FIFO order, which the order checks
/// alone could not tell from a respected edge).
async fn gated(
    gate: Arc<Semaphore>,
    next: Arc<AtomicU64>,
    bad: Arc<AtomicUsize>,
) -> Result<u64, Infallible> {
    let _ = gate.acquire().await;
    step(&next, 0, &bad);
    Ok(0)
}

/// Every task but the gated first one must have been waiting for a parent.
fn held_back(r: &mut Report, waiting: usize, expected: usize) {
    r.check(waiting == expected, || {
        format!("{waiting} task(s) waiting behind the gated first task, expected {expected}")
    });
}

fn chain_checks(r: &mut Report, n: usize, next: &AtomicU64, bad: &AtomicUsize) {
    let (ran, bad) = (next.load(SeqCst), bad.load(SeqCst));
    r.check(bad == 0, || format!("{bad} chain task(s) ran out of order"))
        .check(ran == n as u64, || {
            format!("the chain advanced {ran} time(s), expected {n}")
        });
}

/// The chain's floor: tokio tasks linked by oneshot channels.
pub async fn chain_floor(n: usize, workers: usize) -> Outcome {
    let sem = Arc::new(Semaphore::new(workers));
    let next = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(n);
    let start = Instant::now();
    let mut prev: Option<oneshot::Receiver<u64>> = None;
    // Gated like corral's first task, for the same program shape.
    let gate = Arc::new(Semaphore::new(0));
    for i in 0..n as u64 {
        let (tx, rx) = oneshot::channel();
        let (sem, next, bad) = (sem.clone(), next.clone(), bad.clone());
        let before = prev.replace(rx);
        let g = (i == 0).then(|| gate.clone());
        handles.push(tokio::spawn(async move {
            if let Some(g) = g {
                let _ = g.acquire().await;
            }
            if let Some(before) = before {
                if before.await != Ok(i - 1) {
                    bad.fetch_add(1, SeqCst);
                }
            }
            let _permit = sem
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            step(&next, i, &bad);
            // The last receiver is never read: its send may fail.
            let _ = tx.send(i);
            i
        }));
    }
    gate.add_permits(1);
    check_floor(handles, 0).await?;
    let mut r = rate_report(n, start);
    chain_checks(&mut r, n, &next, &bad);
    Ok(r)
}

/// What the fan's bodies record.
#[derive(Default)]
struct Fan {
    root: AtomicBool,
    children: AtomicUsize,
    joined: AtomicUsize,
    bad: AtomicUsize,
}

impl Fan {
    fn root(&self) {
        self.root.store(true, SeqCst);
    }

    fn child(&self) {
        if !self.root.load(SeqCst) {
            self.bad.fetch_add(1, SeqCst);
        }
        self.children.fetch_add(1, SeqCst);
    }

    fn join(&self, n: usize) {
        if self.children.load(SeqCst) != n {
            self.bad.fetch_add(1, SeqCst);
        }
        self.joined.fetch_add(1, SeqCst);
    }

    fn checks(&self, r: &mut Report, n: usize) {
        let bad = self.bad.load(SeqCst);
        let children = self.children.load(SeqCst);
        let joined = self.joined.load(SeqCst);
        r.check(bad == 0, || {
            format!("{bad} fan task(s) ran before a parent")
        })
        .check(children == n, || {
            format!("{children} children ran, expected {n}")
        })
        .check(joined == 1, || format!("the join ran {joined} time(s)"));
    }
}

/// The fan-out/fan-in through corral.
pub async fn fan_corral(n: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let fan = Arc::new(Fan::default());
    let mut nodes: Vec<Node<u64, Infallible>> = Vec::with_capacity(n + 2);
    let start = Instant::now();
    let mut graph = Graph::new(&cluster);
    let gate = Arc::new(Semaphore::new(0));
    let (f, g) = (fan.clone(), gate.clone());
    let root = cluster.task(move |_| {
        let (f, g) = (f.clone(), g.clone());
        async move {
            let _ = g.acquire().await;
            f.root();
            Ok::<u64, Infallible>(0)
        }
    });
    nodes.push(graph.add(root).map_err(|e| format!("add root: {e}"))?);
    for i in 1..=n as u64 {
        let f = fan.clone();
        let child = cluster
            .task(move |_| {
                f.child();
                async move { Ok::<u64, Infallible>(i) }
            })
            .after(&nodes[0]);
        nodes.push(graph.add(child).map_err(|e| format!("add {i}: {e}"))?);
    }
    let f = fan.clone();
    let last = n as u64 + 1;
    let mut join = cluster.task(move |_| {
        f.join(n);
        async move { Ok::<u64, Infallible>(last) }
    });
    for child in &nodes[1..] {
        join = join.after(child);
    }
    nodes.push(graph.add(join).map_err(|e| format!("add join: {e}"))?);
    let mut hs = graph.submit().map_err(|e| format!("submit: {e}"))?;
    let waiting = cluster.stats().waiting;
    gate.add_permits(1);
    check_corral(take_all(&mut hs, &nodes)?, 0).await?;
    let mut r = rate_report(n + 2, start);
    fan.checks(&mut r, n);
    held_back(&mut r, waiting, n + 1);
    finish(cluster).await?;
    Ok(r)
}

/// The fan-out/fan-in's floor.
pub async fn fan_floor(n: usize, workers: usize) -> Outcome {
    let sem = Arc::new(Semaphore::new(workers));
    let fan = Arc::new(Fan::default());
    let (go_tx, go_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut handles = Vec::with_capacity(n + 2);
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(0));
    let (s, f, g) = (sem.clone(), fan.clone(), gate.clone());
    handles.push(tokio::spawn(async move {
        let _ = g.acquire().await;
        let _permit = s.acquire_owned().await.expect("semaphore is never closed");
        f.root();
        // Every child holds a receiver until it has seen `true`.
        let _ = go_tx.send(true);
        0
    }));
    for i in 1..=n as u64 {
        let (s, f, done) = (sem.clone(), fan.clone(), done_tx.clone());
        let mut go = go_rx.clone();
        handles.push(tokio::spawn(async move {
            if go.wait_for(|&g| g).await.is_err() {
                f.bad.fetch_add(1, SeqCst);
            }
            let _permit = s.acquire_owned().await.expect("semaphore is never closed");
            f.child();
            let _ = done.send(i);
            i
        }));
    }
    drop((go_rx, done_tx));
    let (s, f) = (sem.clone(), fan.clone());
    handles.push(tokio::spawn(async move {
        let mut got = 0;
        while got < n && done_rx.recv().await.is_some() {
            got += 1;
        }
        let _permit = s.acquire_owned().await.expect("semaphore is never closed");
        f.join(n);
        n as u64 + 1
    }));
    gate.add_permits(1);
    check_floor(handles, 0).await?;
    let mut r = rate_report(n + 2, start);
    fan.checks(&mut r, n);
    Ok(r)
}

/// `n` dependents waiting on a root scheduled 1 hour ahead: heap per
/// waiting dependent (compare W5's `heap_per_task`).
/// `typed`: `.after(&root)` (a typed edge, the body could read the root's
/// value); else `After::any(root.id())` (ordering only).
pub async fn pending_corral(n: usize, settle: Duration, workers: usize, typed: bool) -> Outcome {
    let cluster = running_cluster(workers)?;
    let root = cluster
        .task(|_| async { Ok::<u64, Infallible>(0) })
        .delay(AHEAD)
        .submit()
        .map_err(|e| format!("submit root: {e}"))?;
    let mut handles: Vec<NoopHandle> = Vec::with_capacity(n);
    let base = snapshot();
    reset_peak();
    let start = Instant::now();
    for i in 1..=n as u64 {
        let task = cluster.task(move |_| async move { Ok::<u64, Infallible>(i) });
        let edge = if typed {
            After::from(&root)
        } else {
            After::any(root.id())
        };
        let h = task
            .after(edge)
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    let secs = start.elapsed().as_secs_f64();
    sleep(settle).await;
    let after = snapshot();
    let mut r = Report::default();
    r.set("submit_rate", n as f64 / secs);
    if let (Some(b), Some(a)) = (base, after) {
        let k = n as f64;
        r.set("heap_per_task", (a.live - b.live) as f64 / k)
            .set("peak_heap_per_task", (a.peak - b.live) as f64 / k)
            .set("allocs_per_task", (a.allocs - b.allocs) as f64 / k);
    }
    let stats = cluster.stats();
    r.check(stats.waiting == n, || {
        format!("{} waiting, expected {n}", stats.waiting)
    });
    cluster.cancel();
    let mut wrong = usize::from(!matches!(root.await, Err(TaskError::Shutdown)));
    for h in handles {
        if !matches!(h.await, Err(TaskError::Shutdown)) {
            wrong += 1;
        }
    }
    r.check(wrong == 0, || {
        format!("{wrong} handle(s) did not answer Shutdown after cancel()")
    });
    Ok(r)
}
