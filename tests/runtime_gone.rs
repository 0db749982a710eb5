//! The runtime that runs the workers goes away while the `Cluster` value
//! lives on (issue 8, item 3): the cluster must notice that its workers are
//! gone. Pending handles resolve `Shutdown` (awaited from another runtime),
//! submits are refused, and a running blocking body that polls
//! `is_cancelled()` is told to stop, so dropping the runtime does not hang.
//!
//! Each test runs in a watchdog thread: a hang fails with a message.

// The blocks run on the first runtime hand out handles on purpose: they
// are awaited on another runtime once the first one is gone.
#![allow(clippy::async_yields_async)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, FixedBackoff, RetryMode, SubmitError, TaskError, TaskHandle};

use common::{runtime, watchdog, Flavor, HOUR};

const WATCHDOG: Duration = Duration::from_secs(20);
const LIMIT: Duration = Duration::from_secs(10);

/// A cluster of `workers` built and started in `rt` (its workers run there).
fn started(rt: &tokio::runtime::Runtime, workers: usize) -> Cluster {
    rt.block_on(async {
        let cluster = Cluster::new(workers).unwrap();
        cluster.run().unwrap();
        cluster
    })
}

/// Awaits `h` on a fresh runtime (the first one is gone).
fn outcome_elsewhere<T: Send + 'static>(
    what: &str,
    h: TaskHandle<T, String>,
) -> Result<T, TaskError<String>> {
    let rt = runtime(Flavor::CurrentThread, false);
    rt.block_on(async {
        tokio::time::timeout(LIMIT, h)
            .await
            .unwrap_or_else(|_| panic!("{what}: never resolved after its runtime was dropped"))
    })
}

/// Tasks that are queued (due, behind a busy worker), scheduled, waiting
/// for a requeued retry, or waiting in an immediate retry all resolve
/// `Shutdown` once the runtime is gone; so does the running one.
fn pending_tasks_resolve_shutdown(flavor: Flavor) {
    let rt = runtime(flavor, false);
    let cluster = started(&rt, 2);
    let attempts = Arc::new(AtomicU32::new(0));
    let handles = rt.block_on(async {
        let fails = |a: &Arc<AtomicU32>| {
            let a = a.clone();
            move |_| {
                a.fetch_add(1, SeqCst);
                async { Err::<u32, String>("fails".into()) }
            }
        };
        // Fails at once, then waits an hour in the queue for its retry.
        let requeue = cluster
            .task(fails(&attempts))
            .priority(10)
            .retry(1)
            .retry_mode(RetryMode::Requeue)
            .backoff(FixedBackoff::new(HOUR))
            .submit()
            .unwrap();
        // Fails at once, then waits an hour on its worker for its retry.
        let immediate = cluster
            .task(fails(&attempts))
            .priority(9)
            .retry(1)
            .retry_mode(RetryMode::Immediate)
            .backoff(FixedBackoff::new(HOUR))
            .submit()
            .unwrap();
        let c = cluster.clone();
        let two_failed = {
            let a = attempts.clone();
            move || a.load(SeqCst) == 2
        };
        while !two_failed() {
            tokio::task::yield_now().await;
        }
        // Takes the other worker for good.
        let running = cluster
            .task(|_| async {
                std::future::pending::<()>().await;
                Ok::<u32, String>(0)
            })
            .priority(8)
            .submit()
            .unwrap();
        while c.stats().running < 2 {
            tokio::task::yield_now().await;
        }
        let queued = cluster
            .task(|_| async { Ok::<u32, String>(1) })
            .submit()
            .unwrap();
        let scheduled = cluster
            .task(|_| async { Ok::<u32, String>(2) })
            .delay(HOUR)
            .submit()
            .unwrap();
        let s = cluster.stats();
        assert_eq!((s.queued, s.running), (3, 2), "{s:?}");
        vec![
            ("waiting for a requeued retry", requeue),
            ("waiting in an immediate retry", immediate),
            ("running", running),
            ("queued", queued),
            ("scheduled", scheduled),
        ]
    });
    drop(rt);
    // All awaited at once, so one report names every task left hanging.
    let outcomes = runtime(Flavor::CurrentThread, false).block_on(async {
        let waits: Vec<_> = handles
            .into_iter()
            .map(|(what, h)| {
                tokio::spawn(async move { (what, tokio::time::timeout(LIMIT, h).await) })
            })
            .collect();
        let mut outcomes = Vec::new();
        for w in waits {
            outcomes.push(w.await.unwrap());
        }
        outcomes
    });
    let wrong: Vec<String> = outcomes
        .into_iter()
        .filter(|(_, out)| !matches!(out, Ok(Err(TaskError::Shutdown))))
        .map(|(what, out)| match out {
            Err(_) => format!("{what}: never resolved"),
            Ok(out) => format!("{what}: {out:?}"),
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{flavor:?}: after the workers' runtime was dropped, every pending task must resolve Shutdown: {wrong:?}"
    );
    assert_eq!(attempts.load(SeqCst), 2, "no retry ran");
}

#[test]
fn pending_tasks_resolve_shutdown_when_the_runtime_is_dropped_current_thread() {
    watchdog("pending tasks, current_thread", WATCHDOG, || {
        pending_tasks_resolve_shutdown(Flavor::CurrentThread)
    });
}

#[test]
fn pending_tasks_resolve_shutdown_when_the_runtime_is_dropped_multi_thread() {
    watchdog("pending tasks, multi_thread", WATCHDOG, || {
        pending_tasks_resolve_shutdown(Flavor::MultiThread)
    });
}

/// A subscriber of a pending task is answered too.
#[test]
fn subscribers_are_answered_when_the_runtime_is_dropped() {
    watchdog("subscribers", WATCHDOG, || {
        let rt = runtime(Flavor::CurrentThread, false);
        let cluster = started(&rt, 1);
        let sub = rt.block_on(async {
            let _h = cluster
                .task(|_| async { Ok::<u32, String>(1) })
                .id("later")
                .delay(HOUR)
                .submit()
                .unwrap();
            cluster.subscribe::<u32, String>("later").unwrap()
        });
        drop(rt);
        let out = runtime(Flavor::CurrentThread, false).block_on(async {
            tokio::time::timeout(LIMIT, sub)
                .await
                .expect("the subscriber was never answered")
        });
        assert_eq!(out, Err(TaskError::Shutdown));
        let s = cluster.stats();
        assert_eq!((s.queued, s.running), (0, 0), "{s:?}");
    });
}

/// Once the workers' runtime is gone, `submit` refuses instead of
/// accepting a task that will never run.
#[test]
fn submit_is_refused_once_the_runtime_is_dropped() {
    watchdog("submit after the runtime", WATCHDOG, || {
        for flavor in Flavor::ALL {
            let rt = runtime(flavor, false);
            let cluster = started(&rt, 2);
            rt.block_on(async {
                let h = cluster
                    .task(|_| async { Ok::<u32, String>(5) })
                    .submit()
                    .unwrap();
                assert_eq!(h.await, Ok(5));
            });
            drop(rt);
            let r = cluster
                .task(|_| async { Ok::<u32, String>(6) })
                .submit()
                .map(|h| h.id());
            assert_eq!(
                r,
                Err(SubmitError::ShuttingDown),
                "{flavor:?}: a submit after the workers' runtime was dropped"
            );
        }
    });
}

/// A blocking body polling `is_cancelled()` is told to stop when the
/// runtime is dropped (tokio's runtime drop waits for blocking threads: if
/// the body is never signalled, the drop hangs forever).
#[test]
fn a_running_blocking_body_is_signalled_when_the_runtime_is_dropped() {
    watchdog("blocking body and runtime drop", WATCHDOG, || {
        for flavor in Flavor::ALL {
            let rt = runtime(flavor, false);
            let cluster = started(&rt, 1);
            let started = Arc::new(AtomicBool::new(false));
            let told = Arc::new(AtomicBool::new(false));
            let (s, t) = (started.clone(), told.clone());
            let h = rt.block_on(async {
                let h = cluster
                    .blocking_task(move |ctx| {
                        s.store(true, SeqCst);
                        // Polls as documented; gives up after a long while
                        // so that a failing run ends (the watchdog reports it).
                        let t0 = std::time::Instant::now();
                        while !ctx.is_cancelled() {
                            if t0.elapsed() > Duration::from_secs(60) {
                                return Ok::<u32, String>(0);
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        t.store(true, SeqCst);
                        Ok(1)
                    })
                    .submit()
                    .unwrap();
                let t0 = std::time::Instant::now();
                while !started.load(SeqCst) {
                    assert!(t0.elapsed() < LIMIT, "the blocking body never started");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                h
            });

            // The runtime's drop waits for the blocking thread.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                drop(rt);
                let _ = tx.send(());
            });
            rx.recv_timeout(LIMIT).unwrap_or_else(|_| {
                panic!(
                    "{flavor:?}: dropping the runtime hangs: the blocking body was never told to stop"
                )
            });
            assert!(told.load(SeqCst), "{flavor:?}: the body saw its signal");
            assert_eq!(
                outcome_elsewhere("the blocking task", h),
                Err(TaskError::Shutdown),
                "{flavor:?}"
            );
        }
    });
}
