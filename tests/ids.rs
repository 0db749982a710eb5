//! Task ids: duplicates, reuse after finish, validation, generated ids.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral::{
    CancelOutcome, Cluster, FixedBackoff, SubmitError, SubscribeError, TaskError, TaskId,
    MAX_ID_LEN,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use common::{yield_until, DropFlag};

/// Submits a task with id `id` whose body must never run; returns the
/// submit error, whether the body ran, and whether it was dropped.
fn submit_rejected(cluster: &Cluster, id: impl Into<TaskId>) -> (SubmitError, bool, bool) {
    let ran = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let r = ran.clone();
    let err = cluster
        .task(move |_| {
            let _keep = &flag;
            r.store(true, Ordering::SeqCst);
            async { Ok::<_, String>(-1) }
        })
        .id(id)
        .submit()
        .unwrap_err();
    (
        err,
        ran.load(Ordering::SeqCst),
        dropped.load(Ordering::SeqCst),
    )
}

#[tokio::test(start_paused = true)]
async fn duplicate_of_scheduled_task_is_rejected_and_original_untouched() {
    let cluster = Cluster::new(1).unwrap();
    let t0 = Instant::now();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("dup")
        .delay(Duration::from_secs(10))
        .submit()
        .unwrap();

    let (err, ran, dropped) = submit_rejected(&cluster, "dup");
    assert_eq!(err, SubmitError::DuplicateId(TaskId::from("dup")));
    assert!(!ran, "a rejected body must not run");
    assert!(dropped, "a rejected body is dropped");
    assert_eq!(cluster.stats().held, 1);
    assert_eq!(cluster.stats().queued, 1);

    // The original keeps its body and its start time.
    let sub = cluster.subscribe::<i32, String>("dup").unwrap();
    assert_eq!(h.await, Ok(1));
    assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    assert_eq!(sub.await, Ok(1));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn duplicate_of_due_task_before_run_is_rejected() {
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("early")
        .submit()
        .unwrap();
    let (err, ran, _) = submit_rejected(&cluster, "early");
    assert_eq!(err, SubmitError::DuplicateId(TaskId::from("early")));
    assert!(!ran);
    cluster.run().unwrap();
    assert_eq!(h.await, Ok(1));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn duplicate_of_running_task_is_rejected_and_original_untouched() {
    let cluster = Cluster::new(2).unwrap();
    let gate = CancellationToken::new();
    let started = Arc::new(Notify::new());
    let was_cancelled = Arc::new(AtomicBool::new(true));
    let (g, s, wc) = (gate.clone(), started.clone(), was_cancelled.clone());
    let h = cluster
        .task(move |ctx| {
            let (g, s, wc) = (g.clone(), s.clone(), wc.clone());
            async move {
                s.notify_one();
                g.cancelled().await;
                wc.store(ctx.is_cancelled(), Ordering::SeqCst);
                Ok::<_, String>(ctx.attempt())
            }
        })
        .id("busy")
        .submit()
        .unwrap();
    started.notified().await;

    let (err, ran, dropped) = submit_rejected(&cluster, "busy");
    assert_eq!(err, SubmitError::DuplicateId(TaskId::from("busy")));
    assert!(!ran);
    assert!(dropped);
    assert_eq!(cluster.stats().running, 1);
    assert_eq!(cluster.stats().held, 1);

    gate.cancel();
    assert_eq!(h.await, Ok(1));
    assert!(!was_cancelled.load(Ordering::SeqCst));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn duplicate_of_task_waiting_for_retry_is_rejected() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|ctx| async move {
            if ctx.attempt() == 1 {
                Err("first".to_string())
            } else {
                Ok(ctx.attempt())
            }
        })
        .id("retry")
        .retry(1)
        .backoff(FixedBackoff::new(Duration::from_secs(10)))
        .submit()
        .unwrap();
    yield_until("requeued for its retry", || {
        let s = cluster.stats();
        s.queued == 1 && s.running == 0
    })
    .await;
    let (err, ran, _) = submit_rejected(&cluster, "retry");
    assert_eq!(err, SubmitError::DuplicateId(TaskId::from("retry")));
    assert!(!ran);
    assert_eq!(h.await, Ok(2));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn id_can_be_reused_after_finish() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("x")
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    let h = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .id("x")
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(2));

    // Also after a failure and after a cancel.
    let h = cluster
        .task(|_| async { Err::<i32, _>("bad".to_string()) })
        .id("x")
        .submit()
        .unwrap();
    assert_eq!(h.await, Err(TaskError::Failed("bad".to_string())));
    let h = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .id("x")
        .delay(Duration::from_secs(60))
        .submit()
        .unwrap();
    assert!(cluster.cancel_task("x").took_effect());
    assert_eq!(h.await, Err(TaskError::Cancelled));
    let h = cluster
        .task(|_| async { Ok::<_, String>(4) })
        .id("x")
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(4));
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn id_reuse_replaces_cached_outcome() {
    let cluster = Cluster::new(1).unwrap();
    let first = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("c")
        .cacheable(true)
        .submit()
        .unwrap();
    yield_until("first run cached", || cluster.stats().cached == 1).await;
    assert_eq!(cluster.subscribe::<i32, String>("c").unwrap().await, Ok(1));

    // Resubmitting replaces the cached outcome at once.
    let second = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .id("c")
        .cacheable(true)
        .delay(Duration::from_secs(10))
        .submit()
        .unwrap();
    let s = cluster.stats();
    assert_eq!((s.cached, s.queued, s.held), (0, 1, 1));
    let sub = cluster.subscribe::<i32, String>("c").unwrap();
    // The first handle still gets its own outcome.
    assert_eq!(first.await, Ok(1));
    assert_eq!(
        sub.await,
        Ok(2),
        "a subscriber after reuse sees the new run"
    );
    assert_eq!(second.await, Ok(2));
    assert_eq!(cluster.subscribe::<i32, String>("c").unwrap().await, Ok(2));

    // Replaced by a non-cacheable run: nothing is cached for "c" afterwards.
    let third = cluster
        .task(|_| async { Ok::<_, String>(3) })
        .id("c")
        .submit()
        .unwrap();
    assert_eq!(third.await, Ok(3));
    assert_eq!(
        cluster.subscribe::<i32, String>("c").unwrap_err(),
        SubscribeError::UnknownId(TaskId::from("c"))
    );
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn empty_id_is_rejected() {
    let cluster = Cluster::new(1).unwrap();
    let (err, ran, dropped) = submit_rejected(&cluster, "");
    assert!(matches!(err, SubmitError::InvalidId(_)), "{err:?}");
    assert!(!ran);
    assert!(dropped);
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn id_longer_than_max_is_rejected_and_max_is_accepted() {
    let cluster = Cluster::new(1).unwrap();
    let (err, ran, dropped) = submit_rejected(&cluster, "a".repeat(MAX_ID_LEN + 1));
    assert!(matches!(err, SubmitError::InvalidId(_)), "{err:?}");
    assert!(!ran);
    assert!(dropped);
    assert_eq!(cluster.stats().held, 0);

    // Bytes, not chars: 513 two-byte chars are 1026 bytes.
    let (err, _, _) = submit_rejected(&cluster, "é".repeat(MAX_ID_LEN / 2 + 1));
    assert!(matches!(err, SubmitError::InvalidId(_)), "{err:?}");

    let max = "b".repeat(MAX_ID_LEN);
    let h = cluster
        .task(|_| async { Ok::<_, String>(5) })
        .id(max.clone())
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(h.id().as_str(), Some(max.as_str()));
    assert_eq!(h.await, Ok(5));
    assert_eq!(cluster.subscribe::<i32, String>(&max).unwrap().await, Ok(5));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn generated_id_cannot_be_given_as_an_id() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .delay(Duration::from_secs(5))
        .submit()
        .unwrap();
    let (err, ran, _) = submit_rejected(&cluster, h.id().clone());
    assert!(matches!(err, SubmitError::InvalidId(_)), "{err:?}");
    assert!(!ran);
    assert_eq!(h.await, Ok(1));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn generated_ids_are_unique() {
    let cluster = Cluster::new(4).unwrap();

    // Many at once.
    let handles: Vec<_> = (0..500)
        .map(|i| {
            cluster
                .task(move |_| async move { Ok::<_, String>(i) })
                .submit()
                .unwrap()
        })
        .collect();
    let mut ids = HashSet::new();
    for h in &handles {
        assert!(h.id().is_generated());
        assert_eq!(h.id().as_str(), None);
        assert!(ids.insert(h.id().clone()), "duplicate id {:?}", h.id());
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await, Ok(i));
    }

    // One after another, so registry slots are reused: ids still never repeat.
    let mut printed = HashSet::new();
    for id in &ids {
        printed.insert(id.to_string());
    }
    for i in 0..200 {
        let h = cluster
            .task(move |_| async move { Ok::<_, String>(i) })
            .submit()
            .unwrap();
        assert!(ids.insert(h.id().clone()), "duplicate id {:?}", h.id());
        assert!(printed.insert(h.id().to_string()));
        assert_eq!(h.await, Ok(i));
    }
    assert_eq!(ids.len(), 700);
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stale_generated_id_does_not_reach_a_new_task() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .submit()
        .unwrap();
    let old = h.id().clone();
    assert_eq!(h.await, Ok(1));

    // Likely the same registry slot, but a different task.
    let h = cluster
        .task(|_| async { Ok::<_, String>(2) })
        .delay(Duration::from_secs(5))
        .submit()
        .unwrap();
    assert_ne!(h.id(), old);
    assert!(!cluster.cancel_task(old.clone()).took_effect());
    assert_eq!(
        cluster.subscribe::<i32, String>(old.clone()).unwrap_err(),
        SubscribeError::UnknownId(old)
    );
    assert_eq!(h.await, Ok(2));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn printed_generated_ids_round_trip() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .cacheable(true)
        .delay(Duration::from_secs(5))
        .submit()
        .unwrap();
    let id = h.id();
    let printed = id.to_string();
    assert!(printed.starts_with('#'), "{printed}");
    assert_eq!(format!("{id:?}"), format!("TaskId({printed})"));

    // `FromStr` and `From<&str>` give the same id back, and it addresses the task.
    let parsed: TaskId = printed.parse().unwrap();
    assert_eq!(parsed, id);
    assert!(parsed.is_generated());
    assert_eq!(TaskId::from(printed.as_str()), id);
    assert_eq!(TaskId::from(printed.clone()), id);
    let sub = cluster.subscribe::<i32, String>(printed.as_str()).unwrap();
    assert_eq!(sub.id(), id);
    assert_eq!(h.await, Ok(1));
    assert_eq!(sub.await, Ok(1));
    // Cached: the printed form still finds it.
    assert_eq!(
        cluster.cancel_task(printed.as_str()),
        CancelOutcome::AlreadyFinished
    );

    // Malformed `#` forms are parse errors, not user ids; plain strings are user ids.
    for bad in [
        "#",
        "#6",
        "#6@",
        "#@1",
        "#+6@1",
        "#6@x",
        "#6@1@2",
        "#99999999999999999999@0",
    ] {
        assert!(bad.parse::<TaskId>().is_err(), "{bad}");
        assert_eq!(cluster.cancel_task(bad), CancelOutcome::NotFound, "{bad}");
    }
    assert_eq!("plain".parse::<TaskId>().unwrap(), TaskId::from("plain"));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn user_ids_starting_with_hash_are_reserved() {
    let cluster = Cluster::new(1).unwrap();
    // Before generated `#0@0` could exist, `#0` was a valid user id.
    for id in ["#0", "#", "#0@0", "#mine"] {
        let (err, ran, dropped) = submit_rejected(&cluster, id);
        assert!(matches!(err, SubmitError::InvalidId(_)), "{id}: {err:?}");
        assert!(!ran && dropped, "{id}");
    }
    // A `#` inside an id is fine.
    let h = cluster
        .task(|_| async { Ok::<_, String>(1) })
        .id("a#0")
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
    cluster.stop(Duration::from_secs(1)).await.unwrap();
}

/// A generated id addresses nothing outside the cluster that made it, even
/// where another cluster has a task at the same registry slot (issue 8 item 6).
#[tokio::test(start_paused = true)]
async fn generated_ids_address_nothing_in_another_cluster() {
    let a = Cluster::builder().workers(1).paused().build().unwrap();
    let b = Cluster::builder().workers(1).paused().build().unwrap();
    a.run().unwrap();
    b.run().unwrap();
    let far = Duration::from_secs(60);
    let ha = a
        .task(|_| async { Ok::<_, String>("a") })
        .delay(far)
        .submit()
        .unwrap();
    let hb = b
        .task(|_| async { Ok::<_, String>("b") })
        .delay(far)
        .cacheable(true)
        .submit()
        .unwrap();
    assert_ne!(ha.id(), hb.id());
    // The same slot in each registry (each cluster's first task).
    assert_eq!(
        ha.id().to_string().split('@').nth(1),
        hb.id().to_string().split('@').nth(1)
    );
    for id in [ha.id(), TaskId::from(ha.id().to_string())] {
        assert_eq!(b.cancel_task(id.clone()), CancelOutcome::NotFound);
        assert_eq!(
            b.subscribe::<&str, String>(id.clone()).unwrap_err(),
            SubscribeError::UnknownId(id)
        );
    }
    assert_eq!(b.stats().held, 1);
    assert_eq!(a.cancel_task(ha.id()), CancelOutcome::Cancelled);
    assert_eq!(ha.await, Err(TaskError::Cancelled));
    assert_eq!(hb.await, Ok("b"));
    a.stop(Duration::from_secs(1)).await.unwrap();
    b.stop(Duration::from_secs(1)).await.unwrap();
}
