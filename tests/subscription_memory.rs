//! A subscription dropped before its task finishes gives its slot back
//! (issue 8, item 5).
//!
//! A counting global allocator measures the bytes live in this test binary
//! (one test, so nothing else allocates meanwhile): after 100,000
//! `timeout(d, subscribe(id))` rounds on a task scheduled far ahead, the
//! live bytes must be about what they were after 1,000 rounds. A slot kept
//! per dropped subscription (about 96 bytes) would show as megabytes.

mod common;
#[path = "common/counting.rs"]
mod counting;

use corral::{Cluster, TaskError};

use common::{cancel, resolve, HOUR, MS, SEC};
use counting::{live, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

async fn rounds(cluster: &Cluster, n: usize) {
    for _ in 0..n {
        let sub = cluster
            .subscribe::<u32, String>("far")
            .expect("the task is pending");
        // Gives up waiting: the subscription is dropped unanswered.
        assert!(tokio::time::timeout(MS, sub).await.is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn dropped_subscriptions_give_their_slot_back() {
    let cluster = Cluster::new(1).unwrap();
    cluster.run().unwrap();
    let h = cluster
        .task(|_| async { Ok::<u32, String>(1) })
        .id("far")
        .delay(100_000 * HOUR)
        .submit()
        .unwrap();
    // Warm up (timers, the task's first subscriber list, runtime buffers).
    rounds(&cluster, 1_000).await;
    let after_1k = live();
    rounds(&cluster, 100_000).await;
    let after_100k = live();
    let growth = after_100k - after_1k;
    eprintln!("live bytes: {after_1k} after 1k rounds, {after_100k} after 100k more (+{growth})");
    // 99,000 leaked slots of ~96 bytes would be ~9.5 MB; allow 64 KiB of
    // noise (timer wheel levels, allocator-size buckets of vectors).
    assert!(
        growth < 64 * 1024,
        "memory grew by {growth} bytes over 100,000 dropped subscriptions \
         (~{} bytes each): dropped subscriptions keep their slot",
        growth / 100_000
    );
    // The task itself is untouched.
    assert!(cancel(&cluster, "far"));
    assert_eq!(resolve(SEC, "far", h).await, Err(TaskError::Cancelled));
    cluster.stop(SEC).await.unwrap();
}
