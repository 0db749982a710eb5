//! **W3**, timers: `n` tasks whose start times are spread uniformly (fixed
//! seed) over `[from, to]` after the first submit, on an 8-worker cluster.
//! Each body returns its lateness, `actual start - scheduled start`.
//!
//! Floor: one spawned task per item doing `sleep_until(start)` and then
//! measuring the same lateness.
//!
//! Reported: lateness p50 / p99 / max in ms, and the process CPU time
//! (`getrusage`, user + system) from the first submit until the last
//! outcome. A task that starts before its start time is a correctness
//! failure.

use std::convert::Infallible;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::{finish, running_cluster, Outcome, Report};
use crate::stats::{cpu_seconds, p50_p99_max, signed_nanos, Rng};

/// The seed of W3's start times.
const SEED: u64 = 0x5EED_0003;

/// The start offsets after the first submit, by task index.
fn offsets(n: usize, from: Duration, to: Duration) -> Vec<Duration> {
    let mut rng = Rng::new(SEED);
    let span = (to - from).as_nanos() as u64;
    (0..n)
        .map(|_| from + Duration::from_nanos(rng.below(span + 1)))
        .collect()
}

/// Lateness percentiles and CPU from per-task lateness in nanoseconds.
fn report(lateness_ns: Vec<i64>, cpu: f64) -> Report {
    let early = lateness_ns.iter().filter(|&&l| l < 0).count();
    let mut ms: Vec<f64> = lateness_ns.iter().map(|&l| l as f64 / 1e6).collect();
    let (p50, p99, max) = p50_p99_max(&mut ms);
    let mut r = Report::default();
    r.set("p50_ms", p50)
        .set("p99_ms", p99)
        .set("max_ms", max)
        .set("cpu_s", cpu)
        .set("early", early as f64)
        .check(early == 0, || {
            format!("{early} task(s) started before their start time")
        });
    r
}

/// W3 through corral.
pub async fn w3_corral(n: usize, from: Duration, to: Duration, workers: usize) -> Outcome {
    let offsets = offsets(n, from, to);
    let cluster = running_cluster(workers)?;
    let mut handles = Vec::with_capacity(n);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for (i, off) in offsets.into_iter().enumerate() {
        let at = t0 + off;
        let h = cluster
            .task(move |_| async move { Ok::<i64, Infallible>(signed_nanos(Instant::now(), at)) })
            .start_at(at)
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    let mut lateness = Vec::with_capacity(n);
    for (i, h) in handles.into_iter().enumerate() {
        lateness.push(h.await.map_err(|e| format!("task {i}: {e:?}"))?);
    }
    let cpu = cpu_seconds() - cpu0;
    finish(cluster).await?;
    Ok(report(lateness, cpu))
}

/// W3's floor.
pub async fn w3_floor(n: usize, from: Duration, to: Duration) -> Outcome {
    let offsets = offsets(n, from, to);
    let mut handles = Vec::with_capacity(n);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for off in offsets {
        let at = t0 + off;
        handles.push(tokio::spawn(async move {
            sleep_until(at).await;
            signed_nanos(Instant::now(), at)
        }));
    }
    let mut lateness = Vec::with_capacity(n);
    for (i, h) in handles.into_iter().enumerate() {
        lateness.push(h.await.map_err(|e| format!("task {i}: {e}"))?);
    }
    let cpu = cpu_seconds() - cpu0;
    Ok(report(lateness, cpu))
}
