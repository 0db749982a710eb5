//! `Cluster::cancel_task` in every state a task can be in.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{
    CancelOutcome, CancelReason, Cluster, ClusterStats, FixedBackoff, RetryMode, TaskError, TaskId,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::{yield_until, DropFlag, HOUR};

fn stats(queued: usize, running: usize, cached: usize, held: usize) -> ClusterStats {
    // `ClusterStats` is `#[non_exhaustive]`: built from the default.
    let mut s = ClusterStats::default();
    (s.queued, s.running, s.cached, s.held) = (queued, running, cached, held);
    s
}

#[tokio::test(start_paused = true)]
async fn cancel_scheduled_task_frees_it_at_once() {
    let cluster = Cluster::new(1).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let body_dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(body_dropped.clone());
    let r = ran.clone();
    let h = cluster
        .task(move |_| {
            let _keep = &flag;
            r.store(true, Ordering::SeqCst);
            async { Ok::<_, String>(1) }
        })
        .id("sched")
        .delay(HOUR)
        .submit()
        .unwrap();
    assert_eq!(cluster.stats(), stats(1, 0, 0, 1));

    let t0 = Instant::now();
    assert_eq!(cluster.cancel_task("sched"), CancelOutcome::Cancelled);
    // Removed from the schedule and the registry right away, not at its start time.
    assert_eq!(cluster.stats(), stats(0, 0, 0, 0));
    // The body (and what it captured) is released with the task.
    assert!(body_dropped.load(Ordering::SeqCst));
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(
        Instant::now(),
        t0,
        "the outcome must not wait for the start time"
    );

    // Its start time passing later does not run it.
    tokio::time::sleep(2 * HOUR).await;
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancel_ready_task_queued_behind_busy_worker() {
    let cluster = Cluster::new(1).unwrap();
    let gate = CancellationToken::new();
    let started = Arc::new(Notify::new());

    let (g, s) = (gate.clone(), started.clone());
    let busy = cluster
        .task(move |_| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                s.notify_one();
                g.cancelled().await;
                Ok::<_, String>("busy")
            }
        })
        .submit()
        .unwrap();
    started.notified().await;

    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let h = cluster
        .task(move |_| {
            r.store(true, Ordering::SeqCst);
            async { Ok::<_, String>("ready") }
        })
        .id("ready")
        .priority(10)
        .submit()
        .unwrap();
    assert_eq!(cluster.stats(), stats(1, 1, 0, 2));

    assert_eq!(cluster.cancel_task("ready"), CancelOutcome::Cancelled);
    assert_eq!(cluster.stats(), stats(0, 1, 0, 1));
    assert_eq!(h.await, Err(TaskError::Cancelled));

    // The worker is not taken by the cancelled task: a later task runs after `busy`.
    let after = cluster
        .task(|_| async { Ok::<_, String>("after") })
        .submit()
        .unwrap();
    gate.cancel();
    assert_eq!(busy.await, Ok("busy"));
    assert_eq!(after.await, Ok("after"));
    assert!(
        !ran.load(Ordering::SeqCst),
        "a cancelled ready task must never run"
    );
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancel_running_async_task_drops_its_future_and_fires_its_token() {
    let cluster = Cluster::new(1).unwrap();
    let started = Arc::new(Notify::new());
    let future_dropped = Arc::new(AtomicBool::new(false));
    let sub_work_done = Arc::new(Notify::new());
    let sub_work_saw_cancel = Arc::new(AtomicBool::new(false));

    let (s, fd, swd, sws) = (
        started.clone(),
        future_dropped.clone(),
        sub_work_done.clone(),
        sub_work_saw_cancel.clone(),
    );
    let h = cluster
        .task(move |ctx| {
            let (s, fd, swd, sws) = (s.clone(), fd.clone(), swd.clone(), sws.clone());
            async move {
                let _guard = DropFlag(fd);
                let token = ctx.cancellation_token();
                tokio::spawn(async move {
                    token.cancelled().await;
                    sws.store(true, Ordering::SeqCst);
                    swd.notify_one();
                });
                s.notify_one();
                tokio::time::sleep(HOUR).await;
                Ok::<_, String>(1)
            }
        })
        .id("run")
        .submit()
        .unwrap();
    started.notified().await;
    assert!(!future_dropped.load(Ordering::SeqCst));
    assert_eq!(cluster.stats(), stats(0, 1, 0, 1));

    let t0 = Instant::now();
    assert_eq!(cluster.cancel_task("run"), CancelOutcome::Requested);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert!(
        future_dropped.load(Ordering::SeqCst),
        "the attempt's future must be dropped by the time the outcome is out"
    );
    assert_eq!(
        Instant::now(),
        t0,
        "cancel must not wait for the body's sleep"
    );
    sub_work_done.notified().await;
    assert!(sub_work_saw_cancel.load(Ordering::SeqCst));
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancel_running_blocking_task_signals_its_context() {
    let cluster = Cluster::new(1).unwrap();
    let started = Arc::new(Notify::new());
    let finished = Arc::new(Notify::new());
    type Seen = Arc<Mutex<Option<(bool, Option<CancelReason>)>>>;
    let seen: Seen = Arc::new(Mutex::new(None));

    let (s, f, sn) = (started.clone(), finished.clone(), seen.clone());
    let h = cluster
        .blocking_task(move |ctx| {
            s.notify_one();
            // No timers here: the paused clock does not move while this runs.
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            *sn.lock().unwrap() = Some((ctx.is_cancelled(), ctx.cancel_reason()));
            f.notify_one();
            Ok::<_, String>(1)
        })
        .id("blocking")
        .submit()
        .unwrap();
    started.notified().await;
    assert_eq!(cluster.cancel_task("blocking"), CancelOutcome::Requested);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    finished.notified().await;
    assert_eq!(
        *seen.lock().unwrap(),
        Some((true, Some(CancelReason::Cancelled)))
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(cluster.stats().held, 0);
}

async fn cancel_during_backoff(mode: RetryMode) {
    let cluster = Cluster::new(1).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let h = cluster
        .task(move |_| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                Err::<u32, _>("fail".to_string())
            }
        })
        .id("retrying")
        .retry(3)
        .retry_mode(mode)
        .backoff(FixedBackoff::new(HOUR))
        .submit()
        .unwrap();

    // Waiting for the retry: in the queue (Requeue) or on its worker (Immediate).
    let waiting = match mode {
        RetryMode::Requeue => stats(1, 0, 0, 1),
        _ => stats(0, 1, 0, 1),
    };
    yield_until(
        "first attempt failed and the task waits for its retry",
        || attempts.load(Ordering::SeqCst) == 1 && cluster.stats() == waiting,
    )
    .await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(cluster.stats(), waiting);

    let t0 = Instant::now();
    let expected = match mode {
        RetryMode::Immediate => CancelOutcome::Requested,
        _ => CancelOutcome::Cancelled,
    };
    assert_eq!(cluster.cancel_task("retrying"), expected);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(
        Instant::now(),
        t0,
        "cancel must end the backoff wait at once"
    );
    assert_eq!(cluster.stats(), stats(0, 0, 0, 0));

    // No retry happens later.
    tokio::time::sleep(3 * HOUR).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

/// The attempt error of [`cancel_overrides_the_last_error_of_a_plain_task`],
/// counted when dropped.
#[derive(Debug, PartialEq)]
struct CountedError;

static COUNTED_ERRORS_DROPPED: AtomicU32 = AtomicU32::new(0);
static COUNTED_ERRORS_MADE: AtomicU32 = AtomicU32::new(0);

impl Drop for CountedError {
    fn drop(&mut self) {
        COUNTED_ERRORS_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn cancel_overrides_the_last_error_of_a_plain_task() {
    // A body that captures nothing (no drop glue), no callbacks, no cache,
    // no subscriber: the cell's shortest delivery. The error its attempt
    // left is replaced by `Cancelled` and dropped once, not leaked.
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async {
            COUNTED_ERRORS_MADE.fetch_add(1, Ordering::SeqCst);
            Err::<u32, _>(CountedError)
        })
        .retry(1)
        .backoff(FixedBackoff::new(HOUR))
        .submit()
        .unwrap();
    yield_until("the first attempt failed and waits for its retry", || {
        COUNTED_ERRORS_MADE.load(Ordering::SeqCst) == 1 && cluster.stats() == stats(1, 0, 0, 1)
    })
    .await;
    assert_eq!(COUNTED_ERRORS_DROPPED.load(Ordering::SeqCst), 0);
    assert_eq!(cluster.cancel_task(h.id()), CancelOutcome::Cancelled);
    assert_eq!(COUNTED_ERRORS_DROPPED.load(Ordering::SeqCst), 1);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(cluster.stats(), stats(0, 0, 0, 0));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(COUNTED_ERRORS_MADE.load(Ordering::SeqCst), 1);
    assert_eq!(COUNTED_ERRORS_DROPPED.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn cancel_task_waiting_for_requeue_retry() {
    cancel_during_backoff(RetryMode::Requeue).await;
}

#[tokio::test(start_paused = true)]
async fn cancel_task_waiting_in_immediate_retry_backoff() {
    cancel_during_backoff(RetryMode::Immediate).await;
}

#[tokio::test(start_paused = true)]
async fn cancel_unknown_id_returns_false() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    assert_eq!(cluster.cancel_task("nope"), CancelOutcome::NotFound);
    cluster.run().unwrap();
    assert_eq!(cluster.cancel_task("nope"), CancelOutcome::NotFound);
    assert_eq!(cluster.cancel_task(String::new()), CancelOutcome::NotFound);
    // An unrelated pending task is not touched.
    let h = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .id("other")
        .delay(Duration::from_secs(1))
        .submit()
        .unwrap();
    assert_eq!(cluster.cancel_task("nope"), CancelOutcome::NotFound);
    assert_eq!(h.await, Ok(3));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancel_finished_task_returns_false_and_keeps_its_outcome() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("done")
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    assert_eq!(cluster.cancel_task("done"), CancelOutcome::NotFound);

    // A finished, cached task is not cancellable either; its cached outcome stays.
    let h = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .id("cached")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(2));
    assert_eq!(
        cluster.cancel_task("cached"),
        CancelOutcome::AlreadyFinished
    );
    let late = cluster.subscribe::<i32, String>("cached").unwrap();
    assert_eq!(late.await, Ok(2));

    // A task that was cancelled cannot be cancelled again.
    let h = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .id("twice")
        .delay(HOUR)
        .submit()
        .unwrap();
    assert_eq!(cluster.cancel_task("twice"), CancelOutcome::Cancelled);
    assert_eq!(cluster.cancel_task("twice"), CancelOutcome::NotFound);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancel_by_generated_id() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .delay(HOUR)
        .submit()
        .unwrap();
    let id: TaskId = h.id().clone();
    assert!(id.is_generated());
    // Another cluster's task with the same number and slot is not touched.
    let other = Cluster::new(1).unwrap();
    assert_eq!(other.cancel_task(id.clone()), CancelOutcome::NotFound);
    assert_eq!(cluster.stats().held, 1);

    // The printed form is the id.
    assert_eq!(
        cluster.cancel_task(id.to_string()),
        CancelOutcome::Cancelled
    );
    assert_eq!(cluster.stats().held, 0);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(cluster.cancel_task(&id), CancelOutcome::NotFound);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

/// What a body captured lives until its task completes, even while its last
/// attempt runs: a guard or permit it holds is not released early.
#[tokio::test(start_paused = true)]
async fn a_body_keeps_its_captures_until_the_task_completes() {
    let cluster = Cluster::new(1).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = DropFlag(dropped.clone());
    let h = cluster
        .task(move |_| {
            let _held = &guard;
            async { std::future::pending::<Result<u32, String>>().await }
        })
        .id("t")
        .submit()
        .unwrap();
    yield_until("the only attempt runs", || cluster.stats().running == 1).await;
    assert!(
        !dropped.load(Ordering::SeqCst),
        "released while its last attempt runs"
    );
    assert_eq!(cluster.cancel_task("t"), CancelOutcome::Requested);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert!(dropped.load(Ordering::SeqCst), "released at completion");
}

/// What `TaskContext::cancelled` documents: work the body handed the
/// context (or its token) to sees a cancel and a timeout; an async body that
/// times out is dropped at once and never sees `cancelled()` resolve; on a
/// cancel, whatever the body does after seeing it, the outcome is `Cancelled`.
#[tokio::test(start_paused = true)]
async fn context_cancelled_reaches_handed_off_work_and_a_timed_out_body_is_dropped() {
    let cluster = Cluster::new(2).unwrap();
    for timeout in [false, true] {
        let seen_in_body = Arc::new(Mutex::new(None));
        let seen_elsewhere = Arc::new(Mutex::new(None));
        let (sb, se) = (seen_in_body.clone(), seen_elsewhere.clone());
        let mut builder = cluster
            .task(move |ctx| {
                let (sb, se) = (sb.clone(), se.clone());
                async move {
                    // The context itself, moved into work of its own.
                    tokio::spawn(async move {
                        let why = ctx.cancelled().await;
                        *se.lock().unwrap() = Some(why);
                    });
                    std::future::pending::<()>().await;
                    *sb.lock().unwrap() = Some(());
                    Ok::<_, String>(())
                }
            })
            .id("watched");
        if timeout {
            builder = builder.timeout(Duration::from_secs(1));
        }
        let h = builder.submit().unwrap();
        yield_until("running", || cluster.stats().running == 1).await;
        let expected = if timeout {
            let out = h.await;
            assert!(matches!(out, Err(TaskError::TimedOut { .. })), "{out:?}");
            CancelReason::TimedOut
        } else {
            assert_eq!(cluster.cancel_task("watched"), CancelOutcome::Requested);
            assert_eq!(h.await, Err(TaskError::Cancelled));
            CancelReason::Cancelled
        };
        yield_until("the handed-off work saw it", || {
            seen_elsewhere.lock().unwrap().is_some()
        })
        .await;
        assert_eq!(*seen_elsewhere.lock().unwrap(), Some(expected));
        assert_eq!(*seen_in_body.lock().unwrap(), None);
    }

    // A timed-out async body is dropped at once: `cancelled()` never
    // resolves inside it.
    let seen_in_body = Arc::new(Mutex::new(None));
    let sb = seen_in_body.clone();
    let h = cluster
        .task(move |ctx| {
            let sb = sb.clone();
            async move {
                let why = ctx.cancelled().await;
                *sb.lock().unwrap() = Some(why);
                Ok::<_, String>(())
            }
        })
        .timeout(Duration::from_secs(1))
        .submit()
        .unwrap();
    assert!(matches!(h.await, Err(TaskError::TimedOut { .. })));
    tokio::task::yield_now().await;
    assert_eq!(*seen_in_body.lock().unwrap(), None);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}
