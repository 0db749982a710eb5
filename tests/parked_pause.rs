//! Attempts parked in `TaskContext::wait_for` and the cluster and key
//! pauses: a wait that ends during a pause resumes after it (and a cancel,
//! drain or timed pause reaches it), and an `Immediate` retry after a
//! parked attempt waits for the resume like any other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{CancelOutcome, Cluster, RetryMode, TaskError, TaskHandle};
use tokio::time::Instant;

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn sleeper(
    secs: u64,
) -> impl Fn(
    corral::TaskContext,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, String>> + Send>>
       + Send
       + Sync
       + 'static {
    move |_| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            Ok(1)
        })
    }
}

/// Submits "waiter", which parks in `wait_for("slow")` and then answers
/// one more than "slow".
fn waiter_on_slow(c: &Cluster) -> TaskHandle<u32, String> {
    c.task(|ctx| async move {
        let v = ctx
            .wait_for::<u32, String>("slow")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<u32, String>(v + 1)
    })
    .id("waiter")
    .submit()
    .unwrap()
}

/// One worker: "waiter" runs first and parks in `wait_for("slow")`, freeing
/// the worker for "slow" (10 s). The cluster is paused while "slow" runs;
/// "slow" finishes during the pause (ending the wait), then the cluster is
/// resumed.
async fn waiter_whose_wait_ends_during_a_pause(c: &Cluster) -> TaskHandle<u32, String> {
    let waiter = waiter_on_slow(c);
    let slow = c.task(sleeper(10)).id("slow").submit().unwrap();
    settle().await;
    assert_eq!(c.stats().waiting, 1, "the waiter is parked");
    assert!(c.pause());
    assert_eq!(slow.await, Ok(1)); // a running attempt finishes during a pause
    settle().await;
    assert!(c.resume());
    waiter
}

#[tokio::test(start_paused = true)]
async fn a_parked_attempt_whose_wait_ended_during_a_pause_resumes_after_it() {
    let c = Cluster::new(1).unwrap();
    let waiter = waiter_whose_wait_ends_during_a_pause(&c).await;
    let out = tokio::time::timeout(Duration::from_secs(3600), waiter).await;
    assert_eq!(out, Ok(Ok(2)), "never resumed; stats {:?}", c.stats());
}

#[tokio::test(start_paused = true)]
async fn a_requested_cancel_of_that_attempt_resolves_it() {
    let c = Cluster::new(1).unwrap();
    let waiter = waiter_whose_wait_ends_during_a_pause(&c).await;
    assert_eq!(c.cancel_task("waiter"), CancelOutcome::Requested);
    let out = tokio::time::timeout(Duration::from_secs(3600), waiter).await;
    assert_eq!(out, Ok(Err(TaskError::Cancelled)), "stats {:?}", c.stats());
}

/// Each attempt's number and start, from the test's start.
type Starts = Arc<Mutex<Vec<(u32, Duration)>>>;

/// A waiter with `retry(1)` in `Immediate` mode whose parked attempt 1
/// fails; returns the attempt log and the handle.
fn immediate_waiter(c: &Cluster, key: Option<&str>) -> (Starts, TaskHandle<u32, String>) {
    let t0 = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let s = starts.clone();
    let mut b = c
        .task(move |ctx| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((ctx.attempt(), t0.elapsed()));
                if ctx.attempt() == 1 {
                    let _ = ctx.wait_for::<u32, String>("slow").await;
                    return Err("attempt 1 fails".to_string());
                }
                Ok(ctx.attempt())
            }
        })
        .retry(1)
        .retry_mode(RetryMode::Immediate);
    if let Some(k) = key {
        b = b.key(k);
    }
    (starts, b.submit().unwrap())
}

#[tokio::test(start_paused = true)]
async fn an_immediate_retry_after_a_parked_attempt_waits_for_the_cluster_resume() {
    let c = Cluster::new(2).unwrap();
    let (starts, waiter) = immediate_waiter(&c, None);
    let slow = c.task(sleeper(10)).id("slow").submit().unwrap();
    let other = c.task(sleeper(20)).id("other").submit().unwrap();
    settle().await;
    assert!(c.pause());
    assert_eq!(slow.await, Ok(1));
    assert_eq!(other.await, Ok(1)); // its worker resumes the parked attempt
    tokio::time::sleep(Duration::from_secs(60)).await;
    let seen = starts.lock().unwrap().clone();
    assert!(c.is_paused());
    assert_eq!(
        seen.len(),
        1,
        "attempt 2 started while the cluster was paused: {seen:?}"
    );
    assert!(c.resume());
    assert_eq!(waiter.await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn an_immediate_retry_after_a_parked_attempt_waits_for_the_key_resume() {
    let c = Cluster::new(1).unwrap();
    let (starts, waiter) = immediate_waiter(&c, Some("K"));
    let slow = c.task(sleeper(10)).id("slow").submit().unwrap();
    settle().await;
    assert!(c.pause_key("K"));
    assert_eq!(slow.await, Ok(1));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let seen = starts.lock().unwrap().clone();
    assert!(c.is_key_paused("K"));
    assert_eq!(
        seen.len(),
        1,
        "attempt 2 started while its key was paused: {seen:?}"
    );
    assert!(c.resume_key("K"));
    assert_eq!(waiter.await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn a_drain_runs_that_attempt_to_its_end() {
    let c = Cluster::new(1).unwrap();
    let waiter = waiter_on_slow(&c);
    let slow = c.task(sleeper(10)).id("slow").submit().unwrap();
    settle().await;
    assert!(c.pause());
    assert_eq!(slow.await, Ok(1));
    settle().await;
    // "A drain ends a pause" and "first runs every task that is due".
    let drained = c.drain(Duration::from_secs(60)).await;
    assert_eq!(drained, Ok(()));
    assert_eq!(waiter.await, Ok(2));
}
