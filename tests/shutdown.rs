//! Graceful stop, drain, immediate cancel, run/stop misuse, dropping the
//! cluster and a parent cancellation token.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{
    BuildError, CancelReason, Cluster, FixedBackoff, RetryMode, RunError, StopError, SubmitError,
    TaskError,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::{yield_until, DropFlag, HOUR};

fn submit_simple(cluster: &Cluster) -> Result<(), SubmitError> {
    cluster
        .task(|_| async { Ok::<_, String>(0) })
        .submit()
        .map(drop)
}

/// What a gated task saw of its own cancellation signal when it finished.
#[derive(Default)]
struct Seen {
    is_cancelled: AtomicBool,
    token_cancelled: AtomicBool,
}

#[tokio::test(start_paused = true)]
async fn graceful_stop_lets_running_tasks_finish_and_shuts_down_the_rest() {
    let cluster = Cluster::new(2).unwrap();
    let gate = CancellationToken::new();
    let started = Arc::new(Notify::new());
    let seen: Vec<Arc<Seen>> = (0..2).map(|_| Arc::default()).collect();

    let running: Vec<_> = (0..2)
        .map(|i| {
            let (g, s, seen) = (gate.clone(), started.clone(), seen[i].clone());
            cluster
                .task(move |ctx| {
                    let (g, s, seen) = (g.clone(), s.clone(), seen.clone());
                    async move {
                        let token = ctx.cancellation_token();
                        s.notify_one();
                        g.cancelled().await;
                        // Yield a little after the gate: the stop is in progress.
                        tokio::task::yield_now().await;
                        seen.is_cancelled
                            .store(ctx.is_cancelled(), Ordering::SeqCst);
                        seen.token_cancelled
                            .store(token.is_cancelled(), Ordering::SeqCst);
                        Ok::<_, String>(i)
                    }
                })
                .submit()
                .unwrap()
        })
        .collect();
    started.notified().await;
    started.notified().await;

    let queued_ran = Arc::new(AtomicBool::new(false));
    let qr = queued_ran.clone();
    let queued = cluster
        .task(move |_| {
            qr.store(true, Ordering::SeqCst);
            async { Ok::<_, String>(10) }
        })
        .submit()
        .unwrap();
    let scheduled = cluster
        .task(|_| async { Ok::<_, String>(11) })
        .delay(Duration::from_secs(5))
        .submit()
        .unwrap();
    assert_eq!(cluster.stats().running, 2);
    assert_eq!(cluster.stats().queued, 2);

    let t0 = Instant::now();
    let stopper = {
        let c = cluster.clone();
        tokio::spawn(async move { c.stop(HOUR).await })
    };
    // Not-started tasks are shut down by the stop itself, without waiting.
    assert_eq!(queued.await, Err(TaskError::Shutdown));
    assert_eq!(scheduled.await, Err(TaskError::Shutdown));
    assert_eq!(Instant::now(), t0);
    assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));
    assert!(!stopper.is_finished());

    gate.cancel();
    for (i, h) in running.into_iter().enumerate() {
        assert_eq!(h.await, Ok(i), "a running task keeps its value");
    }
    assert_eq!(stopper.await.unwrap(), Ok(()));
    assert!(Instant::now() - t0 < HOUR);
    for s in &seen {
        assert!(
            !s.is_cancelled.load(Ordering::SeqCst),
            "stop must not cancel"
        );
        assert!(
            !s.token_cancelled.load(Ordering::SeqCst),
            "stop must not cancel"
        );
    }
    assert!(!queued_ran.load(Ordering::SeqCst));
    assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn stop_shuts_down_tasks_waiting_for_a_retry() {
    let cluster = Cluster::new(1).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let h = cluster
        .task(move |_| {
            a.fetch_add(1, Ordering::SeqCst);
            async { Err::<i32, _>("again".to_string()) }
        })
        .retry(5)
        .backoff(FixedBackoff::new(HOUR))
        .submit()
        .unwrap();
    yield_until("waiting for its retry", || {
        attempts.load(Ordering::SeqCst) == 1 && cluster.stats().queued == 1
    })
    .await;
    let t0 = Instant::now();
    cluster.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(h.await, Err(TaskError::Shutdown));
    assert_eq!(Instant::now(), t0);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_interrupts_an_immediate_retry_wait() {
    let cluster = Cluster::new(1).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let h = cluster
        .task(move |_| {
            let a = a.clone();
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                Err::<i32, _>("again".to_string())
            }
        })
        .retry(5)
        .retry_mode(RetryMode::Immediate)
        .backoff(FixedBackoff::new(HOUR))
        .submit()
        .unwrap();
    yield_until("waiting for its retry on the worker", || {
        attempts.load(Ordering::SeqCst) == 1 && cluster.stats().running == 1
    })
    .await;
    let t0 = Instant::now();
    cluster.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(h.await, Err(TaskError::Shutdown));
    assert_eq!(Instant::now(), t0, "the backoff wait must end at once");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_does_not_retry_an_attempt_that_fails_during_the_stop() {
    let cluster = Cluster::new(1).unwrap();
    let gate = CancellationToken::new();
    let started = Arc::new(Notify::new());
    let attempts = Arc::new(AtomicU32::new(0));
    let (g, s, a) = (gate.clone(), started.clone(), attempts.clone());
    let h = cluster
        .task(move |_| {
            let (g, s, a) = (g.clone(), s.clone(), a.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                s.notify_one();
                g.cancelled().await;
                Err::<i32, _>("failed".to_string())
            }
        })
        .retry(3)
        .submit()
        .unwrap();
    started.notified().await;
    let stopper = {
        let c = cluster.clone();
        tokio::spawn(async move { c.stop(HOUR).await })
    };
    // `run` reports ShutDown once the stop has begun.
    yield_until("stop has begun", || {
        cluster.run() == Err(RunError::ShutDown)
    })
    .await;
    gate.cancel();
    assert_eq!(h.await, Err(TaskError::Shutdown));
    assert_eq!(stopper.await.unwrap(), Ok(()));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_timeout_reports_running_attempts_then_shuts_them_down() {
    let cluster = Cluster::new(2).unwrap();
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let reason: Arc<Mutex<Option<CancelReason>>> = Arc::default();
    let (s, d, r) = (started.clone(), dropped.clone(), reason.clone());
    let slow = cluster
        .task(move |ctx| {
            let (s, d, r) = (s.clone(), d.clone(), r.clone());
            async move {
                let _guard = DropFlag(d);
                tokio::spawn(async move {
                    let why = ctx.cancelled().await;
                    *r.lock().unwrap() = Some(why);
                });
                s.notify_one();
                tokio::time::sleep(HOUR).await;
                Ok::<_, String>(1)
            }
        })
        .submit()
        .unwrap();
    let quick = cluster
        .task(|_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, String>(2)
        })
        .submit()
        .unwrap();
    started.notified().await;

    let t0 = Instant::now();
    let timeout = Duration::from_secs(5);
    assert_eq!(
        cluster.stop(timeout).await,
        Err(StopError::Timeout {
            running: 1,
            timeout
        })
    );
    assert_eq!(Instant::now() - t0, timeout);
    assert_eq!(quick.await, Ok(2));
    assert_eq!(slow.await, Err(TaskError::Shutdown));
    assert!(dropped.load(Ordering::SeqCst));
    yield_until("sub-work saw the shutdown", || {
        reason.lock().unwrap().is_some()
    })
    .await;
    assert_eq!(*reason.lock().unwrap(), Some(CancelReason::Shutdown));
    // The workers are gone now.
    assert_eq!(cluster.stop(Duration::from_secs(1)).await, Ok(()));
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn drain_runs_due_tasks_and_retries_and_shuts_down_future_ones() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let retried = cluster
        .task(move |ctx| {
            a.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempt() == 1 {
                    Err("first".to_string())
                } else {
                    Ok(ctx.attempt() as i32)
                }
            }
        })
        .retry(2)
        .backoff(FixedBackoff::new(Duration::from_secs(10)))
        .submit()
        .unwrap();
    let due: Vec<_> = (0..3)
        .map(|i| {
            cluster
                .task(move |_| async move { Ok::<_, String>(100 + i) })
                .submit()
                .unwrap()
        })
        .collect();
    let future_ran = Arc::new(AtomicBool::new(false));
    let fr = future_ran.clone();
    let future = cluster
        .task(move |_| {
            fr.store(true, Ordering::SeqCst);
            async { Ok::<_, String>(-1) }
        })
        .delay(Duration::from_secs(5))
        .submit()
        .unwrap();

    cluster.run().unwrap();
    let t0 = Instant::now();
    let drainer = {
        let c = cluster.clone();
        tokio::spawn(async move { c.drain(HOUR).await })
    };
    assert_eq!(future.await, Err(TaskError::Shutdown));
    assert_eq!(Instant::now(), t0, "future tasks are shut down at once");
    assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));

    for (i, h) in due.into_iter().enumerate() {
        assert_eq!(h.await, Ok(100 + i as i32));
    }
    assert_eq!(retried.await, Ok(2), "the retry of a due task runs");
    assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    assert_eq!(drainer.await.unwrap(), Ok(()));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert!(!future_ran.load(Ordering::SeqCst));
    assert_eq!(cluster.stats().held, 0);
    assert_eq!(cluster.run(), Err(RunError::ShutDown));
}

#[tokio::test(start_paused = true)]
async fn drain_on_a_cluster_that_never_ran_shuts_everything_down() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .submit()
        .unwrap();
    assert_eq!(cluster.drain(Duration::from_secs(1)).await, Ok(()));
    assert_eq!(h.await, Err(TaskError::Shutdown));
}

#[tokio::test(start_paused = true)]
async fn cancel_interrupts_running_attempts_and_shuts_down_pending_tasks() {
    let cluster = Cluster::new(2).unwrap();

    // An async body: dropped at once; its sub-work sees the Shutdown reason.
    let async_started = Arc::new(Notify::new());
    let async_dropped = Arc::new(AtomicBool::new(false));
    let sub_reason: Arc<Mutex<Option<CancelReason>>> = Arc::default();
    let (s, d, r) = (
        async_started.clone(),
        async_dropped.clone(),
        sub_reason.clone(),
    );
    let async_task = cluster
        .task(move |ctx| {
            let (s, d, r) = (s.clone(), d.clone(), r.clone());
            async move {
                let _guard = DropFlag(d);
                tokio::spawn(async move {
                    let why = ctx.cancelled().await;
                    *r.lock().unwrap() = Some(why);
                });
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, String>(1)
            }
        })
        .submit()
        .unwrap();

    // A blocking body: signalled, sees reason Shutdown.
    let blocking_started = Arc::new(Notify::new());
    let blocking_done = Arc::new(Notify::new());
    let blocking_reason: Arc<Mutex<Option<CancelReason>>> = Arc::default();
    let (s, d, r) = (
        blocking_started.clone(),
        blocking_done.clone(),
        blocking_reason.clone(),
    );
    let blocking_task = cluster
        .blocking_task(move |ctx| {
            s.notify_one();
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            *r.lock().unwrap() = ctx.cancel_reason();
            d.notify_one();
            Ok::<_, String>(2)
        })
        .submit()
        .unwrap();
    async_started.notified().await;
    blocking_started.notified().await;

    let queued = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .submit()
        .unwrap();
    let scheduled = cluster
        .task(|_| async { Ok::<_, String>(4) })
        .delay(HOUR)
        .submit()
        .unwrap();

    cluster.cancel();
    assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));
    assert_eq!(queued.await, Err(TaskError::Shutdown));
    assert_eq!(scheduled.await, Err(TaskError::Shutdown));
    assert_eq!(async_task.await, Err(TaskError::Shutdown));
    assert!(async_dropped.load(Ordering::SeqCst));
    assert_eq!(blocking_task.await, Err(TaskError::Shutdown));
    blocking_done.notified().await;
    assert_eq!(
        *blocking_reason.lock().unwrap(),
        Some(CancelReason::Shutdown)
    );
    yield_until("sub-work saw the shutdown", || {
        sub_reason.lock().unwrap().is_some()
    })
    .await;
    assert_eq!(*sub_reason.lock().unwrap(), Some(CancelReason::Shutdown));

    // Stop after cancel is fine and waits for the workers.
    assert_eq!(cluster.stop(Duration::from_secs(5)).await, Ok(()));
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn stop_twice_and_stop_after_cancel_are_fine() {
    let cluster = Cluster::new(2).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    assert_eq!(cluster.stop(Duration::from_secs(1)).await, Ok(()));
    assert_eq!(cluster.stop(Duration::from_secs(1)).await, Ok(()));
    cluster.cancel();
    assert_eq!(cluster.stop(Duration::from_secs(1)).await, Ok(()));
    assert_eq!(cluster.drain(Duration::from_secs(1)).await, Ok(()));

    let other = Cluster::new(1).unwrap();
    other.cancel();
    other.cancel();
    assert_eq!(other.stop(Duration::from_secs(1)).await, Ok(()));
    assert_eq!(other.stop(Duration::from_secs(1)).await, Ok(()));
    assert_eq!(submit_simple(&other), Err(SubmitError::ShuttingDown));

    // Never ran.
    let idle = Cluster::builder().workers(1).paused().build().unwrap();
    assert_eq!(idle.stop(Duration::from_secs(1)).await, Ok(()));
    assert_eq!(idle.stop(Duration::from_secs(1)).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn run_twice_is_a_no_op_and_run_after_shutdown_is_an_error() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    assert_eq!(cluster.run(), Ok(()));
    assert_eq!(cluster.run(), Ok(()));
    assert_eq!(cluster.clone().run(), Ok(()));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(cluster.run(), Err(RunError::ShutDown));

    let cancelled = Cluster::builder().workers(1).paused().build().unwrap();
    cancelled.cancel();
    assert_eq!(cancelled.run(), Err(RunError::ShutDown));

    let stopped_idle = Cluster::builder().workers(1).paused().build().unwrap();
    stopped_idle.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(stopped_idle.run(), Err(RunError::ShutDown));
}

#[test]
fn zero_workers_is_rejected() {
    assert_eq!(Cluster::new(0).unwrap_err(), BuildError::ZeroWorkers);
    assert_eq!(
        Cluster::builder().workers(0).build().unwrap_err(),
        BuildError::ZeroWorkers
    );
    assert_eq!(Cluster::new(1).unwrap().workers(), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_clone_shuts_down_and_workers_exit() {
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 0);
    let cluster = Cluster::new(1).unwrap();
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (s, d) = (started.clone(), dropped.clone());
    let mut running = cluster
        .task(move |_| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                let _guard = DropFlag(d);
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, String>(1)
            }
        })
        .submit()
        .unwrap();
    let mut queued = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .submit()
        .unwrap();
    let scheduled = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .delay(HOUR)
        .submit()
        .unwrap();
    started.notified().await;
    // One worker and the timekeeper.
    assert_eq!(metrics.num_alive_tasks(), 2);

    // Dropping a clone that is not the last changes nothing.
    let last = cluster.clone();
    drop(cluster);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!dropped.load(Ordering::SeqCst));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut queued)
            .await
            .is_err(),
        "the queued task must still be pending"
    );
    assert!(tokio::time::timeout(Duration::from_secs(1), &mut running)
        .await
        .is_err());

    drop(last);
    assert_eq!(queued.await, Err(TaskError::Shutdown));
    assert_eq!(scheduled.await, Err(TaskError::Shutdown));
    assert_eq!(running.await, Err(TaskError::Shutdown));
    assert!(dropped.load(Ordering::SeqCst));
    yield_until("workers and timekeeper exit", || {
        metrics.num_alive_tasks() == 0
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn parent_token_cancels_the_cluster() {
    let parent = CancellationToken::new();
    let cluster = Cluster::builder()
        .workers(1)
        .cancel_on(parent.child_token())
        .build()
        .unwrap();
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (s, d) = (started.clone(), dropped.clone());
    let running = cluster
        .task(move |_| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                let _guard = DropFlag(d);
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, String>(1)
            }
        })
        .submit()
        .unwrap();
    let scheduled = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .delay(HOUR)
        .submit()
        .unwrap();
    let sub = cluster.subscribe::<i32, String>(scheduled.id()).unwrap();
    started.notified().await;

    let t0 = Instant::now();
    parent.cancel();
    assert_eq!(running.await, Err(TaskError::Shutdown));
    assert_eq!(scheduled.await, Err(TaskError::Shutdown));
    assert_eq!(sub.await, Err(TaskError::Shutdown));
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(Instant::now(), t0);
    assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));
    assert_eq!(cluster.run(), Err(RunError::ShutDown));
    assert_eq!(cluster.stop(Duration::from_secs(1)).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn parent_token_cancelled_before_run() {
    let parent = CancellationToken::new();
    let cluster = Cluster::builder()
        .workers(1)
        .cancel_on(parent.clone())
        .build()
        .unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .submit()
        .unwrap();
    parent.cancel();
    assert_eq!(cluster.run(), Err(RunError::ShutDown));
    assert_eq!(h.await, Err(TaskError::Shutdown));
    assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));
}

#[tokio::test(start_paused = true)]
async fn tasks_queued_before_run_resolve_as_shutdown_on_stop() {
    let cluster = Cluster::builder().workers(2).paused().build().unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let r = ran.clone();
            cluster
                .task(move |_| {
                    r.store(true, Ordering::SeqCst);
                    async move { Ok::<_, String>(i) }
                })
                .delay(Duration::from_secs(i))
                .submit()
                .unwrap()
        })
        .collect();
    assert_eq!(cluster.stats().held, 3);
    assert_eq!(cluster.stop(Duration::from_secs(1)).await, Ok(()));
    for h in handles {
        assert_eq!(h.await, Err(TaskError::Shutdown));
    }
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(cluster.stats().held, 0);
    assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));
    assert_eq!(cluster.run(), Err(RunError::ShutDown));
}

/// A drain whose last piece of work (a retry waiting for its backoff) is
/// cancelled ends at once: the idle workers learn that nothing is left.
#[tokio::test(start_paused = true)]
async fn drain_ends_when_its_last_waiting_retry_is_cancelled() {
    let cluster = Cluster::new(2).unwrap();
    let h = cluster
        .task(|_| async { Err::<(), _>("fail") })
        .id("r")
        .retry(1)
        .backoff(FixedBackoff::new(Duration::from_secs(10)))
        .submit()
        .unwrap();
    let c = cluster.clone();
    yield_until("the retry waits in the queue", || {
        let s = c.stats();
        s.running == 0 && s.queued == 1
    })
    .await;
    let t0 = Instant::now();
    let drainer = {
        let c = cluster.clone();
        tokio::spawn(async move { c.drain(HOUR).await })
    };
    tokio::task::yield_now().await;
    assert!(cluster.cancel_task("r").took_effect());
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(drainer.await.unwrap(), Ok(()));
    assert_eq!(Instant::now() - t0, Duration::ZERO, "the drain waited");
}

/// The runtime shutting down while a worker yields between claiming a task
/// and starting it still settles that task (as shut down).
#[test]
fn a_claim_is_settled_when_the_runtime_drops_the_worker_holding_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let (cluster, handle) = rt.block_on(async move {
        let cluster = Cluster::new(2).unwrap();
        for _ in 0..10 {
            tokio::task::yield_now().await; // both workers go idle
        }
        // Attempt 1 fails; its requeue wakes the other worker, so the
        // first one yields holding the claim of attempt 2.
        let h = cluster
            .task(move |_| {
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if n == 1 {
                        Err::<u32, String>("first".into())
                    } else {
                        std::future::pending().await
                    }
                }
            })
            .retry(1)
            .submit()
            .unwrap();
        while attempts.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Attempt 2 is claimed (its worker yielded) but not started.
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        assert_eq!(cluster.stats().running, 1);
        (cluster, h)
    });
    drop(rt); // the worker futures are dropped wherever they are
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let out = rt.block_on(async { tokio::time::timeout(HOUR, handle).await });
    assert!(
        matches!(out, Ok(Err(TaskError::Shutdown))),
        "the claim was lost: {:?}",
        out.map(|r| r.map(|_| ()))
    );
    drop(cluster);
}

/// The runtime shutting down while a worker waits for a timed-out blocking
/// attempt to return (before requeueing its retry) still settles the task.
#[test]
fn a_claim_waiting_for_a_timed_out_blocking_attempt_is_settled_when_the_runtime_drops() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let rt = paused();
    let (release, parked) = std::sync::mpsc::channel::<()>();
    let parked = Arc::new(Mutex::new(parked));
    let (token_tx, mut token_rx) = tokio::sync::mpsc::unbounded_channel();
    let (cluster, handle) = rt.block_on(async move {
        let cluster = Cluster::new(1).unwrap();
        let h = cluster
            .blocking_task(move |ctx| {
                if ctx.attempt() == 1 {
                    let _ = token_tx.send(ctx.cancellation_token());
                    // Blocks until the test lets it go, long after its timeout.
                    let _ = parked.lock().unwrap().recv();
                }
                Ok::<u32, String>(ctx.attempt())
            })
            .timeout(Duration::from_secs(1))
            .retry(1)
            .submit()
            .unwrap();
        let token = token_rx.recv().await.expect("the first attempt runs");
        // A paused clock does not move by itself while a blocking call runs.
        tokio::time::advance(Duration::from_secs(2)).await;
        // Cancelled by the timeout, in the worker's poll that then went on
        // to wait for the blocking call to return.
        token.cancelled().await;
        assert_eq!(cluster.stats().running, 1, "still claimed");
        (cluster, h)
    });
    release.send(()).unwrap(); // the call returns; the runtime never polls the worker again
    drop(rt);
    let out = paused().block_on(async { tokio::time::timeout(HOUR, handle).await });
    assert!(
        matches!(out, Ok(Err(TaskError::Shutdown))),
        "the claim was lost: {:?}",
        out.map(|r| r.map(|_| ()))
    );
    drop(cluster);
}

/// `stop` from inside an async body returns at once (it would otherwise wait
/// for its own worker until the timeout), having begun the stop.
#[tokio::test(start_paused = true)]
async fn stop_from_inside_an_async_body_returns_at_once_and_stops() {
    for drain in [false, true] {
        let cluster = Cluster::new(1).unwrap();
        let queued = cluster
            .task(|_| async { Ok::<_, String>("queued") })
            .delay(HOUR)
            .submit()
            .unwrap();
        let c = cluster.clone();
        let stopper = cluster
            .task(move |_| {
                let c = c.clone();
                async move {
                    let t0 = Instant::now();
                    let r = if drain {
                        c.drain(HOUR).await
                    } else {
                        c.stop(HOUR).await
                    };
                    Ok::<_, String>((r, t0.elapsed()))
                }
            })
            .submit()
            .unwrap();
        let (r, waited) = stopper.await.unwrap();
        assert_eq!(r, Err(StopError::FromInsideTask), "drain: {drain}");
        assert_eq!(waited, Duration::ZERO, "drain: {drain}");
        // The stop did begin.
        assert_eq!(queued.await, Err(TaskError::Shutdown), "drain: {drain}");
        assert_eq!(submit_simple(&cluster), Err(SubmitError::ShuttingDown));
        let t0 = Instant::now();
        assert_eq!(cluster.stop(HOUR).await, Ok(()));
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }
}

/// The same from a blocking body that blocks on `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_from_inside_a_blocking_body_returns_at_once() {
    let cluster = Cluster::new(1).unwrap();
    let c = cluster.clone();
    let h = cluster
        .blocking_task(move |_| {
            let t0 = std::time::Instant::now();
            let r = tokio::runtime::Handle::current().block_on(c.stop(HOUR));
            Ok::<_, String>((r, t0.elapsed()))
        })
        .submit()
        .unwrap();
    let (r, waited) = tokio::time::timeout(Duration::from_secs(20), h)
        .await
        .expect("the blocking body waited for its own worker")
        .unwrap();
    assert_eq!(r, Err(StopError::FromInsideTask));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(cluster.stop(Duration::from_secs(5)).await, Ok(()));
}

/// A body of one cluster stopping another cluster waits as usual.
#[tokio::test(start_paused = true)]
async fn stop_of_another_cluster_from_a_body_waits() {
    let a = Cluster::new(1).unwrap();
    let b = Cluster::new(1).unwrap();
    let gate = CancellationToken::new();
    let g = gate.clone();
    let running = b
        .task(move |_| {
            let g = g.clone();
            async move {
                g.cancelled().await;
                Ok::<_, String>(())
            }
        })
        .submit()
        .unwrap();
    yield_until("b runs its task", || b.stats().running == 1).await;
    let b2 = b.clone();
    let stopper = a
        .task(move |_| {
            let b2 = b2.clone();
            async move { Ok::<_, String>(b2.stop(HOUR).await) }
        })
        .submit()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(b.stats().running, 1, "b's attempt is left to finish");
    gate.cancel();
    assert_eq!(stopper.await, Ok(Ok(())));
    assert_eq!(running.await, Ok(()));
    a.stop(HOUR).await.unwrap();
}
