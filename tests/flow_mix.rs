//! Flow controls together (issue 13): per-key limits and pauses, rate
//! limiters, a bounded queue and the cluster's pause, on the same tasks.
//! Each control is tested alone in its own file (`keys`, `limits`,
//! `capacity`, `flow`); here they meet in `Engine::claim`, where a popped
//! task is checked by its key first (diverted to the key's waiting heap),
//! then by its limiters (set aside), and only then takes its key slot.
//!
//! Every test runs on tokio's paused clock: start instants are exact
//! virtual times since the test's `t0`. Every task records its outcome in
//! `on_complete`, so "resolves exactly once" is counted, not assumed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{
    CancelOutcome, Cluster, ClusterStats, Overflow, Rate, SubmitError, TaskError, TaskHandle,
};
use tokio::time::{sleep, Instant};

use common::{log, snapshot, yield_until, Log, HOUR, MS, SEC};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What a test task is: its key and limiter (if any), how long its body
/// runs, its priority.
#[derive(Clone, Copy)]
struct Spec {
    key: Option<&'static str>,
    limiter: Option<&'static str>,
    run: Duration,
    priority: i32,
}

impl Spec {
    fn plain(run: Duration) -> Self {
        Spec {
            key: None,
            limiter: None,
            run,
            priority: 0,
        }
    }
    fn key(mut self, key: &'static str) -> Self {
        self.key = Some(key);
        self
    }
    fn limit(mut self, limiter: &'static str) -> Self {
        self.limiter = Some(limiter);
        self
    }
    fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
}

/// What the tasks of one test record.
#[derive(Clone)]
struct Rec {
    t0: Instant,
    /// `(name, start instant since t0)` per attempt started.
    starts: Log<(String, Duration)>,
    /// `(name, outcome)` per `on_complete` call.
    outcomes: Log<(String, Result<(), TaskError<String>>)>,
    /// Per key: attempts running now, and the most seen at once.
    keys: Arc<Mutex<HashMap<&'static str, (usize, usize)>>>,
}

impl Rec {
    fn new() -> Self {
        Rec {
            t0: Instant::now(),
            starts: log(),
            outcomes: log(),
            keys: Arc::default(),
        }
    }

    fn starts(&self) -> Vec<(String, Duration)> {
        snapshot(&self.starts)
    }

    fn started_names(&self) -> Vec<String> {
        self.starts().into_iter().map(|(n, _)| n).collect()
    }

    fn max_running(&self, key: &str) -> usize {
        self.keys.lock().unwrap().get(key).map_or(0, |g| g.1)
    }

    /// Every task named in `names` completed exactly once, each with the
    /// outcome `want` gives for it, and no other task completed.
    fn each_resolved_once(
        &self,
        names: &[&str],
        want: impl Fn(&str) -> Result<(), TaskError<String>>,
    ) {
        let mut seen = snapshot(&self.outcomes);
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected: Vec<_> = names.iter().map(|n| (n.to_string(), want(n))).collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(seen, expected, "one outcome per task");
    }
}

/// Takes a running attempt off its key's gauge when dropped (also when a
/// shutdown drops the attempt).
struct Leave(Rec, &'static str);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.keys.lock().unwrap().get_mut(self.1).unwrap().0 -= 1;
    }
}

/// The builder of a task named `name` as `spec` says, recorded in `rec`.
fn task<'c>(
    c: &'c Cluster,
    rec: &Rec,
    name: &str,
    spec: Spec,
) -> corral::TaskBuilder<'c, impl corral::Body<(), String>, (), String> {
    let (r, n) = (rec.clone(), name.to_string());
    let mut b = c
        .task(move |_| {
            let (r, n) = (r.clone(), n.clone());
            async move {
                r.starts.lock().unwrap().push((n, r.t0.elapsed()));
                let _out = spec.key.map(|k| {
                    let mut m = r.keys.lock().unwrap();
                    let g = m.entry(k).or_default();
                    g.0 += 1;
                    g.1 = g.1.max(g.0);
                    Leave(r.clone(), k)
                });
                sleep(spec.run).await;
                Ok(())
            }
        })
        .id(name)
        .priority(spec.priority);
    let (r, n) = (rec.clone(), name.to_string());
    b = b.on_complete(move |_, out| r.outcomes.lock().unwrap().push((n.clone(), out.clone())));
    if let Some(k) = spec.key {
        b = b.key(k);
    }
    if let Some(l) = spec.limiter {
        b = b.limit(l);
    }
    b
}

/// Submits the task `task` builds.
fn go(c: &Cluster, rec: &Rec, name: &str, spec: Spec) -> TaskHandle<(), String> {
    task(c, rec, name, spec).submit().unwrap()
}

fn ok(_: &str) -> Result<(), TaskError<String>> {
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_task_with_a_key_and_a_limiter_honours_both() {
    let c = Cluster::builder().workers(4).build().unwrap();
    c.set_key_limit("k", 1).unwrap();
    c.add_limiter("r", Rate::per_second(10).burst(2)).unwrap();
    let rec = Rec::new();
    let names: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let hs: Vec<_> = names
        .iter()
        .map(|n| go(&c, &rec, n, Spec::plain(ms(50)).key("k").limit("r")))
        .collect();
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    // The key lets one run at a time (each for 50 ms); the limiter's burst
    // of 2 covers t0 (0 ms) and t1 (50 ms), its rate of one per 100 ms
    // then paces the rest: 100, 200, 300, 400 ms.
    let at: Vec<_> = rec.starts().into_iter().map(|(_, t)| t).collect();
    assert_eq!(at, [0, 50, 100, 200, 300, 400].map(ms));
    assert_eq!(rec.started_names(), names, "submission order kept");
    assert_eq!(rec.max_running("k"), 1);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    rec.each_resolved_once(&names, ok);
    assert!(c.key_stats("k").is_none(), "the key's state is gone");
    assert_eq!(c.active_keys(), 0);
    assert_eq!(c.stats(), ClusterStats::default());
}

#[tokio::test(start_paused = true)]
async fn keys_and_a_shared_limiter_mixed_with_plain_tasks() {
    let c = Cluster::builder().workers(3).key_limit(1).build().unwrap();
    let interval = ms(100);
    c.add_limiter("r", Rate::per(1, interval).burst(2)).unwrap();
    let rec = Rec::new();
    let mut hs = Vec::new();
    let mut names = Vec::new();
    for i in 0..24u32 {
        let spec = match i % 4 {
            0 => Spec::plain(ms(30)).key("a").limit("r"),
            1 => Spec::plain(ms(70)).key("b").limit("r"),
            2 => Spec::plain(ms(20)).key("a"),
            _ => Spec::plain(ms(10)).limit("r"),
        };
        let name = format!("t{i}");
        hs.push(go(&c, &rec, &name, spec.priority((i % 3) as i32)));
        names.push(name);
    }
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!((rec.max_running("a"), rec.max_running("b")), (1, 1));
    // GCRA with burst 2: the n-th start charged to "r" is no earlier than
    // (n - 1) intervals after t0.
    let limited: Vec<Duration> = rec
        .starts()
        .into_iter()
        .filter(|(n, _)| n[1..].parse::<u32>().unwrap() % 4 != 2)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(limited.len(), 18);
    for (n, t) in limited.iter().enumerate() {
        let floor = interval * (n.max(1) as u32 - 1);
        assert!(*t >= floor, "start {n} at {t:?}, before {floor:?}");
    }
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    rec.each_resolved_once(&names, ok);
    assert_eq!(c.active_keys(), 0);
    assert_eq!(c.stats(), ClusterStats::default());
}

#[tokio::test(start_paused = true)]
async fn a_keyed_task_set_aside_then_cancelled_frees_its_key() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per_second(10).burst(1)).unwrap();
    let rec = Rec::new();
    let x = go(&c, &rec, "x", Spec::plain(MS).limit("r"));
    // The key has room; the limiter (used up by x until 100 ms) sets it aside.
    let b = go(&c, &rec, "b", Spec::plain(MS).key("k").limit("r"));
    yield_until("b set aside", || c.stats().waiting_on_limiter == 1).await;
    let s = c.stats();
    assert_eq!((s.queued, s.waiting_on_key), (1, 0), "{s:?}");
    sleep(ms(50)).await;
    assert_eq!(c.cancel_task("b"), CancelOutcome::Cancelled);
    assert_eq!(b.await, Err(TaskError::Cancelled));
    assert_eq!(c.cancel_task("b"), CancelOutcome::NotFound);
    // The key is not stuck: its next task runs at once.
    let next = go(&c, &rec, "next", Spec::plain(MS).key("k"));
    assert_eq!(next.await, Ok(()));
    assert_eq!(x.await, Ok(()));
    assert_eq!(rec.started_names(), ["x", "next"]);
    assert_eq!(rec.starts()[1].1, ms(50));
    rec.each_resolved_once(&["x", "b", "next"], |n| match n {
        "b" => Err(TaskError::Cancelled),
        _ => Ok(()),
    });
    assert!(c.key_stats("k").is_none());
    assert_eq!(c.stats().waiting_on_limiter, 0);
}

/// A key resumed releases its waiters as far as its limit allows; if the
/// first is then set aside by a limiter, it takes no slot, so the next
/// waiter of the key runs at once (as it would have, had the key not been
/// paused): the key never stays idle with room and waiters.
#[tokio::test(start_paused = true)]
async fn a_resumed_key_whose_first_waiter_is_set_aside_runs_the_next() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per_second(1).burst(1)).unwrap();
    let rec = Rec::new();
    let x = go(&c, &rec, "x", Spec::plain(MS).limit("r"));
    assert_eq!(x.await, Ok(()));
    assert!(c.pause_key("k"));
    let first = go(&c, &rec, "first", Spec::plain(MS).key("k").limit("r"));
    let second = go(&c, &rec, "second", Spec::plain(MS).key("k"));
    yield_until("both on the key", || c.stats().waiting_on_key == 2).await;
    sleep(ms(9)).await;
    assert!(c.resume_key("k"));
    assert_eq!(common::resolve(HOUR, "second", second).await, Ok(()));
    assert_eq!(first.await, Ok(()));
    assert_eq!(
        rec.starts(),
        [("x", 0), ("second", 10), ("first", 1000)].map(|(n, t)| (n.to_string(), ms(t)))
    );
    rec.each_resolved_once(&["x", "first", "second"], ok);
    assert!(c.key_stats("k").is_none());
    assert_eq!(c.stats(), ClusterStats::default());
}

/// A keyed task the limiter woke goes back to the queue; if its key is
/// full by then, the claim diverts it to the key before the limiter sees
/// it. It must stop counting as a woken task of the bucket then: else the
/// bucket keeps its room for it (other waiters stall while it waits on the
/// key), and, if it is cancelled there, forever (with a burst of 1 the
/// bucket never wakes anyone again).
#[tokio::test(start_paused = true)]
async fn a_woken_task_diverted_to_its_key_holds_no_turn_of_the_limiter() {
    let c = Cluster::builder().workers(3).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per_second(10).burst(1)).unwrap();
    let rec = Rec::new();
    let x = go(&c, &rec, "x", Spec::plain(MS).limit("r"));
    assert_eq!(x.await, Ok(()));
    // The key has room; the limiter (used up by x until 100 ms) sets it aside.
    let b = go(&c, &rec, "b", Spec::plain(MS).key("k").limit("r"));
    yield_until("b set aside", || c.stats().waiting_on_limiter == 1).await;
    // Takes key "k" for a second while b is set aside.
    let hog = go(&c, &rec, "hog", Spec::plain(SEC).key("k"));
    yield_until("hog runs", || rec.starts().len() == 2).await;
    // At 100 ms the limiter wakes b; its key is full: b waits on it.
    tokio::time::sleep_until(rec.t0 + ms(150)).await;
    let s = c.stats();
    assert_eq!((s.waiting_on_key, s.waiting_on_limiter), (1, 0), "{s:?}");
    // The limiter's turn from 100 ms was not used: f1 takes it at once,
    // f2 is set aside for the next (before the fix: until b started).
    let f1 = go(&c, &rec, "f1", Spec::plain(MS).limit("r"));
    let f2 = go(&c, &rec, "f2", Spec::plain(MS).limit("r"));
    assert_eq!(f1.await, Ok(()));
    assert_eq!(common::resolve(HOUR, "f2", f2).await, Ok(()));
    // Cancelled while on its key: the limiter still wakes its waiters
    // (before the fix, with a burst of 1, never again).
    assert_eq!(c.cancel_task("b"), CancelOutcome::Cancelled);
    assert_eq!(b.await, Err(TaskError::Cancelled));
    let f3 = go(&c, &rec, "f3", Spec::plain(MS).limit("r"));
    let f4 = go(&c, &rec, "f4", Spec::plain(MS).limit("r"));
    assert_eq!(common::resolve(HOUR, "f3", f3).await, Ok(()));
    assert_eq!(common::resolve(HOUR, "f4", f4).await, Ok(()));
    assert_eq!(hog.await, Ok(()));
    assert_eq!(
        rec.starts(),
        [
            ("x", 0),
            ("hog", 1),
            ("f1", 150),
            ("f2", 250),
            ("f3", 350),
            ("f4", 450)
        ]
        .map(|(n, t)| (n.to_string(), ms(t)))
    );
    rec.each_resolved_once(&["x", "b", "hog", "f1", "f2", "f3", "f4"], |n| match n {
        "b" => Err(TaskError::Cancelled),
        _ => Ok(()),
    });
    assert!(c.key_stats("k").is_none());
    assert_eq!(c.stats(), ClusterStats::default());
}

/// Waiting for room: tasks on a key and set aside count as pending, so the
/// room a submit waits for frees only when they start.
#[tokio::test(start_paused = true)]
async fn a_full_queue_frees_room_only_as_keyed_and_limited_tasks_start() {
    let c = Cluster::builder()
        .workers(4)
        .key_limit(1)
        .capacity(2, Overflow::Wait)
        .build()
        .unwrap();
    c.add_limiter("r", Rate::per_second(1).burst(1)).unwrap();
    let rec = Rec::new();
    let x = go(&c, &rec, "x", Spec::plain(MS).limit("r"));
    yield_until("x runs", || rec.starts().len() == 1).await;
    let hold = go(&c, &rec, "hold", Spec::plain(2 * SEC).key("k"));
    yield_until("hold runs", || rec.starts().len() == 2).await;
    // Pending: `limited` (set aside until 1 s), `keyed` (on "k" until 2 s).
    let limited = go(&c, &rec, "limited", Spec::plain(MS).limit("r"));
    let keyed = go(&c, &rec, "keyed", Spec::plain(MS).key("k"));
    yield_until("both wait", || {
        let s = c.stats();
        (s.waiting_on_limiter, s.waiting_on_key) == (1, 1)
    })
    .await;
    assert_eq!(c.stats().queued, 2);
    assert!(matches!(
        task(&c, &rec, "refused", Spec::plain(MS)).submit(),
        Err(SubmitError::Full { capacity: 2 })
    ));
    // Two waiters, each tagging the instant it got room.
    let got_room: Log<(&str, Duration)> = log();
    let waiter = |name: &'static str| {
        let b = task(&c, &rec, name, Spec::plain(MS).key("k"));
        let (got, t0) = (got_room.clone(), rec.t0);
        async move {
            let h = b.submit_wait().await.unwrap();
            got.lock().unwrap().push((name, t0.elapsed()));
            h.await
        }
    };
    let (w1, w2) = tokio::join!(waiter("w1"), waiter("w2"));
    assert_eq!((w1, w2), (Ok(()), Ok(())));
    for h in [x, hold, limited, keyed] {
        assert_eq!(h.await, Ok(()));
    }
    // No room before `limited` started (1 s), nor before `keyed` (2 s).
    assert_eq!(snapshot(&got_room), [("w1", SEC), ("w2", 2 * SEC)]);
    assert_eq!(
        rec.started_names(),
        ["x", "hold", "limited", "keyed", "w1", "w2"]
    );
    rec.each_resolved_once(&["x", "hold", "limited", "keyed", "w1", "w2"], ok);
    let s = c.stats();
    assert_eq!((s.queued, s.held, s.rejected), (0, 0, 1), "{s:?}");
}

/// What `Overflow::DropLowest` does with tasks on keys and set aside by
/// limiters: they count as pending (they fill the queue) but are not in
/// the queue, so they are never the victim. A full queue holding only
/// such tasks refuses even a higher-priority submit; nothing is lost and
/// every handle resolves once.
#[tokio::test(start_paused = true)]
async fn drop_lowest_never_drops_tasks_on_keys_or_set_aside() {
    let c = Cluster::builder()
        .workers(4)
        .key_limit(1)
        .capacity(2, Overflow::DropLowest)
        .build()
        .unwrap();
    c.add_limiter("r", Rate::per_second(1).burst(1)).unwrap();
    let rec = Rec::new();
    let x = go(&c, &rec, "x", Spec::plain(MS).limit("r"));
    let hold = go(&c, &rec, "hold", Spec::plain(2 * SEC).key("k"));
    yield_until("x and hold run", || rec.starts().len() == 2).await;
    let limited = go(&c, &rec, "limited", Spec::plain(MS).limit("r").priority(-5));
    let keyed = go(&c, &rec, "keyed", Spec::plain(MS).key("k").priority(-5));
    yield_until("both wait", || {
        let s = c.stats();
        (s.waiting_on_limiter, s.waiting_on_key) == (1, 1)
    })
    .await;
    // Both rank below it, but neither is in the queue to be dropped.
    let high = task(&c, &rec, "high", Spec::plain(MS).priority(9));
    assert!(matches!(
        high.submit(),
        Err(SubmitError::Full { capacity: 2 })
    ));
    assert_eq!(c.stats().dropped, 0);
    for h in [x, hold, limited, keyed] {
        assert_eq!(h.await, Ok(()));
    }
    rec.each_resolved_once(&["x", "hold", "limited", "keyed"], ok);
    let s = c.stats();
    assert_eq!((s.dropped, s.rejected, s.held), (0, 1, 0), "{s:?}");
}

/// A task the limiter woke waits in the queue for a worker (here: the
/// cluster is paused); dropped there for a higher-priority submit, it must
/// give its turn back to the limiter's bucket (as a cancel does), or the
/// bucket keeps it reserved for good (with a burst of 1: wakes no one
/// again).
#[tokio::test(start_paused = true)]
async fn a_woken_task_dropped_from_a_full_queue_gives_its_turn_back() {
    let c = Cluster::builder()
        .workers(1)
        .capacity(1, Overflow::DropLowest)
        .build()
        .unwrap();
    c.add_limiter("r", Rate::per_second(10).burst(1)).unwrap();
    let rec = Rec::new();
    let x = go(&c, &rec, "x", Spec::plain(MS).limit("r"));
    assert_eq!(x.await, Ok(()));
    let low = go(&c, &rec, "low", Spec::plain(MS).limit("r"));
    yield_until("low set aside", || c.stats().waiting_on_limiter == 1).await;
    assert!(c.pause());
    // Woken at 100 ms, `low` stays queued: the cluster is paused.
    tokio::time::sleep_until(rec.t0 + ms(200)).await;
    let s = c.stats();
    assert_eq!((s.queued, s.waiting_on_limiter), (1, 0), "{s:?}");
    let high = go(&c, &rec, "high", Spec::plain(MS).limit("r").priority(9));
    assert_eq!(low.await, Err(TaskError::Dropped));
    assert_eq!(c.stats().dropped, 1);
    assert!(c.resume());
    assert_eq!(high.await, Ok(()));
    // `high` took the limiter at 200 ms; the next ones (one at a time: the
    // capacity is 1) are set aside and paced from there.
    let next1 = go(&c, &rec, "next1", Spec::plain(MS).limit("r"));
    assert_eq!(common::resolve(HOUR, "next1", next1).await, Ok(()));
    let next2 = go(&c, &rec, "next2", Spec::plain(MS).limit("r"));
    assert_eq!(common::resolve(HOUR, "next2", next2).await, Ok(()));
    assert_eq!(
        rec.starts(),
        [("x", 0), ("high", 200), ("next1", 300), ("next2", 400)]
            .map(|(n, t)| (n.to_string(), ms(t)))
    );
    rec.each_resolved_once(&["x", "low", "high", "next1", "next2"], |n| match n {
        "low" => Err(TaskError::Dropped),
        _ => Ok(()),
    });
    assert_eq!(c.stats().waiting_on_limiter, 0);
}

/// As above, with the woken task replaced by a newer task of its key
/// (`KeyFull::Replace`) while it waits in the queue.
#[tokio::test(start_paused = true)]
async fn a_woken_task_replaced_on_its_key_gives_its_turn_back() {
    let c = Cluster::builder().workers(1).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per_second(10).burst(1)).unwrap();
    let rec = Rec::new();
    let x = go(&c, &rec, "x", Spec::plain(MS).limit("r"));
    assert_eq!(x.await, Ok(()));
    // Only tasks submitted under `Replace` are replaced.
    let old = task(&c, &rec, "old", Spec::plain(MS).key("k").limit("r"))
        .on_key_full(corral::KeyFull::Replace)
        .submit()
        .unwrap();
    yield_until("old set aside", || c.stats().waiting_on_limiter == 1).await;
    assert!(c.pause());
    tokio::time::sleep_until(rec.t0 + ms(200)).await;
    let s = c.stats();
    assert_eq!((s.queued, s.waiting_on_limiter), (1, 0), "{s:?}");
    let new = task(&c, &rec, "new", Spec::plain(MS).key("k"))
        .on_key_full(corral::KeyFull::Replace)
        .submit()
        .unwrap();
    assert_eq!(
        common::resolve(HOUR, "old", old).await,
        Err(TaskError::Replaced)
    );
    assert!(c.resume());
    assert_eq!(new.await, Ok(()));
    // The limiter's turn from 100 ms is free: next1 takes it, next2 is set
    // aside until 300 ms (before the fix: for good).
    let next1 = go(&c, &rec, "next1", Spec::plain(MS).limit("r"));
    let next2 = go(&c, &rec, "next2", Spec::plain(MS).limit("r"));
    assert_eq!(common::resolve(HOUR, "next1", next1).await, Ok(()));
    assert_eq!(common::resolve(HOUR, "next2", next2).await, Ok(()));
    assert_eq!(
        rec.starts(),
        [("x", 0), ("new", 200), ("next1", 201), ("next2", 301)]
            .map(|(n, t)| (n.to_string(), ms(t)))
    );
    rec.each_resolved_once(&["x", "old", "new", "next1", "next2"], |n| match n {
        "old" => Err(TaskError::Replaced),
        _ => Ok(()),
    });
    assert!(c.key_stats("k").is_none());
    assert_eq!(c.stats().waiting_on_limiter, 0);
}

#[tokio::test(start_paused = true)]
async fn cluster_pause_key_pause_and_limiter_keep_exact_order() {
    let c = Cluster::builder().workers(1).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per_second(10).burst(1)).unwrap();
    let rec = Rec::new();
    assert!(c.pause());
    assert!(c.pause_key("k"));
    let tasks = [
        ("p5", Spec::plain(ms(10)).priority(5)),
        ("r9a", Spec::plain(ms(10)).limit("r").priority(9)),
        ("r9b", Spec::plain(ms(10)).limit("r").priority(9)),
        ("k7", Spec::plain(ms(10)).key("k").priority(7)),
        ("k8", Spec::plain(ms(10)).key("k").limit("r").priority(8)),
        ("p1", Spec::plain(ms(10)).priority(1)),
    ];
    let hs: Vec<_> = tasks.iter().map(|(n, s)| go(&c, &rec, n, *s)).collect();
    sleep(SEC).await;
    assert!(rec.starts().is_empty(), "nothing starts while paused");
    assert_eq!(c.stats().queued, 6);
    assert!(c.resume());
    // The key stays paused: k8 and k7 wait on it; r9b waits for the limiter.
    sleep(ms(150)).await;
    assert!(c.resume_key("k"));
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    // 1000: r9a (the limiter admits it); 1010: r9b is set aside until
    // 1100, k8 and k7 go to their paused key, p5 runs; 1020: p1; 1100:
    // r9b; 1150: the key resumes and releases k8 (its best), which the
    // limiter sets aside until 1200: it takes no slot of the key, so k7
    // runs at once (as with no key pause); 1200: k8.
    let want = [
        ("r9a", 1000),
        ("p5", 1010),
        ("p1", 1020),
        ("r9b", 1100),
        ("k7", 1150),
        ("k8", 1200),
    ]
    .map(|(n, t)| (n.to_string(), ms(t)));
    assert_eq!(rec.starts(), want);
    rec.each_resolved_once(&["p5", "r9a", "r9b", "k7", "k8", "p1"], ok);
    assert_eq!(c.stats(), ClusterStats::default());
}

/// Builds, on a running cluster of two workers: `hold` running on key "k"
/// (for 1 s), `x` having used up the limiter "r" (one per second), then
/// `onkey` waiting on "k", `aside` set aside by "r", and `both` (key "k"
/// and limiter "r") waiting on "k" behind `onkey`.
async fn keys_and_limiters_waiting(c: &Cluster, rec: &Rec) -> Vec<TaskHandle<(), String>> {
    c.add_limiter("r", Rate::per_second(1).burst(1)).unwrap();
    let x = go(c, rec, "x", Spec::plain(MS).limit("r"));
    let hold = go(c, rec, "hold", Spec::plain(SEC).key("k"));
    yield_until("x and hold run", || rec.starts().len() == 2).await;
    sleep(ms(10)).await; // x is done: a worker is free
    let onkey = go(c, rec, "onkey", Spec::plain(MS).key("k"));
    let aside = go(c, rec, "aside", Spec::plain(MS).limit("r"));
    let both = go(c, rec, "both", Spec::plain(MS).key("k").limit("r"));
    yield_until("they wait", || {
        let s = c.stats();
        (s.waiting_on_key, s.waiting_on_limiter) == (2, 1)
    })
    .await;
    vec![x, hold, onkey, aside, both]
}

const WAITING_NAMES: [&str; 5] = ["x", "hold", "onkey", "aside", "both"];

#[tokio::test(start_paused = true)]
async fn drain_runs_tasks_on_keys_and_set_aside_once_each() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let rec = Rec::new();
    let hs = keys_and_limiters_waiting(&c, &rec).await;
    c.drain(HOUR).await.unwrap();
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    rec.each_resolved_once(&WAITING_NAMES, ok);
    // The key keeps its limit and the limiter its rate through the drain.
    assert_eq!(rec.max_running("k"), 1);
    let starts = rec.starts();
    let at = |n: &str| starts.iter().find(|s| s.0 == n).unwrap().1;
    assert_eq!((at("onkey"), at("aside")), (SEC, SEC));
    assert_eq!(at("both"), 2 * SEC);
    assert!(c.key_stats("k").is_none());
    let s = c.stats();
    assert_eq!((s.queued, s.running, s.held), (0, 0, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn stop_shuts_down_tasks_on_keys_and_set_aside_once_each() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let rec = Rec::new();
    let hs = keys_and_limiters_waiting(&c, &rec).await;
    c.stop(HOUR).await.unwrap();
    let mut outcomes = Vec::new();
    for h in hs {
        outcomes.push(h.await);
    }
    let shut = Err(TaskError::Shutdown);
    assert_eq!(outcomes, [Ok(()), Ok(()), shut.clone(), shut.clone(), shut]);
    rec.each_resolved_once(&WAITING_NAMES, |n| match n {
        "x" | "hold" => Ok(()),
        _ => Err(TaskError::Shutdown),
    });
    assert_eq!(rec.started_names(), ["x", "hold"]);
    assert!(c.key_stats("k").is_none());
    let s = c.stats();
    assert_eq!(
        (s.queued, s.running, s.waiting_on_key, s.waiting_on_limiter),
        (0, 0, 0, 0),
        "{s:?}"
    );
}
