//! Progress reports and the stall watchdog.
//!
//! A body reports progress through its context ([`TaskContext::progress`](crate::TaskContext::progress));
//! the latest report wins and is read from the task's handle
//! ([`TaskHandle::progress`](crate::TaskHandle::progress)) or by id
//! ([`Cluster::progress`](crate::Cluster::progress)). A task with a
//! [`stall_timeout`](crate::TaskBuilder::stall_timeout) has each attempt
//! ended ([`TaskError::Stalled`](crate::TaskError::Stalled)) once it went
//! that long without a report.
//!
//! Decisions:
//! - One concrete type, [`Progress`]: a count of work done, an optional
//!   total, an optional message. It can be read by id without knowing the
//!   task's types, printed, and compared; richer state belongs in the
//!   message (or in the task's own outcome).
//! - Reports are kept across attempts (each names the attempt that made
//!   it), and after the task finished: the handle reads the last report for
//!   as long as it lives, the cluster while it holds the task (pending,
//!   running, or its outcome cached).
//! - Cost: a report takes the task's lock once and allocates its
//!   runtime box (`Rare`) on the first one; a task that never reports pays
//!   nothing. The watchdog is armed only for an attempt that did not finish
//!   on its first poll, and reads the task's stall timeout only then.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use crate::job::Job;

/// A progress report: how much work is done, out of how much, and what is
/// going on. Made with [`Progress::new`] (or from a `u64`), refined with
/// [`of`](Progress::of) and [`message`](Progress::message).
///
/// ```
/// use corral::{Cluster, Progress};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let h = cluster
///     .task(|ctx| async move {
///         for i in 1..=4u64 {
///             // ... a quarter of the work ...
///             ctx.progress(Progress::new(i).of(4).message(format!("chunk {i}")));
///         }
///         Ok::<_, String>(())
///     })
///     .id("import")
///     .cacheable(true) // so that the cluster still knows it once finished
///     .submit()
///     .unwrap();
/// h.await.unwrap();
/// let p = cluster.progress("import").unwrap();
/// assert_eq!(p.done, 4);
/// assert_eq!(p.fraction(), Some(1.0));
/// assert_eq!(p.message.as_deref(), Some("chunk 4"));
/// assert_eq!(p.attempt, 1);
/// assert_eq!(p.to_string(), "4/4 (100%): chunk 4");
/// # }
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Progress {
    /// Units of work done.
    pub done: u64,
    /// Units of work in all, if known.
    pub total: Option<u64>,
    /// What the task is doing, if it said.
    pub message: Option<Arc<str>>,
    /// The attempt that made the report (1 for the first); set by
    /// [`TaskContext::progress`](crate::TaskContext::progress).
    pub attempt: u32,
}

impl Progress {
    /// `done` units of work done, total unknown, no message.
    pub fn new(done: u64) -> Self {
        Progress {
            done,
            ..Progress::default()
        }
    }

    /// Out of `total` units.
    pub fn of(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }

    /// With a message.
    pub fn message(mut self, message: impl Into<Arc<str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// `done / total`, clamped to `0.0..=1.0`; `None` without a total. A
    /// total of zero counts as all done.
    pub fn fraction(&self) -> Option<f64> {
        let total = self.total?;
        if total == 0 {
            return Some(1.0);
        }
        Some((self.done as f64 / total as f64).clamp(0.0, 1.0))
    }
}

impl From<u64> for Progress {
    fn from(done: u64) -> Self {
        Progress::new(done)
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("done", &self.done)
            .field("total", &self.total)
            .field("message", &self.message)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl fmt::Display for Progress {
    /// `3/10 (30%): message`, `3: message`, or `3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.done)?;
        if let (Some(total), Some(frac)) = (self.total, self.fraction()) {
            write!(f, "/{total} ({:.0}%)", frac * 100.0)?;
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// The runtime side of progress, kept in the cell's `Rare` box.
#[derive(Default)]
pub(crate) struct Reports {
    pub(crate) latest: Option<Progress>,
    /// When the latest report came (the stall watchdog's clock).
    pub(crate) at: Option<Instant>,
}

/// Resolves when the attempt started at `started` has gone `limit` without
/// a progress report; never without a limit. Wakes once per `limit` at
/// most, not per report.
pub(crate) async fn stalled(job: &dyn Job, limit: Option<Duration>, started: Instant) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let last = job.last_report().map_or(started, |at| at.max(started));
        let Some(due) = last.checked_add(limit) else {
            return std::future::pending().await;
        };
        sleep_until(due).await;
        if job.last_report().map_or(started, |at| at.max(started)) <= last {
            return;
        }
    }
}
