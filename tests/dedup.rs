//! Deduplication: `on_duplicate(Duplicate::Join)` returns a handle to the
//! task holding the id, `Duplicate::Reject` (the default) refuses the
//! submit, and `dedup_window` keeps a finished id taken for a while.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::Arc;

use corral::{Cluster, Duplicate, SubmitError, TaskError, TaskHandle};
use tokio::sync::Notify;

use common::{resolve, runtime, watchdog, yield_until, Flavor, HOUR, SEC};

/// A task "job" that waits for `gate` and then returns `value`; counts its runs.
fn gated(
    c: &Cluster,
    gate: &Arc<Notify>,
    runs: &Arc<AtomicU32>,
    value: u32,
    duplicate: Duplicate,
) -> Result<TaskHandle<u32, String>, SubmitError> {
    let (gate, runs) = (gate.clone(), runs.clone());
    c.task(move |_ctx| {
        let (gate, runs) = (gate.clone(), runs.clone());
        async move {
            runs.fetch_add(1, SeqCst);
            gate.notified().await;
            Ok::<_, String>(value)
        }
    })
    .id("job")
    .on_duplicate(duplicate)
    .submit()
}

#[tokio::test(start_paused = true)]
async fn join_returns_a_handle_to_the_running_task() {
    let c = Cluster::new(2).unwrap();
    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let first = gated(&c, &gate, &runs, 1, Duplicate::Reject).unwrap();
    yield_until("the first task runs", || runs.load(SeqCst) == 1).await;
    let joined = gated(&c, &gate, &runs, 2, Duplicate::Join).unwrap();
    assert!(joined.deduplicated());
    assert!(!first.deduplicated());
    assert_eq!(joined.id(), "job");
    // Joined, not queued: the cluster holds one task, and one body ran.
    assert_eq!(c.stats().held, 1);
    gate.notify_one();
    assert_eq!(resolve(SEC, "joined", joined).await, Ok(1));
    assert_eq!(resolve(SEC, "first", first).await, Ok(1));
    assert_eq!(runs.load(SeqCst), 1, "the joining submit's body never runs");
}

#[tokio::test(start_paused = true)]
async fn join_a_queued_task_gets_its_failure_too() {
    let c = Cluster::new(1).unwrap();
    let first = c
        .task(|_ctx| async { Err::<u32, _>("boom".to_string()) })
        .id("job")
        .delay(SEC)
        .submit()
        .unwrap();
    let joined: Vec<_> = (0..3)
        .map(|_| {
            c.task(|_ctx| async { Ok::<u32, String>(9) })
                .id("job")
                .on_duplicate(Duplicate::Join)
                .submit()
                .unwrap()
        })
        .collect();
    for j in joined {
        assert!(j.deduplicated());
        assert_eq!(
            resolve(2 * SEC, "joined", j).await,
            Err(TaskError::Failed("boom".to_string()))
        );
    }
    assert_eq!(
        resolve(SEC, "first", first).await,
        Err(TaskError::Failed("boom".to_string()))
    );
}

#[tokio::test(start_paused = true)]
async fn reject_is_the_default_and_touches_nothing() {
    let c = Cluster::new(1).unwrap();
    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicU32::new(0));
    let first = gated(&c, &gate, &runs, 1, Duplicate::Reject).unwrap();
    let plain = c
        .task(|_ctx| async { Ok::<u32, String>(5) })
        .id("job")
        .submit();
    assert!(matches!(plain, Err(SubmitError::DuplicateId(id)) if id == "job"));
    let rejected = gated(&c, &gate, &runs, 2, Duplicate::Reject);
    assert!(matches!(rejected, Err(SubmitError::DuplicateId(_))));
    yield_until("the first task runs", || runs.load(SeqCst) == 1).await;
    gate.notify_one();
    assert_eq!(resolve(SEC, "first", first).await, Ok(1));
    assert_eq!(runs.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn without_a_window_a_finished_id_is_free_and_join_runs_a_fresh_task() {
    let c = Cluster::new(1).unwrap();
    let first = c
        .task(|_ctx| async { Ok::<u32, String>(1) })
        .id("job")
        .cacheable(true)
        .submit()
        .unwrap();
    assert_eq!(resolve(SEC, "first", first).await, Ok(1));
    let again = c
        .task(|_ctx| async { Ok::<u32, String>(2) })
        .id("job")
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap();
    assert!(!again.deduplicated());
    assert_eq!(resolve(SEC, "again", again).await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn a_window_keeps_a_finished_id_taken_then_frees_it() {
    let c = Cluster::new(1).unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let submit = |value: u32, duplicate: Duplicate| {
        let runs = runs.clone();
        c.task(move |_ctx| {
            runs.fetch_add(1, SeqCst);
            async move { Err::<u32, _>(format!("failed {value}")) }
        })
        .id("job")
        .dedup_window(10 * SEC)
        .on_duplicate(duplicate)
        .submit()
    };
    let first = submit(1, Duplicate::Reject).unwrap();
    let outcome = resolve(SEC, "first", first).await;
    assert_eq!(outcome, Err(TaskError::Failed("failed 1".to_string())));
    let finished = tokio::time::Instant::now();

    // Within the window: refused, or joined to the very same outcome.
    tokio::time::sleep(9 * SEC).await;
    assert!(matches!(
        submit(2, Duplicate::Reject),
        Err(SubmitError::DuplicateId(_))
    ));
    let joined = submit(3, Duplicate::Join).unwrap();
    assert!(joined.deduplicated());
    assert_eq!(resolve(SEC, "joined", joined).await, outcome);
    // A plain subscriber sees it too: the window keeps the outcome cached.
    let sub = c.subscribe::<u32, String>("job").unwrap();
    assert_eq!(sub.await, outcome);
    assert_eq!(runs.load(SeqCst), 1);

    // After the window the id is free again.
    tokio::time::sleep_until(finished + 10 * SEC).await;
    let fresh = submit(4, Duplicate::Join).unwrap();
    assert!(!fresh.deduplicated());
    assert_eq!(
        resolve(SEC, "fresh", fresh).await,
        Err(TaskError::Failed("failed 4".to_string()))
    );
    assert_eq!(runs.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_window_keeps_a_cancelled_outcome_too() {
    let c = Cluster::new(1).unwrap();
    let first = c
        .task(|_ctx| async { Ok::<u32, String>(1) })
        .id("job")
        .delay(HOUR)
        .dedup_window(10 * SEC)
        .submit()
        .unwrap();
    assert!(common::cancel(&c, "job"));
    assert_eq!(
        resolve(SEC, "first", first).await,
        Err(TaskError::Cancelled)
    );
    let joined = c
        .task(|_ctx| async { Ok::<u32, String>(2) })
        .id("job")
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap();
    assert!(joined.deduplicated());
    assert_eq!(
        resolve(SEC, "joined", joined).await,
        Err(TaskError::Cancelled)
    );
}

#[tokio::test(start_paused = true)]
async fn a_longer_retention_outlives_the_window_but_frees_the_id() {
    let c = Cluster::new(1).unwrap();
    let first = c
        .task(|_ctx| async { Ok::<u32, String>(1) })
        .id("job")
        .dedup_window(SEC)
        .retention(HOUR)
        .submit()
        .unwrap();
    assert_eq!(resolve(SEC, "first", first).await, Ok(1));
    tokio::time::sleep(2 * SEC).await;
    // Still cached for subscribers...
    let sub = c.subscribe::<u32, String>("job").unwrap();
    assert_eq!(sub.await, Ok(1));
    // ...but the id is free: a plain submit replaces it.
    let again = c
        .task(|_ctx| async { Ok::<u32, String>(2) })
        .id("job")
        .submit()
        .unwrap();
    assert_eq!(resolve(SEC, "again", again).await, Ok(2));
}

#[tokio::test(start_paused = true)]
async fn join_with_other_types_is_a_type_mismatch() {
    let c = Cluster::new(1).unwrap();
    let first = c
        .task(|_ctx| async { Ok::<u32, String>(1) })
        .id("job")
        .delay(SEC)
        .submit()
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let err = c
        .task(move |_ctx| {
            r.store(true, SeqCst);
            async { Ok::<i64, String>(2) }
        })
        .id("job")
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap_err();
    match &err {
        SubmitError::TypeMismatch {
            id,
            expected,
            found,
        } => {
            assert_eq!(id, "job");
            assert!(expected.contains("i64"), "{expected}");
            assert!(found.contains("u32"), "{found}");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "task job produces Result<u32, String>, not Result<i64, String>"
    );
    // Nothing was touched.
    assert_eq!(resolve(2 * SEC, "first", first).await, Ok(1));
    assert!(!ran.load(SeqCst));
}

#[tokio::test(start_paused = true)]
async fn join_without_a_user_id_queues_a_fresh_task() {
    let c = Cluster::new(1).unwrap();
    let h = c
        .task(|_ctx| async { Ok::<u32, String>(1) })
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap();
    assert!(!h.deduplicated());
    assert_eq!(resolve(SEC, "plain", h).await, Ok(1));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_joined_handle_loses_nothing_for_the_others() {
    let c = Cluster::new(1).unwrap();
    let first = c
        .task(|_ctx| async { Ok::<String, String>("v".into()) })
        .id("job")
        .delay(SEC)
        .submit()
        .unwrap();
    let joined = c
        .task(|_ctx| async { Ok::<String, String>("w".into()) })
        .id("job")
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap();
    drop(joined);
    assert_eq!(resolve(2 * SEC, "first", first).await, Ok("v".to_string()));
}

/// A hang guard only (wall time on the multi-thread runtime): generous, so
/// that a loaded machine never trips it.
const HANG: std::time::Duration = std::time::Duration::from_secs(30);

/// How one round of the race went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Joined,
    Fresh,
}

/// One round: the first task (value 1) finishes while a joining submit
/// (value 2) comes. `mode` 0: the join comes while the first provably runs;
/// 1: after it provably finished; 2: at the same time (a true race on a
/// multi-thread runtime; the yields vary the interleaving on one thread).
async fn race_round(c: &Cluster, id: &str, window: bool, mode: usize, spin: usize) -> Answer {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let b = c
        .task(move |_ctx| {
            let g = g.clone();
            async move {
                g.notified().await;
                Ok::<u32, String>(1)
            }
        })
        .id(id);
    let mut first_early = None;
    let mut first = if window {
        b.dedup_window(SEC).submit().unwrap()
    } else {
        b.submit().unwrap()
    };
    let joiner = {
        let c = c.clone();
        let id = id.to_string();
        move || {
            c.task(|_ctx| async { Ok::<u32, String>(2) })
                .id(id)
                .on_duplicate(Duplicate::Join)
                .submit()
                .unwrap()
        }
    };
    let joined = match mode {
        0 => {
            let j = joiner();
            gate.notify_one();
            j
        }
        1 => {
            gate.notify_one();
            // Resolved: the first task's outcome was decided and delivered.
            first_early = Some(
                tokio::time::timeout(HANG, &mut first)
                    .await
                    .expect("the first task resolves"),
            );
            joiner()
        }
        _ => {
            let racer = tokio::spawn(async move {
                for _ in 0..spin {
                    tokio::task::yield_now().await;
                }
                // The handle, not awaited here: the round checks it.
                Some(joiner())
            });
            gate.notify_one();
            racer.await.unwrap().expect("the racer submitted")
        }
    };
    let dedup = joined.deduplicated();
    let first_out = match first_early {
        Some(out) => out,
        None => resolve(HANG, "first", first).await,
    };
    let joined_out = resolve(HANG, "joined", joined).await;
    assert_eq!(first_out, Ok(1), "the first task's own outcome");
    let answer = if dedup {
        assert_eq!(joined_out, Ok(1), "a joined handle gets the real outcome");
        Answer::Joined
    } else {
        assert!(!window, "a task with a window is always joined");
        assert_eq!(joined_out, Ok(2), "a fresh task gets its own outcome");
        Answer::Fresh
    };
    answer
}

fn race(flavor: Flavor, window: bool) -> Vec<Answer> {
    let rt = runtime(flavor, flavor == Flavor::CurrentThread);
    rt.block_on(async {
        let c = Cluster::new(2).unwrap();
        let mut answers = Vec::new();
        for round in 0..300 {
            // A window holds the id: each round has its own.
            let id = format!("race-{round}");
            answers.push(race_round(&c, &id, window, round % 3, round % 7).await);
        }
        c.stop(SEC).await.unwrap();
        answers
    })
}

#[test]
fn a_join_racing_the_first_tasks_end_gets_one_coherent_answer() {
    for flavor in Flavor::ALL {
        let answers = watchdog("dedup race", 60 * SEC, move || race(flavor, false));
        assert!(
            answers.contains(&Answer::Joined),
            "{flavor:?}: never joined"
        );
        assert!(answers.contains(&Answer::Fresh), "{flavor:?}: never fresh");
    }
}

#[test]
fn a_join_racing_the_end_of_a_task_with_a_window_always_joins() {
    for flavor in Flavor::ALL {
        let answers = watchdog("dedup window race", 60 * SEC, move || race(flavor, true));
        assert!(answers.iter().all(|a| *a == Answer::Joined), "{flavor:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_stopped_cluster_refuses_a_join_too() {
    let c = Cluster::new(1).unwrap();
    let first = c
        .task(|_ctx| async { Ok::<u32, String>(1) })
        .id("job")
        .dedup_window(HOUR)
        .submit()
        .unwrap();
    assert_eq!(resolve(HANG, "first", first).await, Ok(1));
    c.stop(SEC).await.unwrap();
    let r = c
        .task(|_ctx| async { Ok::<u32, String>(2) })
        .id("job")
        .on_duplicate(Duplicate::Join)
        .submit();
    assert!(matches!(r, Err(SubmitError::ShuttingDown)), "{r:?}");
}
