//! `on_failure` / `on_complete`: once per task, at its final outcome, in
//! that order, before the handle resolves; panics in them are contained.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, RetryMode, TaskBuilder, TaskError, TaskId};
use tokio::sync::Notify;

use common::{snapshot, Log};

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Failure(String, TaskError<String>),
    Complete(String, Result<i32, TaskError<String>>),
}

fn name(id: &TaskId) -> String {
    id.to_string()
}

/// Adds both callbacks, recording into `log`.
fn record<'c, B>(
    b: TaskBuilder<'c, B, i32, String>,
    log: &Log<Event>,
) -> TaskBuilder<'c, B, i32, String> {
    let (l1, l2) = (log.clone(), log.clone());
    b.on_failure(move |id, err| {
        l1.lock()
            .unwrap()
            .push(Event::Failure(name(id), err.clone()))
    })
    .on_complete(move |id, outcome| {
        l2.lock()
            .unwrap()
            .push(Event::Complete(name(id), outcome.clone()))
    })
}

async fn final_failure_after_retries(mode: RetryMode) {
    let cluster = Cluster::new(1).unwrap();
    let log = Log::default();
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let h = record(
        cluster
            .task(move |ctx| {
                a.fetch_add(1, Ordering::SeqCst);
                async move { Err::<i32, _>(format!("e{}", ctx.attempt())) }
            })
            .id("t")
            .retry(2)
            .retry_mode(mode)
            .backoff(corral::FixedBackoff::new(Duration::from_secs(1))),
        &log,
    )
    .submit()
    .unwrap();
    let err = TaskError::Failed("e3".to_string());
    assert_eq!(h.await, Err(err.clone()));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    // Already there when the handle resolved: no yield in between.
    assert_eq!(
        snapshot(&log),
        vec![
            Event::Failure("t".into(), err.clone()),
            Event::Complete("t".into(), Err(err)),
        ]
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(snapshot(&log).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn failure_then_complete_once_after_requeued_retries() {
    final_failure_after_retries(RetryMode::Requeue).await;
}

#[tokio::test(start_paused = true)]
async fn failure_then_complete_once_after_immediate_retries() {
    final_failure_after_retries(RetryMode::Immediate).await;
}

#[tokio::test(start_paused = true)]
async fn success_after_failed_attempts_calls_only_on_complete() {
    let cluster = Cluster::new(1).unwrap();
    let log = Log::default();
    let h = record(
        cluster
            .task(|ctx| async move {
                if ctx.attempt() < 3 {
                    Err(format!("e{}", ctx.attempt()))
                } else {
                    Ok(30)
                }
            })
            .id("flaky")
            .retry(5),
        &log,
    )
    .submit()
    .unwrap();
    assert_eq!(h.await, Ok(30));
    assert_eq!(
        snapshot(&log),
        vec![Event::Complete("flaky".into(), Ok(30))]
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn plain_success_calls_only_on_complete() {
    let cluster = Cluster::new(1).unwrap();
    let log = Log::default();
    let h = record(
        cluster.task(|_| async { Ok::<_, String>(7) }).id("ok"),
        &log,
    )
    .submit()
    .unwrap();
    assert_eq!(h.await, Ok(7));
    assert_eq!(snapshot(&log), vec![Event::Complete("ok".into(), Ok(7))]);

    // A blocking body too.
    let log = Log::default();
    let h = record(
        cluster.blocking_task(|_| Ok::<_, String>(8)).id("blk"),
        &log,
    )
    .submit()
    .unwrap();
    assert_eq!(h.await, Ok(8));
    assert_eq!(snapshot(&log), vec![Event::Complete("blk".into(), Ok(8))]);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn callbacks_have_run_when_handle_and_subscribers_resolve() {
    let cluster = Cluster::new(1).unwrap();
    let log = Log::default();
    let h = record(
        cluster
            .task(|_| async { Err::<i32, _>("x".to_string()) })
            .id("ordered")
            .delay(Duration::from_secs(1)),
        &log,
    )
    .submit()
    .unwrap();
    let sub = cluster.subscribe::<i32, String>("ordered").unwrap();
    // The subscriber resolves first here: the callbacks must already be done.
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            let r = sub.await;
            (r, snapshot(&log).len())
        })
    };
    let (r, seen) = waiter.await.unwrap();
    assert_eq!(r, Err(TaskError::Failed("x".to_string())));
    assert_eq!(seen, 2);
    assert_eq!(h.await, Err(TaskError::Failed("x".to_string())));
    assert_eq!(snapshot(&log).len(), 2);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn callbacks_fire_for_cancelled_tasks() {
    let cluster = Cluster::new(1).unwrap();

    // Scheduled: callbacks run inside cancel_task, before it returns.
    let log = Log::default();
    let h = record(
        cluster
            .task(|_| async { Ok::<_, String>(1) })
            .id("sched")
            .delay(Duration::from_secs(60)),
        &log,
    )
    .submit()
    .unwrap();
    assert!(cluster.cancel_task("sched").took_effect());
    let expected = vec![
        Event::Failure("sched".into(), TaskError::Cancelled),
        Event::Complete("sched".into(), Err(TaskError::Cancelled)),
    ];
    assert_eq!(snapshot(&log), expected);
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(snapshot(&log), expected);

    // Running.
    let log = Log::default();
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let h = record(
        cluster
            .task(move |_| {
                let s = s.clone();
                async move {
                    s.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, String>(2)
                }
            })
            .id("run"),
        &log,
    )
    .submit()
    .unwrap();
    started.notified().await;
    assert!(snapshot(&log).is_empty());
    assert!(cluster.cancel_task("run").took_effect());
    assert_eq!(h.await, Err(TaskError::Cancelled));
    assert_eq!(
        snapshot(&log),
        vec![
            Event::Failure("run".into(), TaskError::Cancelled),
            Event::Complete("run".into(), Err(TaskError::Cancelled)),
        ]
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn callbacks_fire_for_shutdown_outcomes() {
    // Graceful stop: a queued task is shut down.
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let log = Log::default();
    let h = record(
        cluster.task(|_| async { Ok::<_, String>(1) }).id("queued"),
        &log,
    )
    .submit()
    .unwrap();
    cluster.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(h.await, Err(TaskError::Shutdown));
    assert_eq!(
        snapshot(&log),
        vec![
            Event::Failure("queued".into(), TaskError::Shutdown),
            Event::Complete("queued".into(), Err(TaskError::Shutdown)),
        ]
    );

    // Immediate cancel: a running task is shut down.
    let cluster = Cluster::new(1).unwrap();
    let log = Log::default();
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let h = record(
        cluster
            .task(move |_| {
                let s = s.clone();
                async move {
                    s.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, String>(2)
                }
            })
            .id("running"),
        &log,
    )
    .submit()
    .unwrap();
    started.notified().await;
    cluster.cancel();
    assert_eq!(h.await, Err(TaskError::Shutdown));
    assert_eq!(
        snapshot(&log),
        vec![
            Event::Failure("running".into(), TaskError::Shutdown),
            Event::Complete("running".into(), Err(TaskError::Shutdown)),
        ]
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
    assert_eq!(snapshot(&log).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn panicking_callbacks_are_contained() {
    let cluster = Cluster::new(1).unwrap();
    let failures = Arc::new(AtomicU32::new(0));
    let completes = Arc::new(AtomicU32::new(0));

    let (f, c) = (failures.clone(), completes.clone());
    let h = cluster
        .task(|_| async { Err::<i32, _>("bad".to_string()) })
        .id("p1")
        .retry(1)
        .on_failure(move |_, _| {
            f.fetch_add(1, Ordering::SeqCst);
            panic!("on_failure panics");
        })
        .on_complete(move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            panic!("on_complete panics");
        })
        .submit()
        .unwrap();
    let sub = cluster.subscribe::<i32, String>("p1").unwrap();
    assert_eq!(h.await, Err(TaskError::Failed("bad".to_string())));
    assert_eq!(sub.await, Err(TaskError::Failed("bad".to_string())));
    // A panic in on_failure does not skip on_complete.
    assert_eq!(failures.load(Ordering::SeqCst), 1);
    assert_eq!(completes.load(Ordering::SeqCst), 1);

    let c = completes.clone();
    let h = cluster
        .task(|_| async { Ok::<_, String>(5) })
        .id("p2")
        .cacheable(true)
        .on_complete(move |_, _| {
            c.fetch_add(1, Ordering::SeqCst);
            panic!("on_complete panics again");
        })
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(5));
    assert_eq!(cluster.subscribe::<i32, String>("p2").unwrap().await, Ok(5));
    assert_eq!(completes.load(Ordering::SeqCst), 2);

    // The only worker is still alive and takes later tasks.
    for i in 0..3 {
        let h = cluster
            .task(move |_| async move { Ok::<_, String>(i) })
            .submit()
            .unwrap();
        assert_eq!(h.await, Ok(i));
    }
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}
