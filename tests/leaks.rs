//! Nothing is kept once it is no longer needed: after a large mixed run
//! (cancels in every state, retries in both modes, panics, timeouts, cached
//! outcomes whose retention then passes), the cluster holds no task state and
//! every task body, future, value and error has been dropped.
//!
//! Bodies and outputs carry a [`Tracked`] value that counts itself alive
//! (incremented on creation and clone, decremented on drop).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{
    Cluster, ClusterStats, FixedBackoff, RetryMode, SubscribeError, Subscription, TaskError,
    TaskHandle, TaskId,
};

use common::{quiet_panics_starting_with, HOUR, SEC};

const RETENTION: Duration = Duration::from_secs(10);
const SHORT_RETENTION: Duration = Duration::from_secs(2);
/// Virtual time under the paused clock: only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Counts itself in `live` while it exists.
#[derive(Debug)]
struct Tracked {
    g: usize,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    fn new(live: &Arc<AtomicUsize>, g: usize) -> Self {
        live.fetch_add(1, SeqCst);
        Tracked {
            g,
            live: live.clone(),
        }
    }
}

impl Clone for Tracked {
    fn clone(&self) -> Self {
        Tracked::new(&self.live, self.g)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

impl PartialEq for Tracked {
    fn eq(&self, other: &Self) -> bool {
        self.g == other.g
    }
}

type Out = Result<Tracked, TaskError<Tracked>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Value,
    RetryRequeue,
    RetryImmediate,
    AlwaysFails,
    Panics,
    TimesOut,
    CancelScheduled,
    CancelReady,
    CancelRunning,
    CancelInRequeueWait,
    CancelInImmediateWait,
    Blocking,
}

const KINDS: [Kind; 12] = [
    Kind::Value,
    Kind::RetryRequeue,
    Kind::RetryImmediate,
    Kind::AlwaysFails,
    Kind::Panics,
    Kind::TimesOut,
    Kind::CancelScheduled,
    Kind::CancelReady,
    Kind::CancelRunning,
    Kind::CancelInRequeueWait,
    Kind::CancelInImmediateWait,
    Kind::Blocking,
];

/// Live counters: what bodies (closures and their futures) and outputs
/// hold, and what the task's own allocation holds until it is freed (a
/// callback: dropped with the task, so it proves the task itself is gone).
struct Live {
    bodies: Arc<AtomicUsize>,
    outputs: Arc<AtomicUsize>,
    tasks: Arc<AtomicUsize>,
}

impl Live {
    fn new() -> Self {
        Live {
            bodies: Arc::new(AtomicUsize::new(0)),
            outputs: Arc::new(AtomicUsize::new(0)),
            tasks: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn assert_none(&self, when: &str) {
        assert_eq!(
            self.tasks.load(SeqCst),
            0,
            "{when}: task allocations (with their callbacks) are still alive"
        );
        assert_eq!(
            self.bodies.load(SeqCst),
            0,
            "{when}: task bodies or their futures are still alive"
        );
        assert_eq!(
            self.outputs.load(SeqCst),
            0,
            "{when}: task values or errors are still alive"
        );
    }
}

/// Submits task `g` of `kind`. Bodies that must be cancelled while running
/// or waiting for a retry report their id in `to_cancel` when they start.
fn submit(
    cluster: &Cluster,
    live: &Live,
    g: usize,
    kind: Kind,
    to_cancel: &Arc<Mutex<Vec<TaskId>>>,
) -> TaskHandle<Tracked, Tracked> {
    let body_token = Tracked::new(&live.bodies, g);
    // Most tasks carry a callback that lives as long as the task itself.
    let task_token = (!g.is_multiple_of(3)).then(|| Tracked::new(&live.tasks, g));
    let outputs = live.outputs.clone();
    let to_cancel = to_cancel.clone();
    let cache = g % 5;
    if kind == Kind::Blocking {
        let b = cluster
            .blocking_task(move |ctx| {
                let _in_attempt = body_token.clone();
                if (g / 12).is_multiple_of(2) || ctx.attempt() > 1 {
                    Ok(Tracked::new(&outputs, g))
                } else {
                    Err(Tracked::new(&outputs, g))
                }
            })
            .retry(u32::from((g / 24).is_multiple_of(2)));
        let b = match cache {
            0 => b.cacheable(true),
            1 => b.retention(SHORT_RETENTION),
            _ => b,
        };
        let b = match task_token {
            Some(t) => b.on_complete(move |_, _| {
                let _keep = &t;
            }),
            None => b,
        };
        return b.submit().unwrap();
    }
    let body = move |ctx: corral::TaskContext| {
        let token = body_token.clone();
        let outputs = outputs.clone();
        let to_cancel = to_cancel.clone();
        async move {
            let a = ctx.attempt();
            let fail = || Err(Tracked::new(&outputs, g));
            match kind {
                Kind::Value | Kind::CancelScheduled | Kind::CancelReady => {}
                Kind::RetryRequeue | Kind::RetryImmediate => {
                    if a <= 2 {
                        return fail();
                    }
                }
                Kind::AlwaysFails => return fail(),
                Kind::Panics => {
                    tokio::task::yield_now().await;
                    panic!("leak-test panic {g} while holding {:?}", token.g);
                }
                Kind::TimesOut => {
                    tokio::time::sleep(HOUR).await;
                }
                Kind::CancelRunning => {
                    to_cancel.lock().unwrap().push(ctx.id().clone());
                    std::future::pending::<()>().await;
                }
                Kind::CancelInRequeueWait | Kind::CancelInImmediateWait => {
                    if a == 1 {
                        to_cancel.lock().unwrap().push(ctx.id().clone());
                    }
                    return fail();
                }
                Kind::Blocking => unreachable!(),
            }
            drop(token);
            Ok(Tracked::new(&outputs, g))
        }
    };
    let mut b = cluster.task(body);
    b = match kind {
        Kind::RetryRequeue => b
            .retry(3)
            .backoff(FixedBackoff::new(Duration::from_millis(10))),
        Kind::RetryImmediate => b
            .retry(3)
            .retry_mode(RetryMode::Immediate)
            .backoff(FixedBackoff::new(Duration::from_millis(10))),
        Kind::AlwaysFails => b.retry(2).retry_mode(if g.is_multiple_of(2) {
            RetryMode::Requeue
        } else {
            RetryMode::Immediate
        }),
        Kind::Panics => b.retry(1),
        Kind::TimesOut => b.timeout(SEC).retry(1),
        Kind::CancelScheduled => b.delay(HOUR),
        Kind::CancelInRequeueWait => b.retry(1).backoff(FixedBackoff::new(HOUR)),
        Kind::CancelInImmediateWait => b
            .retry(1)
            .retry_mode(RetryMode::Immediate)
            .backoff(FixedBackoff::new(HOUR)),
        _ => b,
    };
    b = match cache {
        0 => b.cacheable(true),
        1 => b.retention(SHORT_RETENTION),
        _ => b,
    };
    if let Some(t) = task_token {
        b = b.on_complete(move |_, _| {
            let _keep = &t;
        });
    }
    b.submit().unwrap()
}

fn check(g: usize, kind: Kind, out: &Out) {
    let ok = |out: &Out| matches!(out, Ok(t) if t.g == g);
    let failed = |out: &Out| matches!(out, Err(TaskError::Failed(t)) if t.g == g);
    let good = match kind {
        Kind::Value | Kind::RetryRequeue | Kind::RetryImmediate => ok(out),
        Kind::AlwaysFails => failed(out),
        Kind::Panics => matches!(out, Err(TaskError::Panicked { .. })),
        Kind::TimesOut => out == &Err(TaskError::TimedOut { limit: SEC }),
        Kind::CancelScheduled
        | Kind::CancelReady
        | Kind::CancelRunning
        | Kind::CancelInRequeueWait
        | Kind::CancelInImmediateWait => out == &Err(TaskError::Cancelled),
        Kind::Blocking => ok(out) || failed(out),
    };
    assert!(good, "task {g} ({kind:?}): unexpected outcome {out:?}");
}

/// Lets the workers and the timekeeper run without moving the clock.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn large_mixed_run_releases_every_body_and_output() {
    const N: usize = 3_000;
    quiet_panics_starting_with("leak-test panic");
    let live = Live::new();
    let cluster = Cluster::builder()
        .workers(4)
        .retention(RETENTION)
        .build()
        .unwrap();
    let to_cancel: Arc<Mutex<Vec<TaskId>>> = Arc::new(Mutex::new(Vec::new()));

    // Cancels tasks once they run or wait for a retry, until all are done.
    let must_cancel = (0..N)
        .filter(|g| {
            matches!(
                KINDS[g % 12],
                Kind::CancelRunning | Kind::CancelInRequeueWait | Kind::CancelInImmediateWait
            )
        })
        .count();
    let c = cluster.clone();
    let tc = to_cancel.clone();
    let canceller = tokio::spawn(async move {
        let mut done = 0;
        while done < must_cancel {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let ids = std::mem::take(&mut *tc.lock().unwrap());
            for id in ids {
                assert!(
                    c.cancel_task(id.clone()).took_effect(),
                    "{id} was running or waiting"
                );
                done += 1;
            }
        }
    });

    let mut handles = Vec::new();
    let mut subs: Vec<(usize, Subscription<Tracked, Tracked>)> = Vec::new();
    for g in 0..N {
        let kind = KINDS[g % 12];
        let h = submit(&cluster, &live, g, kind, &to_cancel);
        let id = h.id().clone();
        if matches!(kind, Kind::CancelScheduled | Kind::CancelReady) {
            // Nothing ran yet (no await since the submit): the task is
            // scheduled, or due and waiting for a worker.
            assert!(
                cluster.cancel_task(id.clone()).took_effect(),
                "task {g} ({kind:?})"
            );
        }
        if g % 9 == 0 {
            match cluster.subscribe::<Tracked, Tracked>(id.clone()) {
                // Some subscriptions are read, some dropped unread.
                Ok(s) if g % 2 == 0 => subs.push((g, s)),
                Ok(s) => drop(s),
                Err(SubscribeError::UnknownId(_)) => {
                    assert!(kind == Kind::CancelReady || kind == Kind::CancelScheduled);
                }
                Err(e) => panic!("task {g}: {e}"),
            }
        }
        if g % 7 == 3 {
            drop(h); // detached: nobody reads the outcome
        } else {
            handles.push((g, kind, h));
        }
        if g % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }

    for (g, kind, h) in handles {
        let out = tokio::time::timeout(LIMIT, h)
            .await
            .unwrap_or_else(|_| panic!("task {g} ({kind:?}) never resolved"));
        check(g, kind, &out);
    }
    for (g, s) in subs {
        let out = tokio::time::timeout(LIMIT, s)
            .await
            .unwrap_or_else(|_| panic!("subscription to task {g} never resolved"));
        check(g, KINDS[g % 12], &out);
    }
    tokio::time::timeout(LIMIT, canceller)
        .await
        .expect("canceller never finished")
        .expect("canceller panicked");

    // Before the retention passes, the cache holds outcomes (and their
    // values): the counters do see them.
    let before = cluster.stats();
    assert!(before.cached > 0, "{before:?}");
    assert!(live.outputs.load(SeqCst) > 0 && live.tasks.load(SeqCst) > 0);
    // Detached tasks finish too; then the cache retention passes.
    tokio::time::sleep(RETENTION + SEC).await;
    settle().await;
    assert_eq!(
        cluster.stats(),
        ClusterStats::default(),
        "the cluster still holds task state after everything settled and the cache expired"
    );
    live.assert_none("after the run and the cache expiry");

    cluster.stop(SEC).await.unwrap();
    live.assert_none("after stop");
}

#[tokio::test(start_paused = true)]
async fn shutdown_and_drop_release_every_body_and_output() {
    quiet_panics_starting_with("leak-test panic");
    let live = Live::new();
    let cluster = Cluster::builder()
        .workers(3)
        .retention(RETENTION)
        .build()
        .unwrap();
    let to_cancel: Arc<Mutex<Vec<TaskId>>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for g in 0..600 {
        let kind = KINDS[g % 12];
        // Nothing here cancels the tasks: those stay running or waiting
        // until the cluster shuts down.
        handles.push((g, submit(&cluster, &live, g, kind, &to_cancel)));
    }
    let sub = cluster
        .subscribe::<Tracked, Tracked>(handles[8].1.id().clone())
        .unwrap();
    // Let the work start: some done (and cached), some running, some waiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(cluster.stats().cached > 0 && cluster.stats().queued > 0);

    cluster.cancel();
    for (g, h) in handles {
        let out = tokio::time::timeout(LIMIT, h)
            .await
            .unwrap_or_else(|_| panic!("task {g} never resolved after cancel"));
        drop(out);
    }
    assert_eq!(
        tokio::time::timeout(LIMIT, sub)
            .await
            .expect("subscriber never answered"),
        Err(TaskError::Shutdown)
    );
    drop(to_cancel);
    // Dropping the last clone releases cached outcomes with the cluster.
    drop(cluster);
    settle().await;
    live.assert_none("after cancel and dropping the cluster");
}

#[tokio::test(start_paused = true)]
async fn cached_outcomes_expire_after_stop() {
    let live = Live::new();
    let cluster = Cluster::builder()
        .workers(1)
        .retention(RETENTION)
        .build()
        .unwrap();
    let outputs = live.outputs.clone();
    let h = cluster
        .task(move |_| {
            let outputs = outputs.clone();
            async move { Ok::<_, Tracked>(Tracked::new(&outputs, 1)) }
        })
        .id("cached")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(h.await.map(|t| t.g), Ok(1));
    assert_eq!(cluster.stats().cached, 1);
    cluster.stop(SEC).await.unwrap();
    // Within the retention, late subscribers still get the outcome.
    let sub = cluster.subscribe::<Tracked, Tracked>("cached").unwrap();
    assert_eq!(sub.await.map(|t| t.g), Ok(1));

    tokio::time::sleep(RETENTION + SEC).await;
    settle().await;
    assert!(
        matches!(
            cluster.subscribe::<Tracked, Tracked>("cached"),
            Err(SubscribeError::UnknownId(_))
        ),
        "a cached outcome is still served after its retention passed (cluster stopped)"
    );
    assert_eq!(
        cluster.stats(),
        ClusterStats::default(),
        "a stopped cluster still holds a cached outcome after its retention passed"
    );
    live.assert_none("after the retention passed on a stopped cluster");
}

/// A cached outcome is freed when its retention ends, even while the
/// handle that already read a copy of it is still alive.
#[tokio::test(start_paused = true)]
async fn an_expired_outcome_is_freed_while_a_resolved_handle_lives() {
    let cluster = Cluster::new(1).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    struct Counted(Arc<AtomicUsize>);
    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.0.fetch_add(1, SeqCst);
            Counted(self.0.clone())
        }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, SeqCst);
        }
    }
    let l = live.clone();
    let mut h = cluster
        .task(move |_| {
            let l = l.clone();
            async move {
                l.fetch_add(1, SeqCst);
                Ok::<_, String>(Counted(l))
            }
        })
        .retention(SEC)
        .submit()
        .unwrap();
    let copy = (&mut h).await.unwrap();
    assert_eq!(
        live.load(SeqCst),
        2,
        "the cached outcome and the handle's copy"
    );
    drop(copy);
    tokio::time::sleep(2 * SEC).await;
    assert_eq!(cluster.stats().held, 0, "expired and swept");
    assert_eq!(
        live.load(SeqCst),
        0,
        "the cell still holds the expired outcome"
    );
    drop(h);
}
