//! Throughput workloads, metric tasks/s over "first submit .. last outcome":
//!
//! - **W1**: `n` no-op tasks (each returns its index). Corral: submit all,
//!   then await every handle. Floor: `tokio::spawn` each; the spawned task
//!   acquires an owned permit of a `Semaphore(workers)`, then runs the
//!   no-op; await every `JoinHandle`.
//! - **W7**: 4 spawned producers start together (a barrier) and each submits
//!   its share at once, then awaits it. Floor: the same producers spawn
//!   under the semaphore.
//! - **W8**: tasks whose body fails on attempts 1 and 2 and succeeds on 3.
//!   Corral: `.retry(2)`, default zero backoff, default `Requeue` mode.
//!   Floor: under the semaphore, a loop calling the same body until it
//!   succeeds.
//!
//! Every outcome is checked (value = index) inside the timed window, on
//! both sides alike. Under `--callgrind` the timed window is the section
//! counted.

use std::convert::Infallible;
use std::sync::Arc;

use tokio::sync::{Barrier, Semaphore};
use tokio::time::Instant;

use crate::callgrind;

use super::{check_corral, check_floor, finish, running_cluster, Outcome, Report};

/// W7's number of producers.
pub const PRODUCERS: usize = 4;

fn rate_report(n: usize, start: Instant) -> Report {
    let secs = start.elapsed().as_secs_f64();
    let mut r = Report::default();
    r.set("rate", n as f64 / secs).set("secs", secs);
    r
}

/// W1 through corral.
pub async fn w1_corral(n: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let mut handles = Vec::with_capacity(n);
    callgrind::zero();
    let start = Instant::now();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    check_corral(handles, 0).await?;
    callgrind::dump();
    let report = rate_report(n, start);
    finish(cluster).await?;
    Ok(report)
}

/// W1's floor.
pub async fn w1_floor(n: usize, workers: usize) -> Outcome {
    let sem = Arc::new(Semaphore::new(workers));
    let mut handles = Vec::with_capacity(n);
    callgrind::zero();
    let start = Instant::now();
    for i in 0..n as u64 {
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            i
        }));
    }
    check_floor(handles, 0).await?;
    callgrind::dump();
    Ok(rate_report(n, start))
}

/// W7 through corral: `PRODUCERS` producers of `per` tasks each.
pub async fn w7_corral(per: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let barrier = Arc::new(Barrier::new(PRODUCERS));
    callgrind::zero();
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (cluster, barrier) = (cluster.clone(), barrier.clone());
            tokio::spawn(async move {
                let first = (p * per) as u64;
                let mut handles = Vec::with_capacity(per);
                barrier.wait().await;
                for i in first..first + per as u64 {
                    let h = cluster
                        .task(move |_| async move { Ok::<u64, Infallible>(i) })
                        .submit()
                        .map_err(|e| format!("submit {i}: {e}"))?;
                    handles.push(h);
                }
                check_corral(handles, first).await
            })
        })
        .collect();
    for p in producers {
        p.await.map_err(|e| format!("producer: {e}"))??;
    }
    callgrind::dump();
    let report = rate_report(PRODUCERS * per, start);
    finish(cluster).await?;
    Ok(report)
}

/// W7's floor.
pub async fn w7_floor(per: usize, workers: usize) -> Outcome {
    let sem = Arc::new(Semaphore::new(workers));
    let barrier = Arc::new(Barrier::new(PRODUCERS));
    callgrind::zero();
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (sem, barrier) = (sem.clone(), barrier.clone());
            tokio::spawn(async move {
                let first = (p * per) as u64;
                let mut handles = Vec::with_capacity(per);
                barrier.wait().await;
                for i in first..first + per as u64 {
                    let sem = sem.clone();
                    handles.push(tokio::spawn(async move {
                        let _permit = sem
                            .acquire_owned()
                            .await
                            .expect("semaphore is never closed");
                        i
                    }));
                }
                check_floor(handles, first).await
            })
        })
        .collect();
    for p in producers {
        p.await.map_err(|e| format!("producer: {e}"))??;
    }
    callgrind::dump();
    Ok(rate_report(PRODUCERS * per, start))
}

/// W8's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotYet;

/// W8's body, shared by both sides: fails on attempts 1 and 2, returns the
/// task's index on attempt 3 and later.
pub async fn flaky(attempt: u32, i: u64) -> Result<u64, NotYet> {
    if attempt < 3 {
        Err(NotYet)
    } else {
        Ok(i)
    }
}

/// W8 through corral.
pub async fn w8_corral(n: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let mut handles = Vec::with_capacity(n);
    callgrind::zero();
    let start = Instant::now();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |ctx| flaky(ctx.attempt(), i))
            .retry(2)
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    check_corral(handles, 0).await?;
    callgrind::dump();
    let report = rate_report(n, start);
    finish(cluster).await?;
    Ok(report)
}

/// W8's floor.
pub async fn w8_floor(n: usize, workers: usize) -> Outcome {
    let sem = Arc::new(Semaphore::new(workers));
    let mut handles = Vec::with_capacity(n);
    callgrind::zero();
    let start = Instant::now();
    for i in 0..n as u64 {
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem
                .acquire_owned()
                .await
                .expect("semaphore is never closed");
            let mut attempt = 1;
            loop {
                match flaky(attempt, i).await {
                    Ok(v) => break v,
                    Err(NotYet) => attempt += 1,
                }
            }
        }));
    }
    check_floor(handles, 0).await?;
    callgrind::dump();
    Ok(rate_report(n, start))
}
