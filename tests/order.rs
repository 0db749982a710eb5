//! Order of execution: priority, start time, submission order, tasks queued
//! before `run`, start times in the past and future, and the priority of a
//! requeued retry.
//!
//! Every test runs on tokio's paused clock, so times are exact.

mod common;

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, FixedBackoff, RetryMode, TaskHandle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::time::Instant;

use common::{log, snapshot, Log, MS};

/// Awaits every handle and checks each returned its own tag.
async fn join_all(handles: Vec<(usize, TaskHandle<usize, String>)>) {
    for (tag, h) in handles {
        assert_eq!(h.await, Ok(tag), "task {tag}");
    }
}

#[tokio::test(start_paused = true)]
async fn higher_priority_runs_first() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let order = log();
    let prios = [0, 5, -3, i32::MAX, 2, i32::MIN, 5, 1];
    let mut handles = Vec::new();
    for (i, p) in prios.into_iter().enumerate() {
        let order = order.clone();
        let h = cluster
            .task(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(i);
                    Ok::<_, String>(i)
                }
            })
            .priority(p)
            .submit()
            .unwrap();
        handles.push((i, h));
    }
    cluster.run().unwrap();
    join_all(handles).await;
    // i32::MAX, then the two 5s in submission order, 2, 1, 0, -3, i32::MIN.
    assert_eq!(snapshot(&order), vec![3, 1, 6, 4, 7, 0, 2, 5]);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn equal_priority_is_fifo() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let order = log();
    let mut handles = Vec::new();
    for i in 0..200usize {
        let order = order.clone();
        let h = cluster
            .task(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(i);
                    Ok::<_, String>(i)
                }
            })
            .priority(7)
            .submit()
            .unwrap();
        handles.push((i, h));
    }
    cluster.run().unwrap();
    join_all(handles).await;
    assert_eq!(snapshot(&order), (0..200).collect::<Vec<_>>());
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn equal_priority_earlier_start_first_then_fifo() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let t0 = Instant::now();
    let order = log();
    // (start offset into the past, in ms; None = default start, i.e. now)
    let starts: [Option<u64>; 8] = [
        None,
        Some(5),
        Some(1),
        Some(5),
        None,
        Some(0),
        Some(10),
        Some(1),
    ];
    let mut handles = Vec::new();
    for (i, s) in starts.into_iter().enumerate() {
        let order = order.clone();
        let b = cluster
            .task(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(i);
                    Ok::<_, String>(i)
                }
            })
            .priority(1);
        let b = match s {
            Some(ms) => b.start_at(t0 - MS * ms as u32),
            None => b,
        };
        handles.push((i, b.submit().unwrap()));
    }
    assert_eq!(
        Instant::now(),
        t0,
        "the paused clock must not move during submits"
    );
    cluster.run().unwrap();
    join_all(handles).await;
    // -10: 6; -5: 1, 3; -1: 2, 7; now: 0, 4, 5 (start_at(now) ties with the default start).
    assert_eq!(snapshot(&order), vec![6, 1, 3, 2, 7, 0, 4, 5]);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn order_holds_for_tasks_queued_behind_a_busy_worker() {
    let cluster = Cluster::new(1).unwrap();
    let gate = Arc::new(Notify::new());
    let order = log();
    let g = gate.clone();
    let blocker = cluster
        .task(move |_| {
            let g = g.clone();
            async move {
                g.notified().await;
                Ok::<_, String>(usize::MAX)
            }
        })
        .priority(i32::MAX)
        .submit()
        .unwrap();
    // Let the worker claim the blocker.
    tokio::task::yield_now().await;
    tokio::time::sleep(MS).await;
    assert_eq!(cluster.stats().running, 1);

    let now = Instant::now();
    // (priority, start offset into the past in ms)
    let spec: [(i32, u64); 7] = [
        (0, 0),
        (0, 2000),
        (3, 0),
        (0, 1000),
        (3, 5),
        (-1, 9999),
        (3, 5),
    ];
    let mut handles = Vec::new();
    for (i, (p, back)) in spec.into_iter().enumerate() {
        let order = order.clone();
        let h = cluster
            .task(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(i);
                    Ok::<_, String>(i)
                }
            })
            .priority(p)
            .start_at(now - MS * back as u32)
            .submit()
            .unwrap();
        handles.push((i, h));
    }
    gate.notify_one();
    assert_eq!(blocker.await, Ok(usize::MAX));
    join_all(handles).await;
    assert_eq!(snapshot(&order), vec![4, 6, 2, 1, 3, 0, 5]);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

/// 10 000 tasks with random priorities and start times (all due), queued
/// before `run`, on one worker: the execution order is exactly
/// (priority desc, start asc, submission asc).
#[tokio::test(start_paused = true)]
async fn ten_thousand_random_tasks_run_in_exact_order() {
    const N: usize = 10_000;
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let mut rng = StdRng::seed_from_u64(0x00c0_4a11);
    let t0 = Instant::now();
    let order = log();
    let mut keys = Vec::with_capacity(N);
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        let priority: i32 = rng.random_range(-8..=8);
        // A third keep the default start (now); the rest start 0..50 ms ago.
        let back: Option<u32> = if rng.random_range(0..3) == 0 {
            None
        } else {
            Some(rng.random_range(0..50))
        };
        let start = back.map_or(t0, |ms| t0 - MS * ms);
        keys.push((Reverse(priority), start, i));
        let order = order.clone();
        let b = cluster
            .task(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(i);
                    Ok::<_, String>(i)
                }
            })
            .priority(priority);
        let b = match back {
            Some(_) => b.start_at(start),
            None => b,
        };
        handles.push((i, b.submit().unwrap()));
    }
    assert_eq!(
        Instant::now(),
        t0,
        "the paused clock must not move during submits"
    );
    assert_eq!(cluster.stats().queued, N);
    cluster.run().unwrap();
    join_all(handles).await;

    keys.sort();
    let expected: Vec<usize> = keys.into_iter().map(|(_, _, i)| i).collect();
    let got = snapshot(&order);
    assert_eq!(got.len(), N);
    if let Some(pos) = got.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!(
            "order differs first at position {pos}: got task {} expected task {}",
            got[pos], expected[pos]
        );
    }
    cluster.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn tasks_queued_before_run_wait_for_run() {
    let cluster = Cluster::builder().workers(2).paused().build().unwrap();
    let t0 = Instant::now();
    let ran = log();
    let mut handles = Vec::new();
    // (tag, delay): due now, due at +5 s, due at +20 s.
    for (tag, delay) in [(0usize, 0u64), (1, 5), (2, 20)] {
        let ran = ran.clone();
        let h = cluster
            .task(move |_| {
                let ran = ran.clone();
                async move {
                    ran.lock().unwrap().push((tag, Instant::now()));
                    Ok::<_, String>(tag)
                }
            })
            .delay(Duration::from_secs(delay))
            .submit()
            .unwrap();
        handles.push((tag, h));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(snapshot(&ran).is_empty(), "nothing may run before run()");
    assert_eq!(cluster.stats().queued, 3);
    assert_eq!(cluster.stats().running, 0);

    let t_run = Instant::now();
    assert_eq!(t_run, t0 + Duration::from_secs(10));
    cluster.run().unwrap();
    join_all(handles).await;
    let mut got = snapshot(&ran);
    got.sort_by_key(|&(tag, _)| tag);
    assert_eq!(
        got,
        vec![(0, t_run), (1, t_run), (2, t0 + Duration::from_secs(20))]
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn start_time_in_the_past_runs_at_once() {
    let cluster = Cluster::new(1).unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    let t0 = Instant::now();
    let ran = log();
    let r = ran.clone();
    let h = cluster
        .task(move |_| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push((0, Instant::now()));
                Ok::<_, String>(0usize)
            }
        })
        .start_at(t0 - Duration::from_secs(60))
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(0));
    assert_eq!(snapshot(&ran), vec![(0, t0)], "a past start runs at once");

    // start_at(now) is also "at once".
    let r = ran.clone();
    let h = cluster
        .task(move |_| {
            let r = r.clone();
            async move {
                r.lock().unwrap().push((1, Instant::now()));
                Ok::<_, String>(1usize)
            }
        })
        .start_at(Instant::now())
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    assert_eq!(snapshot(&ran)[1], (1, t0));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn earlier_past_start_goes_first_among_equal_priority() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let t0 = Instant::now();
    let order = log();
    let mut handles = Vec::new();
    // Submitted: now, 1 s ago, 5 s ago; all priority 2.
    for (tag, back) in [(0usize, None), (1, Some(1u64)), (2, Some(5))] {
        let order = order.clone();
        let b = cluster
            .task(move |_| {
                let order = order.clone();
                async move {
                    order.lock().unwrap().push(tag);
                    Ok::<_, String>(tag)
                }
            })
            .priority(2);
        let b = match back {
            Some(s) => b.start_at(t0 - Duration::from_secs(s)),
            None => b,
        };
        handles.push((tag, b.submit().unwrap()));
    }
    cluster.run().unwrap();
    join_all(handles).await;
    assert_eq!(snapshot(&order), vec![2, 1, 0]);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn start_time_in_the_future_is_not_started_before_it() {
    let cluster = Cluster::new(2).unwrap();
    let t0 = Instant::now();
    let ran = log();
    let mut handles = Vec::new();
    let spec: [(usize, Option<Instant>, Option<Duration>); 3] = [
        (0, Some(t0 + Duration::from_secs(5)), None),
        (1, None, Some(Duration::from_millis(2500))),
        (2, Some(t0 + Duration::from_millis(1)), None),
    ];
    for (tag, at, delay) in spec {
        let ran = ran.clone();
        let mut b = cluster.task(move |_| {
            let ran = ran.clone();
            async move {
                ran.lock().unwrap().push((tag, Instant::now()));
                Ok::<_, String>(tag)
            }
        });
        if let Some(at) = at {
            b = b.start_at(at);
        }
        if let Some(d) = delay {
            b = b.delay(d);
        }
        handles.push((tag, b.submit().unwrap()));
    }
    // Nothing has run at submission time.
    tokio::task::yield_now().await;
    assert!(snapshot(&ran).is_empty());
    join_all(handles).await;
    let got = snapshot(&ran);
    let expected = [
        (2, t0 + MS),
        (1, t0 + Duration::from_millis(2500)),
        (0, t0 + Duration::from_secs(5)),
    ];
    assert_eq!(got.len(), 3);
    for ((tag, at), (etag, eat)) in got.into_iter().zip(expected) {
        assert_eq!(tag, etag);
        assert!(at >= eat, "task {tag} started {:?} early", eat - at);
        assert!(at - eat <= MS, "task {tag} started {:?} late", at - eat);
    }
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn future_high_priority_task_does_not_block_due_low_priority_task() {
    let cluster = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let ran = log();
    let mut handles = Vec::new();
    for (tag, prio, delay) in [
        (0usize, 100, Duration::from_secs(3)),
        (1, -100, Duration::ZERO),
    ] {
        let ran = ran.clone();
        let h = cluster
            .task(move |_| {
                let ran = ran.clone();
                async move {
                    ran.lock().unwrap().push((tag, Instant::now()));
                    Ok::<_, String>(tag)
                }
            })
            .priority(prio)
            .delay(delay)
            .submit()
            .unwrap();
        handles.push((tag, h));
    }
    join_all(handles).await;
    assert_eq!(
        snapshot(&ran),
        vec![(1, t0), (0, t0 + Duration::from_secs(3))]
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

/// A requeued retry keeps its priority: when its backoff has passed it goes
/// ahead of lower-priority tasks that were due long before.
#[tokio::test(start_paused = true)]
async fn retried_task_reenters_with_its_original_priority() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let t0 = Instant::now();
    let events: Log<(String, Instant)> = log();

    let ev = events.clone();
    let retried = cluster
        .task(move |ctx| {
            let ev = ev.clone();
            async move {
                ev.lock()
                    .unwrap()
                    .push((format!("R{}", ctx.attempt()), Instant::now()));
                if ctx.attempt() == 1 {
                    Err("first attempt fails".to_string())
                } else {
                    Ok(ctx.attempt() as usize)
                }
            }
        })
        .priority(10)
        .retry(1)
        .retry_mode(RetryMode::Requeue)
        .backoff(FixedBackoff::new(Duration::from_millis(100)))
        .submit()
        .unwrap();
    let mut lows = Vec::new();
    for i in 0..4usize {
        let ev = events.clone();
        let h = cluster
            .task(move |_| {
                let ev = ev.clone();
                async move {
                    ev.lock().unwrap().push((format!("L{i}"), Instant::now()));
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    Ok::<_, String>(i)
                }
            })
            .priority(5)
            .submit()
            .unwrap();
        lows.push((i, h));
    }
    cluster.run().unwrap();
    assert_eq!(retried.await, Ok(2));
    join_all(lows).await;
    let ms = |n: u64| t0 + Duration::from_millis(n);
    assert_eq!(
        snapshot(&events),
        vec![
            ("R1".to_string(), ms(0)),
            ("L0".to_string(), ms(0)),
            ("L1".to_string(), ms(60)),
            // The retry was due at 100 ms; L2 was due since 0 ms but has a lower priority.
            ("R2".to_string(), ms(120)),
            ("L2".to_string(), ms(120)),
            ("L3".to_string(), ms(180)),
        ]
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}
