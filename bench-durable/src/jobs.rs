//! The job types the workloads run, and what their bodies record.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use corral_durable::{Job, JobContext, JobResult};
use serde::{Deserialize, Serialize};

/// How many times each job index ran in this process.
static RAN: OnceLock<Vec<AtomicU8>> = OnceLock::new();
/// When the first body of this process started.
static FIRST: OnceLock<Instant> = OnceLock::new();
/// Where bodies append their index (4 bytes, one `write` each, so a
/// SIGKILL loses nothing written); D8 only.
static RUNS: OnceLock<Mutex<std::fs::File>> = OnceLock::new();
/// Lateness of scheduled bodies, in microseconds (D4).
pub static LATENESS: Mutex<Vec<i64>> = Mutex::new(Vec::new());

/// Sizes the run counters for `n` jobs.
pub fn track(n: usize) {
    let _ = RAN.set((0..n).map(|_| AtomicU8::new(0)).collect());
}

/// Appends every run's index to `path`.
pub fn log_runs_to(path: &str) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let _ = RUNS.set(Mutex::new(f));
    Ok(())
}

/// Records that job `i` ran.
pub fn ran(i: u32) {
    FIRST.get_or_init(Instant::now);
    if let Some(r) = RAN.get() {
        if let Some(c) = r.get(i as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(f) = RUNS.get() {
        let _ = f.lock().unwrap().write_all(&i.to_le_bytes());
    }
}

/// When the first body started.
pub fn first_start() -> Option<Instant> {
    FIRST.get().copied()
}

/// Indices that did not run exactly once: (never, more than once).
pub fn not_once() -> (usize, usize) {
    let r = RAN.get().map(Vec::as_slice).unwrap_or(&[]);
    let never = r.iter().filter(|c| c.load(Ordering::Relaxed) == 0).count();
    let twice = r.iter().filter(|c| c.load(Ordering::Relaxed) > 1).count();
    (never, twice)
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A no-op job: records that it ran.
#[derive(Serialize, Deserialize)]
pub struct Noop {
    /// The job's index.
    pub i: u32,
}

impl Job for Noop {
    const KIND: &'static str = "noop";
    type Output = ();
    type Error = String;

    async fn run(&self, _ctx: JobContext) -> JobResult<(), String> {
        ran(self.i);
        Ok(())
    }
}

/// A job that returns when it started (µs since the epoch) and, if it has
/// a due time, records how late it started.
#[derive(Serialize, Deserialize)]
pub struct Stamp {
    /// The job's index.
    pub i: u32,
    /// When it was due (µs since the epoch), 0 for "now".
    pub due_us: i64,
}

impl Job for Stamp {
    const KIND: &'static str = "stamp";
    type Output = i64;
    type Error = String;

    async fn run(&self, _ctx: JobContext) -> JobResult<i64, String> {
        let now = now_us();
        ran(self.i);
        if self.due_us > 0 {
            LATENESS.lock().unwrap().push(now - self.due_us);
        }
        Ok(now)
    }
}
