//! Scheduling: start times, delays, and how they combine with priority.
//!
//! Run it with `cargo run --example scheduling`.

use std::time::Duration;

use corral::Cluster;
use tokio::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Paused: everything below is queued first, then runs in exact order.
    let cluster = Cluster::builder().workers(1).paused().build()?;
    let t0 = Instant::now();
    let mut handles = Vec::new();

    // Submitted in this order, before `run`; they start by start time, and
    // among due tasks by priority.
    let plan = [
        ("in 300 ms", Duration::from_millis(300), 0),
        ("in 100 ms", Duration::from_millis(100), 0),
        ("now, low priority", Duration::ZERO, 0),
        ("now, high priority", Duration::ZERO, 10),
        ("in 200 ms", Duration::from_millis(200), 0),
    ];
    for (name, delay, priority) in plan {
        let h = cluster
            .task(move |_ctx| async move {
                println!("[{:>4} ms] {name}", t0.elapsed().as_millis());
                Ok::<_, String>(())
            })
            .delay(delay)
            .priority(priority)
            .submit()?;
        handles.push(h);
    }

    // A start time in the past means "as soon as a worker is free".
    let past = cluster
        .task(move |_ctx| async move {
            println!(
                "[{:>4} ms] start time 1 s in the past (runs first among priority 0)",
                t0.elapsed().as_millis()
            );
            Ok::<_, String>(())
        })
        .start_at(t0 - Duration::from_secs(1))
        .submit()?;
    handles.push(past);

    println!("{} tasks queued; run()", cluster.stats().queued);
    cluster.run()?;
    for h in handles {
        h.await?;
    }
    cluster.stop(Duration::from_secs(1)).await?;
    Ok(())
}
