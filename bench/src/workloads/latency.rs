//! **W4**, round trip: `n` times in a row, submit one no-op task and await
//! its outcome (2 workers); each round trip is timed from just before the
//! submit until the outcome is in hand. Floor: `tokio::spawn` one no-op and
//! await its `JoinHandle`. Reported: p50, p99 and max in microseconds.
//!
//! The driver (where this loop runs: `block_on` on the main thread, or a
//! spawned task on a runtime worker) matters here: from `block_on` every
//! round trip crosses threads twice. Under `--callgrind` the loop of round
//! trips is the section counted.

use std::convert::Infallible;

use tokio::time::Instant;

use crate::callgrind;

use super::{finish, running_cluster, Outcome, Report};
use crate::stats::p50_p99_max;

fn report(mut us: Vec<f64>) -> Report {
    let (p50, p99, max) = p50_p99_max(&mut us);
    let mut r = Report::default();
    r.set("p50_us", p50).set("p99_us", p99).set("max_us", max);
    r
}

/// W4 through corral.
pub async fn w4_corral(n: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let mut us = Vec::with_capacity(n);
    callgrind::zero();
    for i in 0..n as u64 {
        let t = Instant::now();
        let h = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        let out = h.await;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if out != Ok(i) {
            return Err(format!("task {i}: expected Ok({i}), got {out:?}"));
        }
    }
    callgrind::dump();
    finish(cluster).await?;
    Ok(report(us))
}

/// W4's floor.
pub async fn w4_floor(n: usize) -> Outcome {
    let mut us = Vec::with_capacity(n);
    callgrind::zero();
    for i in 0..n as u64 {
        let t = Instant::now();
        let out = tokio::spawn(async move { i }).await;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        match out {
            Ok(v) if v == i => {}
            other => return Err(format!("task {i}: expected {i}, got {other:?}")),
        }
    }
    callgrind::dump();
    Ok(report(us))
}
