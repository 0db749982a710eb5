//! Progress reports (`TaskContext::progress`, read from the handle and by
//! id), the stall timeout, and the attempt history (`keep_history`,
//! `TaskHandle::with_history`).

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corral::{CancelReason, Cluster, Progress, SubmitError, TaskError};
use tokio::sync::Notify;
use tokio::time::Instant;

use common::{resolve, yield_until, HOUR, MS, SEC};

#[tokio::test(start_paused = true)]
async fn the_latest_report_wins_on_the_handle_and_by_id() {
    let c = Cluster::new(1).unwrap();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let mut h = c
        .task(move |ctx| {
            let g = g.clone();
            async move {
                ctx.progress(1);
                ctx.progress(Progress::new(2).of(4));
                ctx.progress(Progress::new(3).of(4).message("three"));
                g.notified().await;
                Ok::<_, String>(())
            }
        })
        .id("job")
        .submit()
        .unwrap();
    assert_eq!(h.progress(), None, "nothing reported before the start");
    assert_eq!(c.progress("job"), None);
    yield_until("the body reported", || h.progress().is_some()).await;
    let p = h.progress().unwrap();
    assert_eq!((p.done, p.total, p.attempt), (3, Some(4), 1));
    assert_eq!(p.message.as_deref(), Some("three"));
    assert_eq!(p.fraction(), Some(0.75));
    assert_eq!(p.to_string(), "3/4 (75%): three");
    assert_eq!(c.progress("job"), Some(p));
    gate.notify_one();
    assert_eq!(resolve_mut(&mut h).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn progress_by_generated_id() {
    let c = Cluster::new(1).unwrap();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let h = c
        .task(move |ctx| {
            let g = g.clone();
            async move {
                ctx.progress(7);
                g.notified().await;
                Ok::<_, String>(())
            }
        })
        .submit()
        .unwrap();
    let id = h.id();
    yield_until("the body reported", || c.progress(&id).is_some()).await;
    assert_eq!(c.progress(&id).map(|p| p.done), Some(7));
    // Another cluster's id addresses nothing here.
    let other = Cluster::new(1).unwrap();
    assert_eq!(other.progress(&id), None);
    gate.notify_one();
    assert_eq!(resolve(SEC, "job", h).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn progress_after_completion_stays_on_the_handle_and_in_the_cache() {
    let c = Cluster::new(1).unwrap();
    let report = |ctx: corral::TaskContext| async move {
        ctx.progress(Progress::new(10).of(10));
        Ok::<_, String>(())
    };
    let mut plain = c.task(report).id("plain").submit().unwrap();
    let mut cached = c
        .task(report)
        .id("cached")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(resolve_mut(&mut plain).await, Ok(()));
    assert_eq!(resolve_mut(&mut cached).await, Ok(()));
    // The handle keeps the last report after the end.
    assert_eq!(plain.progress().map(|p| p.done), Some(10));
    assert_eq!(cached.progress().map(|p| p.done), Some(10));
    // By id: only while the cluster holds the task (here: cached).
    assert_eq!(c.progress("plain"), None);
    assert_eq!(c.progress("cached").map(|p| p.fraction()), Some(Some(1.0)));
}

#[tokio::test(start_paused = true)]
async fn reports_carry_their_attempt_and_survive_a_retry() {
    let c = Cluster::new(1).unwrap();
    let h = c
        .task(|ctx| async move {
            ctx.progress(ctx.attempt() as u64 * 10);
            if ctx.attempt() == 1 {
                Err("again".to_string())
            } else {
                std::future::pending::<()>().await;
                Ok(())
            }
        })
        .id("job")
        .retry(1)
        .backoff(corral::FixedBackoff::new(HOUR))
        .submit()
        .unwrap();
    yield_until("the first attempt reported", || c.progress("job").is_some()).await;
    // Waiting for its retry: the first attempt's report is still the latest.
    let p = c.progress("job").unwrap();
    assert_eq!((p.done, p.attempt), (10, 1));
    tokio::time::sleep(HOUR).await;
    yield_until("the retry reported", || {
        c.progress("job").is_some_and(|p| p.attempt == 2)
    })
    .await;
    assert_eq!(h.progress().map(|p| p.done), Some(20));
    assert!(common::cancel(&c, "job"));
    assert_eq!(resolve(SEC, "job", h).await, Err(TaskError::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn a_silent_attempt_stalls_after_its_stall_timeout() {
    let c = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let h = c
        .task(|_ctx| async {
            std::future::pending::<()>().await;
            Ok::<_, String>(())
        })
        .stall_timeout(100 * MS)
        .submit()
        .unwrap();
    let out = resolve(HOUR, "stalled", h).await;
    assert_eq!(out, Err(TaskError::Stalled { limit: 100 * MS }));
    assert!(out.unwrap_err().is_stalled());
    assert_eq!(t0.elapsed(), 100 * MS, "ended exactly at the stall timeout");
}

#[tokio::test(start_paused = true)]
async fn reports_keep_an_attempt_alive_past_its_stall_timeout() {
    let c = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let h = c
        .task(|ctx| async move {
            // 1 s of work in all, a report every 50 ms: never 100 ms silent.
            for i in 0..20u64 {
                tokio::time::sleep(50 * MS).await;
                ctx.progress(i);
            }
            Ok::<_, String>("done")
        })
        .stall_timeout(100 * MS)
        .submit()
        .unwrap();
    assert_eq!(resolve(HOUR, "reporting", h).await, Ok("done"));
    assert_eq!(t0.elapsed(), SEC);
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_the_last_report_counts_from_that_report() {
    let c = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let h = c
        .task(|ctx| async move {
            tokio::time::sleep(80 * MS).await;
            ctx.progress(1);
            std::future::pending::<()>().await;
            Ok::<_, String>(())
        })
        .stall_timeout(100 * MS)
        .submit()
        .unwrap();
    let out = resolve(HOUR, "stalled", h).await;
    assert!(matches!(out, Err(TaskError::Stalled { .. })), "{out:?}");
    assert_eq!(t0.elapsed(), 180 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_attempt_is_retried_and_recorded_in_the_history() {
    let c = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let h = c
        .task(|ctx| async move {
            if ctx.attempt() < 3 {
                std::future::pending::<()>().await;
            }
            Ok::<_, String>(ctx.attempt())
        })
        .stall_timeout(100 * MS)
        .retry(5)
        .keep_history()
        .submit()
        .unwrap();
    let (out, history) = resolve_history(h).await;
    assert_eq!(out, Ok(3));
    assert_eq!(history.attempts(), Some(3));
    let stalled = TaskError::Stalled { limit: 100 * MS };
    assert_eq!(history.errors(), [stalled.clone(), stalled]);
    assert_eq!(t0.elapsed(), 200 * MS);
}

#[tokio::test(start_paused = true)]
async fn retry_if_sees_a_stall_and_can_refuse_it() {
    let c = Cluster::new(1).unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let h = c
        .task(move |_ctx| {
            r.fetch_add(1, SeqCst);
            async {
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            }
        })
        .stall_timeout(100 * MS)
        .retry(5)
        .retry_if(|err| !err.is_stalled())
        .submit()
        .unwrap();
    assert_eq!(
        resolve(HOUR, "stalled", h).await,
        Err(TaskError::Stalled { limit: 100 * MS })
    );
    assert_eq!(runs.load(SeqCst), 1);
}

/// Polls `fut`, advancing the paused clock 1 ms at a time: a blocking body
/// on tokio's blocking pool keeps the clock from advancing by itself.
async fn drive<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            _ = tokio::time::advance(MS) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_blocking_body_is_signalled_with_its_reason() {
    let c = Cluster::new(1).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let t0 = Instant::now();
    let h = c
        .blocking_task(move |ctx| {
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(ctx.cancel_reason());
            }
            Ok::<(), String>(())
        })
        .stall_timeout(100 * MS)
        .submit()
        .unwrap();
    assert_eq!(drive(h).await, Err(TaskError::Stalled { limit: 100 * MS }));
    assert!(Instant::now() >= t0 + 100 * MS);
    // The blocking call learns why.
    let reason = drive(rx).await.expect("the body reports its cancel reason");
    assert_eq!(reason, Some(CancelReason::Stalled));
}

#[tokio::test(start_paused = true)]
async fn a_zero_stall_timeout_is_refused() {
    let c = Cluster::new(1).unwrap();
    let err = c
        .task(|_ctx| async { Ok::<(), String>(()) })
        .stall_timeout(Duration::ZERO)
        .submit()
        .unwrap_err();
    assert!(matches!(
        err,
        SubmitError::InvalidOption {
            option: "stall_timeout",
            ..
        }
    ));
}

/// Awaits a handle by reference (so that it can be read after), for at most an hour.
async fn resolve_mut<T, E>(h: &mut corral::TaskHandle<T, E>) -> Result<T, TaskError<E>> {
    tokio::time::timeout(HOUR, h)
        .await
        .expect("the handle never resolved (lost outcome)")
}

async fn resolve_history<T, E>(
    h: corral::TaskHandle<T, E>,
) -> (Result<T, TaskError<E>>, corral::History<E>) {
    tokio::time::timeout(HOUR, h.with_history())
        .await
        .expect("the handle never resolved (lost outcome)")
}

#[tokio::test(start_paused = true)]
async fn history_counts_attempts_and_keeps_earlier_errors() {
    common::quiet_panics_starting_with("dedup-history:");
    let c = Cluster::new(1).unwrap();
    let h = c
        .task(|ctx| async move {
            match ctx.attempt() {
                1 => Err("first".to_string()),
                2 => panic!("dedup-history: second"),
                3 => {
                    tokio::time::sleep(HOUR).await;
                    Ok(0)
                }
                n => Err(format!("last {n}")),
            }
        })
        .timeout(SEC)
        .retry(3)
        .keep_history()
        .submit()
        .unwrap();
    let (out, history) = resolve_history(h).await;
    assert_eq!(out, Err(TaskError::Failed("last 4".to_string())));
    assert_eq!(history.attempts(), Some(4));
    assert_eq!(
        history.errors(),
        [
            TaskError::Failed("first".to_string()),
            TaskError::Panicked {
                message: "dedup-history: second".to_string()
            },
            TaskError::TimedOut { limit: SEC },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn history_of_a_first_time_success_is_one_attempt_and_no_errors() {
    let c = Cluster::new(1).unwrap();
    let h = c
        .task(|_ctx| async { Ok::<_, String>(1) })
        .retry(3)
        .keep_history()
        .submit()
        .unwrap();
    let (out, history) = resolve_history(h).await;
    assert_eq!(out, Ok(1));
    assert_eq!(history.attempts(), Some(1));
    assert!(history.errors().is_empty());
}

#[tokio::test(start_paused = true)]
async fn history_of_a_task_cancelled_while_waiting_for_its_retry() {
    let c = Cluster::new(1).unwrap();
    let h = c
        .task(|ctx| async move { Err::<(), _>(format!("failed {}", ctx.attempt())) })
        .id("job")
        .retry(3)
        .backoff(corral::FixedBackoff::new(HOUR))
        .keep_history()
        .submit()
        .unwrap();
    tokio::time::sleep(SEC).await;
    assert!(common::cancel(&c, "job"));
    let (out, history) = resolve_history(h).await;
    assert_eq!(out, Err(TaskError::Cancelled));
    assert_eq!(history.attempts(), Some(1));
    // The error the cancel replaced was the first attempt's.
    assert_eq!(
        history.errors(),
        [TaskError::Failed("failed 1".to_string())]
    );
}

#[tokio::test(start_paused = true)]
async fn history_of_a_task_cancelled_before_it_started_is_zero_attempts() {
    let c = Cluster::new(1).unwrap();
    let h = c
        .task(|_ctx| async { Ok::<(), String>(()) })
        .id("job")
        .delay(HOUR)
        .keep_history()
        .submit()
        .unwrap();
    assert!(common::cancel(&c, "job"));
    let (out, history) = resolve_history(h).await;
    assert_eq!(out, Err(TaskError::Cancelled));
    assert_eq!(history.attempts(), Some(0));
    assert!(history.errors().is_empty());
}

#[tokio::test(start_paused = true)]
async fn without_keep_history_nothing_is_recorded() {
    let c = Cluster::new(1).unwrap();
    let h = c
        .task(|ctx| async move {
            if ctx.attempt() < 2 {
                Err("again".to_string())
            } else {
                Ok(())
            }
        })
        .retry(1)
        .submit()
        .unwrap();
    let (out, history) = resolve_history(h).await;
    assert_eq!(out, Ok(()));
    assert_eq!(history.attempts(), None);
    assert!(history.errors().is_empty());
}
