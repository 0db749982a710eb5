//! A cancel storm gives the registry's memory back, whether it empties the
//! cluster or leaves a task behind (`Engine::maybe_shrink`).
//!
//! A counting global allocator measures the bytes live in this test binary
//! (one test, so nothing else allocates meanwhile). A pending task takes
//! about 200 bytes (its cell, registry slot and queue entry); once a storm
//! of them is cancelled and their handles answered, what stays must be a
//! small fraction of the peak. A registry kept at its peak alone would keep
//! 24 bytes a task, 12% of it. The first storm is smaller than the
//! registries that shrink while they still hold tasks: it is given back
//! because it empties the cluster.

mod common;
#[path = "common/counting.rs"]
mod counting;

use corral::{CancelOutcome, Cluster, TaskError};

use common::{HOUR, SEC};
use counting::{live, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Submits `n` tasks far ahead, cancels them all by id and awaits their
/// handles. Returns the live bytes at the peak (all pending) and after.
async fn storm(cluster: &Cluster, n: usize) -> (isize, isize) {
    // The caller's vector of handles is not the cluster's memory.
    let mut handles = Vec::with_capacity(n);
    let base = live();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |_| async move { Ok::<u64, String>(i) })
            .delay(HOUR)
            .submit()
            .unwrap();
        handles.push(h);
    }
    let peak = live() - base;
    for h in &handles {
        assert_eq!(cluster.cancel_task(h.id()), CancelOutcome::Cancelled);
    }
    for h in handles.drain(..) {
        assert_eq!(h.await, Err(TaskError::Cancelled));
    }
    (peak, live() - base)
}

#[tokio::test(start_paused = true)]
async fn a_cancel_storm_gives_the_registry_back() {
    let cluster = Cluster::new(1).unwrap();
    cluster.run().unwrap();

    // The storm empties the cluster.
    let (peak, after) = storm(&cluster, 30_000).await;
    eprintln!("empty after: {after} of {peak} bytes live");
    assert!(peak > 3_000_000, "the peak is implausibly low: {peak}");
    assert!(
        after < peak / 50,
        "{after} of {peak} bytes still live after the storm emptied the cluster"
    );

    // The storm leaves a task behind, submitted before it (its slot is
    // the registry's first).
    let survivor = cluster
        .task(|_| async { Ok::<u64, String>(0) })
        .delay(HOUR)
        .submit()
        .unwrap();
    let (peak, after) = storm(&cluster, 100_000).await;
    eprintln!("with a survivor: {after} of {peak} bytes live");
    assert!(
        after < peak / 50,
        "{after} of {peak} bytes still live after a storm beside a pending task"
    );
    assert_eq!(cluster.stats().queued, 1);
    assert_eq!(cluster.cancel_task(survivor.id()), CancelOutcome::Cancelled);
    assert_eq!(survivor.await, Err(TaskError::Cancelled));
    cluster.stop(SEC).await.unwrap();
}
