//! Per-attempt timeouts: async attempts are dropped, blocking ones are
//! signalled, zero is rejected, and each retry gets its own timeout.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{CancelReason, Cluster, SubmitError, TaskError};
use tokio::time::Instant;

use common::{DropFlag, SEC};

/// Awaits `fut` while moving the paused clock forward by hand: the paused
/// clock does not auto-advance while a `spawn_blocking` task runs.
async fn drive<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            biased;
            out = &mut fut => return out,
            _ = tokio::time::advance(Duration::from_millis(1)) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn async_timeout_is_timed_out_and_the_future_is_dropped() {
    let cluster = Cluster::new(1).unwrap();
    let dropped = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let deadline = Arc::new(Mutex::new(None));
    let t0 = Instant::now();
    let (d, f, dl) = (dropped.clone(), finished.clone(), deadline.clone());
    let h = cluster
        .task(move |ctx| {
            let guard = DropFlag(d.clone());
            let f = f.clone();
            *dl.lock().unwrap() = Some(ctx.deadline());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                f.store(true, Ordering::SeqCst);
                Ok::<_, String>(())
            }
        })
        .timeout(SEC)
        .submit()
        .unwrap();
    assert_eq!(h.await, Err(TaskError::TimedOut { limit: SEC }));
    assert_eq!(
        Instant::now(),
        t0 + SEC,
        "the timeout fires after exactly 1 s"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the timed-out future must be dropped by the time the outcome is out"
    );
    assert_eq!(*deadline.lock().unwrap(), Some(Some(t0 + SEC)));
    // Even much later, the body never resumed.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(!finished.load(Ordering::SeqCst));

    // The worker is free again.
    let h = cluster
        .task(|_| async { Ok::<_, String>(5) })
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(5));
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timeout_is_told_apart_from_the_tasks_own_error() {
    let cluster = Cluster::new(2).unwrap();
    let failing = cluster
        .task(|_| async { Err::<(), _>("own error".to_string()) })
        .timeout(SEC)
        .submit()
        .unwrap();
    let slow = cluster
        .task(|_| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Err::<(), _>("own error".to_string())
        })
        .timeout(SEC)
        .submit()
        .unwrap();
    let e1 = failing.await.unwrap_err();
    let e2 = slow.await.unwrap_err();
    assert!(e1.is_failed() && !e1.is_timeout());
    assert!(e2.is_timeout() && !e2.is_failed());
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn blocking_timeout_signals_the_body() {
    let cluster = Cluster::new(1).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let limit = Duration::from_millis(50);
    let t0 = Instant::now();
    let h = cluster
        .blocking_task(move |ctx| {
            while !ctx.is_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(ctx.cancel_reason());
            }
            Ok::<_, String>("finished anyway")
        })
        .timeout(limit)
        .submit()
        .unwrap();
    let out = drive(h).await;
    assert_eq!(out, Err(TaskError::TimedOut { limit }));
    assert!(Instant::now() >= t0 + limit);
    let reason = drive(rx).await.expect("the body reports its cancel reason");
    assert_eq!(reason, Some(CancelReason::TimedOut));

    // The worker is still usable after the blocking body returned.
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .submit()
        .unwrap();
    assert_eq!(drive(h).await, Ok(1));
    drive(cluster.stop(SEC)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_is_rejected_at_submit() {
    let cluster = Cluster::new(1).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let err = cluster
        .task(move |_| {
            r.store(true, Ordering::SeqCst);
            async { Ok::<_, String>(()) }
        })
        .timeout(Duration::ZERO)
        .submit()
        .unwrap_err();
    assert!(
        matches!(
            err,
            SubmitError::InvalidOption {
                option: "timeout",
                ..
            }
        ),
        "{err:?}"
    );
    let r = ran.clone();
    let err = cluster
        .blocking_task(move |_| {
            r.store(true, Ordering::SeqCst);
            Ok::<_, String>(())
        })
        .timeout(Duration::ZERO)
        .submit()
        .unwrap_err();
    assert!(matches!(
        err,
        SubmitError::InvalidOption {
            option: "timeout",
            ..
        }
    ));
    assert_eq!(cluster.stats().held, 0);
    tokio::time::sleep(SEC).await;
    assert!(!ran.load(Ordering::SeqCst));
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timeout_applies_to_each_attempt() {
    let cluster = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let s = starts.clone();
    let h = cluster
        .task(move |ctx| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push((ctx.attempt(), Instant::now(), ctx.deadline()));
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, String>(())
            }
        })
        .timeout(SEC)
        .retry(2)
        .submit()
        .unwrap();
    assert_eq!(h.await, Err(TaskError::TimedOut { limit: SEC }));
    // Three attempts, each given its own full second.
    assert_eq!(
        *starts.lock().unwrap(),
        vec![
            (1, t0, Some(t0 + SEC)),
            (2, t0 + SEC, Some(t0 + 2 * SEC)),
            (3, t0 + 2 * SEC, Some(t0 + 3 * SEC)),
        ]
    );
    assert_eq!(Instant::now(), t0 + 3 * SEC);
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retry_if_can_refuse_to_retry_timeouts() {
    let cluster = Cluster::new(1).unwrap();
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (a, s) = (attempts.clone(), seen.clone());
    let h = cluster
        .task(move |_| {
            a.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, String>(())
            }
        })
        .timeout(SEC)
        .retry(2)
        .retry_if(move |e: &TaskError<String>| {
            s.lock().unwrap().push(e.clone());
            !e.is_timeout()
        })
        .submit()
        .unwrap();
    assert_eq!(h.await, Err(TaskError::TimedOut { limit: SEC }));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![TaskError::TimedOut { limit: SEC }],
        "the predicate sees the timeout"
    );
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempt_then_success_on_retry() {
    let cluster = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let h = cluster
        .task(|ctx| async move {
            if ctx.attempt() == 1 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok::<_, String>(ctx.attempt())
        })
        .timeout(SEC)
        .retry(1)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(2));
    assert_eq!(Instant::now(), t0 + SEC);
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn blocking_timeout_is_per_attempt_and_the_next_attempt_starts_uncancelled() {
    let cluster = Cluster::new(1).unwrap();
    let limit = Duration::from_millis(20);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let s = seen.clone();
    let h = cluster
        .blocking_task(move |ctx| {
            let at_start = ctx.cancel_reason();
            if ctx.attempt() == 1 {
                started_tx.send(()).unwrap();
                while !ctx.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            s.lock()
                .unwrap()
                .push((ctx.attempt(), at_start, ctx.cancel_reason()));
            Ok::<_, String>(ctx.attempt())
        })
        .timeout(limit)
        .retry(1)
        .submit()
        .unwrap();
    // The clock stands still while the blocking body runs: move it past the
    // limit once attempt 1 is in its loop, then leave it alone, so that
    // attempt 2 (which returns at once) cannot time out.
    started_rx.recv().await.unwrap();
    tokio::time::advance(limit + Duration::from_millis(1)).await;
    assert_eq!(h.await, Ok(2));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, None, Some(CancelReason::TimedOut)), (2, None, None)],
        "attempt 2 must start with attempt 1's timeout cleared"
    );
    drive(cluster.stop(SEC)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn each_attempt_gets_a_fresh_cancellation_token() {
    let cluster = Cluster::new(1).unwrap();
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let seen = tokens.clone();
    let h = cluster
        .task(move |ctx| {
            let seen = seen.clone();
            async move {
                let token = ctx.cancellation_token();
                seen.lock().unwrap().push(token.clone());
                if ctx.attempt() == 1 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                Ok::<_, String>(token.is_cancelled())
            }
        })
        .timeout(Duration::from_secs(1))
        .retry(1)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(false), "the retry's token is not cancelled");
    let tokens = tokens.lock().unwrap();
    assert_eq!(tokens.len(), 2);
    assert!(
        tokens[0].is_cancelled(),
        "the timeout fired the first attempt's token"
    );
    assert!(!tokens[1].is_cancelled());
}
