//! W12, keys (`corral::keys`), informational:
//!
//! - **many keys**: `n` no-op tasks spread over 1,000 keys, each key with
//!   limit 1 (`ClusterBuilder::key_limit(1)`); tasks/s over "first submit ..
//!   last outcome", compared with W1 corral at 2 workers in the same run.
//! - **hot key**: `n` no-op tasks of 1,000 keys without a limit, and after
//!   every tenth of them a task of one key with limit 2 (`set_key_limit`);
//!   the rate of the `n` others (first submit .. last of their outcomes),
//!   compared with W1 corral and with the same `n` tasks submitted without
//!   the hot key's (variant `cold-key`): a limited key must not slow the
//!   others.
//! - **waiting**: `n` tasks of one paused key, all waiting on it (claimed
//!   once and moved to the key's waiting heap); heap bytes and allocations
//!   per task, compared with corral's plain pending task (W5's program at
//!   W12's size).
//!
//! Every outcome is checked (value = index).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, TaskError};
use tokio::time::{sleep, Instant};

use super::{check_corral, finish, NoopHandle, Outcome, Report};
use crate::alloc::{reset_peak, snapshot};

/// Keys of the many-keys and hot-key variants.
const KEYS: usize = 1_000;

fn keyed_cluster(workers: usize, limit: Option<u32>) -> Result<Cluster, String> {
    let mut b = Cluster::builder().workers(workers);
    if let Some(l) = limit {
        b = b.key_limit(l);
    }
    b.build().map_err(|e| format!("build: {e}"))
}

fn key_names() -> Vec<Arc<str>> {
    (0..KEYS).map(|k| Arc::from(format!("key-{k}"))).collect()
}

fn rate_report(n: usize, start: Instant) -> Report {
    let secs = start.elapsed().as_secs_f64();
    let mut r = Report::default();
    r.set("rate", n as f64 / secs).set("secs", secs);
    r
}

/// W12 many keys: `n` tasks over 1,000 keys of limit 1.
pub async fn many_keys_corral(n: usize, workers: usize) -> Outcome {
    let cluster = keyed_cluster(workers, Some(1))?;
    let keys = key_names();
    let mut handles = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .key(keys[i as usize % KEYS].clone())
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    check_corral(handles, 0).await?;
    let report = rate_report(n, start);
    let left = cluster.active_keys();
    finish(cluster).await?;
    let mut report = report;
    report.check(left == 0, || format!("{left} key(s) still hold state"));
    Ok(report)
}

/// W12 hot key: `n` tasks of 1,000 unlimited keys, and (`with_hot`) `n / 10`
/// of one key with limit 2; the rate of the `n`.
pub async fn hot_key_corral(n: usize, workers: usize, with_hot: bool) -> Outcome {
    let cluster = keyed_cluster(workers, None)?;
    cluster
        .set_key_limit("hot", 2)
        .map_err(|e| format!("limit: {e}"))?;
    let keys = key_names();
    let mut handles: Vec<NoopHandle> = Vec::with_capacity(n);
    let mut hot: Vec<NoopHandle> = Vec::with_capacity(n / 10);
    let hot_key: Arc<str> = Arc::from("hot");
    let start = Instant::now();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .key(keys[i as usize % KEYS].clone())
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
        if with_hot && i % 10 == 9 {
            let j = hot.len() as u64;
            let h = cluster
                .task(move |_| async move { Ok::<u64, Infallible>(j) })
                .key(hot_key.clone())
                .submit()
                .map_err(|e| format!("submit hot {j}: {e}"))?;
            hot.push(h);
        }
    }
    check_corral(handles, 0).await?;
    let report = rate_report(n, start);
    check_corral(hot, 0).await?;
    finish(cluster).await?;
    Ok(report)
}

/// W12 waiting: `n` tasks waiting on a paused key.
pub async fn waiting_corral(n: usize, settle: Duration, workers: usize) -> Outcome {
    let cluster = keyed_cluster(workers, None)?;
    let key: Arc<str> = Arc::from("paused");
    cluster.pause_key(key.clone());
    let mut handles: Vec<NoopHandle> = Vec::with_capacity(n);
    let base = snapshot();
    reset_peak();
    let start = Instant::now();
    for i in 0..n as u64 {
        let h = cluster
            .task(move |_| async move { Ok::<u64, Infallible>(i) })
            .key(key.clone())
            .submit()
            .map_err(|e| format!("submit {i}: {e}"))?;
        handles.push(h);
    }
    let secs = start.elapsed().as_secs_f64();
    // The workers move every task to the key's waiting heap.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.stats().waiting_on_key < n && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    sleep(settle).await;
    let after = snapshot();
    let mut r = Report::default();
    r.set("submit_rate", n as f64 / secs);
    if let (Some(b), Some(a)) = (base, after) {
        let k = n as f64;
        r.set("heap_per_task", (a.live - b.live) as f64 / k)
            .set("peak_heap_per_task", (a.peak - b.live) as f64 / k)
            .set("allocs_per_task", (a.allocs - b.allocs) as f64 / k);
    }
    let waiting = cluster.stats().waiting_on_key;
    r.check(waiting == n, || {
        format!("{waiting} waiting on the key, expected {n}")
    });
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
