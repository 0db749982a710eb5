//! Bad input and hostile user code: each gets a clear error or its
//! documented behaviour, never crashes a worker and never loses an outcome.
//!
//! After each scenario on a cluster that is still running, a further normal
//! task must succeed ([`assert_alive`]). Most clusters have one worker, so
//! that proves the only worker survived (and that its slot was freed).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use corral::{
    Backoff, BuildError, Cluster, ExponentialBackoff, LinearBackoff, RetryMode, RunError,
    StopError, SubmitError, SubscribeError, TaskContext, TaskError, TaskHandle, TaskId, MAX_ID_LEN,
};
use tokio::time::Instant;

use common::{quiet_panics_starting_with, resolve, yield_until, DropFlag, HOUR, SEC};

const DAY: Duration = Duration::from_secs(24 * 3600);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// Under the paused clock this is virtual time: it only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(60);

/// A normal task on `cluster` still succeeds: no worker died or stayed stuck.
async fn assert_alive(cluster: &Cluster) {
    let h = cluster
        .task(|ctx| async move { Ok::<_, String>(ctx.attempt() * 42) })
        .submit()
        .expect("a running cluster accepts a normal task");
    assert_eq!(
        resolve(LIMIT, "a normal task after the scenario", h).await,
        Ok(42),
        "the cluster no longer runs normal tasks"
    );
}

/// Called inside the test's runtime: the workers start at once.
fn one_worker() -> Cluster {
    Cluster::new(1).unwrap()
}

#[test]
fn zero_workers_is_a_build_error() {
    assert_eq!(Cluster::new(0).err(), Some(BuildError::ZeroWorkers));
    assert_eq!(
        Cluster::builder().workers(0).build().err(),
        Some(BuildError::ZeroWorkers)
    );
    assert!(Cluster::builder().workers(1).build().is_ok());
}

#[tokio::test(start_paused = true)]
async fn empty_id_is_rejected_and_the_body_never_runs() {
    let cluster = one_worker();
    let ran = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (r, flag) = (ran.clone(), DropFlag(dropped.clone()));
    let res = cluster
        .task(move |_| {
            let _keep = &flag;
            r.store(true, SeqCst);
            async { Ok::<u32, String>(1) }
        })
        .id("")
        .submit();
    assert!(
        matches!(res, Err(SubmitError::InvalidId(_))),
        "{:?}",
        res.map(drop)
    );
    assert!(dropped.load(SeqCst), "the rejected body is dropped");
    assert!(!ran.load(SeqCst));
    assert_eq!(cluster.stats().held, 0);
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn overlong_id_is_rejected_and_max_len_is_accepted() {
    let cluster = one_worker();
    for id in [
        "a".repeat(MAX_ID_LEN + 1),
        "a".repeat(1 << 20),
        // Length counts bytes: 513 two-byte chars are over the limit.
        "é".repeat(MAX_ID_LEN / 2 + 1),
    ] {
        let res = cluster
            .task(|_| async { Ok::<u32, String>(1) })
            .id(id.as_str())
            .submit();
        assert!(
            matches!(res, Err(SubmitError::InvalidId(_))),
            "id of {} bytes: {:?}",
            id.len(),
            res.map(drop)
        );
    }
    assert_eq!(cluster.stats().held, 0);
    let max = "m".repeat(MAX_ID_LEN);
    let h = cluster
        .task(|_| async { Ok::<u32, String>(7) })
        .id(max.as_str())
        .submit()
        .expect("an id of exactly MAX_ID_LEN bytes is fine");
    assert_eq!(h.id(), TaskId::from(max.as_str()));
    assert_eq!(resolve(LIMIT, "max-length id", h).await, Ok(7));
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn out_of_range_options_are_rejected() {
    let cluster = one_worker();
    let res = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .timeout(Duration::ZERO)
        .submit();
    assert!(
        matches!(
            res,
            Err(SubmitError::InvalidOption {
                option: "timeout",
                ..
            })
        ),
        "zero timeout: {:?}",
        res.map(drop)
    );
    for ratio in [f64::NAN, -0.1, 1.5, f64::INFINITY, f64::NEG_INFINITY] {
        let res = cluster
            .task(|_| async { Ok::<u32, String>(1) })
            .retry(1)
            .jitter(ratio)
            .submit();
        assert!(
            matches!(
                res,
                Err(SubmitError::InvalidOption {
                    option: "jitter",
                    ..
                })
            ),
            "jitter {ratio}: {:?}",
            res.map(drop)
        );
    }
    // A generated id cannot be given back as a user id.
    let h = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .submit()
        .unwrap();
    let generated = h.id().clone();
    assert_eq!(resolve(LIMIT, "generated", h).await, Ok(1));
    let res = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id(generated)
        .submit();
    assert!(
        matches!(res, Err(SubmitError::InvalidId(_))),
        "{:?}",
        res.map(drop)
    );
    assert_eq!(cluster.stats().held, 0);
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn retry_u32_max_succeeds_on_attempt_three() {
    let cluster = one_worker();
    for mode in [RetryMode::Requeue, RetryMode::Immediate] {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = cluster
            .task(move |ctx| {
                r.fetch_add(1, SeqCst);
                async move {
                    if ctx.attempt() < 3 {
                        Err(format!("attempt {}", ctx.attempt()))
                    } else {
                        Ok(ctx.attempt())
                    }
                }
            })
            .retry(u32::MAX)
            .retry_mode(mode)
            .submit()
            .unwrap();
        assert_eq!(
            resolve(LIMIT, &format!("{mode:?}"), h).await,
            Ok(3),
            "{mode:?}"
        );
        assert_eq!(runs.load(SeqCst), 3, "{mode:?}");
    }
    assert_eq!(cluster.stats().held, 0);
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn duration_max_timeout_means_no_timeout() {
    let cluster = one_worker();
    let h = cluster
        .task(|ctx| async move {
            assert_eq!(ctx.deadline(), None, "an unrepresentable deadline is none");
            // Far longer than any real timeout.
            tokio::time::sleep(10 * YEAR).await;
            Ok::<_, String>("done")
        })
        .timeout(Duration::MAX)
        .submit()
        .unwrap();
    let blocking = cluster
        .blocking_task(|ctx| {
            assert_eq!(ctx.deadline(), None);
            Ok::<_, String>("blocking done")
        })
        .timeout(Duration::MAX)
        .submit()
        .unwrap();
    // A large but representable timeout is an ordinary one.
    let big = cluster
        .task(|ctx| async move {
            assert!(ctx.deadline().is_some());
            Ok::<_, String>("big")
        })
        .timeout(100 * YEAR)
        .submit()
        .unwrap();
    assert_eq!(
        tokio::time::timeout(20 * YEAR, h).await.expect("hang"),
        Ok("done")
    );
    assert_eq!(
        resolve(LIMIT, "blocking", blocking).await,
        Ok("blocking done")
    );
    assert_eq!(resolve(LIMIT, "big", big).await, Ok("big"));
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn duration_max_delay_stays_pending_and_cancel_frees_it() {
    let cluster = one_worker();
    let ran = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let (r, flag) = (ran.clone(), DropFlag(dropped.clone()));
    let h = cluster
        .task(move |_| {
            let _keep = &flag;
            r.store(true, SeqCst);
            async { Ok::<u32, String>(1) }
        })
        .id("never")
        .delay(Duration::MAX)
        .submit()
        .unwrap();
    tokio::time::sleep(10 * YEAR).await;
    assert!(!ran.load(SeqCst), "a task delayed by Duration::MAX ran");
    let s = cluster.stats();
    assert_eq!((s.queued, s.running, s.held), (1, 0, 1), "{s:?}");
    // It does not block other work.
    assert_alive(&cluster).await;
    assert!(cluster.cancel_task("never").took_effect());
    assert_eq!(cluster.stats().held, 0);
    assert!(dropped.load(SeqCst), "cancel released the body");
    assert_eq!(resolve(LIMIT, "never", h).await, Err(TaskError::Cancelled));
    assert!(!ran.load(SeqCst));
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn start_at_far_future_stays_pending_and_far_past_runs_at_once() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let now = Instant::now();
    let order = Arc::new(Mutex::new(Vec::new()));
    let log = |name: &'static str| {
        let order = order.clone();
        move |_: TaskContext| {
            order.lock().unwrap().push(name);
            async move { Ok::<_, String>(name) }
        }
    };
    // Submitted before run, so the order among due tasks is visible.
    let current = cluster.task(log("now")).submit().unwrap();
    let past = now.checked_sub(100 * YEAR).map(|at| {
        cluster
            .task(log("past"))
            .start_at(at)
            .submit()
            .expect("a start time in the past is fine")
    });
    let future = now.checked_add(100 * YEAR).map(|at| {
        cluster
            .task(log("future"))
            .id("future")
            .start_at(at)
            .submit()
            .expect("a start time far in the future is fine")
    });
    cluster.run().unwrap();
    let t0 = Instant::now();
    assert_eq!(resolve(LIMIT, "now", current).await, Ok("now"));
    if let Some(past) = past {
        assert_eq!(resolve(LIMIT, "past", past).await, Ok("past"));
        assert_eq!(Instant::now(), t0, "a past start time runs at once");
        assert_eq!(
            *order.lock().unwrap(),
            vec!["past", "now"],
            "an earlier start time runs first among equal priorities"
        );
    } else {
        eprintln!("now - 100 years is not representable here; skipped that part");
    }
    if let Some(future) = future {
        tokio::time::sleep(10 * YEAR).await;
        assert!(!order.lock().unwrap().contains(&"future"), "ran too early");
        assert_eq!(cluster.stats().queued, 1);
        assert_alive(&cluster).await;
        assert!(cluster.cancel_task("future").took_effect());
        assert_eq!(
            resolve(LIMIT, "future", future).await,
            Err(TaskError::Cancelled)
        );
    } else {
        eprintln!("now + 100 years is not representable here; skipped that part");
    }
    assert_eq!(cluster.stats().held, 0);
    assert_alive(&cluster).await;
}

#[test]
fn exponential_backoff_with_bad_parameters_saturates() {
    let attempts = [
        0,
        1,
        2,
        10,
        63,
        64,
        100,
        1_000,
        10_000,
        i32::MAX as u32,
        u32::MAX,
    ];
    let multipliers = [
        f64::NAN,
        -1.0,
        -0.0,
        0.0,
        0.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        1e300,
        10.0,
    ];
    let bases = [
        Duration::from_nanos(1),
        Duration::from_millis(1),
        Duration::from_secs(u64::MAX / 2),
        Duration::MAX,
    ];
    for &m in &multipliers {
        for &base in &bases {
            for cap in [None, Some(Duration::from_secs(60))] {
                let mut b = ExponentialBackoff::new(base, m);
                if let Some(cap) = cap {
                    b = b.with_max(cap);
                }
                assert!(
                    b.multiplier().is_finite() && b.multiplier() >= 1.0,
                    "multiplier {m} kept as {}",
                    b.multiplier()
                );
                let mut last = Duration::ZERO;
                for &a in &attempts {
                    let d = b.delay(a);
                    assert!(
                        d >= last,
                        "m={m} base={base:?} attempt {a}: {d:?} < {last:?}"
                    );
                    if let Some(cap) = cap {
                        assert!(d <= cap, "m={m} base={base:?} attempt {a}: over the cap");
                    }
                    last = d;
                }
                // Very late attempts saturate at the cap or Duration::MAX.
                assert_eq!(b.delay(u32::MAX), cap.unwrap_or(Duration::MAX), "m={m}");
            }
        }
    }
    assert_eq!(
        ExponentialBackoff::new(Duration::MAX, 10.0).delay(0),
        Duration::MAX
    );
    assert_eq!(
        LinearBackoff::new(Duration::MAX, Duration::MAX).delay(u32::MAX),
        Duration::MAX
    );
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_with_bad_multiplier_still_retries() {
    let cluster = one_worker();
    for (m, cap) in [
        (f64::NAN, None),
        (-3.0, None),
        (f64::INFINITY, Some(10 * SEC)),
        (f64::MAX, Some(10 * SEC)),
    ] {
        let mut b = ExponentialBackoff::new(Duration::from_millis(1), m);
        if let Some(cap) = cap {
            b = b.with_max(cap);
        }
        for mode in [RetryMode::Requeue, RetryMode::Immediate] {
            let h = cluster
                .task(|ctx| async move {
                    if ctx.attempt() < 3 {
                        Err("not yet".to_string())
                    } else {
                        Ok(ctx.attempt())
                    }
                })
                .retry(5)
                .retry_mode(mode)
                .backoff(b)
                .jitter(0.5)
                .submit()
                .unwrap();
            assert_eq!(resolve(LIMIT, &format!("m={m} {mode:?}"), h).await, Ok(3));
        }
    }
    assert_alive(&cluster).await;
}

/// A retry whose backoff is "forever": the task waits (in the queue or on
/// its worker), is cancellable at once, and cancel frees everything.
async fn endless_backoff_is_cancellable(what: &str, backoff: impl Backoff + Clone, jitter: f64) {
    for mode in [RetryMode::Requeue, RetryMode::Immediate] {
        let cluster = one_worker();
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = cluster
            .task(move |_| {
                r.fetch_add(1, SeqCst);
                async { Err::<u32, String>("always".into()) }
            })
            .id("endless")
            .retry(3)
            .retry_mode(mode)
            .backoff(backoff.clone())
            .jitter(jitter)
            .submit()
            .unwrap();
        tokio::time::sleep(DAY).await;
        assert_eq!(runs.load(SeqCst), 1, "{what} {mode:?}: retried too soon");
        let s = cluster.stats();
        let expected = match mode {
            RetryMode::Requeue => (1, 0, 1),
            _ => (0, 1, 1),
        };
        assert_eq!((s.queued, s.running, s.held), expected, "{what} {mode:?}");
        assert!(
            cluster.cancel_task("endless").took_effect(),
            "{what} {mode:?}"
        );
        assert_eq!(
            resolve(LIMIT, what, h).await,
            Err(TaskError::Cancelled),
            "{what} {mode:?}"
        );
        assert_eq!(cluster.stats().held, 0, "{what} {mode:?}");
        // One worker: the retry wait gave its slot back.
        assert_alive(&cluster).await;
        cluster.stop(SEC).await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn linear_backoff_of_duration_max_waits_and_is_cancellable() {
    endless_backoff_is_cancellable(
        "LinearBackoff(MAX, MAX)",
        LinearBackoff::new(Duration::MAX, Duration::MAX),
        0.0,
    )
    .await;
    endless_backoff_is_cancellable(
        "LinearBackoff(MAX, 0) with jitter",
        LinearBackoff::new(Duration::MAX, Duration::ZERO),
        1.0,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_of_huge_base_waits_and_is_cancellable() {
    endless_backoff_is_cancellable(
        "ExponentialBackoff(MAX, 10)",
        ExponentialBackoff::new(Duration::MAX, 10.0),
        0.0,
    )
    .await;
    endless_backoff_is_cancellable(
        "ExponentialBackoff(1 year, f64::MAX)",
        ExponentialBackoff::new(YEAR, f64::MAX),
        0.1,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn panicking_backoff_ends_the_task_with_its_last_error() {
    let cluster = one_worker();
    for mode in [RetryMode::Requeue, RetryMode::Immediate] {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = cluster
            .task(move |ctx| {
                r.fetch_add(1, SeqCst);
                async move { Err::<u32, String>(format!("failure {}", ctx.attempt())) }
            })
            .retry(5)
            .retry_mode(mode)
            .backoff(|attempt: u32| -> Duration { panic!("backoff boom at {attempt}") })
            .submit()
            .unwrap();
        assert_eq!(
            resolve(LIMIT, &format!("{mode:?}"), h).await,
            Err(TaskError::Failed("failure 1".to_string())),
            "{mode:?}"
        );
        assert_eq!(
            runs.load(SeqCst),
            1,
            "{mode:?}: no retry after the strategy panicked"
        );
        assert_alive(&cluster).await;
    }
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn panicking_retry_if_counts_as_no_retry() {
    let cluster = one_worker();
    for mode in [RetryMode::Requeue, RetryMode::Immediate] {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = cluster
            .task(move |ctx| {
                r.fetch_add(1, SeqCst);
                async move { Err::<u32, String>(format!("failure {}", ctx.attempt())) }
            })
            .retry(5)
            .retry_mode(mode)
            .retry_if(|e: &TaskError<String>| -> bool { panic!("predicate boom on {e}") })
            .submit()
            .unwrap();
        assert_eq!(
            resolve(LIMIT, &format!("{mode:?}"), h).await,
            Err(TaskError::Failed("failure 1".to_string())),
            "{mode:?}"
        );
        assert_eq!(runs.load(SeqCst), 1, "{mode:?}");
        assert_alive(&cluster).await;
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_callbacks_do_not_lose_the_outcome() {
    let cluster = one_worker();
    let log = Arc::new(Mutex::new(Vec::new()));
    let submit = |id: &'static str, fail: bool| {
        let (l1, l2) = (log.clone(), log.clone());
        cluster
            .task(move |_| async move {
                if fail {
                    Err::<u32, String>("bad".into())
                } else {
                    Ok(5)
                }
            })
            .id(id)
            .cacheable(true)
            .on_failure(move |id, _| {
                l1.lock().unwrap().push(format!("failure {id}"));
                panic!("on_failure boom");
            })
            .on_complete(move |id, _| {
                l2.lock().unwrap().push(format!("complete {id}"));
                panic!("on_complete boom");
            })
            .submit()
            .unwrap()
    };
    let ok = submit("ok", false);
    let sub_ok = cluster.subscribe::<u32, String>("ok").unwrap();
    assert_eq!(resolve(LIMIT, "ok", ok).await, Ok(5));
    assert_eq!(sub_ok.await, Ok(5));
    let bad = submit("bad", true);
    assert_eq!(
        resolve(LIMIT, "bad", bad).await,
        Err(TaskError::Failed("bad".into()))
    );
    // A task cancelled while queued: its callbacks run on the cancelling thread.
    let cancelled = cluster
        .task(|_| async { Ok::<u32, String>(0) })
        .id("c")
        .delay(HOUR)
        .on_complete(|_, _| panic!("on_complete boom in cancel_task"))
        .submit()
        .unwrap();
    assert!(cluster.cancel_task("c").took_effect());
    assert_eq!(
        resolve(LIMIT, "c", cancelled).await,
        Err(TaskError::Cancelled)
    );
    assert_eq!(
        *log.lock().unwrap(),
        vec!["complete ok", "failure bad", "complete bad"],
        "each callback once, on_failure before on_complete, despite the panics"
    );
    // Late readers of the cache still get the outcomes.
    assert_eq!(
        cluster.subscribe::<u32, String>("bad").unwrap().await,
        Err(TaskError::Failed("bad".into()))
    );
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn slow_callback_still_delivers_the_outcome() {
    let cluster = one_worker();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let h = cluster
        .task(|_| async { Ok::<u32, String>(11) })
        .id("slow-cb")
        .on_complete(move |_, out| {
            assert_eq!(out, &Ok(11));
            std::thread::sleep(Duration::from_millis(5));
            c.fetch_add(1, SeqCst);
        })
        .submit()
        .unwrap();
    let sub = cluster.subscribe::<u32, String>("slow-cb").unwrap();
    let next = cluster
        .task(|_| async { Ok::<u32, String>(12) })
        .submit()
        .unwrap();
    assert_eq!(resolve(LIMIT, "slow-cb", h).await, Ok(11));
    // The callback ran before the handle resolved.
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(sub.await, Ok(11));
    assert_eq!(resolve(LIMIT, "next", next).await, Ok(12));
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn body_panicking_while_holding_a_shared_mutex() {
    let cluster = one_worker();
    let shared = Arc::new(Mutex::new(0u32));
    let m = shared.clone();
    let h = cluster
        .task(move |_| {
            let m = m.clone();
            async move {
                let mut guard = m.lock().unwrap();
                *guard += 1;
                if *guard > 0 {
                    panic!("poisoner");
                }
                Ok::<u32, String>(*guard)
            }
        })
        .submit()
        .unwrap();
    assert_eq!(
        resolve(LIMIT, "poisoner", h).await,
        Err(TaskError::Panicked {
            message: "poisoner".into()
        })
    );
    assert!(shared.is_poisoned(), "the panic unwound through the guard");
    assert_eq!(*shared.lock().unwrap_or_else(PoisonError::into_inner), 1);

    // A body that unwraps the poisoned lock panics in turn: Panicked again.
    let m = shared.clone();
    let h = cluster
        .task(move |_| {
            let m = m.clone();
            async move {
                let v = *m.lock().unwrap();
                Ok::<u32, String>(v)
            }
        })
        .submit()
        .unwrap();
    match resolve(LIMIT, "unwrap poisoned", h).await {
        Err(TaskError::Panicked { message }) => {
            assert!(message.contains("Poison"), "{message}")
        }
        other => panic!("expected a panic from the poisoned lock, got {other:?}"),
    }
    // A body that recovers from the poison works.
    let m = shared.clone();
    let h = cluster
        .task(move |_| {
            let m = m.clone();
            async move {
                let v = *m.lock().unwrap_or_else(PoisonError::into_inner);
                Ok::<u32, String>(v)
            }
        })
        .submit()
        .unwrap();
    assert_eq!(resolve(LIMIT, "recovering", h).await, Ok(1));
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn subscribe_and_cancel_of_unknown_ids() {
    let cluster = one_worker();
    let long = "z".repeat(10 * MAX_ID_LEN);
    for id in ["nope", "", "#0", long.as_str()] {
        match cluster.subscribe::<u32, String>(id) {
            Err(SubscribeError::UnknownId(got)) => assert_eq!(got, TaskId::from(id)),
            other => panic!("subscribe({id:?}): {:?}", other.map(drop)),
        }
        assert!(
            !cluster.cancel_task(id).took_effect(),
            "cancel_task({id:?})"
        );
    }
    // A finished, non-cacheable task is forgotten: its generated id is unknown.
    let h = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .submit()
        .unwrap();
    let id = h.id().clone();
    assert_eq!(resolve(LIMIT, "done", h).await, Ok(1));
    assert!(matches!(
        cluster.subscribe::<u32, String>(id.clone()),
        Err(SubscribeError::UnknownId(_))
    ));
    assert!(!cluster.cancel_task(id).took_effect());
    // The wrong type for a known task is its own error and disturbs nothing.
    let h = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .id("typed")
        .delay(SEC)
        .submit()
        .unwrap();
    assert!(matches!(
        cluster.subscribe::<String, String>("typed"),
        Err(SubscribeError::TypeMismatch { .. })
    ));
    assert!(matches!(
        cluster.subscribe::<u32, u64>("typed"),
        Err(SubscribeError::TypeMismatch { .. })
    ));
    let right = cluster.subscribe::<u32, String>("typed").unwrap();
    assert_eq!(resolve(LIMIT, "typed", h).await, Ok(2));
    assert_eq!(right.await, Ok(2));
    assert_eq!(cluster.stats().held, 0);
    assert_alive(&cluster).await;
}

#[tokio::test(start_paused = true)]
async fn run_twice_and_run_without_a_runtime() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let c = cluster.clone();
    let outside = std::thread::spawn(move || c.run())
        .join()
        .expect("run outside a runtime must not panic");
    assert_eq!(outside, Err(RunError::NoRuntime));
    // That failed call did not spoil the cluster.
    cluster.run().unwrap();
    assert_eq!(cluster.run(), Ok(()));
    assert_alive(&cluster).await;
    // Running already: `run` outside a runtime has nothing to do either.
    let c = cluster.clone();
    assert_eq!(std::thread::spawn(move || c.run()).join().unwrap(), Ok(()));
    assert_eq!(cluster.run(), Ok(()));
    assert_alive(&cluster).await;
    cluster.stop(SEC).await.unwrap();
    assert_eq!(cluster.run(), Err(RunError::ShutDown));
}

#[tokio::test(start_paused = true)]
async fn stop_twice() {
    let cluster = one_worker();
    let h = cluster
        .task(|_| async {
            tokio::time::sleep(SEC).await;
            Ok::<u32, String>(1)
        })
        .submit()
        .unwrap();
    yield_until("the task runs", || cluster.stats().running == 1).await;
    let (first, second) = tokio::join!(cluster.stop(LIMIT), cluster.stop(LIMIT));
    assert_eq!(first, Ok(()));
    assert_eq!(second, Ok(()));
    assert_eq!(resolve(LIMIT, "running at stop", h).await, Ok(1));
    assert_eq!(cluster.stop(LIMIT).await, Ok(()));
    assert_eq!(
        cluster
            .task(|_| async { Ok::<u32, String>(0) })
            .submit()
            .map(drop),
        Err(SubmitError::ShuttingDown)
    );
    cluster.cancel();
    assert_eq!(cluster.stop(LIMIT).await, Ok(()));
    assert_eq!(cluster.stats(), Default::default());
}

/// Two workers, both busy for good: an async attempt that never ends (its
/// future holds a [`DropFlag`]) and a blocking one that runs until its
/// cancellation signal.
struct TwoStuck {
    cluster: Cluster,
    stuck: TaskHandle<u32, String>,
    spinning: TaskHandle<u32, String>,
    /// Set when the stuck async attempt's future was dropped.
    dropped: Arc<AtomicBool>,
    /// Set when the blocking body saw its signal and returned.
    blocking_left: Arc<AtomicBool>,
}

fn two_stuck() -> TwoStuck {
    let cluster = Cluster::new(2).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::new(DropFlag(dropped.clone()));
    let stuck = cluster
        .task(move |_| {
            let flag = flag.clone();
            async move {
                let _keep = flag;
                std::future::pending::<()>().await;
                Ok::<u32, String>(0)
            }
        })
        .submit()
        .unwrap();
    let blocking_left = Arc::new(AtomicBool::new(false));
    let bl = blocking_left.clone();
    let spinning = cluster
        .blocking_task(move |ctx| {
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            bl.store(true, SeqCst);
            Ok::<u32, String>(1)
        })
        .submit()
        .unwrap();
    TwoStuck {
        cluster,
        stuck,
        spinning,
        dropped,
        blocking_left,
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_while_stop_is_waiting() {
    let TwoStuck {
        cluster,
        stuck,
        spinning,
        dropped,
        blocking_left,
    } = two_stuck();
    let queued = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .submit()
        .unwrap();
    yield_until("both attempts run", || cluster.stats().running == 2).await;

    let t0 = Instant::now();
    let c = cluster.clone();
    let stop = tokio::spawn(async move { c.stop(HOUR).await });
    yield_until("the stop has begun", || {
        cluster
            .task(|_| async { Ok::<u32, String>(0) })
            .submit()
            .is_err()
    })
    .await;
    assert!(
        !stop.is_finished(),
        "the stop waits for the running attempts"
    );
    assert_eq!(
        resolve(LIMIT, "queued", queued).await,
        Err(TaskError::Shutdown)
    );

    cluster.cancel();
    let stopped = tokio::time::timeout(LIMIT, stop)
        .await
        .expect("stop never returned after cancel")
        .expect("stop panicked");
    assert_eq!(
        stopped,
        Ok(()),
        "the workers finished before the stop's timeout"
    );
    assert!(Instant::now() - t0 < HOUR);
    assert_eq!(
        resolve(LIMIT, "stuck", stuck).await,
        Err(TaskError::Shutdown)
    );
    assert_eq!(
        resolve(LIMIT, "spinning", spinning).await,
        Err(TaskError::Shutdown)
    );
    assert!(dropped.load(SeqCst), "the stuck async attempt was dropped");
    assert!(
        blocking_left.load(SeqCst),
        "the blocking body saw its signal"
    );
    assert_eq!(cluster.stats(), Default::default());
}

#[tokio::test(start_paused = true)]
async fn stop_timeout_cancels_what_is_left() {
    let cluster = one_worker();
    let stuck = cluster
        .task(|_| async {
            std::future::pending::<()>().await;
            Ok::<u32, String>(0)
        })
        .submit()
        .unwrap();
    yield_until("the attempt runs", || cluster.stats().running == 1).await;
    assert_eq!(
        cluster.stop(SEC).await,
        Err(StopError::Timeout {
            running: 1,
            timeout: SEC
        })
    );
    assert_eq!(
        resolve(LIMIT, "stuck", stuck).await,
        Err(TaskError::Shutdown)
    );
    assert_eq!(cluster.stop(SEC).await, Ok(()));
    assert_eq!(cluster.stats(), Default::default());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_cluster_while_tasks_run() {
    let TwoStuck {
        cluster,
        stuck,
        spinning,
        dropped,
        blocking_left,
    } = two_stuck();
    let queued = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .id("queued")
        .submit()
        .unwrap();
    let scheduled = cluster
        .task(|_| async { Ok::<u32, String>(3) })
        .delay(HOUR)
        .submit()
        .unwrap();
    let sub = cluster.subscribe::<u32, String>("queued").unwrap();
    yield_until("both attempts run", || cluster.stats().running == 2).await;

    drop(cluster);
    for (what, h) in [
        ("stuck", stuck),
        ("spinning", spinning),
        ("queued", queued),
        ("scheduled", scheduled),
    ] {
        assert_eq!(
            resolve(LIMIT, what, h).await,
            Err(TaskError::Shutdown),
            "{what}"
        );
    }
    assert_eq!(
        tokio::time::timeout(LIMIT, sub)
            .await
            .expect("subscriber never answered"),
        Err(TaskError::Shutdown)
    );
    assert!(
        dropped.load(SeqCst),
        "the running async attempt was dropped"
    );
    // The blocking body runs on a real thread: give it real time to notice.
    let t0 = std::time::Instant::now();
    while !blocking_left.load(SeqCst) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the blocking body never saw its cancellation signal"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polling a handle again after it resolved panics (the `Future` contract),
/// and the cluster is unharmed.
#[tokio::test(start_paused = true)]
async fn polling_a_resolved_handle_again_panics() {
    quiet_panics_starting_with("TaskHandle polled after it resolved");
    let cluster = one_worker();
    let mut h = cluster
        .task(|_| async { Ok::<_, String>(7) })
        .submit()
        .unwrap();
    assert_eq!((&mut h).await, Ok(7));
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }
    let waker = std::task::Waker::from(Arc::new(Noop));
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        use std::future::Future;
        let _ = std::pin::Pin::new(&mut h).poll(&mut std::task::Context::from_waker(&waker));
    }));
    assert!(again.is_err(), "a second poll after Ready must panic");
    drop(h);
    assert_alive(&cluster).await;
}

/// Panics in `Drop` of what user code owns (the body, a future dropped at a
/// timeout, an unread outcome) are caught and logged: the worker survives.
#[tokio::test(start_paused = true)]
async fn panicking_drops_do_not_kill_the_worker() {
    quiet_panics_starting_with("bomb");
    struct Bomb(&'static str);
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("bomb: {}", self.0);
        }
    }
    let cluster = one_worker();

    let body = Bomb("body");
    let h = cluster
        .task(move |_| {
            let _held = &body;
            async { Ok::<u32, String>(1) }
        })
        .submit()
        .unwrap();
    assert_eq!(
        resolve(LIMIT, "a task whose body's drop panics", h).await,
        Ok(1)
    );

    let h = cluster
        .task(|_| async {
            let _bomb = Bomb("future");
            std::future::pending::<Result<u32, String>>().await
        })
        .timeout(SEC)
        .submit()
        .unwrap();
    let out = resolve(LIMIT, "a timed-out future whose drop panics", h).await;
    assert!(matches!(out, Err(TaskError::TimedOut { .. })), "{out:?}");

    let h = cluster
        .task(|_| async { Ok::<_, String>(Bomb("outcome")) })
        .submit()
        .unwrap();
    drop(h); // nobody reads the outcome: the engine drops it
    assert_alive(&cluster).await;
}
