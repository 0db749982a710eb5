//! **W2**, order: `n` tasks submitted before `run` to a 1-worker cluster,
//! priorities uniform in `0..=10` from a fixed seed, in two variants:
//!
//! - `distinct`: every task has its own start time, all in the past (a
//!   seeded permutation of 1..=n microseconds before "now");
//! - `same`: one identical start time (in the past) for all.
//!
//! Each body records its index in execution order. The run must show 0
//! inversions against the expected order: priority descending, then start
//! time ascending, then submission order. The metric is the drain rate,
//! tasks/s from `run()` until every handle resolved; the report compares it
//! with the W1 floor at 1 worker.
//!
//! The floor side is a `std` `BinaryHeap` of `(priority, earlier start,
//! Reverse(seq))`: push all, then pop all, timed the same way.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use corral::Cluster;
use tokio::time::Instant;

use super::{check_corral, finish, Outcome, Report};
use crate::stats::{inversions, Rng};

/// The seed of W2's priorities and start-time permutation.
const SEED: u64 = 0x5EED_0002;

/// The tasks of one W2 run, by submission index.
struct Plan {
    priority: Vec<i32>,
    /// How many microseconds before the base instant each task's start is.
    before_us: Vec<u64>,
}

impl Plan {
    fn new(n: usize, variant: &str) -> Plan {
        let mut rng = Rng::new(SEED);
        let priority = (0..n).map(|_| rng.below(11) as i32).collect();
        let before_us = if variant == "distinct" {
            let mut v: Vec<u64> = (1..=n as u64).collect();
            rng.shuffle(&mut v);
            v
        } else {
            vec![1; n]
        };
        Plan {
            priority,
            before_us,
        }
    }

    /// `rank[i]`: where task `i` belongs in the expected order.
    fn expected_ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.priority.len() as u32).collect();
        order.sort_by_key(|&i| {
            let i = i as usize;
            // Higher priority first, then earlier start (= further before base), then FIFO.
            (Reverse(self.priority[i]), Reverse(self.before_us[i]), i)
        });
        let mut rank = vec![0; order.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        rank
    }

    /// Checks an execution order (task indices) and reports its inversions.
    fn judge(&self, executed: &[u32], report: &mut Report) {
        let n = self.priority.len();
        let mut seen = vec![false; n];
        let mut dupes = 0usize;
        for &i in executed {
            match seen.get_mut(i as usize) {
                Some(s) if !*s => *s = true,
                _ => dupes += 1,
            }
        }
        report.check(executed.len() == n && dupes == 0, || {
            format!(
                "ran {} bodies ({dupes} duplicate or unknown) for {n} tasks",
                executed.len()
            )
        });
        let rank = self.expected_ranks();
        let mut ranks: Vec<u32> = executed.iter().map(|&i| rank[i as usize]).collect();
        let inv = inversions(&mut ranks);
        report.set("inversions", inv as f64).check(inv == 0, || {
            format!("{inv} inversions in the execution order")
        });
    }
}

/// Where bodies write their index, in execution order.
struct Recorder {
    next: AtomicUsize,
    slots: Vec<AtomicU32>,
}

impl Recorder {
    fn record(&self, i: u32) {
        let pos = self.next.fetch_add(1, Relaxed);
        if let Some(slot) = self.slots.get(pos) {
            slot.store(i, Relaxed);
        }
    }

    fn executed(&self) -> Vec<u32> {
        let len = self.next.load(Relaxed).min(self.slots.len());
        self.slots[..len].iter().map(|s| s.load(Relaxed)).collect()
    }
}

/// W2 through corral.
pub async fn w2_corral(n: usize, variant: &str) -> Outcome {
    let plan = Plan::new(n, variant);
    let recorder = Arc::new(Recorder {
        next: AtomicUsize::new(0),
        slots: (0..n).map(|_| AtomicU32::new(u32::MAX)).collect(),
    });
    let cluster = Cluster::builder()
        .workers(1)
        .paused()
        .build()
        .map_err(|e| format!("build: {e}"))?;
    let base = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let at = base
            .checked_sub(Duration::from_micros(plan.before_us[i]))
            .ok_or("start time before the clock's origin")?;
        let recorder = recorder.clone();
        let h = cluster
            .task(move |_| {
                let recorder = recorder.clone();
                async move {
                    recorder.record(i as u32);
                    Ok::<u64, Infallible>(i as u64)
                }
            })
            .priority(plan.priority[i])
            .start_at(at)
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    let start = Instant::now();
    cluster.run().map_err(|e| format!("run: {e}"))?;
    check_corral(handles, 0).await?;
    let secs = start.elapsed().as_secs_f64();
    let mut report = Report::default();
    report.set("rate", n as f64 / secs).set("secs", secs);
    // `executed` holds the first `n` runs only: a body run again after all
    // `n` would not show there.
    let runs = recorder.next.load(Relaxed);
    report.check(runs == n, || format!("{runs} bodies ran for {n} tasks"));
    plan.judge(&recorder.executed(), &mut report);
    finish(cluster).await?;
    Ok(report)
}

/// W2's floor: a binary heap push + pop of the same keys.
pub fn w2_floor(n: usize, variant: &str) -> Outcome {
    let plan = Plan::new(n, variant);
    let start = Instant::now();
    let mut heap = BinaryHeap::with_capacity(n);
    for i in 0..n {
        heap.push((plan.priority[i], plan.before_us[i], Reverse(i as u32)));
    }
    let mut executed = Vec::with_capacity(n);
    while let Some((_, _, Reverse(i))) = heap.pop() {
        executed.push(i);
    }
    let secs = start.elapsed().as_secs_f64();
    let mut report = Report::default();
    report.set("rate", n as f64 / secs).set("secs", secs);
    plan.judge(&executed, &mut report);
    Ok(report)
}
