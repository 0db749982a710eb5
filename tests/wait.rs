//! Waiting for outcomes: `Cluster::watch` (an id that may not be submitted
//! yet) and `TaskContext::wait_for` / `TaskContext::wait` (inside a body,
//! freeing the worker while it waits).

mod common;

use std::time::Duration;

use corral::{Cluster, DependencyCause, TaskError, WaitError};

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

// ---- waits inside a body that free the worker ----

#[tokio::test(start_paused = true)]
async fn a_wait_inside_a_body_frees_the_only_worker() {
    let cluster = Cluster::new(1).unwrap();
    let target = cluster
        .task(|_| async {
            tokio::time::sleep(SEC).await;
            Ok::<u32, String>(20)
        })
        .id("target")
        .delay(SEC)
        .submit()
        .unwrap();
    let waiter = cluster
        .task(|ctx| async move {
            let v = ctx
                .wait_for::<u32, String>("target")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<u32, String>(v + 1)
        })
        .submit()
        .unwrap();
    common::yield_until("the waiter parks", || cluster.stats().waiting == 1).await;
    let stats = cluster.stats();
    assert_eq!((stats.running, stats.waiting), (0, 1));
    // The worker is free: an independent task runs while the waiter waits.
    let free = cluster
        .task(|_| async { Ok::<_, String>("free") })
        .submit()
        .unwrap();
    assert_eq!(common::resolve(SEC / 2, "free", free).await, Ok("free"));
    assert_eq!(common::resolve(HOUR, "waiter", waiter).await, Ok(21));
    assert_eq!(target.await, Ok(20));
    assert_eq!(cluster.stats().held, 0);
}

#[tokio::test(start_paused = true)]
async fn a_chain_of_waits_runs_on_one_worker() {
    let cluster = Cluster::new(1).unwrap();
    let n = 20u32;
    // Task i waits for task i+1; the last one is delayed so every waiter
    // starts (and parks) first.
    let mut handles = Vec::new();
    for i in 0..n {
        let h = if i == n - 1 {
            cluster
                .task(|_| async { Ok::<u32, String>(1) })
                .id(format!("w{i}"))
                .delay(SEC)
                .submit()
                .unwrap()
        } else {
            cluster
                .task(move |ctx| async move {
                    let v = ctx
                        .wait_for::<u32, String>(format!("w{}", i + 1))
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<u32, String>(v + 1)
                })
                .id(format!("w{i}"))
                .delay(SEC * (n - 1 - i) / (2 * n))
                .submit()
                .unwrap()
        };
        handles.push(h);
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(common::resolve(HOUR, "link", h).await, Ok(n - i as u32));
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_its_timeout_times_out() {
    let cluster = Cluster::new(1).unwrap();
    let slow = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("slow")
        .delay(HOUR)
        .submit()
        .unwrap();
    let started = tokio::time::Instant::now();
    let waiter = cluster
        .task(|ctx| async move {
            ctx.wait_for::<u32, String>("slow")
                .await
                .map_err(|e| e.to_string())
        })
        .timeout(2 * SEC)
        .submit()
        .unwrap();
    assert_eq!(
        common::resolve(HOUR, "waiter", waiter).await,
        Err(TaskError::TimedOut { limit: 2 * SEC })
    );
    assert_eq!(started.elapsed(), 2 * SEC);
    assert_eq!(cluster.stats().waiting, 0);
    cluster.cancel_task("slow");
    let _ = slow.await;
}

#[tokio::test(start_paused = true)]
async fn a_waiting_task_cancelled_resolves_cancelled_at_once() {
    let cluster = Cluster::new(1).unwrap();
    let _slow = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("slow")
        .delay(HOUR)
        .submit()
        .unwrap();
    let waiter = cluster
        .task(|ctx| async move {
            ctx.wait_for::<u32, String>("slow")
                .await
                .map_err(|e| e.to_string())
        })
        .id("waiter")
        .submit()
        .unwrap();
    common::yield_until("the waiter parks", || cluster.stats().waiting == 1).await;
    assert_eq!(
        cluster.cancel_task("waiter"),
        corral::CancelOutcome::Requested
    );
    let started = tokio::time::Instant::now();
    assert_eq!(
        common::resolve(SEC, "waiter", waiter).await,
        Err(TaskError::Cancelled)
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(cluster.stats().waiting, 0);
}

#[tokio::test(start_paused = true)]
async fn self_waits_and_cycles_are_errors_not_hangs() {
    let cluster = Cluster::new(1).unwrap();
    let me = cluster
        .task(|ctx| async move {
            ctx.wait_for::<u32, String>(ctx.id())
                .await
                .map_err(|e| e.to_string())
        })
        .id("me")
        .submit()
        .unwrap();
    let err = common::resolve(SEC, "self wait", me).await.unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");

    // a waits for b, b waits for a: the second wait is refused.
    let a = cluster
        .task(|ctx| async move {
            tokio::time::sleep(SEC).await;
            ctx.wait_for::<String, String>("b").await
        })
        .id("a")
        .submit()
        .unwrap();
    let b = cluster
        .task(|ctx| async move {
            tokio::time::sleep(2 * SEC).await;
            match ctx.wait_for::<String, String>("a").await {
                Err(e) if e.dependency().map(|d| d.cause) == Some(DependencyCause::Cycle) => {
                    Ok("b saw the cycle".to_string())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .id("b")
        .submit()
        .unwrap();
    assert_eq!(
        common::resolve(HOUR, "b", b).await,
        Ok("b saw the cycle".to_string())
    );
    assert_eq!(
        common::resolve(HOUR, "a", a).await,
        Ok("b saw the cycle".to_string())
    );

    // Waiting for one's own dependent would deadlock too.
    let c = cluster.clone();
    let parent = cluster
        .task(move |ctx| {
            let c = c.clone();
            async move {
                let child = c
                    .task(|_| async { Ok::<u32, String>(0) })
                    .id("child")
                    .after(corral::After::any(ctx.id()))
                    .submit()
                    .map_err(|e| e.to_string())?;
                drop(child);
                ctx.wait_for::<u32, String>("child")
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .id("parent")
        .submit()
        .unwrap();
    let err = common::resolve(SEC, "parent", parent).await.unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn stop_while_tasks_wait_lets_them_finish() {
    let cluster = Cluster::new(1).unwrap();
    let _later = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("later")
        .delay(HOUR)
        .submit()
        .unwrap();
    let waiter = cluster
        .task(|ctx| async move {
            match ctx.wait_for::<u32, String>("later").await {
                Err(TaskError::Shutdown) => Ok::<_, String>("saw the shutdown"),
                other => Err(format!("{other:?}")),
            }
        })
        .submit()
        .unwrap();
    common::yield_until("the waiter parks", || cluster.stats().waiting == 1).await;
    cluster.stop(SEC).await.unwrap();
    assert_eq!(waiter.await, Ok("saw the shutdown"));
}

#[tokio::test(start_paused = true)]
async fn cancel_while_tasks_wait_shuts_them_down() {
    let cluster = Cluster::new(1).unwrap();
    let _later = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("later")
        .delay(HOUR)
        .submit()
        .unwrap();
    let waiter = cluster
        .task(|ctx| async move {
            ctx.wait_for::<u32, String>("later")
                .await
                .map_err(|e| e.to_string())
        })
        .submit()
        .unwrap();
    common::yield_until("the waiter parks", || cluster.stats().waiting == 1).await;
    cluster.cancel();
    assert_eq!(
        common::resolve(SEC, "waiter", waiter).await,
        Err(TaskError::Shutdown)
    );
    cluster.stop(SEC).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiting_on_a_handle_frees_the_worker_too() {
    let cluster = Cluster::new(1).unwrap();
    let c = cluster.clone();
    let outer = cluster
        .task(move |ctx| {
            let c = c.clone();
            async move {
                let mut total = 0;
                for i in 0..5u32 {
                    let inner = c
                        .task(move |_| async move {
                            tokio::time::sleep(SEC).await;
                            Ok::<u32, String>(i)
                        })
                        .submit()
                        .map_err(|e| e.to_string())?;
                    total += ctx.wait(inner).await.map_err(|e| e.to_string())?;
                }
                Ok::<u32, String>(total)
            }
        })
        .submit()
        .unwrap();
    assert_eq!(common::resolve(HOUR, "outer", outer).await, Ok(10));
}

#[tokio::test(start_paused = true)]
async fn unknown_and_mistyped_waits_are_errors() {
    let cluster = Cluster::new(1).unwrap();
    let _t = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("t")
        .delay(HOUR)
        .submit()
        .unwrap();
    let h = cluster
        .task(|ctx| async move {
            let unknown = ctx.wait_for::<u32, String>("nobody").await;
            let wrong = ctx.wait_for::<String, String>("t").await;
            Ok::<_, String>((unknown, wrong))
        })
        .submit()
        .unwrap();
    let (unknown, wrong) = h.await.unwrap();
    assert_eq!(
        unknown.unwrap_err().dependency().map(|d| d.cause),
        Some(DependencyCause::Unknown)
    );
    assert_eq!(
        wrong.unwrap_err().dependency().map(|d| d.cause),
        Some(DependencyCause::TypeMismatch)
    );
}

#[tokio::test(start_paused = true)]
async fn a_parked_attempt_can_await_a_watch_that_a_submit_answers() {
    // The watch is answered by a submit, under the engine's lock; the
    // parked attempt's wake takes that lock, so the answer must go out after
    // it is released (no deadlock).
    let cluster = Cluster::new(1).unwrap();
    let _gate = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("gate")
        .delay(SEC)
        .submit()
        .unwrap();
    let c = cluster.clone();
    let waiter = cluster
        .task(move |ctx| {
            let c = c.clone();
            async move {
                // Parks (and stays in park mode for the rest of the attempt).
                let g = ctx
                    .wait_for::<u32, String>("gate")
                    .await
                    .map_err(|e| e.to_string())?;
                let w = c
                    .watch::<u32, String>("late", HOUR)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<u32, String>(g + w.map_err(|e| e.to_string())?)
            }
        })
        .submit()
        .unwrap();
    tokio::time::sleep(2 * SEC).await;
    let late = cluster
        .task(|_| async { Ok::<u32, String>(10) })
        .id("late")
        .submit()
        .unwrap();
    assert_eq!(common::resolve(HOUR, "waiter", waiter).await, Ok(11));
    assert_eq!(late.await, Ok(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_and_dependencies_on_threads_all_resolve_once() {
    // Real threads, no timing: every task resolves, exactly once, whatever
    // the interleaving of parks, resumes and cascades.
    let cluster = Cluster::new(2).unwrap();
    let completions = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut handles = Vec::new();
    for i in 0..400u32 {
        let done = completions.clone();
        let mut b = cluster
            .task(move |ctx| async move {
                if i % 3 == 1 {
                    // Waits for an earlier task, freeing its worker.
                    let _ = ctx.wait_for::<u32, String>(format!("t{}", i - 1)).await;
                }
                if i % 7 == 0 {
                    return Err(format!("t{i} fails"));
                }
                Ok::<u32, String>(i)
            })
            .id(format!("t{i}"))
            .cacheable(true)
            .on_complete(move |_, _| {
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        if i % 3 == 2 {
            b = b.after(corral::After::id::<u32, String>(format!("t{}", i - 2)));
        }
        handles.push(b.submit().unwrap());
    }
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("every task resolves");
    }
    common::yield_until("every completion counted", || {
        completions.load(std::sync::atomic::Ordering::SeqCst) == 400
    })
    .await;
    assert_eq!(completions.load(std::sync::atomic::Ordering::SeqCst), 400);
    let stats = cluster.stats();
    assert_eq!((stats.running, stats.waiting, stats.queued), (0, 0, 0));
}
