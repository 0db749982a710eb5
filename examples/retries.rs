//! Retries: the three backoff strategies, jitter, a retry predicate, and the
//! two retry modes.
//!
//! Run it with `cargo run --example retries`.

use std::time::Duration;

use corral::{Cluster, ExponentialBackoff, FixedBackoff, LinearBackoff, RetryMode, TaskError};
use tokio::time::Instant;

#[derive(Debug, Clone)]
enum FetchError {
    Transient,
    Fatal,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::new(2)?;
    let t0 = Instant::now();

    // Fails three times, then succeeds: print when each attempt ran.
    for (name, delays) in [
        ("fixed 40ms", 0),
        ("linear 20ms + 20ms*n", 1),
        ("exponential 10ms * 3^n", 2),
    ] {
        let builder = cluster
            .task(move |ctx| async move {
                println!(
                    "  [{:>4} ms] {name}: attempt {}",
                    t0.elapsed().as_millis(),
                    ctx.attempt()
                );
                if ctx.attempt() <= 3 {
                    Err(FetchError::Transient)
                } else {
                    Ok(ctx.attempt())
                }
            })
            .retry(5);
        let builder = match delays {
            0 => builder.backoff(FixedBackoff::new(Duration::from_millis(40))),
            1 => builder.backoff(LinearBackoff::new(
                Duration::from_millis(20),
                Duration::from_millis(20),
            )),
            _ => builder.backoff(ExponentialBackoff::new(Duration::from_millis(10), 3.0)),
        };
        let result = builder.submit()?.await;
        println!("{name} -> {result:?}");
    }

    // Jitter spreads retries of many tasks so they do not hit a service at once.
    let jittered = cluster
        .task(move |ctx| async move {
            println!(
                "  [{:>4} ms] jittered: attempt {}",
                t0.elapsed().as_millis(),
                ctx.attempt()
            );
            if ctx.attempt() < 3 {
                Err(FetchError::Transient)
            } else {
                Ok(())
            }
        })
        .retry(3)
        .backoff(FixedBackoff::new(Duration::from_millis(50)))
        .jitter(0.2) // each delay is 50 ms x [0.8, 1.2]
        .submit()?;
    println!("jittered -> {:?}", jittered.await);

    // A predicate decides which errors are worth retrying.
    let fatal = cluster
        .task(|ctx| async move {
            println!("  fatal: attempt {}", ctx.attempt());
            Err::<(), _>(FetchError::Fatal)
        })
        .retry(5)
        .retry_if(|err| {
            matches!(
                err,
                TaskError::Failed(FetchError::Transient) | TaskError::TimedOut { .. }
            )
        })
        .submit()?;
    println!("fatal (not retried) -> {:?}", fatal.await);

    // Immediate mode keeps the worker during the backoff; Requeue (the
    // default) frees it for other tasks.
    let immediate = cluster
        .task(|ctx| async move {
            if ctx.attempt() < 2 {
                Err(FetchError::Transient)
            } else {
                Ok(())
            }
        })
        .retry(1)
        .backoff(FixedBackoff::new(Duration::from_millis(30)))
        .retry_mode(RetryMode::Immediate)
        .submit()?;
    println!("immediate -> {:?}", immediate.await);

    cluster.stop(Duration::from_secs(1)).await?;
    Ok(())
}
