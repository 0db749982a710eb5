//! A tour of corral: priority order, a scheduled task, retries with
//! exponential backoff and jitter, a timeout, a cancel, a cached result read
//! by a late subscriber, and a graceful stop.
//!
//! Run it with `cargo run --example tour`.

use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, ExponentialBackoff, TaskError};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_millis();

    // ---- 1. Priority order: tasks submitted to a paused cluster wait for
    // `run`, then go highest priority first, FIFO among equals.
    println!("1. priority order (1 worker, 5 tasks queued before run)");
    let cluster = Cluster::builder().workers(1).paused().build()?;
    let mut handles = Vec::new();
    for (name, priority) in [
        ("backup", 1),
        ("alert", 9),
        ("email-a", 5),
        ("email-b", 5),
        ("cleanup", 0),
    ] {
        let h = cluster
            .task(move |_ctx| async move {
                println!("   ran {name:<8} (priority {priority})");
                Ok::<_, String>(())
            })
            .id(name)
            .priority(priority)
            .submit()?;
        handles.push(h);
    }
    cluster.run()?;
    for h in handles {
        h.await?;
    }
    cluster.stop(Duration::from_secs(1)).await?;

    // The rest runs on a wider cluster, whose workers start at once.
    let cluster = Cluster::builder().workers(4).build()?;

    // ---- 2. A scheduled task: not started before its start time.
    println!("2. scheduled task");
    let start_at = Instant::now() + Duration::from_millis(200);
    let report = cluster
        .task(move |_ctx| async move { Ok::<_, String>(Instant::now()) })
        .id("report")
        .start_at(start_at)
        .submit()?;
    let began = report.await?;
    println!(
        "   'report' was due at +200 ms and started {} ms after its start time",
        began.saturating_duration_since(start_at).as_millis()
    );

    // ---- 3. Retries with exponential backoff and jitter.
    println!("3. retries: fails twice, then succeeds");
    let flaky = cluster
        .task(move |ctx| async move {
            println!("   [{:>4} ms] 'flaky' attempt {}", ms(), ctx.attempt());
            if ctx.attempt() < 3 {
                Err(format!("upstream unavailable (attempt {})", ctx.attempt()))
            } else {
                Ok("fetched")
            }
        })
        .id("flaky")
        .retry(4)
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(50), 2.0)
                .with_max(Duration::from_secs(1)),
        )
        .jitter(0.1)
        .on_failure(|id, err| println!("   {id} failed for good: {err}"))
        .submit()?;
    println!("   'flaky' -> {:?}", flaky.await);

    // ---- 4. A timeout: the attempt is dropped and the error says so.
    println!("4. timeout");
    let slow = cluster
        .task(|_ctx| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, String>(())
        })
        .id("slow")
        .timeout(Duration::from_millis(100))
        .submit()?;
    match slow.await {
        Err(TaskError::TimedOut { limit }) => println!("   'slow' timed out after {limit:?}"),
        other => println!("   'slow' -> {other:?}"),
    }

    // ---- 5. Cancel by id: a task scheduled far ahead leaves at once.
    println!("5. cancel");
    let doomed = cluster
        .task(|_ctx| async { Ok::<_, String>(()) })
        .id("doomed")
        .delay(Duration::from_secs(3600))
        .submit()?;
    println!("   held before cancel: {} task(s)", cluster.stats().held);
    println!(
        "   cancel_task(\"doomed\") -> {:?}",
        cluster.cancel_task("doomed")
    );
    println!(
        "   'doomed' -> {:?}; held now: {}",
        doomed.await,
        cluster.stats().held
    );

    // ---- 6. A cached result, read by a subscriber that comes after the end.
    println!("6. cached result and a late subscriber");
    let config = cluster
        .task(|_ctx| async { Ok::<_, String>(Arc::new("feature-flags v42".to_string())) })
        .id("config")
        .cacheable(true)
        .submit()?;
    println!("   handle -> {:?}", config.await);
    let late = cluster.subscribe::<Arc<String>, String>("config")?;
    println!("   late subscriber -> {:?}", late.await);

    // ---- 7. Graceful stop: the running task finishes, the queued one does not start.
    println!("7. graceful stop");
    let busy = cluster
        .task(move |ctx| async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok::<_, String>(format!("finished (cancelled: {})", ctx.is_cancelled()))
        })
        .id("long-job")
        .submit()?;
    let later = cluster
        .task(|_ctx| async { Ok::<_, String>("never".to_string()) })
        .id("next-hour")
        .delay(Duration::from_secs(3600))
        .submit()?;
    tokio::time::sleep(Duration::from_millis(20)).await; // let 'long-job' start
    let stopped = cluster.stop(Duration::from_secs(5)).await;
    println!("   stop -> {stopped:?}");
    println!("   'long-job' -> {:?}", busy.await);
    println!("   'next-hour' -> {:?}", later.await);
    let refused = cluster.task(|_ctx| async { Ok::<_, String>(()) }).submit();
    println!("   submit after stop -> {:?}", refused.map(|_| ()));
    Ok(())
}
