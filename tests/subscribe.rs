//! Subscribers by id, the result cache and its retention.

mod common;

use std::sync::Arc;
use std::time::Duration;

use corral::{CancellationToken, Cluster, SubscribeError, TaskError, TaskId, DEFAULT_RETENTION};
use tokio::sync::Notify;
use tokio::time::Instant;

use common::yield_until;

fn unknown(id: &str) -> SubscribeError {
    SubscribeError::UnknownId(TaskId::from(id))
}

#[tokio::test(start_paused = true)]
async fn subscribers_before_finish_all_get_the_value() {
    let cluster = Cluster::new(1).unwrap();
    let gate = CancellationToken::new();
    let started = Arc::new(Notify::new());
    let (g, s) = (gate.clone(), started.clone());
    let h = cluster
        .task(move |_| {
            let (g, s) = (g.clone(), s.clone());
            async move {
                s.notify_one();
                g.cancelled().await;
                Ok::<_, String>("value".to_string())
            }
        })
        .id("t")
        .submit()
        .unwrap();
    // One subscriber while the task is due, more while it runs.
    let s1 = cluster.subscribe::<String, String>("t").unwrap();
    started.notified().await;
    let s2 = cluster.subscribe::<String, String>("t").unwrap();
    let s3 = cluster.subscribe::<String, String>("t").unwrap();
    assert_eq!(s1.id(), TaskId::from("t"));
    gate.cancel();
    assert_eq!(s3.await, Ok("value".to_string()));
    assert_eq!(s1.await, Ok("value".to_string()));
    assert_eq!(h.await, Ok("value".to_string()));
    assert_eq!(s2.await, Ok("value".to_string()));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn subscribers_of_a_scheduled_task_and_a_failure() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Err::<u8, _>("bad".to_string()) })
        .id("f")
        .delay(Duration::from_secs(30))
        .submit()
        .unwrap();
    let subs: Vec<_> = (0..3)
        .map(|_| cluster.subscribe::<u8, String>("f").unwrap())
        .collect();
    for s in subs {
        assert_eq!(s.await, Err(TaskError::Failed("bad".to_string())));
    }
    assert_eq!(h.await, Err(TaskError::Failed("bad".to_string())));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn subscribe_after_finish_without_cache_is_unknown() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("gone")
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    assert_eq!(
        cluster.subscribe::<i32, String>("gone").unwrap_err(),
        unknown("gone")
    );
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cached_outcome_reaches_late_subscribers() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(vec![1, 2, 3]) })
        .id("c")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(vec![1, 2, 3]));
    let s = cluster.stats();
    assert_eq!((s.cached, s.held), (1, 1));
    for _ in 0..3 {
        let late = cluster.subscribe::<Vec<i32>, String>("c").unwrap();
        assert_eq!(late.await, Ok(vec![1, 2, 3]));
    }

    // Failures are cached too.
    let h = cluster
        .task(|_| async { Err::<Vec<i32>, _>("no".to_string()) })
        .id("cf")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(h.await, Err(TaskError::Failed("no".to_string())));
    assert_eq!(
        cluster.subscribe::<Vec<i32>, String>("cf").unwrap().await,
        Err(TaskError::Failed("no".to_string()))
    );

    // Default retention: still there just before 5 minutes, gone after.
    tokio::time::sleep(DEFAULT_RETENTION - Duration::from_secs(1)).await;
    assert!(cluster.subscribe::<Vec<i32>, String>("c").is_ok());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        cluster.subscribe::<Vec<i32>, String>("c").unwrap_err(),
        unknown("c")
    );
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cluster_retention_expires_cached_outcomes() {
    let retention = Duration::from_secs(10);
    let cluster = Cluster::builder()
        .workers(1)
        .retention(retention)
        .build()
        .unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(7) })
        .id("r")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(7));
    let done = Instant::now();

    tokio::time::sleep_until(done + retention - Duration::from_millis(1)).await;
    assert_eq!(cluster.subscribe::<i32, String>("r").unwrap().await, Ok(7));
    assert_eq!(cluster.stats().held, 1);

    tokio::time::sleep_until(done + retention + Duration::from_millis(1)).await;
    assert_eq!(
        cluster.subscribe::<i32, String>("r").unwrap_err(),
        unknown("r")
    );
    let s = cluster.stats();
    assert_eq!((s.cached, s.held), (0, 0));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn per_task_retention_overrides_the_cluster_default() {
    let cluster = Cluster::builder()
        .workers(2)
        .retention(Duration::from_secs(10))
        .build()
        .unwrap();
    let short = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("short")
        .retention(Duration::from_secs(2))
        .submit()
        .unwrap();
    let long = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .id("long")
        .retention(Duration::from_secs(60))
        .submit()
        .unwrap();
    let default = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .id("default")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(short.await, Ok(1));
    assert_eq!(long.await, Ok(2));
    assert_eq!(default.await, Ok(3));
    let done = Instant::now();
    assert_eq!(cluster.stats().cached, 3);

    tokio::time::sleep_until(done + Duration::from_secs(1)).await;
    assert_eq!(
        cluster.subscribe::<i32, String>("short").unwrap().await,
        Ok(1)
    );

    tokio::time::sleep_until(done + Duration::from_secs(3)).await;
    assert_eq!(
        cluster.subscribe::<i32, String>("short").unwrap_err(),
        unknown("short")
    );
    assert_eq!(
        cluster.subscribe::<i32, String>("default").unwrap().await,
        Ok(3)
    );
    assert_eq!(cluster.stats().held, 2);

    tokio::time::sleep_until(done + Duration::from_secs(11)).await;
    assert_eq!(
        cluster.subscribe::<i32, String>("default").unwrap_err(),
        unknown("default")
    );
    assert_eq!(
        cluster.subscribe::<i32, String>("long").unwrap().await,
        Ok(2)
    );
    assert_eq!(cluster.stats().held, 1);

    tokio::time::sleep_until(done + Duration::from_secs(61)).await;
    assert_eq!(
        cluster.subscribe::<i32, String>("long").unwrap_err(),
        unknown("long")
    );
    let s = cluster.stats();
    assert_eq!((s.cached, s.held), (0, 0));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retention_counts_from_completion_not_submission() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("late")
        .delay(Duration::from_secs(100))
        .retention(Duration::from_secs(10))
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    let done = Instant::now();
    tokio::time::sleep_until(done + Duration::from_secs(9)).await;
    assert_eq!(
        cluster.subscribe::<i32, String>("late").unwrap().await,
        Ok(1)
    );
    tokio::time::sleep_until(done + Duration::from_secs(11)).await;
    assert!(cluster.subscribe::<i32, String>("late").is_err());
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn subscribe_with_wrong_types_is_a_type_mismatch() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<i32, String>(1) })
        .id("typed")
        .delay(Duration::from_secs(5))
        .cacheable(true)
        .submit()
        .unwrap();
    let is_mismatch = |e: SubscribeError| match e {
        SubscribeError::TypeMismatch { id, .. } => id == "typed",
        _ => false,
    };
    // Pending task: wrong value type, wrong error type.
    assert!(is_mismatch(
        cluster.subscribe::<String, String>("typed").unwrap_err()
    ));
    assert!(is_mismatch(
        cluster.subscribe::<i32, u8>("typed").unwrap_err()
    ));
    // A failed typed subscribe does not disturb the task or a right one.
    let ok = cluster.subscribe::<i32, String>("typed").unwrap();
    assert_eq!(h.await, Ok(1));
    assert_eq!(ok.await, Ok(1));
    // Cached task: same.
    assert!(is_mismatch(
        cluster.subscribe::<i64, String>("typed").unwrap_err()
    ));
    assert_eq!(
        cluster.subscribe::<i32, String>("typed").unwrap().await,
        Ok(1)
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn subscribe_to_unknown_id_fails() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    assert_eq!(
        cluster.subscribe::<i32, String>("missing").unwrap_err(),
        unknown("missing")
    );
    cluster.run().unwrap();
    assert_eq!(
        cluster.subscribe::<i32, String>("missing").unwrap_err(),
        unknown("missing")
    );
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn subscribers_of_a_cancelled_task_get_cancelled() {
    let cluster = Cluster::new(1).unwrap();

    // Scheduled.
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("sched")
        .delay(Duration::from_secs(60))
        .submit()
        .unwrap();
    let subs: Vec<_> = (0..2)
        .map(|_| cluster.subscribe::<i32, String>("sched").unwrap())
        .collect();
    assert!(cluster.cancel_task("sched").took_effect());
    for s in subs {
        assert_eq!(s.await, Err(TaskError::Cancelled));
    }
    assert_eq!(h.await, Err(TaskError::Cancelled));

    // Running.
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let h = cluster
        .task(move |_| {
            let s = s.clone();
            async move {
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, String>(2)
            }
        })
        .id("run")
        .submit()
        .unwrap();
    let sub = cluster.subscribe::<i32, String>("run").unwrap();
    started.notified().await;
    assert!(cluster.cancel_task("run").took_effect());
    assert_eq!(sub.await, Err(TaskError::Cancelled));
    assert_eq!(h.await, Err(TaskError::Cancelled));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn subscribers_are_answered_with_shutdown_on_cancel() {
    let cluster = Cluster::new(1).unwrap();
    let started = Arc::new(Notify::new());
    let s = started.clone();
    let running = cluster
        .task(move |_| {
            let s = s.clone();
            async move {
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, String>(1)
            }
        })
        .id("running")
        .submit()
        .unwrap();
    let queued = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .id("queued")
        .submit()
        .unwrap();
    let scheduled = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .id("scheduled")
        .delay(Duration::from_secs(60))
        .submit()
        .unwrap();
    started.notified().await;
    let subs: Vec<_> = ["running", "queued", "scheduled", "running"]
        .into_iter()
        .map(|id| cluster.subscribe::<i32, String>(id).unwrap())
        .collect();
    yield_until("only the first task runs", || {
        let s = cluster.stats();
        s.running == 1 && s.queued == 2
    })
    .await;

    let t0 = Instant::now();
    cluster.cancel();
    for s in subs {
        assert_eq!(s.await, Err(TaskError::Shutdown));
    }
    assert_eq!(running.await, Err(TaskError::Shutdown));
    assert_eq!(queued.await, Err(TaskError::Shutdown));
    assert_eq!(scheduled.await, Err(TaskError::Shutdown));
    assert_eq!(Instant::now(), t0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

/// A `Clone` that panics while making a subscriber's copy costs only that
/// subscription (it resolves as `Panicked`, naming the clone): the handle
/// still gets the value and the worker survives.
#[tokio::test(start_paused = true)]
async fn a_panicking_outcome_clone_costs_only_that_subscription() {
    #[derive(Debug, PartialEq)]
    struct Probe(u32);
    impl Clone for Probe {
        fn clone(&self) -> Self {
            if self.0 == 13 {
                panic!("probe clone: unlucky");
            }
            Probe(self.0)
        }
    }
    common::quiet_panics_starting_with("probe clone");

    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, String>(Probe(13))
        })
        .id("unlucky")
        .submit()
        .unwrap();
    let sub = cluster.subscribe::<Probe, String>("unlucky").unwrap();
    let limit = Duration::from_secs(60);
    let copy = tokio::time::timeout(limit, sub)
        .await
        .expect("the subscription resolves");
    match copy {
        Err(TaskError::Panicked { message }) => assert!(
            message.contains("cloning the outcome") && message.contains("probe clone: unlucky"),
            "the subscription says its copy could not be made: {message}"
        ),
        other => panic!("expected a Panicked copy, got {other:?}"),
    }
    let value = common::resolve(limit, "the unlucky task", h).await;
    assert_eq!(value, Ok(Probe(13)), "the handle still gets the value");

    let h = cluster
        .task(|_| async { Ok::<_, String>(Probe(7)) })
        .id("lucky")
        .submit()
        .unwrap();
    // Not started yet: the only worker runs on this thread.
    let sub = cluster.subscribe::<Probe, String>("lucky").unwrap();
    assert_eq!(sub.await, Ok(Probe(7)));
    let value = common::resolve(limit, "a later task", h).await;
    assert_eq!(value, Ok(Probe(7)), "the worker survived");
}

#[tokio::test(start_paused = true)]
async fn type_mismatch_names_both_types_plainly() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<u32, String>(2) })
        .id("typed")
        .delay(Duration::from_secs(1))
        .submit()
        .unwrap();
    let err = cluster.subscribe::<i64, String>("typed").unwrap_err();
    assert_eq!(
        err.to_string(),
        "task typed produces Result<u32, String>, not Result<i64, String>"
    );
    match err {
        SubscribeError::TypeMismatch {
            id,
            expected,
            found,
        } => {
            assert_eq!(id, TaskId::from("typed"));
            assert_eq!(expected, std::any::type_name::<Result<i64, String>>());
            assert_eq!(found, std::any::type_name::<Result<u32, String>>());
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    let err = cluster
        .subscribe::<u32, std::num::ParseIntError>("typed")
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "task typed produces Result<u32, String>, not Result<u32, ParseIntError>"
    );
    assert_eq!(h.await, Ok(2));
}
