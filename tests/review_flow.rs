//! Review probes (issue 13 flow control): interactions of keys, rate
//! limiters, the bounded queue and shutdowns. Each test names the behaviour
//! it checks; all run on tokio's paused clock.

mod common;

use std::time::Duration;

use corral::{CancelOutcome, Cluster, ClusterStats, KeyFull, Rate, TaskError};
use tokio::time::sleep;

use common::{resolve, yield_until, HOUR, MS, SEC};

/// A task of `key` that runs for `d` and returns `n`.
fn keyed<'c>(
    c: &'c Cluster,
    key: &'static str,
    n: u32,
    d: Duration,
) -> corral::TaskBuilder<'c, impl corral::Body<u32, String>, u32, String> {
    c.task(move |_| async move {
        sleep(d).await;
        Ok(n)
    })
    .key(key)
}

/// `KeyFull::Replace` promises that older *unstarted* tasks of the key are
/// replaced. A task a rate limiter set aside has not started, yet it is
/// skipped (and forgotten for good), so it later runs beside the newest.
#[tokio::test(start_paused = true)]
async fn replace_also_replaces_a_task_set_aside_by_a_limiter() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    // One admission per hour: the first task uses it, the next waits.
    c.add_limiter("r", Rate::per_hour(1).burst(1)).unwrap();
    let first = keyed(&c, "k", 1, 10 * MS).limit("r").submit().unwrap();
    yield_until("first started", || c.stats().running == 1).await;
    let old = keyed(&c, "k", 2, 10 * MS)
        .limit("r")
        .on_key_full(KeyFull::Replace)
        .submit()
        .unwrap();
    assert_eq!(first.await, Ok(1));
    // `old` got its key's room, then the limiter set it aside (unstarted).
    yield_until("old set aside", || c.stats().waiting_on_limiter == 1).await;
    let new = keyed(&c, "k", 3, 10 * MS)
        .limit("r")
        .on_key_full(KeyFull::Replace)
        .submit()
        .unwrap();
    assert_eq!(
        resolve(SEC, "old", old).await,
        Err(TaskError::Replaced),
        "an unstarted task of the key is replaced by the newest"
    );
    assert_eq!(c.stats().replaced, 1);
    assert_eq!(resolve(2 * HOUR, "new", new).await, Ok(3));
}

/// Cancelling a task that waits on its key while a drain runs: the drain
/// ends, and every count returns to zero.
#[tokio::test(start_paused = true)]
async fn drain_ends_after_cancelling_a_task_waiting_on_its_key() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    let a = keyed(&c, "k", 1, SEC).submit().unwrap();
    let b = keyed(&c, "k", 2, SEC).id("b").submit().unwrap();
    yield_until("b waits on k", || c.stats().waiting_on_key == 1).await;
    let c2 = c.clone();
    let drain = tokio::spawn(async move { c2.drain(HOUR).await });
    tokio::task::yield_now().await;
    assert_eq!(c.cancel_task("b"), CancelOutcome::Cancelled);
    assert_eq!(b.await, Err(TaskError::Cancelled));
    assert_eq!(a.await, Ok(1));
    tokio::time::timeout(2 * SEC, drain)
        .await
        .expect("drain ended")
        .unwrap()
        .unwrap();
    let s = c.stats();
    assert_eq!((s.queued, s.running, s.waiting_on_key), (0, 0, 0), "{s:?}");
}

/// A keyed task set aside by a limiter, then cancelled: counts go to zero
/// and the key's state goes.
#[tokio::test(start_paused = true)]
async fn cancel_of_a_keyed_limited_task_leaves_nothing_behind() {
    let c = Cluster::builder().workers(2).key_limit(2).build().unwrap();
    c.add_limiter("r", Rate::per_hour(1).burst(1)).unwrap();
    let a = keyed(&c, "k", 1, 10 * MS).limit("r").submit().unwrap();
    let b = keyed(&c, "k", 2, 10 * MS)
        .limit("r")
        .id("b")
        .submit()
        .unwrap();
    yield_until("b set aside", || c.stats().waiting_on_limiter == 1).await;
    assert_eq!(a.await, Ok(1));
    assert_eq!(c.cancel_task("b"), CancelOutcome::Cancelled);
    assert_eq!(b.await, Err(TaskError::Cancelled));
    sleep(2 * HOUR).await;
    assert_eq!(c.stats(), ClusterStats::default());
    assert_eq!(c.active_keys(), 0);
}

/// A body asking its limiter to slow down frees its key slot (the retry
/// is requeued); the key's waiter then meets the held limiter too. Both
/// run once the hold ends, and nothing is left counted.
#[tokio::test(start_paused = true)]
async fn slow_down_with_a_full_key_runs_both_after_the_hold() {
    use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
    use std::sync::Arc;
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per_second(10).burst(5)).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let a = c
        .task(move |ctx| {
            let calls = calls2.clone();
            async move {
                if calls.fetch_add(1, SeqCst) == 0 {
                    sleep(10 * MS).await;
                    ctx.slow_down("r", SEC);
                    return Err("429".to_string());
                }
                Ok(1u32)
            }
        })
        .key("k")
        .limit("r")
        .submit()
        .unwrap();
    let b = keyed(&c, "k", 2, 10 * MS).limit("r").submit().unwrap();
    assert_eq!(resolve(3 * SEC, "a", a).await, Ok(1));
    assert_eq!(resolve(3 * SEC, "b", b).await, Ok(2));
    sleep(SEC).await;
    assert_eq!(c.stats(), ClusterStats::default());
    assert_eq!(c.active_keys(), 0);
}

/// A stop while keyed tasks are spread over every flow state (running,
/// waiting on the key, set aside by a limiter, woken by it and queued):
/// each resolves exactly once and nothing stays counted.
#[tokio::test(start_paused = true)]
async fn stop_resolves_keyed_tasks_in_every_flow_state() {
    let c = Cluster::builder().workers(3).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per(1, 100 * MS).burst(1)).unwrap();
    let mut hs = Vec::new();
    for i in 0..4 {
        hs.push(keyed(&c, "k", i, SEC).limit("r").submit().unwrap());
    }
    for i in 10..14 {
        hs.push(keyed(&c, "j", i, SEC).limit("r").submit().unwrap());
    }
    sleep(150 * MS).await;
    c.stop(HOUR).await.unwrap();
    let mut ok = 0;
    for h in hs {
        match resolve(SEC, "task", h).await {
            Ok(_) => ok += 1,
            Err(TaskError::Shutdown) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok >= 1);
    let s = c.stats();
    assert_eq!(
        (s.queued, s.running, s.waiting_on_key, s.waiting_on_limiter),
        (0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(c.active_keys(), 0);
}

/// The runtime dies under the workers with keyed tasks waiting on their key
/// and set aside by a limiter; once the cluster is dropped, every handle
/// resolves (Drop for Engine).
#[test]
fn runtime_drop_resolves_tasks_on_keys_and_limiters() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let (c, hs) = rt.block_on(async {
        let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
        c.add_limiter("r", Rate::per_hour(1).burst(1)).unwrap();
        let hs: Vec<_> = (0..2)
            .map(|i| keyed(&c, "k", i, HOUR).submit().unwrap())
            .chain((0..2).map(|i| keyed(&c, "j", 10 + i, MS).limit("r").submit().unwrap()))
            .collect();
        sleep(10 * MS).await;
        let s = c.stats();
        assert_eq!((s.waiting_on_key, s.waiting_on_limiter), (1, 1), "{s:?}");
        (c, hs)
    });
    drop(rt);
    drop(c);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for h in hs {
            let r = tokio::time::timeout(Duration::from_secs(5), h).await;
            assert!(r.is_ok(), "a handle never resolved");
        }
    });
}

/// `KeyFull::Replace` at a full bounded queue: the capacity is checked
/// first, with the task it would replace still counted (documented on
/// `KeyFull::Replace`), so the submit is refused and the old task kept.
#[tokio::test(start_paused = true)]
async fn replace_does_not_get_around_a_full_queue() {
    let c = Cluster::builder()
        .workers(1)
        .key_limit(1)
        .capacity(1, corral::Overflow::Reject)
        .paused()
        .build()
        .unwrap();
    let old = keyed(&c, "k", 1, MS)
        .on_key_full(KeyFull::Replace)
        .submit()
        .unwrap();
    let new = keyed(&c, "k", 2, MS).on_key_full(KeyFull::Replace).submit();
    assert!(
        matches!(new, Err(corral::SubmitError::Full { capacity: 1 })),
        "{:?}",
        new.err()
    );
    c.run().unwrap();
    assert_eq!(resolve(SEC, "old", old).await, Ok(1));
    assert_eq!(c.stats().replaced, 0);
}

/// A shrink during a drain while tasks wait on their key and on a limiter:
/// the drain still runs them all and ends.
#[tokio::test(start_paused = true)]
async fn shrink_during_a_drain_with_key_and_limiter_waiters() {
    let c = Cluster::builder().workers(4).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per(1, 100 * MS).burst(1)).unwrap();
    let mut hs = Vec::new();
    for i in 0..3 {
        hs.push(keyed(&c, "k", i, 50 * MS).submit().unwrap());
        hs.push(keyed(&c, "j", 10 + i, MS).limit("r").submit().unwrap());
    }
    sleep(MS).await;
    let c2 = c.clone();
    let drain = tokio::spawn(async move { c2.drain(HOUR).await });
    tokio::task::yield_now().await;
    c.resize(1).unwrap();
    tokio::time::timeout(10 * SEC, drain)
        .await
        .expect("drain ended")
        .unwrap()
        .unwrap();
    for h in hs {
        assert!(resolve(SEC, "task", h).await.is_ok());
    }
}

/// Keyed, limited dependents whose parent is cancelled while they wait,
/// beside siblings waiting on the key: each resolves once, counts clear.
#[tokio::test(start_paused = true)]
async fn keyed_limited_dependents_of_a_cancelled_parent_leave_nothing() {
    let c = Cluster::builder().workers(2).key_limit(1).build().unwrap();
    c.add_limiter("r", Rate::per_hour(1).burst(1)).unwrap();
    let parent = keyed(&c, "k", 0, HOUR).id("p").submit().unwrap();
    let sib = keyed(&c, "k", 1, MS).limit("r").submit().unwrap();
    let child = keyed(&c, "k", 2, MS)
        .limit("r")
        .after(&parent)
        .submit()
        .unwrap();
    yield_until("sib waits on k", || c.stats().waiting_on_key == 1).await;
    assert_eq!(c.cancel_task("p"), CancelOutcome::Requested);
    assert_eq!(parent.await, Err(TaskError::Cancelled));
    assert!(resolve(SEC, "child", child).await.is_err());
    assert_eq!(resolve(SEC, "sib", sib).await, Ok(1));
    sleep(2 * HOUR).await;
    assert_eq!(c.stats(), ClusterStats::default());
    assert_eq!(c.active_keys(), 0);
}

/// The same under `Overflow::Wait`: `submit_wait` of the newest `Replace`
/// task waits for room like any submit (its own replace frees none); before
/// the cluster runs none comes, and once the old task has run the new one
/// is admitted (nothing left to replace).
#[tokio::test(start_paused = true)]
async fn replace_with_submit_wait_waits_for_room_like_any_submit() {
    let c = Cluster::builder()
        .workers(1)
        .key_limit(1)
        .capacity(1, corral::Overflow::Wait)
        .paused()
        .build()
        .unwrap();
    let old = keyed(&c, "k", 1, MS)
        .on_key_full(KeyFull::Replace)
        .submit()
        .unwrap();
    let waited = tokio::time::timeout(
        HOUR,
        keyed(&c, "k", 2, MS)
            .on_key_full(KeyFull::Replace)
            .submit_wait(),
    )
    .await;
    assert!(waited.is_err(), "no room may come before the cluster runs");
    c.run().unwrap();
    let new = keyed(&c, "k", 2, MS)
        .on_key_full(KeyFull::Replace)
        .submit_wait()
        .await
        .unwrap();
    assert_eq!(resolve(SEC, "old", old).await, Ok(1));
    assert_eq!(resolve(SEC, "new", new).await, Ok(2));
}
