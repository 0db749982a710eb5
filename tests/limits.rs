//! Rate limits: named GCRA limiters, global and per key value, on tokio's
//! paused clock (start instants are exact virtual times).

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corral::{
    After, CancelOutcome, Cluster, LimiterError, Rate, RetryMode, SubmitError, TaskError,
    TaskHandle,
};
use tokio::time::Instant;

use common::{log, snapshot, yield_until, Log, MS, SEC};

/// Submits a task that records when it started (since `t0`) under `tag`,
/// limited by `limits` (`(limiter, None)` global, `(limiter, Some(key))`
/// per key value).
fn started(
    c: &Cluster,
    t0: Instant,
    starts: &Log<(u32, Duration)>,
    tag: u32,
    limits: &[(&str, Option<&str>)],
) -> TaskHandle<(), String> {
    let starts = starts.clone();
    let mut b = c.task(move |_| {
        let starts = starts.clone();
        async move {
            starts.lock().unwrap().push((tag, t0.elapsed()));
            Ok(())
        }
    });
    for (name, key) in limits {
        b = match key {
            None => b.limit(*name),
            Some(k) => b.limit_by(*name, *k),
        };
    }
    b.submit().unwrap()
}

async fn all(handles: Vec<TaskHandle<(), String>>) {
    for h in handles {
        h.await.unwrap();
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn n_tasks_at_rate_r_start_one_interval_apart() {
    let c = Cluster::new(4).unwrap();
    c.add_limiter("api", Rate::per_second(10).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let hs = (0..10)
        .map(|i| started(&c, t0, &starts, i, &[("api", None)]))
        .collect();
    all(hs).await;
    let expected: Vec<_> = (0..10).map(|i| (i, ms(100 * u64::from(i)))).collect();
    assert_eq!(snapshot(&starts), expected);
    assert_eq!(c.stats().waiting_on_limiter, 0);
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_used_up_then_tasks_are_paced() {
    let c = Cluster::new(8).unwrap();
    c.add_limiter("api", Rate::per_second(10).burst(3)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let hs = (0..6)
        .map(|i| started(&c, t0, &starts, i, &[("api", None)]))
        .collect();
    all(hs).await;
    let at: Vec<_> = snapshot(&starts).into_iter().map(|(_, t)| t).collect();
    assert_eq!(at, [ms(0), ms(0), ms(0), ms(100), ms(200), ms(300)]);
    // Idle for a while: the full burst is back.
    tokio::time::sleep(SEC).await;
    let (t1, starts) = (Instant::now(), log());
    let hs = (0..4)
        .map(|i| started(&c, t1, &starts, i, &[("api", None)]))
        .collect();
    all(hs).await;
    let at: Vec<_> = snapshot(&starts).into_iter().map(|(_, t)| t).collect();
    assert_eq!(at, [ms(0), ms(0), ms(0), ms(100)]);
}

#[tokio::test(start_paused = true)]
async fn a_task_naming_several_limiters_waits_for_all_and_is_charged_to_all() {
    let c = Cluster::new(4).unwrap();
    c.add_limiter("a", Rate::per_second(1).burst(1)).unwrap();
    c.add_limiter("b", Rate::per_second(1).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let only_a = started(&c, t0, &starts, 1, &[("a", None)]);
    tokio::task::yield_now().await;
    // `a` is used up: this one waits, and is not charged to `b` meanwhile.
    let both = started(&c, t0, &starts, 2, &[("a", None), ("b", None)]);
    let only_b = started(&c, t0, &starts, 3, &[("b", None)]);
    all(vec![only_a, only_b]).await;
    assert_eq!(snapshot(&starts), [(1, ms(0)), (3, ms(0))]);
    // At 1 s both admit it; it is charged to both, so each is used up again.
    both.await.unwrap();
    let later_a = started(&c, t0, &starts, 4, &[("a", None)]);
    let later_b = started(&c, t0, &starts, 5, &[("b", None)]);
    all(vec![later_a, later_b]).await;
    assert_eq!(
        snapshot(&starts),
        [
            (1, ms(0)),
            (3, ms(0)),
            (2, ms(1000)),
            (4, ms(2000)),
            (5, ms(2000))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_task_refused_by_one_limiter_takes_nothing_from_the_other() {
    let c = Cluster::new(2).unwrap();
    c.add_limiter("slow", Rate::per_second(1).burst(1)).unwrap();
    c.add_limiter("fast", Rate::per_second(10).burst(2))
        .unwrap();
    let (t0, starts) = (Instant::now(), log());
    started(&c, t0, &starts, 0, &[("slow", None)])
        .await
        .unwrap();
    // Refused by `slow` (until 1 s) many times over, as it is checked and
    // woken: `fast`'s burst of two stays whole for the others.
    let both = started(&c, t0, &starts, 1, &[("fast", None), ("slow", None)]);
    tokio::time::sleep(ms(500)).await;
    let a = started(&c, t0, &starts, 2, &[("fast", None)]);
    let b = started(&c, t0, &starts, 3, &[("fast", None)]);
    all(vec![a, b, both]).await;
    assert_eq!(
        snapshot(&starts),
        [(0, ms(0)), (2, ms(500)), (3, ms(500)), (1, ms(1000))]
    );
}

#[tokio::test(start_paused = true)]
async fn per_key_value_buckets_are_independent() {
    let c = Cluster::new(4).unwrap();
    c.add_limiter("customer", Rate::per_second(1).burst(1))
        .unwrap();
    let (t0, starts) = (Instant::now(), log());
    let hs = vec![
        started(&c, t0, &starts, 1, &[("customer", Some("a"))]),
        started(&c, t0, &starts, 2, &[("customer", Some("a"))]),
        started(&c, t0, &starts, 3, &[("customer", Some("b"))]),
        started(&c, t0, &starts, 4, &[("customer", Some("b"))]),
        // The global bucket is a bucket of its own too.
        started(&c, t0, &starts, 5, &[("customer", None)]),
    ];
    all(hs).await;
    let mut got = snapshot(&starts);
    got.sort();
    assert_eq!(
        got,
        [
            (1, ms(0)),
            (2, ms(1000)),
            (3, ms(0)),
            (4, ms(1000)),
            (5, ms(0))
        ]
    );
    assert_eq!(c.limiter("customer").unwrap().buckets, 2);
}

#[tokio::test(start_paused = true)]
async fn a_task_set_aside_holds_no_worker_and_blocks_no_one() {
    let c = Cluster::new(1).unwrap();
    c.add_limiter("api", Rate::per_second(1).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let first = started(&c, t0, &starts, 1, &[("api", None)]);
    let second = started(&c, t0, &starts, 2, &[("api", None)]);
    // Submitted after the limited ones, on the one worker, unlimited.
    let others: Vec<_> = (10..15).map(|i| started(&c, t0, &starts, i, &[])).collect();
    all(others).await;
    let s = c.stats();
    assert_eq!((s.waiting_on_limiter, s.running, s.queued), (1, 0, 1));
    assert_eq!(s.held, 1);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    all(vec![first, second]).await;
    assert_eq!(
        snapshot(&starts),
        [
            (1, ms(0)),
            (10, ms(0)),
            (11, ms(0)),
            (12, ms(0)),
            (13, ms(0)),
            (14, ms(0)),
            (2, ms(1000))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn tasks_set_aside_come_back_in_the_queues_exact_order() {
    let c = Cluster::new(1).unwrap();
    c.add_limiter("api", Rate::per_second(10).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let submit = |tag: u32, priority: i32| {
        let starts = starts.clone();
        c.task(move |_| {
            let starts = starts.clone();
            async move {
                starts.lock().unwrap().push((tag, t0.elapsed()));
                Ok::<_, String>(())
            }
        })
        .limit("api")
        .priority(priority)
        .submit()
        .unwrap()
    };
    let mut hs = vec![submit(0, 0)];
    tokio::task::yield_now().await;
    // All set aside behind task 0; priority, then submission order.
    for (tag, p) in [(1, 0), (2, 5), (3, 0), (4, 5), (5, 9)] {
        hs.push(submit(tag, p));
    }
    all(hs).await;
    let order: Vec<_> = snapshot(&starts).into_iter().map(|(t, _)| t).collect();
    assert_eq!(order, [0, 5, 2, 4, 1, 3]);
    let at: Vec<_> = snapshot(&starts).into_iter().map(|(_, t)| t).collect();
    assert_eq!(at, (0..6).map(|i| ms(100 * i)).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn slow_down_does_not_spend_an_attempt_and_holds_the_limiter() {
    let c = Cluster::new(2).unwrap();
    c.add_limiter("github", Rate::per_second(100)).unwrap();
    let t0 = Instant::now();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = log();
    let (calls2, seen2) = (calls.clone(), seen.clone());
    // One attempt at most (no retry), told to slow down for 2 s once.
    let h = c
        .task(move |ctx| {
            let (calls, seen) = (calls2.clone(), seen2.clone());
            async move {
                seen.lock().unwrap().push((ctx.attempt(), t0.elapsed()));
                if calls.fetch_add(1, SeqCst) == 0 {
                    assert!(ctx.slow_down("github", 2 * SEC));
                    assert!(!ctx.slow_down("not-mine", SEC));
                    return Err("429 Too Many Requests".to_string());
                }
                Ok(ctx.attempt())
            }
        })
        .limit("github")
        .submit()
        .unwrap();
    yield_until("the first attempt ran", || calls.load(SeqCst) == 1).await;
    // Others on the same limiter wait for the delay too.
    let starts = log();
    let other = started(&c, t0, &starts, 7, &[("github", None)]);
    tokio::task::yield_now().await;
    assert_eq!(c.stats().waiting_on_limiter, 2);
    assert_eq!(h.await, Ok(1));
    other.await.unwrap();
    assert_eq!(snapshot(&seen), [(1, ms(0)), (1, ms(2000))]);
    assert_eq!(snapshot(&starts), [(7, ms(2010))]);
}

#[tokio::test(start_paused = true)]
async fn slow_down_in_a_keyed_bucket_holds_only_that_bucket() {
    let c = Cluster::new(2).unwrap();
    c.add_limiter("tenant", Rate::per_second(100)).unwrap();
    let t0 = Instant::now();
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let h = c
        .task(move |ctx| {
            let calls = calls2.clone();
            async move {
                if calls.fetch_add(1, SeqCst) == 0 {
                    ctx.slow_down("tenant", SEC);
                    return Err("busy".to_string());
                }
                Ok(t0.elapsed())
            }
        })
        .limit_by("tenant", "a")
        .retry_mode(RetryMode::Immediate)
        .submit()
        .unwrap();
    yield_until("the first attempt ran", || calls.load(SeqCst) == 1).await;
    let starts = log();
    let b = started(&c, t0, &starts, 1, &[("tenant", Some("b"))]);
    let a = started(&c, t0, &starts, 2, &[("tenant", Some("a"))]);
    assert_eq!(h.await, Ok(SEC));
    all(vec![a, b]).await;
    assert_eq!(snapshot(&starts), [(1, ms(0)), (2, ms(1010))]);
}

#[tokio::test(start_paused = true)]
async fn a_requeued_retry_is_charged_again() {
    let c = Cluster::new(1).unwrap();
    c.add_limiter("api", Rate::per_second(1).burst(1)).unwrap();
    let t0 = Instant::now();
    let seen = log();
    let seen2 = seen.clone();
    let h = c
        .task(move |ctx| {
            let seen = seen2.clone();
            async move {
                seen.lock().unwrap().push((ctx.attempt(), t0.elapsed()));
                if ctx.attempt() < 3 {
                    return Err("flaky".to_string());
                }
                Ok(())
            }
        })
        .limit("api")
        .retry(5)
        .submit()
        .unwrap();
    h.await.unwrap();
    assert_eq!(snapshot(&seen), [(1, ms(0)), (2, ms(1000)), (3, ms(2000))]);
}

#[tokio::test(start_paused = true)]
async fn cancel_of_a_task_set_aside_resolves_it_at_once() {
    let c = Cluster::new(1).unwrap();
    c.add_limiter("api", Rate::per_hour(1).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let first = started(&c, t0, &starts, 1, &[("api", None)]);
    let second = started(&c, t0, &starts, 2, &[("api", None)]);
    first.await.unwrap();
    yield_until("set aside", || c.stats().waiting_on_limiter == 1).await;
    let id = second.id();
    assert_eq!(c.cancel_task(id.clone()), CancelOutcome::Cancelled);
    assert_eq!(c.cancel_task(id), CancelOutcome::NotFound);
    assert_eq!(second.await, Err(TaskError::Cancelled));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    let s = c.stats();
    assert_eq!((s.waiting_on_limiter, s.held), (0, 0));
    assert_eq!(snapshot(&starts), [(1, ms(0))]);
}

#[tokio::test(start_paused = true)]
async fn stop_and_cancel_resolve_tasks_set_aside_at_once() {
    for cancel in [false, true] {
        let c = Cluster::new(1).unwrap();
        c.add_limiter("api", Rate::per_hour(1).burst(1)).unwrap();
        let (t0, starts) = (Instant::now(), log());
        let first = started(&c, t0, &starts, 1, &[("api", None)]);
        let rest: Vec<_> = (2..6)
            .map(|i| started(&c, t0, &starts, i, &[("api", None)]))
            .collect();
        first.await.unwrap();
        yield_until("set aside", || c.stats().waiting_on_limiter == 4).await;
        if cancel {
            c.cancel();
        } else {
            c.stop(SEC).await.unwrap();
        }
        for h in rest {
            assert_eq!(h.await, Err(TaskError::Shutdown));
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(c.stats(), Default::default());
    }
}

#[tokio::test(start_paused = true)]
async fn drain_runs_tasks_set_aside_as_the_limiter_admits_them() {
    let c = Cluster::new(2).unwrap();
    c.add_limiter("api", Rate::per_second(2).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let hs: Vec<_> = (0..3)
        .map(|i| started(&c, t0, &starts, i, &[("api", None)]))
        .collect();
    yield_until("set aside", || c.stats().waiting_on_limiter == 2).await;
    c.drain(10 * SEC).await.unwrap();
    all(hs).await;
    assert_eq!(snapshot(&starts), [(0, ms(0)), (1, ms(500)), (2, ms(1000))]);
}

#[tokio::test(start_paused = true)]
async fn naming_an_unknown_limiter_is_a_submit_error() {
    let c = Cluster::new(1).unwrap();
    let err = c
        .task(|_| async { Ok::<_, String>(()) })
        .limit("nope")
        .submit()
        .unwrap_err();
    assert_eq!(err, SubmitError::UnknownLimiter("nope".into()));
    assert!(err.to_string().contains("nope"));
    c.add_limiter("yes", Rate::per_second(1)).unwrap();
    let err = c
        .task(|_| async { Ok::<_, String>(()) })
        .limit("yes")
        .limit_by("nope2", "k")
        .submit()
        .unwrap_err();
    assert_eq!(err, SubmitError::UnknownLimiter("nope2".into()));
    // A dependent task is checked at submit as well.
    let parent = c.task(|_| async { Ok::<_, String>(()) }).submit().unwrap();
    let err = c
        .task(|_| async { Ok::<_, String>(()) })
        .after(After::id::<(), String>(parent.id()))
        .limit("nope3")
        .submit()
        .unwrap_err();
    assert_eq!(err, SubmitError::UnknownLimiter("nope3".into()));
    parent.await.unwrap();
    assert_eq!(c.stats(), Default::default());
}

#[tokio::test(start_paused = true)]
async fn a_limited_dependent_is_paced_once_its_parent_finishes() {
    let c = Cluster::new(2).unwrap();
    c.add_limiter("api", Rate::per_second(1).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let parent = started(&c, t0, &starts, 0, &[("api", None)]);
    let child = c
        .task({
            let starts = starts.clone();
            move |_| {
                let starts = starts.clone();
                async move {
                    starts.lock().unwrap().push((1, t0.elapsed()));
                    Ok::<_, String>(())
                }
            }
        })
        .after(&parent)
        .limit("api")
        .submit()
        .unwrap();
    parent.await.unwrap();
    child.await.unwrap();
    assert_eq!(snapshot(&starts), [(0, ms(0)), (1, ms(1000))]);
}

#[tokio::test(start_paused = true)]
async fn bad_limiters_are_refused() {
    let c = Cluster::new(1).unwrap();
    assert_eq!(
        c.add_limiter("a", Rate::per_second(0)),
        Err(LimiterError::ZeroRate)
    );
    assert_eq!(
        c.add_limiter("a", Rate::per_second(3).burst(0)),
        Err(LimiterError::ZeroBurst)
    );
    assert_eq!(
        c.add_limiter("a", Rate::per(1, Duration::ZERO)),
        Err(LimiterError::ZeroPeriod)
    );
    assert_eq!(
        c.add_limiter("", Rate::per_second(1)),
        Err(LimiterError::EmptyName)
    );
    assert!(c.limiter("a").is_none());
    c.add_limiter("a", Rate::per_second(3)).unwrap();
    assert_eq!(
        c.add_limiter("a", Rate::per_second(5)),
        Err(LimiterError::Exists("a".into()))
    );
    // The first one stands.
    assert_eq!(c.limiter("a").unwrap().rate, Rate::per_second(3));
}

#[tokio::test(start_paused = true)]
async fn keyed_state_stays_bounded_over_many_key_values() {
    let c = Cluster::new(4).unwrap();
    c.add_limiter("user", Rate::per_second(10).burst(1))
        .unwrap();
    let mut most = 0;
    // 20,000 distinct key values, 20 per millisecond; each bucket is busy
    // for 100 ms, so about 2,000 are busy at any time.
    for round in 0..1000u32 {
        let hs: Vec<_> = (0..20)
            .map(|i| {
                c.task(|_| async { Ok::<_, String>(()) })
                    .limit_by("user", format!("{round}/{i}"))
                    .submit()
                    .unwrap()
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
        most = most.max(c.limiter("user").unwrap().buckets);
        tokio::time::sleep(MS).await;
    }
    assert!(most <= 2 * 2000 + 64, "{most} keyed buckets held");
    assert!(most >= 2000, "{most}: the busy buckets are kept");
}

#[tokio::test(start_paused = true)]
async fn a_limiter_reports_its_state() {
    let c = Cluster::new(1).unwrap();
    c.add_limiter("api", Rate::per_second(4).burst(2)).unwrap();
    let s = c.limiter("api").unwrap();
    assert_eq!((s.global_wait, s.buckets), (Duration::ZERO, 0));
    let (t0, starts) = (Instant::now(), log());
    all((0..3)
        .map(|i| started(&c, t0, &starts, i, &[("api", None)]))
        .collect())
    .await;
    // Three taken: 0 and 0 (burst), then 250 ms; the next at 500 ms.
    assert_eq!(c.limiter("api").unwrap().global_wait, ms(250));
}

#[tokio::test(start_paused = true)]
async fn a_thousand_waiters_start_one_per_interval_in_order() {
    // 1,000 tasks at 1,000/s on 2 workers: they all start, one per ms,
    // and the run takes one second of virtual time.
    let c = Cluster::new(2).unwrap();
    c.add_limiter("api", Rate::per_second(1000).burst(1))
        .unwrap();
    let (t0, starts) = (Instant::now(), log());
    let hs: Vec<_> = (0..1000)
        .map(|i| started(&c, t0, &starts, i, &[("api", None)]))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(c.stats().waiting_on_limiter, 999);
    all(hs).await;
    let got = snapshot(&starts);
    assert_eq!(got.len(), 1000);
    for (i, (tag, at)) in got.into_iter().enumerate() {
        assert_eq!((tag, at), (i as u32, ms(i as u64)));
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_woken_task_hands_its_turn_to_the_next_waiter() {
    let c = Cluster::new(1).unwrap();
    c.add_limiter("api", Rate::per_second(1).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let first = started(&c, t0, &starts, 0, &[("api", None)]);
    let w1 = started(&c, t0, &starts, 1, &[("api", None)]);
    let w2 = started(&c, t0, &starts, 2, &[("api", None)]);
    // Holds the one worker from 0 to 1.5 s.
    let busy = c
        .task(|_| async {
            tokio::time::sleep(ms(1500)).await;
            Ok::<_, String>(())
        })
        .submit()
        .unwrap();
    first.await.unwrap();
    // At 1 s the limiter admits one: task 1 is sent back to the queue
    // (the worker is busy), task 2 keeps waiting.
    tokio::time::sleep(ms(1200)).await;
    assert_eq!(c.stats().waiting_on_limiter, 1);
    assert_eq!(c.cancel_task(w1.id()), CancelOutcome::Cancelled);
    assert_eq!(w1.await, Err(TaskError::Cancelled));
    // Its turn was not used: task 2 takes it when the worker is free.
    busy.await.unwrap();
    w2.await.unwrap();
    assert_eq!(snapshot(&starts), [(0, ms(0)), (2, ms(1500))]);
}

#[tokio::test(start_paused = true)]
async fn a_shrink_during_a_drain_does_not_strand_tasks_set_aside() {
    let c = Cluster::new(2).unwrap();
    c.add_limiter("api", Rate::per_second(1).burst(1)).unwrap();
    let (t0, starts) = (Instant::now(), log());
    let hs: Vec<_> = (0..3)
        .map(|i| started(&c, t0, &starts, i, &[("api", None)]))
        .collect();
    yield_until("set aside", || c.stats().waiting_on_limiter == 2).await;
    let drain = {
        let c = c.clone();
        tokio::spawn(async move { c.drain(10 * SEC).await })
    };
    tokio::task::yield_now().await;
    // The surplus worker leaves; the drain is not over while tasks wait.
    c.resize(1).unwrap();
    drain.await.unwrap().unwrap();
    all(hs).await;
    assert_eq!(
        snapshot(&starts),
        [(0, ms(0)), (1, ms(1000)), (2, ms(2000))]
    );
}

/// Races on the real multi-thread runtime: producers submit limited tasks
/// (global, keyed, both, some slowing down once) while a canceller cancels
/// random ones, whether queued, set aside, woken or running. Every handle
/// resolves (under a timeout: a waiter stranded by lost bookkeeping would
/// hang), exactly as `cancel_task` said, and the cluster ends holding
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_admissions_strand_nothing() {
    const N: usize = 3_000;
    let c = Cluster::new(3).unwrap();
    c.add_limiter("g", Rate::per_second(20_000).burst(3))
        .unwrap();
    c.add_limiter("k", Rate::per_second(5_000).burst(1))
        .unwrap();
    let slowed = Arc::new(AtomicU32::new(0));
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        let slowed = slowed.clone();
        let mut b = c.task(move |ctx| {
            let slowed = slowed.clone();
            async move {
                // Tasks naming `g` (i % 3 != 1) slow it down, 20 times in all.
                if i % 97 == 0 && i % 3 != 1 && slowed.fetch_add(1, SeqCst) < 20 {
                    assert!(ctx.slow_down("g", Duration::from_millis(2)));
                    return Err("slow down".to_string());
                }
                Ok(i)
            }
        });
        b = match i % 3 {
            0 => b.limit("g"),
            1 => b.limit_by("k", (i % 7).to_string()),
            _ => b.limit("g").limit_by("k", (i % 5).to_string()),
        };
        handles.push(b.submit().unwrap());
        if i % 5 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut cancelled = vec![false; N];
    for i in (0..N).step_by(11) {
        // `Requested` (it was running) guarantees a `Cancelled` outcome too.
        cancelled[i] = matches!(
            c.cancel_task(handles[i].id()),
            CancelOutcome::Cancelled | CancelOutcome::Requested
        );
        if i % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for (i, h) in handles.into_iter().enumerate() {
        let got = tokio::time::timeout(30 * SEC, h)
            .await
            .unwrap_or_else(|_| panic!("task {i} never resolved"));
        if cancelled[i] {
            assert_eq!(got, Err(TaskError::Cancelled), "task {i}");
        } else {
            assert_eq!(got, Ok(i), "task {i}");
        }
    }
    assert!(cancelled.iter().any(|&c| c), "some cancels landed");
    let s = c.stats();
    assert_eq!((s.held, s.waiting_on_limiter, s.queued), (0, 0, 0));
    c.stop(SEC).await.unwrap();
}
