//! The workloads W1-W12 (see `bench/README.md#workloads`), each as a corral
//! program and as its raw-tokio floor, plus what they share: the sizes
//! (full and `--quick`), the result a child reports, and outcome checks.
//!
//! | module | workloads |
//! |---|---|
//! | [`throughput`] | W1 no-op throughput, W7 contended submitters, W8 retries |
//! | [`order`] | W2 priority order and drain rate |
//! | [`timers`] | W3 scheduled-start lateness and CPU |
//! | [`latency`] | W4 single round-trip latency |
//! | [`memory`] | W5 pending memory, W6 cancel by id, W9 soak |
//! | [`deps`] | W10 dependencies: chain, fan-out/fan-in, waiting dependent's heap |
//! | [`limits`] | W11 rate limits: pacing accuracy and CPU while tasks wait, an idle limiter's cost |
//! | [`keys`] | W12 keys: many limited keys, one hot key, tasks waiting on a key |

pub mod deps;
pub mod keys;
pub mod latency;
pub mod limits;
pub mod memory;
pub mod order;
pub mod throughput;
pub mod timers;

use std::convert::Infallible;
use std::fmt::Debug;
use std::time::Duration;

use corral::{Cluster, TaskHandle};
use tokio::task::JoinHandle;

/// What a child measured (`key=value` pairs) and the correctness checks it
/// failed. Any failure makes the child exit non-zero after printing its
/// values.
#[derive(Debug, Default)]
pub struct Report {
    /// Measured values, printed on the `RESULT` line.
    pub values: Vec<(&'static str, f64)>,
    /// Broken correctness checks.
    pub failures: Vec<String>,
}

impl Report {
    /// Records a value.
    pub fn set(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.values.push((key, value));
        self
    }

    /// Records a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> &mut Self {
        if !ok {
            self.failures.push(what());
        }
        self
    }
}

/// A workload's result: a report, or a failure that stopped it early.
pub type Outcome = Result<Report, String>;

/// The size of every workload, full or `--quick`.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// W1 tasks.
    pub w1: usize,
    /// W2 tasks.
    pub w2: usize,
    /// W3 tasks.
    pub w3: usize,
    /// W3 start times are uniform over `w3_from..w3_to` after the first submit.
    pub w3_from: Duration,
    /// See `w3_from`.
    pub w3_to: Duration,
    /// W4 round trips.
    pub w4: usize,
    /// W5 pending tasks.
    pub w5: usize,
    /// W6 tasks cancelled.
    pub w6: usize,
    /// W7 tasks per producer (4 producers).
    pub w7: usize,
    /// W8 tasks.
    pub w8: usize,
    /// W9 tasks in all.
    pub w9: usize,
    /// W9 checkpoint (the "1M" of "10M vs 1M").
    pub w9_checkpoint: usize,
    /// W9 tasks per wave.
    pub w9_wave: usize,
    /// W10 chain length, and children of the fan (plus root and join).
    pub w10: usize,
    /// W10 waiting dependents (and plain pending tasks of its reference).
    pub w10_pending: usize,
    /// W11 tasks paced by the limiter.
    pub w11: usize,
    /// W12 keyed tasks (many keys, hot key).
    pub w12: usize,
    /// W12 tasks waiting on a key (and plain pending tasks of its reference).
    pub w12_waiting: usize,
    /// Pause after submitting pending tasks (W5, W6) so that the floor's
    /// spawned tasks have all been polled once before memory is read.
    pub settle: Duration,
}

impl Sizes {
    /// The full sizes of the spec, or about 1/100 of them for `--quick`.
    pub fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                w1: 2_000,
                w2: 1_000,
                w3: 1_000,
                w3_from: Duration::from_millis(50),
                w3_to: Duration::from_millis(250),
                w4: 200,
                w5: 10_000,
                w6: 1_000,
                w7: 500,
                w8: 1_000,
                w9: 200_000,
                w9_checkpoint: 20_000,
                w9_wave: 10_000,
                w10: 1_000,
                w10_pending: 5_000,
                w11: 1_000,
                w12: 2_000,
                w12_waiting: 10_000,
                settle: Duration::from_millis(20),
            }
        } else {
            Sizes {
                w1: 200_000,
                w2: 100_000,
                w3: 100_000,
                w3_from: Duration::from_millis(500),
                w3_to: Duration::from_millis(2_500),
                w4: 20_000,
                w5: 1_000_000,
                w6: 100_000,
                w7: 50_000,
                w8: 100_000,
                w9: 10_000_000,
                w9_checkpoint: 1_000_000,
                w9_wave: 100_000,
                w10: 100_000,
                w10_pending: 100_000,
                w11: 10_000,
                w12: 200_000,
                w12_waiting: 1_000_000,
                settle: Duration::from_millis(500),
            }
        }
    }
}

impl Sizes {
    /// These sizes with `n` as the task count of every workload but W9 (W7:
    /// `n` over all producers, at least one each).
    pub fn with_n(self, n: usize) -> Self {
        Sizes {
            w1: n,
            w2: n,
            w3: n,
            w4: n,
            w5: n,
            w6: n,
            w7: (n / throughput::PRODUCERS).max(1),
            w8: n,
            w10: n,
            w10_pending: n,
            w11: n,
            w12: n,
            w12_waiting: n,
            ..self
        }
    }
}

/// A corral no-op task's result type: it returns its index.
pub type NoopHandle = TaskHandle<u64, Infallible>;

/// A built and running cluster.
pub fn running_cluster(workers: usize) -> Result<Cluster, String> {
    // Built inside the runtime: its workers start at once.
    Cluster::new(workers).map_err(|e| format!("build: {e}"))
}

/// Awaits corral handles in order; handle `i` must resolve to `Ok(first + i)`.
/// Each handle resolves once by construction, so this checks that every
/// outcome arrived exactly once with the right value.
pub async fn check_corral<E: Debug>(
    handles: impl IntoIterator<Item = TaskHandle<u64, E>>,
    first: u64,
) -> Result<(), String> {
    for (i, h) in (first..).zip(handles) {
        match h.await {
            Ok(v) if v == i => {}
            other => return Err(format!("task {i}: expected Ok({i}), got {other:?}")),
        }
    }
    Ok(())
}

/// Awaits tokio join handles in order; handle `i` must yield `first + i`.
pub async fn check_floor(
    handles: impl IntoIterator<Item = JoinHandle<u64>>,
    first: u64,
) -> Result<(), String> {
    for (i, h) in (first..).zip(handles) {
        match h.await {
            Ok(v) if v == i => {}
            other => return Err(format!("task {i}: expected {i}, got {other:?}")),
        }
    }
    Ok(())
}

/// Checks that a cluster whose tasks have all resolved holds nothing, then
/// stops it.
pub async fn finish(cluster: Cluster) -> Result<(), String> {
    let held = cluster.stats().held;
    if held != 0 {
        return Err(format!(
            "cluster still holds {held} task(s) after every outcome arrived"
        ));
    }
    cluster
        .stop(Duration::from_secs(10))
        .await
        .map_err(|e| format!("stop: {e}"))
}
