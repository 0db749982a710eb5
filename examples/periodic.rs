//! Periodic tasks: a fixed interval with an overlap policy, then a preview
//! of a cron schedule's firings across a daylight-saving change, and a
//! batch that waits for a group of tasks.
//!
//! `cargo run --example periodic` (feature `cron` is on for the crate's
//! own examples).

use std::time::{Duration, SystemTime};

use corral::{Cluster, CronSchedule, Missed, Overlap, Trigger};

#[tokio::main]
async fn main() {
    let cluster = Cluster::new(2).unwrap();

    // Every 100 ms; a run takes 250 ms, so firings that find it running
    // are skipped (Overlap::Skip) rather than piling up.
    let poll = cluster
        .schedule(
            "poll",
            Trigger::every(Duration::from_millis(100)),
            |_ctx, firing| async move {
                println!("{} started", firing.id); // poll@1, poll@4, poll@7...
                tokio::time::sleep(Duration::from_millis(250)).await;
                Ok::<_, String>(())
            },
        )
        .overlap(Overlap::Skip)
        .missed(Missed::RunOnce)
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    poll.cancel();
    println!("poll: {:?}", poll.stats());

    // A cron schedule's firings are a pure function of the time: preview
    // the nights around Berlin's spring-forward change (2026-03-29).
    let nightly = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
    let mut t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_774_612_800); // 2026-03-27 12:00 UTC
    for _ in 0..3 {
        t = nightly.next_after(t).unwrap();
        // 02:30+01:00, then 03:00+02:00 (02:30 does not exist), then 02:30+02:00.
        println!("nightly@{}", nightly.label(t));
    }

    // A batch: a group of tasks, awaited as one.
    let batch = cluster
        .batch()
        .on_first_failure(|id, kind| println!("first failure: {id} ({kind:?})"));
    for n in 0..5u32 {
        drop(
            batch
                .task(move |_ctx| async move {
                    if n == 3 {
                        Err("three")
                    } else {
                        Ok(n)
                    }
                })
                .submit()
                .unwrap(),
        );
    }
    let summary = batch.seal().wait().await;
    println!("batch: {} ok, {} failed", summary.succeeded, summary.failed);

    cluster.stop(Duration::from_secs(5)).await.unwrap();
}
