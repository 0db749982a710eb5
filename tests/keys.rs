//! Concurrency limits and pauses per key (`corral::keys`): the limit is
//! honoured, a full or paused key holds no worker and blocks no other key,
//! the order stays exact, retries, cancel and shutdown of waiting tasks,
//! the full-key policy, settings changed while running, and key state that
//! goes when the key has no task.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{
    Cluster, ClusterStats, FixedBackoff, KeyError, KeyFull, RetryMode, SubmitError, TaskError,
    TaskHandle,
};
use tokio::time::{sleep, Instant};

use common::{log, snapshot, yield_until, Log, HOUR, MS, SEC};

/// Attempts of one key running now, the most seen at once, and started.
type Counts = (usize, usize, usize);

/// Per key: attempts running now, the most seen at once, and started.
#[derive(Clone, Default)]
struct Gauges(Arc<Mutex<HashMap<String, Counts>>>);

impl Gauges {
    fn enter(&self, key: &str) {
        let mut m = self.0.lock().unwrap();
        let g = m.entry(key.to_string()).or_default();
        g.0 += 1;
        g.1 = g.1.max(g.0);
        g.2 += 1;
    }
    fn leave(&self, key: &str) {
        self.0.lock().unwrap().get_mut(key).unwrap().0 -= 1;
    }
    fn max(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).map_or(0, |g| g.1)
    }
    fn started(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).map_or(0, |g| g.2)
    }
}

/// Takes a running attempt off its key's gauge when dropped.
struct Leave(Gauges, &'static str);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// A task of `key` that runs for `d`, counted by `g` and logged by name.
fn keyed<'c>(
    c: &'c Cluster,
    g: &Gauges,
    l: &Log<String>,
    key: &'static str,
    name: String,
    d: Duration,
) -> corral::TaskBuilder<'c, impl corral::Body<(), String>, (), String> {
    let (g, l) = (g.clone(), l.clone());
    c.task(move |_| {
        let (g, l, name) = (g.clone(), l.clone(), name.clone());
        async move {
            g.enter(key);
            // Counted out also when a cancel drops the attempt.
            let _out = Leave(g.clone(), key);
            l.lock().unwrap().push(name);
            sleep(d).await;
            Ok(())
        }
    })
    .key(key)
}

fn held_adds_up(s: &ClusterStats) {
    assert_eq!(s.held, s.queued + s.running + s.waiting + s.cached, "{s:?}");
    assert!(s.waiting_on_key <= s.queued, "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn the_limit_is_never_exceeded_within_a_key() {
    let c = Cluster::builder().workers(6).key_limit(2).build().unwrap();
    c.set_key_limit("c", 1).unwrap();
    let (g, l) = (Gauges::default(), log());
    let mut hs = Vec::new();
    for i in 0..30u64 {
        let key = ["a", "b", "c"][(i % 3) as usize];
        hs.push(
            keyed(
                &c,
                &g,
                &l,
                key,
                format!("{key}{i}"),
                (1 + i as u32 % 4) * MS,
            )
            .submit()
            .unwrap(),
        );
    }
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!((g.max("a"), g.max("b"), g.max("c")), (2, 2, 1));
    assert_eq!(g.started("a") + g.started("b") + g.started("c"), 30);
    assert_eq!(c.active_keys(), 0);
    assert_eq!(c.stats(), ClusterStats::default());
}

#[tokio::test(start_paused = true)]
async fn a_full_key_holds_no_worker_and_blocks_no_other_key() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let long = keyed(&c, &g, &l, "a", "a0".into(), HOUR).submit().unwrap();
    let waiting: Vec<_> = (1..5)
        .map(|i| {
            keyed(&c, &g, &l, "a", format!("a{i}"), MS)
                .submit()
                .unwrap()
        })
        .collect();
    // Submitted after the waiting ones: they run one after the other on the
    // second worker while key "a" is full.
    let others: Vec<_> = (0..3)
        .map(|i| {
            keyed(&c, &g, &l, "b", format!("b{i}"), SEC)
                .submit()
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    for h in others {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(start.elapsed(), 3 * SEC, "the b tasks ran back to back");
    let s = c.stats();
    assert_eq!((s.running, s.waiting_on_key, s.queued), (1, 4, 4));
    held_adds_up(&s);
    let k = c.key_stats("a").unwrap();
    assert_eq!(
        (k.running, k.waiting, k.queued, k.limit),
        (1, 4, 0, Some(1))
    );
    assert_eq!(g.started("a"), 1);
    assert_eq!(long.await, Ok(()));
    for h in waiting {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max("a"), 1);
    assert_eq!(snapshot(&l)[4..], ["a1", "a2", "a3", "a4"]);
}

#[tokio::test(start_paused = true)]
async fn order_is_exact_within_and_across_keys() {
    let c = Cluster::builder()
        .workers(2)
        .key_limit(1)
        .paused()
        .build()
        .unwrap();
    let (g, l) = (Gauges::default(), log());
    let a = |name: &str, p| keyed(&c, &g, &l, "a", name.into(), 10 * MS).priority(p);
    let b = |name: &str, p| keyed(&c, &g, &l, "b", name.into(), 15 * MS).priority(p);
    let hs = vec![
        a("a1", 0).submit().unwrap(),
        a("a2", 5).submit().unwrap(),
        b("b1", 1).submit().unwrap(),
        a("a3", 9).submit().unwrap(),
        b("b2", 0).submit().unwrap(),
    ];
    c.run().unwrap();
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    // t=0: a3 runs, a2 waits on "a", b1 runs. t=10: a2 goes back and runs.
    // t=15: a1 is behind a2 on "a" and waits; b2 runs. t=20: a1.
    assert_eq!(snapshot(&l), ["a3", "b1", "a2", "b2", "a1"]);
}

#[tokio::test(start_paused = true)]
async fn equal_priorities_keep_submission_order_on_a_key() {
    let c = Cluster::builder().workers(3).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let hs: Vec<_> = (0..8)
        .map(|i| {
            keyed(&c, &g, &l, "k", format!("k{i}"), MS)
                .submit()
                .unwrap()
        })
        .collect();
    for h in hs {
        h.await.unwrap();
    }
    let want: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    assert_eq!(snapshot(&l), want);
}

#[tokio::test(start_paused = true)]
async fn an_immediate_retry_keeps_its_slot_while_it_waits() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let l = log();
    let l2 = l.clone();
    let flaky = c
        .task(move |ctx| {
            let l = l2.clone();
            async move {
                l.lock().unwrap().push(format!("x{}", ctx.attempt()));
                if ctx.attempt() == 1 {
                    Err("first".to_string())
                } else {
                    Ok(())
                }
            }
        })
        .key("k")
        .retry(1)
        .retry_mode(RetryMode::Immediate)
        .backoff(FixedBackoff::new(SEC))
        .submit()
        .unwrap();
    yield_until("first attempt", || snapshot(&l).len() == 1).await;
    let (g, l3) = (Gauges::default(), l.clone());
    let other = keyed(&c, &g, &l3, "k", "y".into(), MS).submit().unwrap();
    sleep(SEC / 2).await;
    assert_eq!(c.stats().waiting_on_key, 1, "the retry still holds the key");
    assert_eq!(c.key_stats("k").unwrap().running, 1);
    assert_eq!(flaky.await, Ok(()));
    assert_eq!(other.await, Ok(()));
    assert_eq!(snapshot(&l), ["x1", "x2", "y"]);
}

#[tokio::test(start_paused = true)]
async fn a_requeued_retry_does_not_count_while_it_waits_for_its_delay() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let l = log();
    let l2 = l.clone();
    let flaky = c
        .task(move |ctx| {
            let l = l2.clone();
            async move {
                l.lock().unwrap().push(format!("x{}", ctx.attempt()));
                if ctx.attempt() == 1 {
                    Err("first".to_string())
                } else {
                    Ok(())
                }
            }
        })
        .key("k")
        .retry(1)
        .backoff(FixedBackoff::new(SEC))
        .submit()
        .unwrap();
    yield_until("first attempt", || snapshot(&l).len() == 1).await;
    let g = Gauges::default();
    // Runs across the retry's due time: the retry then waits on the key.
    let other = keyed(&c, &g, &l, "k", "y".into(), 2 * SEC)
        .submit()
        .unwrap();
    yield_until("y started", || g.started("k") == 1).await;
    let k = c.key_stats("k").unwrap();
    assert_eq!((k.running, k.queued, k.waiting), (1, 1, 0));
    sleep(SEC + MS).await;
    let k = c.key_stats("k").unwrap();
    assert_eq!(
        (k.running, k.queued, k.waiting),
        (1, 0, 1),
        "the due retry waits on its key"
    );
    assert_eq!(other.await, Ok(()));
    assert_eq!(flaky.await, Ok(()));
    assert_eq!(snapshot(&l), ["x1", "y", "x2"]);
    assert_eq!(c.key_stats("k"), None);
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_task_waiting_on_its_key_resolves_it_at_once() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let long = keyed(&c, &g, &l, "k", "long".into(), HOUR)
        .submit()
        .unwrap();
    let w = keyed(&c, &g, &l, "k", "w".into(), MS)
        .id("w")
        .submit()
        .unwrap();
    yield_until("w waits", || c.stats().waiting_on_key == 1).await;
    assert!(c.cancel_task("w").took_effect());
    assert_eq!(w.await, Err(TaskError::Cancelled));
    let s = c.stats();
    assert_eq!(
        (s.waiting_on_key, s.queued, s.running, s.held),
        (0, 0, 1, 1)
    );
    assert_eq!(c.key_stats("k").unwrap().waiting, 0);
    assert_eq!(c.cancel_task("w"), corral::CancelOutcome::NotFound);
    assert!(c.cancel_task(long_id(&long)).took_effect());
    assert_eq!(long.await, Err(TaskError::Cancelled));
    yield_until("key state gone", || c.key_stats("k").is_none()).await;
    assert_eq!(c.active_keys(), 0);
    assert_eq!(snapshot(&l), ["long"]);
}

fn long_id(h: &TaskHandle<(), String>) -> corral::TaskId {
    h.id().clone()
}

#[tokio::test(start_paused = true)]
async fn stop_shuts_down_tasks_waiting_on_keys_at_once() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let running = keyed(&c, &g, &l, "k", "r".into(), SEC).submit().unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            keyed(&c, &g, &l, "k", format!("w{i}"), MS)
                .submit()
                .unwrap()
        })
        .collect();
    c.pause_key("p");
    let paused = keyed(&c, &g, &l, "p", "p".into(), MS).submit().unwrap();
    yield_until("all wait", || c.stats().waiting_on_key == 4).await;
    let stop = {
        let c = c.clone();
        tokio::spawn(async move { c.stop(HOUR).await })
    };
    for h in waiting {
        assert_eq!(h.await, Err(TaskError::Shutdown));
    }
    assert_eq!(paused.await, Err(TaskError::Shutdown));
    assert_eq!(running.await, Ok(()), "the running attempt finishes");
    stop.await.unwrap().unwrap();
    assert_eq!(snapshot(&l), ["r"]);
    assert_eq!(c.active_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_runs_tasks_waiting_on_keys_and_ends_key_pauses() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    c.pause_key("p");
    let hs: Vec<_> = (0..3)
        .map(|i| {
            keyed(&c, &g, &l, "k", format!("k{i}"), SEC)
                .submit()
                .unwrap()
        })
        .chain([keyed(&c, &g, &l, "p", "p".into(), MS).submit().unwrap()])
        .collect();
    yield_until("waiting", || c.stats().waiting_on_key == 3).await;
    c.drain(HOUR).await.unwrap();
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max("k"), 1);
    assert!(!c.is_key_paused("p"));
}

#[tokio::test(start_paused = true)]
async fn reject_refuses_a_submit_at_the_boundary_only() {
    let c = Cluster::builder().workers(4).key_limit(2).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let submit = || {
        keyed(&c, &g, &l, "k", "t".into(), SEC)
            .on_key_full(KeyFull::Reject)
            .submit()
    };
    let a = submit().unwrap();
    let b = submit().unwrap(); // exactly at the limit: accepted
    match submit() {
        Err(SubmitError::KeyFull { key, limit }) => assert_eq!((&*key, limit), ("k", 2)),
        other => panic!("expected KeyFull, got {:?}", other.map(|_| ())),
    }
    assert_eq!(c.stats().rejected, 1);
    // Another key, and the same key with the default policy, are not refused.
    let other = keyed(&c, &g, &l, "o", "o".into(), SEC)
        .on_key_full(KeyFull::Reject)
        .submit()
        .unwrap();
    let queued = keyed(&c, &g, &l, "k", "q".into(), SEC).submit().unwrap();
    assert_eq!(a.await, Ok(()));
    assert_eq!(b.await, Ok(()));
    // "q" took the freed room; one unit is left.
    let c2 = submit().unwrap();
    assert!(matches!(submit(), Err(SubmitError::KeyFull { .. })));
    assert_eq!(c.stats().rejected, 2);
    for h in [other, queued, c2] {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max("k"), 2);
}

#[tokio::test(start_paused = true)]
async fn reject_counts_queued_tasks_before_the_workers_start() {
    let c = Cluster::builder()
        .workers(4)
        .key_limit(1)
        .paused()
        .build()
        .unwrap();
    let h = c
        .task(|_| async { Ok::<_, String>(()) })
        .key("k")
        .submit()
        .unwrap();
    let again = c
        .task(|_| async { Ok::<_, String>(()) })
        .key("k")
        .on_key_full(KeyFull::Reject)
        .submit();
    assert!(matches!(again, Err(SubmitError::KeyFull { limit: 1, .. })));
    c.run().unwrap();
    assert_eq!(h.await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn raising_a_limit_while_running_starts_waiting_tasks_at_once() {
    let c = Cluster::builder().workers(8).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let hs: Vec<_> = (0..5)
        .map(|i| {
            keyed(&c, &g, &l, "k", format!("k{i}"), SEC)
                .submit()
                .unwrap()
        })
        .collect();
    yield_until("4 wait", || c.stats().waiting_on_key == 4).await;
    let start = Instant::now();
    c.set_key_limit("k", 3).unwrap();
    assert_eq!(c.key_limit("k"), Some(3));
    yield_until("3 run", || g.started("k") == 3).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(c.stats().waiting_on_key, 2);
    // Lowering stops nothing that runs.
    c.set_key_limit("k", 1).unwrap();
    sleep(SEC / 2).await;
    assert_eq!(c.key_stats("k").unwrap().running, 3);
    for h in hs {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(g.max("k"), 3);
    assert!(c.clear_key_limit("k"));
    assert!(!c.clear_key_limit("k"));
    assert_eq!(c.key_limit("k"), Some(1), "back to the default");
    assert_eq!(c.set_key_limit("k", 0), Err(KeyError::ZeroLimit));
}

#[tokio::test(start_paused = true)]
async fn a_paused_key_starts_nothing_until_resumed_and_blocks_no_other_key() {
    let c = Cluster::new(1).unwrap();
    let (g, l) = (Gauges::default(), log());
    let running = keyed(&c, &g, &l, "k", "r".into(), SEC).submit().unwrap();
    yield_until("r runs", || g.started("k") == 1).await;
    assert!(c.pause_key("k"));
    assert!(c.is_key_paused("k"));
    let held: Vec<_> = (0..2)
        .map(|i| {
            keyed(&c, &g, &l, "k", format!("k{i}"), MS)
                .submit()
                .unwrap()
        })
        .collect();
    let other = keyed(&c, &g, &l, "o", "o".into(), MS).submit().unwrap();
    assert_eq!(running.await, Ok(()), "the running attempt finishes");
    assert_eq!(
        other.await,
        Ok(()),
        "one worker, and the paused key does not hold it"
    );
    sleep(HOUR).await;
    assert_eq!(g.started("k"), 1);
    let k = c.key_stats("k").unwrap();
    assert_eq!((k.waiting, k.running, k.paused), (2, 0, true));
    assert!(c.resume_key("k"));
    assert!(!c.resume_key("k"));
    for h in held {
        assert_eq!(h.await, Ok(()));
    }
    assert_eq!(snapshot(&l), ["r", "o", "k0", "k1"]);
}

#[tokio::test(start_paused = true)]
async fn a_timed_key_pause_ends_by_itself() {
    let c = Cluster::new(2).unwrap();
    let (g, l) = (Gauges::default(), log());
    assert!(c.pause_key_for("k", 10 * SEC));
    let start = Instant::now();
    let h = keyed(&c, &g, &l, "k", "k".into(), MS).submit().unwrap();
    let o = keyed(&c, &g, &l, "o", "o".into(), MS).submit().unwrap();
    assert_eq!(o.await, Ok(()));
    assert!(start.elapsed() < SEC);
    assert_eq!(h.await, Ok(()));
    assert!(start.elapsed() >= 10 * SEC && start.elapsed() < 11 * SEC);
    assert!(!c.is_key_paused("k"));
    // A later untimed pause makes it last until resumed.
    c.pause_key_for("k", SEC);
    c.pause_key("k");
    sleep(HOUR).await;
    assert!(c.is_key_paused("k"));
}

#[tokio::test(start_paused = true)]
async fn key_state_goes_with_the_last_task() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    for round in 0..3 {
        let hs: Vec<_> = (0..50)
            .map(|i| {
                let key = ["x", "y", "z", "w", "v"][i % 5];
                keyed(&c, &g, &l, key, format!("{round}"), MS)
                    .submit()
                    .unwrap()
            })
            .collect();
        assert_eq!(c.active_keys(), 5);
        for h in hs {
            h.await.unwrap();
        }
        assert_eq!(c.active_keys(), 0);
        assert_eq!(c.key_stats("x"), None);
        assert_eq!(c.stats(), ClusterStats::default());
    }
}

#[tokio::test(start_paused = true)]
async fn cost_takes_several_units_of_the_limit() {
    let c = Cluster::builder().workers(8).key_limit(3).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let big: Vec<_> = (0..3)
        .map(|i| {
            keyed(&c, &g, &l, "k", format!("big{i}"), SEC)
                .key_cost(2)
                .submit()
                .unwrap()
        })
        .collect();
    let small: Vec<_> = (0..2)
        .map(|i| {
            keyed(&c, &g, &l, "k", format!("small{i}"), SEC)
                .submit()
                .unwrap()
        })
        .collect();
    yield_until("first big runs", || g.started("k") == 1).await;
    sleep(SEC / 2).await;
    let k = c.key_stats("k").unwrap();
    // big0 (2 of 3) runs; big1 does not fit and the small ones are behind it.
    assert_eq!((k.running, k.used, k.waiting), (1, 2, 4));
    for h in big.into_iter().chain(small) {
        assert_eq!(h.await, Ok(()));
    }
    // Alone, alone, then big2 and small0 together (2 + 1 <= 3), then small1.
    let order = snapshot(&l);
    assert_eq!(order[..2], ["big0", "big1"]);
    let mut pair = order[2..4].to_vec();
    pair.sort();
    assert_eq!(pair, ["big2", "small0"]);
    assert_eq!(order[4], "small1");
    assert_eq!(g.max("k"), 2);
}

#[tokio::test(start_paused = true)]
async fn bad_key_options_are_clear_errors() {
    let c = Cluster::builder().workers(1).key_limit(2).build().unwrap();
    let t = || c.task(|_| async { Ok::<_, String>(()) });
    let err = |r: Result<TaskHandle<(), String>, SubmitError>| match r {
        Err(SubmitError::InvalidOption { option, .. }) => option,
        other => panic!("expected InvalidOption, got {:?}", other.map(|_| ())),
    };
    assert_eq!(err(t().key("k").key_cost(3).submit()), "key_cost");
    assert_eq!(err(t().key("k").key_cost(0).submit()), "key_cost");
    assert_eq!(err(t().key_cost(1).submit()), "key_cost");
    assert_eq!(err(t().on_key_full(KeyFull::Reject).submit()), "key_cost");
    assert_eq!(c.stats(), ClusterStats::default());
    assert!(matches!(
        Cluster::builder().key_limit(0).build(),
        Err(corral::BuildError::ZeroKeyLimit)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_limit_lowered_below_a_waiting_cost_lets_it_run_alone() {
    let c = Cluster::builder().workers(4).key_limit(4).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let first = keyed(&c, &g, &l, "k", "a".into(), SEC)
        .key_cost(2)
        .submit()
        .unwrap();
    let second = keyed(&c, &g, &l, "k", "b".into(), SEC)
        .key_cost(3)
        .submit()
        .unwrap();
    yield_until("b waits", || c.stats().waiting_on_key == 1).await;
    c.set_key_limit("k", 1).unwrap();
    assert_eq!(first.await, Ok(()));
    assert_eq!(second.await, Ok(()), "runs alone rather than never");
    assert_eq!(g.max("k"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_keyed_dependent_counts_once_its_parents_are_done() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let parent = keyed(&c, &g, &l, "p", "parent".into(), SEC)
        .submit()
        .unwrap();
    let child = keyed(&c, &g, &l, "k", "child".into(), MS)
        .after(&parent)
        .submit()
        .unwrap();
    let blocker = keyed(&c, &g, &l, "k", "blocker".into(), 2 * SEC)
        .submit()
        .unwrap();
    assert_eq!(parent.await, Ok(()));
    assert_eq!(child.await, Ok(()));
    assert_eq!(blocker.await, Ok(()));
    assert_eq!(snapshot(&l), ["parent", "blocker", "child"]);
    assert_eq!(c.active_keys(), 0);
    let other = keyed(&c, &g, &l, "p", "other".into(), MS).submit().unwrap();
    let reject = keyed(&c, &g, &l, "k", "r".into(), MS)
        .after(&other)
        .on_key_full(KeyFull::Reject)
        .submit();
    assert!(matches!(
        reject,
        Err(SubmitError::InvalidOption {
            option: "on_key_full",
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn replace_keeps_only_the_newest_unstarted_task() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    let newest = |name: &str, d| {
        keyed(&c, &g, &l, "k", name.into(), d)
            .on_key_full(KeyFull::Replace)
            .submit()
            .unwrap()
    };
    let running = newest("a", SEC);
    yield_until("a runs", || g.started("k") == 1).await;
    // The running task is never replaced: b waits on the key.
    let b = newest("b", MS);
    yield_until("b waits", || c.stats().waiting_on_key == 1).await;
    assert_eq!(c.stats().replaced, 0);
    // A task with the default policy is not replaced either, and takes
    // its share of the limit.
    let queued = keyed(&c, &g, &l, "k", "q".into(), MS).submit().unwrap();
    let d = newest("d", MS);
    assert_eq!(
        b.await,
        Err(TaskError::Replaced),
        "replaced while waiting on the key"
    );
    let s = c.stats();
    assert_eq!((s.replaced, s.queued, s.running), (1, 2, 1));
    held_adds_up(&s);
    assert_eq!(running.await, Ok(()));
    assert_eq!(queued.await, Ok(()));
    assert_eq!(d.await, Ok(()));
    assert_eq!(snapshot(&l), ["a", "q", "d"]);
    assert_eq!(c.stats().replaced, 1);
    assert_eq!(c.active_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn replace_resolves_each_replaced_task_once_in_a_burst() {
    let c = Cluster::builder()
        .workers(1)
        .key_limit(2)
        .paused()
        .build()
        .unwrap();
    let hs: Vec<_> = (0..10)
        .map(|i| {
            c.task(move |_| async move { Ok::<_, String>(i) })
                .key("k")
                .on_key_full(KeyFull::Replace)
                .submit()
                .unwrap()
        })
        .collect();
    assert_eq!(c.key_stats("k").unwrap().queued, 2);
    c.run().unwrap();
    let mut outs = Vec::new();
    for h in hs {
        outs.push(h.await);
    }
    let mut want: Vec<Result<i32, TaskError<String>>> = vec![Err(TaskError::Replaced); 8];
    want.extend([Ok(8), Ok(9)]);
    assert_eq!(outs, want);
    assert_eq!(c.stats().replaced, 8);
}

#[tokio::test(start_paused = true)]
async fn a_replaced_task_resolves_its_subscribers_and_dependents() {
    let c = Cluster::builder()
        .workers(1)
        .key_limit(1)
        .paused()
        .build()
        .unwrap();
    let first = c
        .task(|_| async { Ok::<_, String>(1) })
        .id("first")
        .key("k")
        .on_key_full(KeyFull::Replace)
        .submit()
        .unwrap();
    let sub = c.subscribe::<i32, String>("first").unwrap();
    let child = c
        .task(|_| async { Ok::<_, String>(0) })
        .after(&first)
        .submit()
        .unwrap();
    let second = c
        .task(|_| async { Ok::<_, String>(2) })
        .key("k")
        .on_key_full(KeyFull::Replace)
        .submit()
        .unwrap();
    assert_eq!(first.await, Err(TaskError::Replaced));
    assert_eq!(sub.await, Err(TaskError::Replaced));
    c.run().unwrap();
    assert_eq!(second.await, Ok(2));
    let err = child.await.unwrap_err();
    assert_eq!(
        err.dependency().map(|d| d.cause),
        Some(corral::DependencyCause::Replaced)
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_released_and_cancelled_before_its_claim_does_not_strand_the_key() {
    let c = Cluster::builder().workers(2).key_limit(2).build().unwrap();
    let (g, l) = (Gauges::default(), log());
    c.pause_key("k");
    let big = keyed(&c, &g, &l, "k", "big".into(), MS)
        .key_cost(2)
        .submit()
        .unwrap();
    let high = keyed(&c, &g, &l, "k", "high".into(), MS)
        .priority(1)
        .id("high")
        .submit()
        .unwrap();
    yield_until("both wait", || c.stats().waiting_on_key == 2).await;
    // Releases "high" only: "big" does not fit beside it. Then "high"
    // leaves before any worker claimed it.
    assert!(c.resume_key("k"));
    assert!(c.cancel_task("high").took_effect());
    assert_eq!(high.await, Err(TaskError::Cancelled));
    assert_eq!(big.await, Ok(()));
    assert_eq!(snapshot(&l), ["big"]);
}

/// Real threads: submits, cancels and a limit raise race with the workers;
/// every task resolves once and no key ever runs over its limit.
#[test]
fn keyed_load_with_racing_cancels_on_a_multi_thread_runtime() {
    let rt = common::runtime(common::Flavor::MultiThread, false);
    rt.block_on(async {
        let c = Cluster::builder().workers(4).key_limit(2).build().unwrap();
        let (g, l) = (Gauges::default(), log());
        let keys = ["a", "b", "c", "d", "e"];
        let mut hs = Vec::new();
        for i in 0..2_000usize {
            let key = keys[i % keys.len()];
            let h = keyed(&c, &g, &l, key, String::new(), Duration::ZERO)
                .priority((i % 3) as i32)
                .submit()
                .unwrap();
            if i % 7 == 3 {
                c.cancel_task(h.id());
            }
            if i == 1_000 {
                c.set_key_limit("e", 3).unwrap();
            }
            hs.push(h);
        }
        let canceller = {
            let c = c.clone();
            let ids: Vec<_> = hs.iter().skip(1).step_by(11).map(|h| h.id()).collect();
            std::thread::spawn(move || {
                for id in ids {
                    c.cancel_task(id);
                }
            })
        };
        let mut done = 0;
        for h in hs {
            match h.await {
                Ok(()) | Err(TaskError::Cancelled) => done += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        canceller.join().unwrap();
        assert_eq!(done, 2_000);
        for k in ["a", "b", "c", "d"] {
            assert!(g.max(k) <= 2, "key {k}: {} at once", g.max(k));
        }
        assert!(g.max("e") <= 3);
        assert_eq!(c.active_keys(), 0);
        let s = c.stats();
        assert_eq!(
            (s.held, s.queued, s.running, s.waiting_on_key),
            (0, 0, 0, 0)
        );
        c.stop(SEC).await.unwrap();
    });
}

/// An attempt that fails on its first `fails` attempts, logging each start.
fn flaky<'c>(
    c: &'c Cluster,
    l: &Log<String>,
    fails: u32,
) -> corral::TaskBuilder<'c, impl corral::Body<(), String>, (), String> {
    let l = l.clone();
    c.task(move |ctx| {
        let l = l.clone();
        async move {
            l.lock().unwrap().push(format!("x{}", ctx.attempt()));
            if ctx.attempt() <= fails {
                Err("fails".to_string())
            } else {
                Ok(())
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_key_pause_holds_an_immediate_retry_until_resumed() {
    let c = Cluster::new(2).unwrap();
    let l = log();
    let h = flaky(&c, &l, 1)
        .key("k")
        .retry(1)
        .retry_mode(RetryMode::Immediate)
        .backoff(FixedBackoff::new(SEC))
        .submit()
        .unwrap();
    yield_until("first attempt", || snapshot(&l).len() == 1).await;
    assert!(c.pause_key("k"));
    sleep(HOUR).await;
    assert_eq!(
        snapshot(&l),
        ["x1"],
        "the next attempt waits for the resume"
    );
    let k = c.key_stats("k").unwrap();
    assert_eq!(
        (k.running, k.paused),
        (1, true),
        "it keeps its worker and slot"
    );
    // Another key is not held.
    let other = flaky(&c, &l, 0).key("o").submit().unwrap();
    assert_eq!(other.await, Ok(()));
    assert!(c.resume_key("k"));
    assert_eq!(h.await, Ok(()));
    assert_eq!(snapshot(&l), ["x1", "x1", "x2"]);
}

#[tokio::test(start_paused = true)]
async fn a_timed_key_pause_releases_an_immediate_retry_when_it_ends() {
    let c = Cluster::new(1).unwrap();
    let l = log();
    let h = flaky(&c, &l, 1)
        .key("k")
        .retry(1)
        .retry_mode(RetryMode::Immediate)
        .backoff(FixedBackoff::new(SEC))
        .submit()
        .unwrap();
    yield_until("first attempt", || snapshot(&l).len() == 1).await;
    let start = Instant::now();
    assert!(c.pause_key_for("k", 10 * SEC));
    assert_eq!(h.await, Ok(()));
    let waited = start.elapsed();
    assert!(waited >= 10 * SEC && waited < 11 * SEC, "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn stop_ends_an_immediate_retry_held_by_a_key_pause() {
    let c = Cluster::new(1).unwrap();
    let l = log();
    let h = flaky(&c, &l, 1)
        .key("k")
        .retry(1)
        .retry_mode(RetryMode::Immediate)
        .backoff(FixedBackoff::new(SEC))
        .submit()
        .unwrap();
    yield_until("first attempt", || snapshot(&l).len() == 1).await;
    c.pause_key("k");
    sleep(2 * SEC).await;
    c.stop(HOUR).await.unwrap();
    assert_eq!(h.await, Err(TaskError::Shutdown));
    assert_eq!(snapshot(&l), ["x1"]);
}
