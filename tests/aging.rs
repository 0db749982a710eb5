//! Priority aging: a waiting task's priority rises with its waiting time,
//! so that low priorities cannot starve, in an exact, deterministic order.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::Cluster;
use proptest::prelude::*;
use tokio::time::{sleep, Instant};

use common::{log, snapshot, MS, SEC};

/// Submits a stream of priority-5 tasks of 50 ms each, one every 50 ms for
/// two seconds, behind one priority-0 task; returns when the low one ran
/// (ms after the start) and how many high ones ran before it.
async fn low_among_a_stream(c: Cluster) -> (u64, usize) {
    let t0 = Instant::now();
    let l = log();
    let ll = l.clone();
    let low = c
        .task(move |_| {
            let ll = ll.clone();
            async move {
                ll.lock().unwrap().push("low");
                Ok::<_, String>(t0.elapsed())
            }
        })
        .submit()
        .unwrap();
    let mut highs = Vec::new();
    for _ in 0..40 {
        let ll = l.clone();
        let h = c
            .task(move |_| {
                let ll = ll.clone();
                async move {
                    ll.lock().unwrap().push("high");
                    sleep(50 * MS).await;
                    Ok::<_, String>(())
                }
            })
            .priority(5)
            .submit()
            .unwrap();
        highs.push(h);
        sleep(50 * MS).await;
    }
    let ran_at = low.await.unwrap();
    for h in highs {
        h.await.unwrap();
    }
    let before = snapshot(&l).iter().take_while(|s| **s == "high").count();
    (ran_at.as_millis() as u64, before)
}

#[tokio::test(start_paused = true)]
async fn a_low_priority_task_runs_within_a_stream_of_higher_ones() {
    // One level per 100 ms: after 500 ms of waiting, priority 0 outranks a
    // priority 5 that just fell due.
    let aged = Cluster::builder()
        .workers(1)
        .aging(100 * MS)
        .build()
        .unwrap();
    let (at, before) = low_among_a_stream(aged).await;
    assert!((500..=600).contains(&at), "ran at {at} ms");
    assert!(
        before < 40,
        "ran while the stream went on ({before} before it)"
    );
    // Without aging the stream starves it to the end.
    let plain = Cluster::builder().workers(1).build().unwrap();
    let (at, before) = low_among_a_stream(plain).await;
    assert_eq!(before, 40, "starved until the stream ended");
    assert!(at >= 1950, "ran at {at} ms");
}

#[tokio::test(start_paused = true)]
async fn equal_effective_priorities_run_in_submission_order() {
    let c = Cluster::builder()
        .workers(1)
        .paused()
        .aging(SEC)
        .build()
        .unwrap();
    let l = log();
    let submit = |name: &'static str, p: i32| {
        let l = l.clone();
        c.task(move |_| {
            let l = l.clone();
            async move {
                l.lock().unwrap().push(name);
                Ok::<_, String>(())
            }
        })
        .priority(p)
        .submit()
        .unwrap()
    };
    let a = submit("a: p1 due at 0", 1);
    sleep(SEC).await;
    let b = submit("b: p2 due at 1 s (ties with a)", 2);
    let c2 = submit("c: p3 due at 1 s", 3);
    sleep(SEC).await;
    let d = submit("d: p1 due at 2 s", 1);
    c.run().unwrap();
    for h in [a, b, c2, d] {
        h.await.unwrap();
    }
    assert_eq!(
        snapshot(&l),
        [
            "c: p3 due at 1 s",
            "a: p1 due at 0",
            "b: p2 due at 1 s (ties with a)",
            "d: p1 due at 2 s"
        ]
    );
}

/// One task of the reference test: priority, start delay and run time (ms).
#[derive(Debug, Clone, Copy)]
struct Spec {
    priority: i32,
    delay: u64,
    run: u64,
}

fn spec() -> impl Strategy<Value = Spec> {
    (-3i32..4, 0u64..30, 1u64..6).prop_map(|(priority, delay, run)| Spec {
        priority,
        delay: delay * 10,
        run: run * 10,
    })
}

/// The order and start times (ms) a reference gives: at each claim time
/// `t`, among due tasks, the highest effective priority
/// `p + (t - start) / step` (compared exactly, scaled by `step`), then the
/// earliest submitted; a free worker with nothing due waits for the next start.
fn reference(specs: &[Spec], step: u64) -> Vec<(usize, u64)> {
    let mut left: Vec<usize> = (0..specs.len()).collect();
    let mut t = 0u64;
    let mut out = Vec::new();
    while !left.is_empty() {
        let due: Vec<usize> = left
            .iter()
            .copied()
            .filter(|&i| specs[i].delay <= t)
            .collect();
        if due.is_empty() {
            t = left.iter().map(|&i| specs[i].delay).min().unwrap_or(t);
            continue;
        }
        let rank = |i: usize| {
            i128::from(specs[i].priority) * i128::from(step) + i128::from(t - specs[i].delay)
        };
        let best = due
            .iter()
            .copied()
            .max_by(|&a, &b| rank(a).cmp(&rank(b)).then(b.cmp(&a)))
            .unwrap_or_default();
        out.push((best, t));
        left.retain(|&i| i != best);
        t += specs[best].run;
    }
    out
}

/// Runs `specs` on a one-worker cluster with aging `step` ms; returns the
/// order and start times (ms) of the bodies.
fn engine(specs: &[Spec], step: u64) -> Vec<(usize, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let t0 = Instant::now();
        let c = Cluster::builder()
            .workers(1)
            .paused()
            .aging(Duration::from_millis(step))
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        for (i, s) in specs.iter().copied().enumerate() {
            let seen = seen.clone();
            let h = c
                .task(move |_| {
                    let seen = seen.clone();
                    async move {
                        seen.lock()
                            .unwrap()
                            .push((i, t0.elapsed().as_millis() as u64));
                        sleep(Duration::from_millis(s.run)).await;
                        Ok::<_, String>(())
                    }
                })
                .priority(s.priority)
                .delay(Duration::from_millis(s.delay))
                .submit()
                .unwrap();
            hs.push(h);
        }
        c.run().unwrap();
        for h in hs {
            h.await.unwrap();
        }
        let out = seen.lock().unwrap().clone();
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0xA6E),
        ..ProptestConfig::default()
    })]

    /// The engine runs tasks in the order (and at the times) a reference
    /// that ranks effective priorities at each claim gives.
    #[test]
    fn order_matches_a_reference_ranking_at_claim_time(
        specs in prop::collection::vec(spec(), 1..25),
        step in prop::sample::select(vec![10u64, 30, 70, 1000]),
    ) {
        prop_assert_eq!(engine(&specs, step), reference(&specs, step));
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_by_the_priority_as_submitted_not_the_aged_one() {
    let c = Cluster::builder()
        .workers(1)
        .paused()
        .aging(MS)
        .capacity(2, corral::Overflow::DropLowest)
        .build()
        .unwrap();
    let l = log();
    let submit = |name: &'static str, p: i32| {
        let l = l.clone();
        c.task(move |_| {
            let l = l.clone();
            async move {
                l.lock().unwrap().push(name);
                Ok::<_, String>(())
            }
        })
        .priority(p)
        .submit()
        .unwrap()
    };
    let old = submit("old p0", 0);
    let mid = submit("mid p2", 2);
    // A minute of waiting ages `old` far above a new task, yet it ranks
    // lowest for dropping: it was submitted at priority 0.
    sleep(60 * SEC).await;
    let new = submit("new p1", 1);
    assert_eq!(old.await, Err(corral::TaskError::Dropped));
    c.run().unwrap();
    mid.await.unwrap();
    new.await.unwrap();
    // `mid` (higher priority, and older) runs first; `old` never runs.
    assert_eq!(snapshot(&l), ["mid p2", "new p1"]);
    assert_eq!(c.stats().dropped, 1);
}
