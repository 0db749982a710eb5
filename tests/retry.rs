//! Retries: attempt counts, backoff delays measured on the paused clock,
//! jitter, `retry_if`, retry modes, custom and panicking strategies.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral::{
    Backoff, Cluster, ExponentialBackoff, FixedBackoff, LinearBackoff, RetryDecision, RetryMode,
    SubmitError, TaskError,
};
use tokio::time::Instant;

use common::{log, MS, SEC};

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

fn ms(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|&n| Duration::from_millis(n)).collect()
}

/// Runs a task that always fails with `retries` retries, `backoff` and
/// `mode` on a fresh cluster; returns the start instant of every attempt and
/// the outcome.
async fn attempt_times(
    backoff: impl Backoff,
    retries: u32,
    mode: RetryMode,
) -> (Vec<Instant>, Result<u32, TaskError<String>>) {
    let cluster = Cluster::new(1).unwrap();
    let times = log();
    let t = times.clone();
    let h = cluster
        .task(move |ctx| {
            let t = t.clone();
            async move {
                t.lock().unwrap().push(Instant::now());
                Err::<u32, _>(format!("fail {}", ctx.attempt()))
            }
        })
        .retry(retries)
        .backoff(backoff)
        .retry_mode(mode)
        .submit()
        .unwrap();
    let out = h.await;
    cluster.stop(SEC).await.unwrap();
    let times = times.lock().unwrap().clone();
    (times, out)
}

const MODES: [RetryMode; 2] = [RetryMode::Requeue, RetryMode::Immediate];

#[tokio::test(start_paused = true)]
async fn fixed_backoff_delays() {
    for mode in MODES {
        let (times, out) = attempt_times(FixedBackoff::new(100 * MS), 3, mode).await;
        assert_eq!(gaps(&times), ms(&[100, 100, 100]), "{mode:?}");
        assert_eq!(out, Err(TaskError::Failed("fail 4".into())));
    }
}

#[tokio::test(start_paused = true)]
async fn zero_backoff_retries_at_once() {
    for mode in MODES {
        let (times, out) = attempt_times(FixedBackoff::new(Duration::ZERO), 2, mode).await;
        assert_eq!(gaps(&times), ms(&[0, 0]), "{mode:?}");
        assert_eq!(out, Err(TaskError::Failed("fail 3".into())));
    }
}

#[tokio::test(start_paused = true)]
async fn linear_backoff_delays() {
    for mode in MODES {
        let b = LinearBackoff::new(100 * MS, 50 * MS);
        let (times, out) = attempt_times(b, 4, mode).await;
        // base + step * attempt, attempt = 0, 1, 2, 3
        assert_eq!(gaps(&times), ms(&[100, 150, 200, 250]), "{mode:?}");
        assert_eq!(out, Err(TaskError::Failed("fail 5".into())));
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_delays_with_cap() {
    for mode in MODES {
        let b = ExponentialBackoff::new(10 * MS, 2.0).with_max(100 * MS);
        let (times, _) = attempt_times(b, 6, mode).await;
        // base * 2^attempt, capped at 100 ms
        assert_eq!(gaps(&times), ms(&[10, 20, 40, 80, 100, 100]), "{mode:?}");

        let b = ExponentialBackoff::new(10 * MS, 3.0);
        let (times, _) = attempt_times(b, 4, mode).await;
        assert_eq!(gaps(&times), ms(&[10, 30, 90, 270]), "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_multiplier_below_one_becomes_two() {
    let b = ExponentialBackoff::new(10 * MS, 0.5);
    assert_eq!(b.multiplier(), 2.0);
    let (times, _) = attempt_times(b, 3, RetryMode::Requeue).await;
    assert_eq!(gaps(&times), ms(&[10, 20, 40]));
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_every_delay_within_ten_percent() {
    const TASKS: usize = 50;
    const RETRIES: u32 = 3;
    let nominal = SEC;
    for mode in MODES {
        let cluster = Cluster::new(TASKS).unwrap();
        let mut all = Vec::new();
        for _ in 0..TASKS {
            let times = log();
            let t = times.clone();
            let h = cluster
                .task(move |_| {
                    let t = t.clone();
                    async move {
                        t.lock().unwrap().push(Instant::now());
                        Err::<(), _>("again".to_string())
                    }
                })
                .retry(RETRIES)
                .backoff(FixedBackoff::new(nominal))
                .jitter(0.1)
                .retry_mode(mode)
                .submit()
                .unwrap();
            all.push((times, h));
        }
        let mut every_gap = Vec::new();
        for (times, h) in all {
            assert_eq!(h.await, Err(TaskError::Failed("again".into())));
            let times = times.lock().unwrap().clone();
            assert_eq!(times.len(), RETRIES as usize + 1);
            every_gap.extend(gaps(&times));
        }
        let (lo, hi) = (nominal.mul_f64(0.9), nominal.mul_f64(1.1));
        for g in &every_gap {
            assert!(
                *g >= lo && *g <= hi,
                "{mode:?}: gap {g:?} outside [{lo:?}, {hi:?}]"
            );
        }
        // Jitter is applied: the delays are not all the nominal one, and
        // they fall on both sides of it.
        assert!(
            every_gap.iter().any(|g| *g < nominal),
            "{mode:?}: none below"
        );
        assert!(
            every_gap.iter().any(|g| *g > nominal),
            "{mode:?}: none above"
        );
        cluster.stop(SEC).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_jitter_is_rejected_at_submit() {
    let cluster = Cluster::new(1).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    for ratio in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let c = calls.clone();
        let err = cluster
            .task(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("x".to_string()) }
            })
            .retry(1)
            .jitter(ratio)
            .submit()
            .unwrap_err();
        assert!(
            matches!(
                err,
                SubmitError::InvalidOption {
                    option: "jitter",
                    ..
                }
            ),
            "{ratio}: {err:?}"
        );
    }
    // The bounds themselves are valid.
    for ratio in [0.0, 1.0] {
        let h = cluster
            .task(|_| async { Ok::<_, String>(1) })
            .jitter(ratio)
            .submit()
            .unwrap();
        assert_eq!(h.await, Ok(1));
    }
    tokio::time::sleep(SEC).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a rejected body never runs"
    );
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retry_if_sees_the_error_and_can_stop_retries() {
    let cluster = Cluster::new(1).unwrap();
    let seen = log();
    let s = seen.clone();
    let h = cluster
        .task(|ctx| async move { Err::<(), u32>(ctx.attempt()) })
        .retry(10)
        .retry_if(move |e: &TaskError<u32>| {
            s.lock().unwrap().push(e.clone());
            matches!(e, TaskError::Failed(n) if *n < 3)
        })
        .submit()
        .unwrap();
    assert_eq!(h.await, Err(TaskError::Failed(3)));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            TaskError::Failed(1),
            TaskError::Failed(2),
            TaskError::Failed(3)
        ]
    );

    // The predicate also sees panics.
    let seen = log();
    let s = seen.clone();
    let h = cluster
        .task(|_| async { panic!("p") })
        .retry(5)
        .retry_if(move |e: &TaskError<String>| {
            s.lock().unwrap().push(e.clone());
            false
        })
        .submit()
        .unwrap();
    let r: Result<(), _> = h.await;
    let panicked = TaskError::Panicked {
        message: "p".into(),
    };
    assert_eq!(r, Err(panicked.clone()));
    assert_eq!(*seen.lock().unwrap(), vec![panicked]);
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_give_the_last_error() {
    for mode in MODES {
        let (times, out) = attempt_times(FixedBackoff::new(MS), 2, mode).await;
        assert_eq!(times.len(), 3);
        assert_eq!(out, Err(TaskError::Failed("fail 3".into())), "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_n_means_n_plus_one_attempts() {
    let cluster = Cluster::new(1).unwrap();
    for n in 0..6u32 {
        let attempts = log();
        let a = attempts.clone();
        let h = cluster
            .task(move |ctx| {
                a.lock().unwrap().push(ctx.attempt());
                async { Err::<(), _>("no") }
            })
            .retry(n)
            .submit()
            .unwrap();
        assert_eq!(h.await, Err(TaskError::Failed("no")));
        assert_eq!(
            *attempts.lock().unwrap(),
            (1..=n + 1).collect::<Vec<_>>(),
            "retry({n})"
        );
    }
    cluster.stop(SEC).await.unwrap();
}

/// With one worker: a requeued retry frees the worker during its backoff,
/// an immediate retry holds it.
#[tokio::test(start_paused = true)]
async fn requeue_frees_the_worker_and_immediate_holds_it() {
    for mode in MODES {
        let cluster = Cluster::new(1).unwrap();
        let t0 = Instant::now();
        let events = log();
        let ev = events.clone();
        let retried = cluster
            .task(move |ctx| {
                let ev = ev.clone();
                async move {
                    ev.lock()
                        .unwrap()
                        .push((format!("R{}", ctx.attempt()), Instant::now()));
                    if ctx.attempt() == 1 {
                        Err("once".to_string())
                    } else {
                        Ok(())
                    }
                }
            })
            .retry(1)
            .backoff(FixedBackoff::new(SEC))
            .retry_mode(mode)
            .submit()
            .unwrap();
        let ev = events.clone();
        let other = cluster
            .task(move |_| {
                let ev = ev.clone();
                async move {
                    ev.lock().unwrap().push(("O".to_string(), Instant::now()));
                    Ok::<_, String>(())
                }
            })
            .submit()
            .unwrap();
        assert_eq!(retried.await, Ok(()));
        assert_eq!(other.await, Ok(()));
        let got = events.lock().unwrap().clone();
        let expected = match mode {
            // The other task runs inside the backoff window.
            RetryMode::Requeue => vec![
                ("R1".to_string(), t0),
                ("O".to_string(), t0),
                ("R2".to_string(), t0 + SEC),
            ],
            // The worker sleeps through the backoff; the other task waits.
            _ => vec![
                ("R1".to_string(), t0),
                ("R2".to_string(), t0 + SEC),
                ("O".to_string(), t0 + SEC),
            ],
        };
        assert_eq!(got, expected, "{mode:?}");
        cluster.stop(SEC).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn custom_backoff_closure_and_type() {
    let args = log();
    let a = args.clone();
    let closure = move |attempt: u32| {
        a.lock().unwrap().push(attempt);
        Duration::from_millis(100 * (u64::from(attempt) + 1).pow(2))
    };
    let (times, _) = attempt_times(closure, 3, RetryMode::Requeue).await;
    assert_eq!(gaps(&times), ms(&[100, 400, 900]));
    assert_eq!(*args.lock().unwrap(), vec![0, 1, 2], "attempt is 0-based");

    struct Table(Vec<Duration>);
    impl Backoff for Table {
        fn delay(&self, attempt: u32) -> Duration {
            self.0[attempt as usize]
        }
    }
    let (times, _) = attempt_times(Table(ms(&[7, 3, 11])), 3, RetryMode::Immediate).await;
    assert_eq!(gaps(&times), ms(&[7, 3, 11]));
}

#[tokio::test(start_paused = true)]
async fn panicking_backoff_ends_retries_with_the_last_error() {
    for mode in MODES {
        let strategy = |attempt: u32| {
            if attempt >= 1 {
                panic!("backoff exploded");
            }
            10 * MS
        };
        let (times, out) = attempt_times(strategy, 5, mode).await;
        assert_eq!(times.len(), 2, "{mode:?}");
        assert_eq!(gaps(&times), ms(&[10]));
        assert_eq!(out, Err(TaskError::Failed("fail 2".into())), "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_retry_if_ends_retries_with_the_last_error() {
    let cluster = Cluster::new(1).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let h = cluster
        .task(move |ctx| {
            a.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), u32>(ctx.attempt()) }
        })
        .retry(5)
        .retry_if(|e: &TaskError<u32>| {
            if *e == TaskError::Failed(2) {
                panic!("predicate exploded");
            }
            true
        })
        .submit()
        .unwrap();
    assert_eq!(h.await, Err(TaskError::Failed(2)));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    // The worker survived.
    let h = cluster
        .task(|_| async { Ok::<_, u32>(1) })
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retry_u32_max_succeeding_on_attempt_three() {
    for mode in MODES {
        let cluster = Cluster::new(1).unwrap();
        let h = cluster
            .task(|ctx| async move {
                if ctx.attempt() < 3 {
                    Err("not yet")
                } else {
                    Ok(ctx.attempt())
                }
            })
            .retry(u32::MAX)
            .backoff(ExponentialBackoff::new(MS, 10.0))
            .retry_mode(mode)
            .submit()
            .unwrap();
        assert_eq!(h.await, Ok(3), "{mode:?}");
        cluster.stop(SEC).await.unwrap();
    }
}

#[test]
fn backoff_arithmetic_saturates() {
    let big = ExponentialBackoff::new(SEC, 10.0);
    assert_eq!(big.delay(10_000), Duration::MAX);
    assert_eq!(big.delay(u32::MAX), Duration::MAX);
    assert_eq!(big.with_max(60 * SEC).delay(10_000), 60 * SEC);
    assert_eq!(
        ExponentialBackoff::new(Duration::MAX, 2.0).delay(1),
        Duration::MAX
    );
    assert_eq!(
        LinearBackoff::new(SEC, SEC).delay(u32::MAX),
        SEC * u32::MAX + SEC
    );
    assert_eq!(
        LinearBackoff::new(Duration::MAX, SEC).delay(10_000),
        Duration::MAX
    );
    assert_eq!(FixedBackoff::new(SEC).delay(u32::MAX), SEC);
}

/// `base * multiplier^attempt` with a zero base is zero for every attempt,
/// even where `multiplier^attempt` overflows `f64` (0 x inf must not become
/// the cap or `Duration::MAX`).
#[test]
fn exponential_with_zero_base_stays_zero_for_huge_attempts() {
    let b = ExponentialBackoff::new(Duration::ZERO, 10.0);
    assert_eq!(b.delay(3), Duration::ZERO);
    assert_eq!(b.delay(10_000), Duration::ZERO);
    assert_eq!(b.with_max(SEC).delay(10_000), Duration::ZERO);
    assert_eq!(
        ExponentialBackoff::new(Duration::ZERO, 2.0).delay(1024),
        Duration::ZERO
    );
}

/// The same, end to end: a zero-base exponential backoff keeps retrying at
/// once past attempt 1025 (where 2^attempt overflows `f64`).
#[tokio::test(start_paused = true)]
async fn zero_base_exponential_keeps_retrying_past_f64_overflow() {
    let cluster = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let h = cluster
        .task(|ctx| async move {
            if ctx.attempt() < 1100 {
                Err("not yet")
            } else {
                Ok(ctx.attempt())
            }
        })
        .retry(2000)
        .backoff(ExponentialBackoff::new(Duration::ZERO, 2.0))
        .submit()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(3600), h).await;
    assert_eq!(
        out.ok(),
        Some(Ok(1100)),
        "the task stalled waiting for its retry"
    );
    assert_eq!(Instant::now(), t0, "zero backoff takes no time");
    cluster.cancel();
}

/// The error decides the delay (an HTTP `Retry-After`), whether to retry, or
/// leaves the delay to the backoff; jitter applies only to the backoff's.
#[tokio::test(start_paused = true)]
async fn retry_with_takes_the_delay_from_the_error() {
    for mode in MODES {
        let cluster = Cluster::new(1).unwrap();
        let times = log();
        let seen = log();
        let (t, s) = (times.clone(), seen.clone());
        let h = cluster
            .task(move |ctx| {
                let t = t.clone();
                async move {
                    t.lock().unwrap().push(Instant::now());
                    // Attempts 1-3 ask for 700 ms, nothing, 2 s; attempt 4 is fatal.
                    Err::<u32, _>(match ctx.attempt() {
                        1 => Some(700),
                        2 => None,
                        3 => Some(2000),
                        _ => Some(0),
                    })
                }
            })
            .retry(10)
            .backoff(FixedBackoff::new(100 * MS))
            .jitter(0.5)
            .retry_with(move |err: &TaskError<Option<u64>>, attempt| {
                s.lock().unwrap().push(attempt);
                match err {
                    TaskError::Failed(Some(0)) => RetryDecision::Stop,
                    TaskError::Failed(Some(ms)) => {
                        RetryDecision::RetryAfter(Duration::from_millis(*ms))
                    }
                    _ => RetryDecision::Retry,
                }
            })
            .retry_mode(mode)
            .submit()
            .unwrap();
        assert_eq!(h.await, Err(TaskError::Failed(Some(0))), "{mode:?}");
        assert_eq!(common::snapshot(&seen), vec![1, 2, 3, 4], "{mode:?}");
        let gaps = gaps(&common::snapshot(&times));
        assert_eq!(gaps.len(), 3, "{mode:?}");
        assert_eq!(gaps[0], 700 * MS, "{mode:?}: Retry-After, no jitter");
        assert!(
            gaps[1] >= 50 * MS && gaps[1] <= 150 * MS,
            "{mode:?}: the backoff's delay, jittered: {:?}",
            gaps[1]
        );
        assert_eq!(gaps[2], 2 * SEC, "{mode:?}");
        cluster.stop(SEC).await.unwrap();
    }
}

/// `retry(n)` still caps the attempts; a panicking `retry_with` stops; the
/// later of `retry_if` and `retry_with` wins.
#[tokio::test(start_paused = true)]
async fn retry_with_is_capped_by_retry_and_replaces_retry_if() {
    common::quiet_panics_starting_with("retry_with boom");
    let cluster = Cluster::new(1).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let submit = |retry_if_first: bool, panics: bool| {
        let a = attempts.clone();
        let b = cluster
            .task(move |_| {
                a.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("no") }
            })
            .retry(2);
        let decide = move |_: &TaskError<&str>, _: u32| {
            if panics {
                panic!("retry_with boom");
            }
            RetryDecision::RetryAfter(Duration::ZERO)
        };
        if retry_if_first {
            b.retry_if(|_| false).retry_with(decide).submit().unwrap()
        } else {
            b.retry_with(decide).retry_if(|_| false).submit().unwrap()
        }
    };
    for (retry_if_first, panics, expected) in [(true, false, 3), (false, false, 1), (true, true, 1)]
    {
        attempts.store(0, Ordering::SeqCst);
        let h = submit(retry_if_first, panics);
        assert_eq!(h.await, Err(TaskError::Failed("no")));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            expected,
            "retry_if first: {retry_if_first}, panics: {panics}"
        );
    }
    cluster.stop(SEC).await.unwrap();
}
