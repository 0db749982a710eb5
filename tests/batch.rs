//! Batches: callbacks once each, only after the seal; an empty batch is
//! done at its seal; `wait` resolves with the summary.

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::{BatchSummary, Cluster, Duplicate, OutcomeKind, SubmitError, TaskError, TaskId};
use tokio::sync::Notify;

use common::{yield_until, HOUR, MS, SEC};

/// Counts of each callback, and what they saw.
#[derive(Default)]
struct Seen {
    done: AtomicU32,
    first: AtomicU32,
    summary: Mutex<Option<BatchSummary>>,
    first_failure: Mutex<Option<(TaskId, OutcomeKind)>>,
}

fn watched(cluster: &Cluster, seen: &Arc<Seen>) -> corral::Batch {
    let (a, b) = (seen.clone(), seen.clone());
    cluster
        .batch()
        .on_done(move |s| {
            a.done.fetch_add(1, SeqCst);
            *a.summary.lock().unwrap() = Some(s.clone());
        })
        .on_first_failure(move |id, kind| {
            b.first.fetch_add(1, SeqCst);
            *b.first_failure.lock().unwrap() = Some((id.clone(), kind));
        })
}

#[tokio::test(start_paused = true)]
async fn all_succeed_counts_and_await() {
    let cluster = Cluster::new(2).unwrap();
    let seen = Arc::new(Seen::default());
    let batch = watched(&cluster, &seen);
    let handles: Vec<_> = (0..5u32)
        .map(|n| {
            batch
                .task(move |_ctx| async move {
                    tokio::time::sleep(MS * n).await;
                    Ok::<_, String>(n)
                })
                .submit()
                .unwrap()
        })
        .collect();
    let sealed = batch.seal();
    let summary = tokio::time::timeout(SEC, sealed.wait()).await.unwrap();
    assert_eq!(summary.succeeded, 5);
    assert_eq!(summary.total(), 5);
    assert!(summary.all_succeeded());
    assert!(sealed.is_done());
    assert_eq!(seen.done.load(SeqCst), 1);
    assert_eq!(
        seen.first.load(SeqCst),
        0,
        "no failure, no first-failure callback"
    );
    assert_eq!(seen.summary.lock().unwrap().as_ref(), Some(&summary));
    // The members' own handles still get their values.
    for (n, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await, Ok(n as u32));
    }
    // A second wait answers the same.
    assert_eq!(sealed.wait().await, summary);
    assert_eq!(seen.done.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn one_fails_counts_per_kind_and_ids_of_failures() {
    let cluster = Cluster::new(4).unwrap();
    let seen = Arc::new(Seen::default());
    let batch = watched(&cluster, &seen);
    let _member = batch
        .task(|_| async { Ok::<u8, String>(1) })
        .id("ok")
        .submit()
        .unwrap();
    let _member = batch
        .task(|_| async { Err::<u8, _>("bad".to_string()) })
        .id("bad")
        .submit()
        .unwrap();
    batch
        .task(|_| async { panic!("boom") })
        .id("boom")
        .submit()
        .map(|h: corral::TaskHandle<u8, String>| drop(h))
        .unwrap();
    let _member = batch
        .task(|_| async {
            tokio::time::sleep(HOUR).await;
            Ok::<u8, String>(0)
        })
        .id("slow")
        .timeout(10 * MS)
        .submit()
        .unwrap();
    let summary = batch.seal().wait().await;
    assert_eq!(
        (
            summary.succeeded,
            summary.failed,
            summary.panicked,
            summary.timed_out
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(summary.count(OutcomeKind::Failed), 1);
    let mut ids: Vec<String> = summary
        .failures
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["bad", "boom", "slow"]);
    assert!(summary
        .failures
        .contains(&(TaskId::from("slow"), OutcomeKind::TimedOut)));
    assert_eq!(seen.first.load(SeqCst), 1);
    assert_eq!(seen.done.load(SeqCst), 1);
    // The first failure reported is the first in the summary's order.
    let first = seen.first_failure.lock().unwrap().clone().unwrap();
    assert_eq!(first, summary.failures[0]);
}

#[tokio::test(start_paused = true)]
async fn first_failure_fires_once_and_before_done() {
    let cluster = Cluster::new(3).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let (o1, o2) = (order.clone(), order.clone());
    let batch = cluster
        .batch()
        .on_first_failure(move |id, _| o1.lock().unwrap().push(format!("first {id}")))
        .on_done(move |s| o2.lock().unwrap().push(format!("done {}", s.failed)));
    for n in 0..3u32 {
        let _member = batch
            .task(move |_| async move {
                tokio::time::sleep(MS * (n + 1)).await;
                Err::<(), _>(n)
            })
            .id(format!("f{n}"))
            .submit()
            .unwrap();
    }
    let release = Arc::new(Notify::new());
    let r = release.clone();
    let _member = batch
        .task(move |_| {
            let r = r.clone();
            async move {
                r.notified().await;
                Ok::<(), u32>(())
            }
        })
        .id("last")
        .submit()
        .unwrap();
    let sealed = batch.seal();
    // The first failure is reported while the group is still running.
    tokio::time::sleep(10 * MS).await;
    assert_eq!(*order.lock().unwrap(), ["first f0"]);
    assert!(!sealed.is_done());
    release.notify_one();
    let summary = sealed.wait().await;
    assert_eq!(summary.failed, 3);
    assert_eq!(summary.succeeded, 1);
    assert_eq!(*order.lock().unwrap(), ["first f0", "done 3"]);
}

#[tokio::test(start_paused = true)]
async fn empty_sealed_batch_is_done_at_once() {
    let cluster = Cluster::new(1).unwrap();
    let seen = Arc::new(Seen::default());
    let sealed = watched(&cluster, &seen).seal();
    // Fired in `seal` itself: no yield, no time.
    assert_eq!(seen.done.load(SeqCst), 1);
    assert!(sealed.is_done());
    let summary = sealed.wait().await;
    assert_eq!(summary, BatchSummary::default());
    assert!(summary.all_succeeded());
    assert_eq!(seen.first.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn unsealed_batch_fires_nothing_until_sealed() {
    let cluster = Cluster::new(2).unwrap();
    let seen = Arc::new(Seen::default());
    let batch = watched(&cluster, &seen);
    let a = batch
        .task(|_| async { Ok::<_, String>(1) })
        .submit()
        .unwrap();
    let b = batch
        .task(|_| async { Err::<i32, _>("no".to_string()) })
        .submit()
        .unwrap();
    assert_eq!(a.await, Ok(1));
    assert_eq!(b.await, Err(TaskError::Failed("no".to_string())));
    tokio::time::sleep(SEC).await;
    // Every member has finished, but the group is open.
    assert_eq!(batch.summary().total(), 2);
    assert_eq!(seen.done.load(SeqCst), 0);
    assert_eq!(seen.first.load(SeqCst), 0);
    // A third member joins while open.
    let c = batch
        .task(|_| async { Ok::<_, String>(3) })
        .submit()
        .unwrap();
    assert_eq!(c.await, Ok(3));
    assert_eq!(seen.done.load(SeqCst), 0);
    let sealed = batch.seal();
    // Both fire in `seal`, once.
    assert_eq!(seen.first.load(SeqCst), 1);
    assert_eq!(seen.done.load(SeqCst), 1);
    let summary = sealed.wait().await;
    assert_eq!((summary.succeeded, summary.failed), (2, 1));
    tokio::time::sleep(SEC).await;
    assert_eq!(seen.first.load(SeqCst), 1);
    assert_eq!(seen.done.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn wait_pends_until_the_last_member_finishes() {
    let cluster = Cluster::new(1).unwrap();
    let batch = cluster.batch();
    let _member = batch
        .task(|_| async {
            tokio::time::sleep(HOUR).await;
            Ok::<_, String>(())
        })
        .submit()
        .unwrap();
    let sealed = batch.seal();
    assert!(tokio::time::timeout(HOUR / 2, sealed.wait()).await.is_err());
    let summary = tokio::time::timeout(HOUR, sealed.wait()).await.unwrap();
    assert_eq!(summary.succeeded, 1);
}

#[tokio::test(start_paused = true)]
async fn refused_or_dropped_builders_are_no_members() {
    let cluster = Cluster::new(1).unwrap();
    let seen = Arc::new(Seen::default());
    let batch = watched(&cluster, &seen);
    let _held = batch
        .task(|_| async {
            tokio::time::sleep(HOUR).await;
            Ok::<_, String>(())
        })
        .id("dup")
        .submit()
        .unwrap();
    // Refused: the id is taken.
    let refused = batch
        .task(|_| async { Ok::<_, String>(()) })
        .id("dup")
        .submit();
    assert!(matches!(refused, Err(SubmitError::DuplicateId(_))));
    // Never submitted.
    drop(batch.task(|_| async { Ok::<_, String>(()) }));
    assert_eq!(cluster.cancel_task("dup"), corral::CancelOutcome::Cancelled);
    let sealed = batch.seal();
    let summary = sealed.wait().await;
    assert_eq!(summary.total(), 1, "only the submitted task counts");
    assert_eq!(summary.cancelled, 1);
    assert_eq!(seen.done.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn callbacks_may_call_the_cluster_and_panics_are_contained() {
    let cluster = Cluster::new(1).unwrap();
    let c = cluster.clone();
    let submitted = Arc::new(AtomicU32::new(0));
    let s = submitted.clone();
    let batch = cluster
        .batch()
        .on_first_failure(|_, _| panic!("callback panics"))
        .on_done(move |_| {
            // No engine lock is held: calling back in works.
            let _ = c.stats();
            drop(c.task(|_| async { Ok::<_, String>(()) }).submit().unwrap());
            s.fetch_add(1, SeqCst);
        });
    let user_log = Arc::new(AtomicU32::new(0));
    let u = user_log.clone();
    let _member = batch
        .task(|_| async { Err::<(), _>("x") })
        // The member's own callback, besides the batch's hook.
        .on_complete(move |_, _| {
            u.fetch_add(1, SeqCst);
        })
        .submit()
        .unwrap();
    let summary = batch.seal().wait().await;
    assert_eq!(summary.failed, 1);
    assert_eq!(
        submitted.load(SeqCst),
        1,
        "on_done ran after the panicking first-failure callback"
    );
    assert_eq!(
        user_log.load(SeqCst),
        1,
        "the member's on_complete was not replaced"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_an_unsealed_batch_seals_it() {
    let cluster = Cluster::new(1).unwrap();
    let seen = Arc::new(Seen::default());
    let batch = watched(&cluster, &seen);
    let h = batch
        .task(|_| async { Ok::<_, String>(7) })
        .submit()
        .unwrap();
    drop(batch);
    assert_eq!(h.await, Ok(7));
    yield_until("on_done after the last member", || {
        seen.done.load(SeqCst) == 1
    })
    .await;
    assert_eq!(seen.summary.lock().unwrap().as_ref().unwrap().succeeded, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_counts_members_as_shut_down() {
    let cluster = Cluster::new(1).unwrap();
    let batch = cluster.batch();
    for _ in 0..3 {
        let _member = batch
            .task(|_| async { Ok::<_, String>(()) })
            .delay(HOUR)
            .submit()
            .unwrap();
    }
    let sealed = batch.seal();
    cluster.stop(Duration::from_secs(1)).await.unwrap();
    let summary = sealed.wait().await;
    assert_eq!(summary.shutdown, 3);
    assert_eq!(summary.failures.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_racing_with_many_members_finishing_fires_once() {
    let cluster = Cluster::new(4).unwrap();
    for round in 0..20 {
        let seen = Arc::new(Seen::default());
        let batch = watched(&cluster, &seen);
        for n in 0..50u32 {
            let _member = batch
                .task(move |_| async move {
                    tokio::task::yield_now().await;
                    if n % 7 == 0 {
                        Err(n)
                    } else {
                        Ok(n)
                    }
                })
                .submit()
                .unwrap();
        }
        // Sealed while members finish on other threads.
        let summary = batch.seal().wait().await;
        assert_eq!(summary.total(), 50, "round {round}");
        assert_eq!(summary.failed, 8);
        assert_eq!(seen.done.load(SeqCst), 1);
        assert_eq!(seen.first.load(SeqCst), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn blocking_members_count_too() {
    let cluster = Cluster::new(2).unwrap();
    let batch = cluster.batch();
    let a = batch
        .blocking_task(|_| Ok::<_, String>(1))
        .submit()
        .unwrap();
    let b = batch
        .blocking_task(|_| Err::<i32, _>("no".to_string()))
        .id("blocking-bad")
        .submit()
        .unwrap();
    let summary = batch.seal().wait().await;
    assert_eq!((summary.succeeded, summary.failed), (1, 1));
    assert_eq!(
        summary.failures,
        [(TaskId::from("blocking-bad"), OutcomeKind::Failed)]
    );
    assert_eq!(a.await, Ok(1));
    assert!(b.await.is_err());
}

#[tokio::test(start_paused = true)]
async fn members_resolved_by_their_parents_are_counted_by_kind() {
    let cluster = Cluster::new(1).unwrap();
    let parent = cluster
        .task(|_ctx| async { Err::<u8, _>("no".to_string()) })
        .submit()
        .unwrap();
    let batch = cluster.batch();
    let _dependent = batch
        .task(|_ctx| async { Ok::<u8, String>(1) })
        .after(&parent)
        .submit()
        .unwrap();
    let _skipped = batch
        .task(|_ctx| async { Ok::<u8, String>(2) })
        .after(
            corral::After::id::<u8, String>(parent.id()).on_failure(corral::OnParentFailure::Skip),
        )
        .submit()
        .unwrap();
    let summary = tokio::time::timeout(SEC, batch.seal().wait())
        .await
        .unwrap();
    assert_eq!(summary.count(OutcomeKind::Dependency), 1);
    assert_eq!(summary.count(OutcomeKind::Skipped), 1);
    assert_eq!(summary.total(), 2);
    assert_eq!(summary.failures.len(), 2);
}

/// A member that joins the running task holding its id
/// (`Duplicate::Join`) is a member: the batch counts it with that task's
/// outcome and is done only once that task has finished.
#[tokio::test(start_paused = true)]
async fn a_member_that_joins_a_running_task_counts_with_its_outcome() {
    let cluster = Cluster::new(1).unwrap();
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let first = cluster
        .task(move |_| {
            let g = g.clone();
            async move {
                g.notified().await;
                Err::<u32, String>("first".into())
            }
        })
        .id("shared")
        .submit()
        .unwrap();
    let batch = cluster.batch();
    let member = batch
        .task(|_| async { Ok::<u32, String>(2) })
        .id("shared")
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap();
    assert!(member.deduplicated());
    let sealed = batch.seal();
    tokio::time::sleep(10 * MS).await;
    assert!(!sealed.is_done(), "done before its member finished");
    assert_eq!(sealed.summary().total(), 0);
    gate.notify_one();
    assert_eq!(first.await, Err(TaskError::Failed("first".into())));
    assert_eq!(member.await, Err(TaskError::Failed("first".into())));
    let summary = sealed.wait().await;
    assert_eq!((summary.total(), summary.failed), (1, 1), "{summary:?}");
    assert_eq!(summary.failures, [("shared".into(), OutcomeKind::Failed)]);
}

/// A member that joins a finished task (within its dedup window) counts
/// at once, with that task's cached outcome.
#[tokio::test(start_paused = true)]
async fn a_member_that_joins_a_finished_task_counts_at_once() {
    let cluster = Cluster::new(1).unwrap();
    let first = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("done-before")
        .dedup_window(HOUR)
        .submit()
        .unwrap();
    assert_eq!(first.await, Ok(1));
    let batch = cluster.batch();
    let member = batch
        .task(|_| async { Ok::<u32, String>(2) })
        .id("done-before")
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap();
    assert!(member.deduplicated());
    let sealed = batch.seal();
    assert!(sealed.is_done());
    assert_eq!(sealed.summary().succeeded, 1);
    assert_eq!(member.await, Ok(1));
}

/// A joining member whose id is free runs as a member of its own.
#[tokio::test(start_paused = true)]
async fn a_joining_member_with_a_free_id_runs_itself() {
    let cluster = Cluster::new(1).unwrap();
    let batch = cluster.batch();
    let member = batch
        .task(|_| async { Ok::<u32, String>(2) })
        .id("free")
        .on_duplicate(Duplicate::Join)
        .submit()
        .unwrap();
    assert!(!member.deduplicated());
    let sealed = batch.seal();
    assert_eq!(member.await, Ok(2));
    assert_eq!(sealed.wait().await.succeeded, 1);
}
