//! The schedule's driver: one tokio task that sleeps until the next firing
//! and submits it, applying the missed-run and overlap policies.
//!
//! Invariants:
//! 1. `cursor` (the latest firing key decided: submitted, queued or
//!    dropped) only grows, and a key is decided once: no firing runs twice.
//! 2. The driver holds only a weak reference to the cluster, upgraded for a
//!    submit or a cancel and dropped at once after it.
//! 3. User code the driver runs (`each_task`, and the `Drop` of outcomes
//!    and of the body at the end) runs under a panic guard.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::timeline::Timeline;
use super::{Configure, Control, Firing, FiringBody, FiringFuture, Missed, Overlap, SharedBody};
use crate::cluster::{Cluster, WeakCluster};
use crate::error::SubmitError;
use crate::handle::TaskHandle;
use crate::panic::{drop_guarded, guard};
use crate::task::{TaskContext, TaskId};

pub(crate) struct Driver<T, E> {
    pub(crate) cluster: WeakCluster,
    pub(crate) stopping: CancellationToken,
    pub(crate) closing: CancellationToken,
    pub(crate) control: Arc<Control>,
    pub(crate) name: Arc<str>,
    pub(crate) body: SharedBody<T, E>,
    pub(crate) configure: Option<Configure<T, E>>,
    pub(crate) overlap: Overlap,
    pub(crate) missed: Missed,
    pub(crate) timeline: Box<dyn Timeline>,
}

/// Cancels `done` when dropped.
struct Finished(Arc<Control>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.done.cancel();
    }
}

/// What a submit came to.
enum Submitted<T, E> {
    Running(TaskId, TaskHandle<T, E>),
    /// Refused (or `each_task` panicked): the firing is dropped.
    Dropped,
    /// The cluster is shutting down or gone: the schedule ends.
    End,
}

/// The driver's moving parts.
struct Run<T, E> {
    /// The run the overlap policy watches (not kept for `Allow`).
    active: Option<(TaskId, TaskHandle<T, E>)>,
    /// Firings waiting for `active` to end (`Overlap::Queue`): key, catch-up.
    backlog: VecDeque<(i64, bool)>,
    ended: bool,
}

impl<T, E> Driver<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    /// `catch_up_from`: the key of the last firing before a restart; the
    /// firings after it count as missed.
    pub(crate) async fn run(self, catch_up_from: Option<i64>) {
        let origin = self.timeline.origin();
        let mut cursor = catch_up_from.map_or(origin, |k| k.min(origin));
        let mut catching_up = catch_up_from.is_some();
        let mut was_paused = false;
        let mut run = Run {
            active: None,
            backlog: VecDeque::new(),
            ended: false,
        };
        let control = self.control.clone();
        // Marks the schedule finished however the driver goes, its
        // runtime's shutdown (which drops it mid-await) included.
        let _finished = Finished(control.clone());
        while !run.ended {
            let paused = control.paused.load(Relaxed);
            if was_paused && !paused {
                catching_up = true;
            }
            was_paused = paused;
            // A pause holds the backlog too: nothing starts until the resume.
            if run.active.is_none() && !paused {
                if let Some((key, catch_up)) = run.backlog.pop_front() {
                    self.start(&mut run, key, catch_up);
                    continue;
                }
            }
            let next = if paused {
                None
            } else {
                self.timeline.next_after(cursor)
            };
            let sleep = match next {
                Some(key) => match self.timeline.until(key) {
                    None => {
                        cursor = self.due(&mut run, cursor, key, catching_up);
                        catching_up = false;
                        continue;
                    }
                    // The next firing is still to come: none was missed (a
                    // pause or a restart that ends between two firings).
                    Some(d) => {
                        catching_up = false;
                        Some(d)
                    }
                },
                // No firing left: end once the last run is done.
                None if !paused && run.active.is_none() => break,
                None => None,
            };
            tokio::select! {
                biased;
                _ = control.cancel.cancelled() => break,
                _ = self.stopping.cancelled() => break,
                _ = self.closing.cancelled() => break,
                _ = control.changed.notified() => {}
                outcome = async { (&mut run.active.as_mut().expect("guarded").1).await }, if run.active.is_some() => {
                    run.active = None;
                    drop_guarded(outcome, "a firing's outcome");
                }
                _ = tokio::time::sleep(sleep.unwrap_or_default()), if sleep.is_some() => {}
            }
        }
        let Driver {
            body, configure, ..
        } = self;
        drop_guarded((body, configure, run.active), "a schedule's body");
    }

    /// Firing `key` is due: decides every due firing after `cursor` by the
    /// missed-run policy, offers the chosen ones to the overlap policy, and
    /// returns the new cursor (invariant 1).
    fn due(&self, run: &mut Run<T, E>, cursor: i64, key: i64, catching_up: bool) -> i64 {
        let due = self.timeline.latest_due(cursor, self.missed.limit());
        let Some(&last) = due.last() else {
            // Unreachable: `key` is due. Decide it alone.
            self.offer(run, key, false);
            return key;
        };
        let chosen: Vec<(i64, bool)> = match (self.missed, catching_up) {
            (Missed::Skip, true) => Vec::new(),
            (Missed::Skip | Missed::RunOnce, false) => vec![(last, false)],
            (Missed::RunOnce, true) => vec![(last, true)],
            (Missed::RunAll(_), _) => due.iter().map(|&k| (k, catching_up || k != last)).collect(),
        };
        for (k, catch_up) in chosen {
            self.offer(run, k, catch_up);
        }
        last
    }

    fn offer(&self, run: &mut Run<T, E>, key: i64, catch_up: bool) {
        let busy = run.active.is_some() || !run.backlog.is_empty();
        match self.overlap {
            Overlap::Allow => {
                // Not watched: the run goes on beside the others.
                if let Submitted::Running(_, handle) = self.submit(run, key, catch_up) {
                    drop(handle);
                }
            }
            Overlap::Skip if busy => self.skip(),
            Overlap::Queue if busy => {
                if run.backlog.len() < self.missed.limit() {
                    run.backlog.push_back((key, catch_up));
                } else {
                    self.skip();
                }
            }
            Overlap::Replace => {
                if let Some((id, handle)) = run.active.take() {
                    if let Some(cluster) = self.cluster.upgrade() {
                        cluster.cancel_task(id);
                    }
                    drop(handle);
                }
                self.start(run, key, catch_up);
            }
            Overlap::Skip | Overlap::Queue => self.start(run, key, catch_up),
        }
    }

    fn skip(&self) {
        self.control.skipped.fetch_add(1, Relaxed);
    }

    fn start(&self, run: &mut Run<T, E>, key: i64, catch_up: bool) {
        if let Submitted::Running(id, handle) = self.submit(run, key, catch_up) {
            run.active = Some((id, handle));
        }
    }

    fn submit(&self, run: &mut Run<T, E>, key: i64, catch_up: bool) -> Submitted<T, E> {
        if self.control.cancel.is_cancelled() {
            run.ended = true;
            return Submitted::End;
        }
        let Some(cluster) = self.cluster.upgrade() else {
            run.ended = true;
            return Submitted::End;
        };
        let submitted = self.submit_to(&cluster, key, catch_up);
        match &submitted {
            Submitted::Running(..) => {
                self.control.fired.fetch_add(1, Relaxed);
            }
            Submitted::Dropped => self.skip(),
            Submitted::End => run.ended = true,
        }
        // Invariant 2: the strong reference goes now; if it was the last,
        // the cluster cancels, as it would have without the schedule.
        drop(cluster);
        submitted
    }

    fn submit_to(&self, cluster: &Cluster, key: i64, catch_up: bool) -> Submitted<T, E> {
        let id = TaskId::from(format!("{}@{}", self.name, self.timeline.label(key)));
        let firing = Firing {
            id: id.clone(),
            schedule: self.name.clone(),
            due: self.timeline.time(key),
            catch_up,
        };
        let body = self.body.clone();
        let each: Box<dyn Fn(TaskContext) -> FiringFuture<T, E> + Send + Sync> =
            Box::new(move |ctx| body(ctx, firing.clone()));
        let builder: crate::TaskBuilder<'_, FiringBody<T, E>, T, E> = cluster.task(each);
        let builder = match &self.configure {
            None => builder,
            Some(configure) => match guard(|| configure(builder)) {
                Ok(b) => b,
                Err(msg) => {
                    tracing::error!(schedule = %self.name, panic = %msg, "a schedule's each_task panicked; the firing is dropped");
                    return Submitted::Dropped;
                }
            },
        };
        match builder.id(id.clone()).submit() {
            Ok(handle) => Submitted::Running(id, handle),
            Err(SubmitError::ShuttingDown) => Submitted::End,
            Err(err) => {
                tracing::warn!(schedule = %self.name, firing = %id, error = %err, "a firing was refused and dropped");
                Submitted::Dropped
            }
        }
    }
}
