//! Memory workloads. The counting allocator (feature `count-alloc`) is
//! enabled for these; without it the heap values are simply not reported.
//! Handle vectors are allocated before the baseline is taken, so "heap per
//! task" is what the engine (or tokio) holds per task, not the caller's
//! `Vec` of handles.
//!
//! - **W5**, pending memory: `n` no-op tasks scheduled 1 hour ahead, never
//!   run, handles kept. Reported: submit rate, live heap bytes per task
//!   (after a short settle), peak heap per task, allocations per task, peak
//!   RSS. Floor: spawned tasks sleeping 1 hour. At the end corral is
//!   `cancel()`led (every handle must answer `Shutdown`) and the floor's
//!   tasks are aborted (every handle must answer "cancelled").
//! - **W6**, cancel: `n` tasks scheduled 10 s ahead, then each cancelled by
//!   id (`cancel_task(handle.id())`, which must return `Cancelled`).
//!   Reported: time to cancel all; time from the first cancel until every
//!   handle has answered (each must be `Err(TaskError::Cancelled)`); live
//!   heap after that, as a percentage of its peak. Floor: `abort()` each
//!   `JoinHandle`, then await all (each must be a cancelled `JoinError`).
//!   Variant `named`: every task gets a user string id (`w6-task-0000042`,
//!   made before the baseline, like the handles) and is cancelled by it
//!   (`cancel_task(name.as_str())`); the floor is the same program.
//!   Under `--callgrind` the section from the first cancel until every
//!   handle has answered is the one counted.
//! - **W9**, soak (corral only): `total` no-op tasks through 2 workers in
//!   waves (submit a wave, await it, repeat). Reported: peak RSS (`VmHWM`)
//!   after the checkpoint (1M) and at the end (10M), and their ratio.

use std::convert::Infallible;
use std::time::Duration;

use corral::{CancelOutcome, TaskError};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use super::{check_corral, finish, running_cluster, NoopHandle, Outcome, Report};
use crate::alloc::{reset_peak, snapshot, Snapshot};
use crate::callgrind;
use crate::stats::peak_rss_bytes;

const MIB: f64 = 1024.0 * 1024.0;

/// W5's distance to the start time.
const W5_AHEAD: Duration = Duration::from_secs(3600);
/// W6's distance to the start time.
const W6_AHEAD: Duration = Duration::from_secs(10);

fn rss_mib() -> f64 {
    peak_rss_bytes().map_or(f64::NAN, |b| b as f64 / MIB)
}

/// Adds W5's heap values (if counting) and peak RSS.
fn pending_memory(r: &mut Report, n: usize, base: Option<Snapshot>, after: Option<Snapshot>) {
    if let (Some(b), Some(a)) = (base, after) {
        let n = n as f64;
        r.set("heap_per_task", (a.live - b.live) as f64 / n)
            .set("peak_heap_per_task", (a.peak - b.live) as f64 / n)
            .set("allocs_per_task", (a.allocs - b.allocs) as f64 / n);
    }
    r.set("rss_mib", rss_mib());
}

/// W5 through corral.
pub async fn w5_corral(n: usize, settle: Duration, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let mut handles: Vec<NoopHandle> = Vec::with_capacity(n);
    let base = snapshot();
    reset_peak();
    let start = Instant::now();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .delay(W5_AHEAD)
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    let secs = start.elapsed().as_secs_f64();
    sleep(settle).await;
    let after = snapshot();
    let mut r = Report::default();
    r.set("submit_rate", n as f64 / secs);
    pending_memory(&mut r, n, base, after);
    let queued = cluster.stats().queued;
    r.check(queued == n, || format!("{queued} queued, expected {n}"));
    cluster.cancel();
    let mut wrong = 0usize;
    for h in handles {
        if !matches!(h.await, Err(TaskError::Shutdown)) {
            wrong += 1;
        }
    }
    r.check(wrong == 0, || {
        format!("{wrong} handle(s) did not answer Shutdown after cancel()")
    });
    Ok(r)
}

/// W5's floor.
pub async fn w5_floor(n: usize, settle: Duration) -> Outcome {
    let mut handles: Vec<JoinHandle<u64>> = Vec::with_capacity(n);
    let base = snapshot();
    reset_peak();
    let start = Instant::now();
    for i in 0..n as u64 {
        handles.push(tokio::spawn(async move {
            sleep(W5_AHEAD).await;
            i
        }));
    }
    let secs = start.elapsed().as_secs_f64();
    sleep(settle).await;
    let after = snapshot();
    let mut r = Report::default();
    r.set("submit_rate", n as f64 / secs);
    pending_memory(&mut r, n, base, after);
    handles.iter().for_each(JoinHandle::abort);
    let mut wrong = 0usize;
    for h in handles {
        if !matches!(h.await, Err(e) if e.is_cancelled()) {
            wrong += 1;
        }
    }
    r.check(wrong == 0, || {
        format!("{wrong} aborted task(s) not cancelled")
    });
    Ok(r)
}

/// Adds W6's timings and heap values.
fn cancel_report(
    r: &mut Report,
    n: usize,
    times: (Duration, Duration),
    snaps: (Option<Snapshot>, Option<Snapshot>, Option<Snapshot>),
) {
    let (cancel, answered) = times;
    r.set("cancel_ms", cancel.as_secs_f64() * 1e3)
        .set("answered_ms", answered.as_secs_f64() * 1e3);
    if let (Some(base), Some(peak), Some(after)) = snaps {
        let top = (peak.peak - base.live).max(1) as f64;
        r.set("peak_heap_per_task", top / n as f64)
            .set("after_pct", (after.live - base.live) as f64 / top * 100.0);
    }
}

/// W6's user string id of task `i` (variant `named`).
fn w6_name(i: usize) -> String {
    format!("w6-task-{i:07}")
}

/// W6 through corral: by the generated id, or (`named`) with every task
/// named by a user string id and cancelled by that string.
pub async fn w6_corral(n: usize, settle: Duration, workers: usize, named: bool) -> Outcome {
    let cluster = running_cluster(workers)?;
    let mut handles: Vec<NoopHandle> = Vec::with_capacity(n);
    // The caller's strings, like its handles, are not the engine's memory.
    let names: Vec<String> = if named {
        (0..n).map(w6_name).collect()
    } else {
        Vec::new()
    };
    let base = snapshot();
    reset_peak();
    for i in 0..n as u64 {
        let task = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .delay(W6_AHEAD);
        let task = match names.get(i as usize) {
            Some(name) => task.id(name.as_str()),
            None => task,
        };
        let h = task.submit().map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    sleep(settle).await;
    let peak = snapshot();
    callgrind::zero();
    let t0 = Instant::now();
    let mut missed = 0usize;
    if named {
        for name in &names {
            if cluster.cancel_task(name.as_str()) != CancelOutcome::Cancelled {
                missed += 1;
            }
        }
    } else {
        for h in &handles {
            if cluster.cancel_task(h.id()) != CancelOutcome::Cancelled {
                missed += 1;
            }
        }
    }
    let cancel = t0.elapsed();
    let mut wrong = 0usize;
    for h in handles.drain(..) {
        if !matches!(h.await, Err(TaskError::Cancelled)) {
            wrong += 1;
        }
    }
    let answered = t0.elapsed();
    callgrind::dump();
    let after = snapshot();
    let mut r = Report::default();
    cancel_report(&mut r, n, (cancel, answered), (base, peak, after));
    r.check(missed == 0, || {
        format!("cancel_task did not return Cancelled {missed} time(s)")
    })
    .check(wrong == 0, || {
        format!("{wrong} handle(s) did not answer Cancelled")
    });
    finish(cluster).await?;
    Ok(r)
}

/// W6's floor.
pub async fn w6_floor(n: usize, settle: Duration) -> Outcome {
    let mut handles: Vec<JoinHandle<u64>> = Vec::with_capacity(n);
    let base = snapshot();
    reset_peak();
    for i in 0..n as u64 {
        handles.push(tokio::spawn(async move {
            sleep(W6_AHEAD).await;
            i
        }));
    }
    sleep(settle).await;
    let peak = snapshot();
    callgrind::zero();
    let t0 = Instant::now();
    handles.iter().for_each(JoinHandle::abort);
    let cancel = t0.elapsed();
    let mut wrong = 0usize;
    for h in handles.drain(..) {
        if !matches!(h.await, Err(e) if e.is_cancelled()) {
            wrong += 1;
        }
    }
    let answered = t0.elapsed();
    callgrind::dump();
    let after = snapshot();
    let mut r = Report::default();
    cancel_report(&mut r, n, (cancel, answered), (base, peak, after));
    r.check(wrong == 0, || {
        format!("{wrong} aborted task(s) not cancelled")
    });
    Ok(r)
}

/// W9 through corral: `total` tasks in waves of `wave`, RSS read after
/// `checkpoint` tasks and at the end.
pub async fn w9_corral(total: usize, checkpoint: usize, wave: usize, workers: usize) -> Outcome {
    let cluster = running_cluster(workers)?;
    let mut handles: Vec<NoopHandle> = Vec::with_capacity(wave);
    let base = snapshot();
    reset_peak();
    let start = Instant::now();
    let mut done = 0usize;
    let mut at_checkpoint = None;
    while done < total {
        let k = wave.min(total - done);
        for i in done as u64..(done + k) as u64 {
            let h = cluster
                .task(move |_| async move { Ok::<u64, Infallible>(i) })
                .submit()
                .map_err(|e| format!("submit {i}: {e}"))?;
            handles.push(h);
        }
        check_corral(handles.drain(..), done as u64).await?;
        done += k;
        if at_checkpoint.is_none() && done >= checkpoint {
            at_checkpoint = Some((rss_mib(), snapshot()));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (rss_1, heap_1) = at_checkpoint.unwrap_or((f64::NAN, None));
    let rss_end = rss_mib();
    let heap_end = snapshot();
    let mut r = Report::default();
    r.set("rate", total as f64 / secs)
        .set("rss_1_mib", rss_1)
        .set("rss_end_mib", rss_end)
        .set("rss_ratio", rss_end / rss_1);
    if let (Some(b), Some(h1), Some(he)) = (base, heap_1, heap_end) {
        r.set("heap_live_1", (h1.live - b.live) as f64)
            .set("heap_live_end", (he.live - b.live) as f64)
            .set("heap_peak", (he.peak - b.live) as f64);
    }
    finish(cluster).await?;
    Ok(r)
}
