//! Waiting for outcomes: `Cluster::watch` (an id that may not be submitted
//! yet) and `TaskContext::wait_for` / `TaskContext::wait` (inside a body,
//! freeing the worker while it waits).

mod common;

use std::time::Duration;

use corral::{Cluster, TaskError, WaitError};

use common::{HOUR, SEC};

#[tokio::test(start_paused = true)]
async fn a_watch_for_an_id_not_yet_submitted_gets_its_outcome() {
    let cluster = Cluster::new(1).unwrap();
    let watch = cluster.watch::<u32, String>("later", HOUR);
    let twin = cluster.watch::<u32, String>("later", HOUR);
    assert_eq!(cluster.stats().watchers, 2);
    let c = cluster.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SEC).await;
        let h = c
            .task(|_| async { Ok::<u32, String>(9) })
            .id("later")
            .submit()
            .unwrap();
        h.await
    });
    assert_eq!(watch.await, Ok(Ok(9)));
    assert_eq!(twin.await, Ok(Ok(9)));
    assert_eq!(cluster.stats().watchers, 0);
}

#[tokio::test(start_paused = true)]
async fn a_watch_times_out_and_leaves_nothing_behind() {
    let cluster = Cluster::new(1).unwrap();
    let started = tokio::time::Instant::now();
    let out = cluster.watch::<u32, String>("never", 3 * SEC).await;
    assert_eq!(
        out,
        Err(WaitError::TimedOut {
            id: "never".into(),
            timeout: 3 * SEC
        })
    );
    assert_eq!(started.elapsed(), 3 * SEC);
    assert_eq!(cluster.stats().watchers, 0);
    // A dropped watch too.
    let w = cluster.watch::<u32, String>("never", HOUR);
    assert_eq!(cluster.stats().watchers, 1);
    drop(w);
    assert_eq!(cluster.stats().watchers, 0);
    // And a task submitted later under that id is untouched by them.
    let h = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("never")
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(1));
}

#[tokio::test(start_paused = true)]
async fn a_watch_of_a_known_task_is_a_subscription() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<u32, String>(4) })
        .id("known")
        .delay(SEC)
        .cacheable(true)
        .submit()
        .unwrap();
    let w = cluster.watch::<u32, String>("known", HOUR);
    assert_eq!(cluster.stats().watchers, 0);
    assert_eq!(w.await, Ok(Ok(4)));
    assert_eq!(h.await, Ok(4));
    // Cached: a late watch gets it at once.
    assert_eq!(cluster.watch::<u32, String>("known", SEC).await, Ok(Ok(4)));
}

#[tokio::test(start_paused = true)]
async fn a_watch_reports_wrong_types_and_shutdown() {
    let cluster = Cluster::new(1).unwrap();
    let wrong = cluster.watch::<String, String>("typed", HOUR);
    let stopped = cluster.watch::<u32, String>("absent", HOUR);
    let h = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("typed")
        .submit()
        .unwrap();
    assert!(matches!(
        wrong.await,
        Err(WaitError::TypeMismatch { ref id, .. }) if *id == "typed"
    ));
    assert_eq!(h.await, Ok(1));
    cluster.stop(SEC).await.unwrap();
    assert_eq!(stopped.await, Err(WaitError::ShutDown("absent".into())));
    assert!(matches!(
        cluster.watch::<u32, String>("absent", HOUR).await,
        Err(WaitError::ShutDown(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_watch_of_an_unknown_generated_id_fails_at_once() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .submit()
        .unwrap();
    let id = h.id();
    assert_eq!(h.await, Ok(1));
    let out = cluster.watch::<u32, String>(id.clone(), HOUR).await;
    assert_eq!(out, Err(WaitError::UnknownGenerated(id)));
    let _ = Duration::ZERO;
    let _ = TaskError::<String>::Shutdown;
}
