//! No worker hogs its thread, and "never" is never (issue 8, items 4 and 7).
//!
//! - On a `current_thread` runtime (the flavour of `#[tokio::test]`), a task
//!   retried endlessly in `Requeue` mode with a zero backoff must not starve
//!   the rest of the runtime: the test's own `cancel_task` gets to run. A
//!   watchdog thread turns the hang into a failure.
//! - `delay(Duration::MAX)` and a `Duration::MAX` backoff, in both retry
//!   modes, never run the task or its retry however far the paused clock
//!   goes (a thousand years, in big steps); the task stays pending until
//!   cancelled or stopped.

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, FixedBackoff, RetryMode, TaskError};

use common::{cancel, resolve, runtime, watchdog, Flavor, SEC};

const WATCHDOG: Duration = Duration::from_secs(20);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Endless failing retries, requeued with no backoff, on one worker of a
/// `current_thread` runtime: the test task still runs, cancels it, and the
/// task resolves `Cancelled`.
#[test]
fn endless_zero_backoff_requeue_does_not_starve_the_runtime() {
    for workers in [1, 2] {
        watchdog(
            &format!("endless requeue with {workers} worker(s) on current_thread"),
            WATCHDOG,
            move || {
                runtime(Flavor::CurrentThread, false).block_on(async move {
                    let cluster = Cluster::new(workers).unwrap();
                    cluster.run().unwrap();
                    let runs = Arc::new(AtomicU32::new(0));
                    let r = runs.clone();
                    let h = cluster
                        .task(move |_| {
                            r.fetch_add(1, SeqCst);
                            async { Err::<u32, String>("again".into()) }
                        })
                        .id("endless")
                        .retry(u32::MAX)
                        .retry_mode(RetryMode::Requeue)
                        .backoff(FixedBackoff::new(Duration::ZERO))
                        .submit()
                        .unwrap();
                    // Let it spin a while: if the worker never yields, this
                    // await never comes back (the watchdog fails the test).
                    tokio::task::yield_now().await;
                    while runs.load(SeqCst) < 1000 {
                        tokio::task::yield_now().await;
                    }
                    assert!(cancel(&cluster, "endless"), "the task was still pending");
                    assert_eq!(
                        resolve(SEC * 10, "endless", h).await,
                        Err(TaskError::Cancelled)
                    );
                    // And the runtime keeps serving other tasks.
                    let other = cluster
                        .task(|_| async { Ok::<u32, String>(1) })
                        .submit()
                        .unwrap();
                    assert_eq!(resolve(SEC * 10, "other", other).await, Ok(1));
                    cluster.stop(SEC * 10).await.unwrap();
                })
            },
        );
    }
}

/// How a task is told "never".
#[derive(Debug, Clone, Copy)]
enum Never {
    Delay,
    Backoff(RetryMode),
}

/// Builds the "never" task, advances the paused clock 1,000 years in steps
/// of 10 years, and checks the task (or its retry) never ran and is still
/// pending; then ends it with `end` and checks its outcome.
async fn never_runs(never: Never, end_with_stop: bool) {
    let cluster = Cluster::new(1).unwrap();
    cluster.run().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let b = cluster
        .task(move |_| {
            r.fetch_add(1, SeqCst);
            async { Err::<u32, String>("fails".into()) }
        })
        .id("never");
    let b = match never {
        Never::Delay => b.delay(Duration::MAX),
        Never::Backoff(mode) => b
            .retry(1)
            .retry_mode(mode)
            .backoff(FixedBackoff::new(Duration::MAX)),
    };
    let h = b.submit().unwrap();
    let first_runs = match never {
        Never::Delay => 0,
        Never::Backoff(_) => 1,
    };
    for _ in 0..first_runs {
        while runs.load(SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
    }
    for step in 0..100 {
        tokio::time::advance(10 * YEAR).await;
        // Let the workers and the timekeeper act on the new time.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            runs.load(SeqCst),
            first_runs,
            "{never:?}: ran after {} years of clock",
            (step + 1) * 10
        );
    }
    let s = cluster.stats();
    assert_eq!(s.queued + s.running, 1, "{never:?}: still pending: {s:?}");
    if end_with_stop {
        cluster.stop(SEC).await.unwrap();
        assert_eq!(
            resolve(SEC, "never", h).await,
            Err(TaskError::Shutdown),
            "{never:?}"
        );
    } else {
        assert!(cancel(&cluster, "never"), "{never:?}");
        assert_eq!(
            resolve(SEC, "never", h).await,
            Err(TaskError::Cancelled),
            "{never:?}"
        );
    }
    assert_eq!(runs.load(SeqCst), first_runs, "{never:?}");
}

#[tokio::test(start_paused = true)]
async fn delay_duration_max_never_runs() {
    never_runs(Never::Delay, false).await;
    never_runs(Never::Delay, true).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_duration_max_never_retries_in_requeue_mode() {
    never_runs(Never::Backoff(RetryMode::Requeue), false).await;
    never_runs(Never::Backoff(RetryMode::Requeue), true).await;
}

#[tokio::test(start_paused = true)]
async fn backoff_duration_max_never_retries_in_immediate_mode() {
    never_runs(Never::Backoff(RetryMode::Immediate), false).await;
    never_runs(Never::Backoff(RetryMode::Immediate), true).await;
}
