//! **W11**, rate limits (informational rows, no target in the spec), 2
//! workers, `block_on`:
//!
//! - **paced** (variant `-`): `n` no-op tasks (10,000) limited by one
//!   limiter at 1,000 tasks/s with a burst of 10, all submitted at once, so
//!   nearly all of them wait set aside by the limiter. Each body records
//!   when it started. Metrics: the achieved rate, `(n - 1) / (last start -
//!   first start)` (`rate`), how late each start is against the ideal
//!   schedule `first start + (i - burst + 1) ms` (`lag_p99_ms`), and the
//!   process CPU from the first submit to the last outcome (`cpu_s`): what
//!   10,000 waiting tasks cost while they wait. Checks: every handle
//!   answers `Ok(i)`, and never faster than the limit: the last start is
//!   at least `n - burst` intervals after the first submit (a check that
//!   scheduling noise cannot fail: a start is never before its
//!   admission). Floor: `n` spawned tokio
//!   tasks, task `i` sleeping until `t0 + (i - burst + 1) ms` (one timer
//!   each), then recording its start; the same metrics.
//! - **burst 1** (variant `burst1`): the same with a burst of 1. GCRA
//!   counts from each admission, and tokio's timer wakes the limiter's
//!   waiters up to about a millisecond late: with no tolerance that
//!   lateness is lost on every admission, so at 1,000/s the achieved rate
//!   falls well below the limit (what the row shows; a burst of a few
//!   intervals absorbs it).
//! - **idle limiter** (variant `w11-limiter` of W1): W1's corral program
//!   on a cluster that has a limiter its tasks do not name: what the
//!   limiter's existence costs the claim path (one test per claim and a
//!   virtual call). Compared with W1's corral program at 2 workers run in
//!   the same group (variant `w11-ref`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral::Rate;
use tokio::time::{sleep_until, Instant};

use super::{check_corral, check_floor, finish, running_cluster, Outcome, Report};
use crate::stats::{cpu_seconds, p50_p99_max};

/// The limiter's rate: tasks per second.
pub const RATE: u32 = 1_000;

/// The paced variant's burst.
pub const BURST: u32 = 10;

/// The interval between two starts at [`RATE`].
fn interval() -> Duration {
    Duration::from_secs(1) / RATE
}

/// When start `i` is due at the earliest, after `first`, with `burst`.
fn ideal(first: Instant, i: usize, burst: u32) -> Instant {
    first + interval() * (i as u32 + 1).saturating_sub(burst)
}

/// Rate, lag and checks from the start instants (by task index), the
/// instant before the first submit, and CPU.
fn report(starts: &[Instant], t0: Instant, cpu: f64, burst: u32) -> Report {
    let mut r = Report::default();
    let n = starts.len();
    let (Some(&first), Some(&last)) = (starts.iter().min(), starts.iter().max()) else {
        r.check(false, || "no task started".into());
        return r;
    };
    let span = last.duration_since(first).as_secs_f64();
    let rate = if n > 1 && span > 0.0 {
        (n - 1) as f64 / span
    } else {
        f64::NAN
    };
    let mut lag_ms: Vec<f64> = starts
        .iter()
        .enumerate()
        .map(|(i, &at)| {
            at.saturating_duration_since(ideal(first, i, burst))
                .as_secs_f64()
                * 1e3
        })
        .collect();
    let (_, p99, max) = p50_p99_max(&mut lag_ms);
    // Never faster than the limit, whatever the scheduling noise: the last
    // admission (so the last start) comes `n - burst` intervals after the
    // first admission at the earliest, which is after `t0`.
    let fastest = ideal(t0, n - 1, burst);
    r.set("rate", rate)
        .set("accuracy", rate / f64::from(RATE))
        .set("lag_p99_ms", p99)
        .set("lag_max_ms", max)
        .set("cpu_s", cpu)
        .set("span_s", span)
        .check(last >= fastest, || {
            format!("{n} tasks started within {span:.3} s: faster than {RATE}/s allows")
        });
    r
}

/// W11 through corral, the limiter's burst being `burst`.
pub async fn w11_corral(n: usize, workers: usize, burst: u32) -> Outcome {
    let cluster = running_cluster(workers)?;
    cluster
        .add_limiter("upstream", Rate::per_second(RATE).burst(burst))
        .map_err(|e| format!("add_limiter: {e}"))?;
    let starts = Arc::new(Mutex::new(vec![None; n]));
    let mut handles = Vec::with_capacity(n);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for i in 0..n as u64 {
        let starts = starts.clone();
        let h = cluster
            .task(move |_| {
                let starts = starts.clone();
                async move {
                    starts.lock().expect("not poisoned")[i as usize] = Some(Instant::now());
                    Ok::<u64, Infallible>(i)
                }
            })
            .limit("upstream")
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    check_corral(handles, 0).await?;
    let cpu = cpu_seconds() - cpu0;
    finish(cluster).await?;
    let starts: Option<Vec<Instant>> = starts
        .lock()
        .expect("not poisoned")
        .iter()
        .copied()
        .collect();
    let starts = starts.ok_or("a task never recorded its start")?;
    Ok(report(&starts, t0, cpu, burst))
}

/// W11's floor: one tokio timer per task, on the limiter's ideal schedule.
pub async fn w11_floor(n: usize, burst: u32) -> Outcome {
    let mut handles = Vec::with_capacity(n);
    let starts = Arc::new(Mutex::new(vec![None; n]));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    for i in 0..n as u64 {
        let starts = starts.clone();
        let at = ideal(t0, i as usize, burst);
        handles.push(tokio::spawn(async move {
            sleep_until(at).await;
            starts.lock().expect("not poisoned")[i as usize] = Some(Instant::now());
            i
        }));
    }
    check_floor(handles, 0).await?;
    let cpu = cpu_seconds() - cpu0;
    let starts: Option<Vec<Instant>> = starts
        .lock()
        .expect("not poisoned")
        .iter()
        .copied()
        .collect();
    let starts = starts.ok_or("a task never recorded its start")?;
    Ok(report(&starts, t0, cpu, burst))
}

/// W1's corral program on a cluster with a limiter its tasks do not name.
pub async fn w1_with_idle_limiter(n: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    cluster
        .add_limiter("unused", Rate::per_second(RATE))
        .map_err(|e| format!("add_limiter: {e}"))?;
    let mut handles = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    check_corral(handles, 0).await?;
    let secs = start.elapsed().as_secs_f64();
    let mut r = Report::default();
    r.set("rate", n as f64 / secs).set("secs", secs);
    finish(cluster).await?;
    Ok(r)
}
