//! Panics in task bodies become `TaskError::Panicked` outcomes with the
//! message, and the worker keeps going.

mod common;

use std::future::Ready;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use corral::{Cluster, TaskContext, TaskError};

use common::SEC;

fn panicked<E>(message: &str) -> Result<u32, TaskError<E>> {
    Err(TaskError::Panicked {
        message: message.to_string(),
    })
}

/// A body that panics while being called, before it returns its future.
fn panics_before_returning_a_future(_ctx: TaskContext) -> Ready<Result<u32, String>> {
    panic!("sync boom before the future")
}

#[tokio::test(start_paused = true)]
async fn panicking_async_body_is_panicked_with_the_message() {
    let cluster = Cluster::new(1).unwrap();
    // A formatted message (String payload).
    let h = cluster
        .task(|ctx| async move {
            tokio::task::yield_now().await;
            if ctx.attempt() > 0 {
                panic!("async boom on attempt {}", ctx.attempt());
            }
            Ok::<u32, String>(0)
        })
        .submit()
        .unwrap();
    assert_eq!(h.await, panicked("async boom on attempt 1"));
    // A literal message (&'static str payload).
    let h = cluster
        .task(|_| async { panic!("literal boom") })
        .submit()
        .unwrap();
    let r: Result<u32, TaskError<String>> = h.await;
    assert_eq!(r, panicked("literal boom"));
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn body_panicking_before_returning_its_future_is_panicked() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(panics_before_returning_a_future)
        .submit()
        .unwrap();
    assert_eq!(h.await, panicked("sync boom before the future"));
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn panicking_blocking_body_is_panicked_with_the_message() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .blocking_task(|ctx| -> Result<u32, String> { panic!("blocking boom {}", ctx.attempt()) })
        .submit()
        .unwrap();
    assert_eq!(h.await, panicked("blocking boom 1"));
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn non_string_panic_payload_is_still_panicked() {
    let cluster = Cluster::new(1).unwrap();
    let h = cluster
        .task(|_| async { std::panic::panic_any(42_i32) })
        .submit()
        .unwrap();
    let r: Result<u32, TaskError<String>> = h.await;
    let err = r.unwrap_err();
    assert!(err.is_panic(), "{err:?}");
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn worker_keeps_going_after_panics() {
    // One worker: if any panic killed it, the later tasks would never run.
    let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    let h1 = cluster
        .task(|_| async { panic!("first") })
        .priority(3)
        .submit()
        .unwrap();
    let h2 = cluster
        .task(panics_before_returning_a_future)
        .priority(2)
        .submit()
        .unwrap();
    let h3 = cluster
        .blocking_task(|_| -> Result<u32, String> { panic!("third") })
        .priority(1)
        .submit()
        .unwrap();
    let ok = cluster
        .task(|ctx| async move { Ok::<u32, String>(ctx.attempt() + 99) })
        .priority(0)
        .submit()
        .unwrap();
    cluster.run().unwrap();
    let r1: Result<u32, TaskError<String>> = h1.await;
    assert_eq!(r1, panicked("first"));
    assert_eq!(h2.await, panicked("sync boom before the future"));
    assert_eq!(h3.await, panicked("third"));
    assert_eq!(ok.await, Ok(100));

    // And tasks submitted afterwards still run, on the same single worker.
    for i in 0..3u32 {
        let h = cluster
            .task(move |_| async move { Ok::<u32, String>(i) })
            .submit()
            .unwrap();
        assert_eq!(h.await, Ok(i));
    }
    assert_eq!(cluster.stats().held, 0);
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn panicking_attempts_are_retried_and_the_last_panic_is_reported() {
    let cluster = Cluster::new(1).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let h = cluster
        .task(move |ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                if ctx.attempt() >= 1 {
                    panic!("boom {}", ctx.attempt());
                }
                Ok::<u32, String>(0)
            }
        })
        .retry(2)
        .submit()
        .unwrap();
    assert_eq!(h.await, panicked("boom 3"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // A panic followed by a success on retry ends in the success.
    let h = cluster
        .blocking_task(|ctx| {
            if ctx.attempt() == 1 {
                panic!("only once");
            }
            Ok::<u32, String>(ctx.attempt())
        })
        .retry(1)
        .submit()
        .unwrap();
    assert_eq!(h.await, Ok(2));
    cluster.stop(SEC).await.unwrap();
}
