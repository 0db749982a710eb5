//! A bounded queue and priority aging: the user's side
//! ([`ClusterBuilder::capacity`], [`ClusterBuilder::aging`],
//! [`TaskBuilder::try_submit`], [`TaskBuilder::submit_wait`]). The engine's
//! side is `engine::capacity` (counting and rooms) and `queue` (aging).
//!
//! # What counts as pending
//! A cluster with a capacity of `n` holds at most `n` *pending* tasks:
//! tasks queued (due or scheduled for later, requeued retries included,
//! tasks a [rate limiter](crate::TaskBuilder::limit) set aside and tasks
//! waiting on a full or paused [key](crate::TaskBuilder::key)) and
//! dependents waiting for their parents ([`TaskBuilder::after`]).
//! Running attempts (and attempts parked in a
//! [`TaskContext::wait_for`](crate::TaskContext::wait_for)) are not pending,
//! nor are finished tasks whose outcome is cached.
//!
//! Only a new submit is checked. A task already admitted keeps its place
//! and never needs a new one: a retry goes back to the queue whatever the
//! count, and a dependent whose parents finished goes from waiting to
//! queued. So the count can pass the capacity by the retries requeued
//! while it was full; new submits are refused until it falls back below.
//!
//! # Overflow policies
//! What a submit does when the queue is full is the cluster's
//! [`Overflow`] policy:
//!
//! | | [`submit`](TaskBuilder::submit) | [`try_submit`](TaskBuilder::try_submit) | [`submit_wait`](TaskBuilder::submit_wait) |
//! |---|---|---|---|
//! | [`Reject`](Overflow::Reject) | [`SubmitError::Full`] (the task is dropped) | [`TrySubmitError::Full`], with the task back | [`SubmitError::Full`] |
//! | [`Wait`](Overflow::Wait) | [`SubmitError::Full`]: a sync call cannot wait | [`TrySubmitError::Full`], with the task back | waits for room, first come first served |
//! | [`DropLowest`](Overflow::DropLowest) | drops the lowest queued task if it ranks below this one, else [`SubmitError::Full`] | same, else [`TrySubmitError::Full`] | as `submit` |

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::body::Body;
use crate::builder::TaskBuilder;
use crate::clock::duration_ticks;
use crate::engine::{hold_room, Room};
use crate::error::{BuildError, SubmitError};
use crate::handle::TaskHandle;
use crate::shared::Shared;
use crate::ClusterBuilder;

/// What a submit does when the cluster's queue is full (see
/// [`ClusterBuilder::capacity`] and the table in its docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overflow {
    /// The submit is refused with [`SubmitError::Full`]
    /// ([`try_submit`](TaskBuilder::try_submit) hands the task back).
    Reject,
    /// [`submit_wait`](TaskBuilder::submit_wait) waits for room, in the
    /// order the waits began: a later waiter never overtakes an earlier one,
    /// and a plain submit never takes a room a waiter is due. A sync
    /// [`submit`](TaskBuilder::submit) cannot wait: it is refused as under
    /// [`Reject`](Overflow::Reject).
    Wait,
    /// The new task takes the place of the lowest-ranked queued task
    /// (lowest priority as submitted, then latest start, then latest
    /// submitted), which resolves as [`TaskError::Dropped`](crate::TaskError::Dropped),
    /// but only if that task's priority is strictly lower than the new
    /// one's: a task never displaces one of equal or higher priority, and
    /// the new task is refused instead ([`SubmitError::Full`]). Dependents
    /// waiting for their parents, tasks waiting on a full or paused
    /// [key](crate::TaskBuilder::key) and tasks a
    /// [rate limiter](crate::TaskBuilder::limit) set aside are never
    /// dropped (they count as pending all the same), and a group admission
    /// ([`TaskBuilder::after`], [`Graph`](crate::Graph)) drops nothing: it
    /// fits whole or is refused. Finding the lowest task looks only at the
    /// lowest priority levels when no task is scheduled for later and
    /// aging is off; otherwise it walks the queue (O(pending), per submit
    /// to a full queue only).
    DropLowest,
}

/// The cluster's bounds, as set on its builder.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bounds {
    capacity: Option<(usize, Overflow)>,
    aging: Option<Duration>,
}

impl Bounds {
    /// Checked by `ClusterBuilder::build`.
    pub(crate) fn check(&self) -> Result<(), BuildError> {
        if matches!(self.capacity, Some((0, _))) {
            return Err(BuildError::InvalidOption {
                option: "capacity",
                reason: "must be at least 1",
            });
        }
        if self.aging == Some(Duration::ZERO) {
            return Err(BuildError::InvalidOption {
                option: "aging",
                reason: "must be greater than zero",
            });
        }
        Ok(())
    }

    /// Applied by `ClusterBuilder::build` to the new cluster.
    pub(crate) fn apply(&self, shared: &Shared) {
        if self.capacity.is_none() && self.aging.is_none() {
            return;
        }
        let mut core = shared.lock();
        if let Some((limit, overflow)) = self.capacity {
            core.set_capacity(limit, overflow);
        }
        if let Some(step) = self.aging {
            core.queue.set_aging(duration_ticks(step));
        }
    }
}

impl ClusterBuilder {
    /// Bounds the queue: at most `limit` pending tasks (queued, scheduled,
    /// waiting for a retry or for their parents; not running ones: see
    /// below), and `overflow` says what a submit does when it is full. Zero is rejected
    /// by `build`. Unbounded unless set, and then free: the engine keeps no
    /// count and a submit tests one flag.
    ///
    /// # Capacity: what counts as pending
    /// Only a new submit is checked: a requeued retry keeps its place and
    /// never needs a new one, so the count may pass `limit` by the retries
    /// requeued while the queue was full (new submits are refused until it
    /// falls back). A [schedule](crate::Cluster::schedule)'s firing refused
    /// by a full queue is skipped (and logged), as any refused firing.
    /// [`ClusterStats`](crate::ClusterStats) counts
    /// [`rejected`](crate::ClusterStats::rejected) and
    /// [`dropped`](crate::ClusterStats::dropped) tasks.
    ///
    /// | policy | [`submit`](crate::TaskBuilder::submit) | [`try_submit`](crate::TaskBuilder::try_submit) | [`submit_wait`](crate::TaskBuilder::submit_wait) |
    /// |---|---|---|---|
    /// | [`Reject`](Overflow::Reject) | [`SubmitError::Full`] | [`TrySubmitError::Full`], with the task back | [`SubmitError::Full`] |
    /// | [`Wait`](Overflow::Wait) | [`SubmitError::Full`] (a sync call cannot wait) | [`TrySubmitError::Full`], with the task back | waits for room, first come first served |
    /// | [`DropLowest`](Overflow::DropLowest) | drops a lower-priority queued task, else [`SubmitError::Full`] | same, else [`TrySubmitError::Full`] | as `submit` |
    ///
    /// ```
    /// use corral::{Cluster, Overflow, SubmitError, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder()
    ///     .workers(1)
    ///     .paused() // nothing runs: every task stays pending
    ///     .capacity(2, Overflow::DropLowest)
    ///     .build()
    ///     .unwrap();
    /// let task = |n: u32| cluster.task(move |_| async move { Ok::<_, String>(n) });
    /// let low = task(1).priority(0).submit().unwrap();
    /// let _mid = task(2).priority(5).submit().unwrap();
    /// // Full: an equal priority displaces nothing...
    /// assert!(matches!(task(3).priority(0).submit(), Err(SubmitError::Full { capacity: 2 })));
    /// // ...a higher one drops the lowest.
    /// let high = task(4).priority(9).submit().unwrap();
    /// assert_eq!(low.await, Err(TaskError::Dropped));
    /// cluster.run().unwrap();
    /// assert_eq!(high.await, Ok(4));
    /// let stats = cluster.stats();
    /// assert_eq!((stats.rejected, stats.dropped), (1, 1));
    /// # }
    /// ```
    pub fn capacity(mut self, limit: usize, overflow: Overflow) -> Self {
        self.bounds.capacity = Some((limit, overflow));
        self
    }

    /// Priority aging: a due task gains one priority level per `step` it
    /// waits, so that a stream of higher-priority tasks cannot starve a
    /// low one. Zero is rejected by `build`; off unless set (and then free).
    ///
    /// Waiting starts at the task's start time (when it falls due: the
    /// submit, unless it was scheduled; for a requeued retry, the end of
    /// its backoff). At time `t` a task of priority `p` due since `s` ranks
    /// as `p + (t - s) / step`, exactly (not in whole steps); equal ranks
    /// run in submission order. Comparing two tasks this way does not
    /// depend on `t`, so the queue keeps them in one fixed order, with no
    /// re-sorting as time passes: the order stays exact and deterministic.
    /// The arithmetic saturates (exact while `|priority| * step` is under
    /// about 292 years). The priority as submitted is what
    /// [`Overflow::DropLowest`] compares.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::builder()
    ///     .workers(1)
    ///     .paused()
    ///     .aging(Duration::from_secs(1)) // one level per second of waiting
    ///     .build()
    ///     .unwrap();
    /// let task = |n: &'static str| cluster.task(move |_| async move { Ok::<_, String>(n) });
    /// let old = task("old, priority 0").submit().unwrap();
    /// tokio::time::sleep(Duration::from_secs(3)).await;
    /// // Priority 2, due now, ranks below priority 0 due 3 seconds ago.
    /// let new = task("new, priority 2").priority(2).submit().unwrap();
    /// cluster.run().unwrap();
    /// assert_eq!(old.await, Ok("old, priority 0")); // runs first
    /// assert_eq!(new.await, Ok("new, priority 2"));
    /// # }
    /// ```
    pub fn aging(mut self, step: Duration) -> Self {
        self.bounds.aging = Some(step);
        self
    }
}

/// Why [`TaskBuilder::try_submit`] did not queue a task. When the queue was
/// full, the task comes back, options and body untouched, to submit later
/// (as `tokio::sync::mpsc::error::TrySendError` hands back a value).
pub enum TrySubmitError<B> {
    /// The cluster's queue is full: the task was not queued, here it is.
    Full {
        /// The task, as it was before `try_submit`.
        task: B,
        /// The cluster's capacity.
        capacity: usize,
    },
    /// Refused for another reason (as by [`submit`](TaskBuilder::submit):
    /// the task was dropped).
    Refused(SubmitError),
}

impl<B> TrySubmitError<B> {
    /// `true` if the queue was full (and the task is in the error).
    pub fn is_full(&self) -> bool {
        matches!(self, TrySubmitError::Full { .. })
    }

    /// The task handed back, if the queue was full.
    pub fn into_task(self) -> Option<B> {
        match self {
            TrySubmitError::Full { task, .. } => Some(task),
            TrySubmitError::Refused(_) => None,
        }
    }

    /// The error as [`submit`](TaskBuilder::submit) reports it (the task,
    /// if any, is dropped).
    pub fn into_error(self) -> SubmitError {
        match self {
            TrySubmitError::Full { capacity, .. } => SubmitError::Full { capacity },
            TrySubmitError::Refused(e) => e,
        }
    }
}

impl<B> fmt::Debug for TrySubmitError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full { capacity, .. } => f
                .debug_struct("Full")
                .field("capacity", capacity)
                .finish_non_exhaustive(),
            TrySubmitError::Refused(e) => f.debug_tuple("Refused").field(e).finish(),
        }
    }
}

impl<B> fmt::Display for TrySubmitError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full { capacity, .. } => fmt::Display::fmt(
                &SubmitError::Full {
                    capacity: *capacity,
                },
                f,
            ),
            TrySubmitError::Refused(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<B> std::error::Error for TrySubmitError<B> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrySubmitError::Full { .. } => None,
            TrySubmitError::Refused(e) => Some(e),
        }
    }
}

impl<'c, B, T, E> TaskBuilder<'c, B, T, E>
where
    B: Body<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    /// As [`submit`](Self::submit), but a full queue hands the task back
    /// ([`TrySubmitError::Full`]) instead of dropping it, to submit later.
    /// On a cluster without a capacity it is `submit`. Under
    /// [`Overflow::DropLowest`] it drops a lower-priority task as `submit`
    /// does, and hands the task back only when there is none.
    ///
    /// # Errors
    /// [`TrySubmitError::Full`] with the task, or
    /// [`TrySubmitError::Refused`] with what `submit` would have said.
    ///
    /// ```
    /// use corral::{Cluster, Overflow, TrySubmitError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(1).paused().capacity(1, Overflow::Reject).build().unwrap();
    /// let first = cluster.task(|_| async { Ok::<_, String>(1) }).submit().unwrap();
    /// let second = cluster.task(|_| async { Ok::<_, String>(2) }).id("second");
    /// let second = match second.try_submit() {
    ///     Err(TrySubmitError::Full { task, .. }) => task, // not lost: keep it for later
    ///     other => panic!("expected a full queue: {other:?}"),
    /// };
    /// cluster.run().unwrap();
    /// assert_eq!(first.await, Ok(1)); // room again
    /// assert_eq!(second.try_submit().unwrap().await, Ok(2));
    /// # }
    /// ```
    pub fn try_submit(self) -> Result<TaskHandle<T, E>, TrySubmitError<Self>> {
        let shared = self.cluster().shared().clone();
        let mut ticket = None;
        let mut core = shared.lock();
        let room = core.request_room(self.name_value(), self.priority_value(), &mut ticket, None);
        shared.unlock(core);
        match room {
            Room::Reserved(key) => submit_in_room(&shared, key, self),
            Room::Full(capacity) => Err(TrySubmitError::Full {
                task: self,
                capacity,
            }),
            // No waker was given, so it never waits.
            Room::Free | Room::Waiting => self.submit().map_err(TrySubmitError::Refused),
        }
    }

    /// As [`submit`](Self::submit), but under [`Overflow::Wait`] a full
    /// queue makes it wait for room instead of refusing. Waiters get rooms
    /// in the order they began to wait, and a room due to a waiter is held
    /// for it (no plain submit takes it). Under the other policies, and on
    /// a cluster without a capacity, it submits at once as `submit` does.
    ///
    /// Cancel-safe: dropping the future before it resolves leaves nothing
    /// behind (the task is dropped unsubmitted, its place in line or the
    /// room held for it goes to the next waiter). A stop or cancel of the
    /// cluster ends every wait with [`SubmitError::ShuttingDown`].
    ///
    /// # Errors
    /// As `submit`.
    ///
    /// ```
    /// use corral::{Cluster, Overflow};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(1).capacity(4, Overflow::Wait).build().unwrap();
    /// let mut handles = Vec::new();
    /// for n in 0..20u32 {
    ///     // At most 4 wait in the queue; the loop waits for room as workers take them.
    ///     let h = cluster.task(move |_| async move { Ok::<_, String>(n) }).submit_wait().await.unwrap();
    ///     handles.push(h);
    /// }
    /// for (n, h) in handles.into_iter().enumerate() {
    ///     assert_eq!(h.await, Ok(n as u32));
    /// }
    /// # }
    /// ```
    pub async fn submit_wait(self) -> Result<TaskHandle<T, E>, SubmitError> {
        let shared = self.cluster().shared().clone();
        let priority = self.priority_value();
        let name = self.name_value().cloned();
        let mut line = InLine {
            shared: &shared,
            ticket: None,
        };
        let room = poll_fn(|cx| line.poll(name.as_ref(), priority, cx)).await;
        match room {
            Room::Reserved(key) => submit_in_room(&shared, key, self).map_err(|e| e.into_error()),
            Room::Full(capacity) => Err(SubmitError::Full { capacity }),
            Room::Free | Room::Waiting => self.submit(),
        }
    }
}

/// What `try_submit` returns.
type TrySubmitted<'c, B, T, E> = Result<TaskHandle<T, E>, TrySubmitError<TaskBuilder<'c, B, T, E>>>;

/// Submits `builder` with the room reserved under `key`; a room its submit
/// did not use is given back.
fn submit_in_room<'c, B, T, E>(
    shared: &Shared,
    key: usize,
    builder: TaskBuilder<'c, B, T, E>,
) -> TrySubmitted<'c, B, T, E>
where
    B: Body<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    let release = || {
        let mut core = shared.lock();
        core.release_room(None, true);
        shared.unlock(core);
    };
    hold_room(key, release, || builder.submit()).map_err(TrySubmitError::Refused)
}

/// A `submit_wait`'s place in line; dropping it gives the place back.
struct InLine<'a> {
    shared: &'a Arc<Shared>,
    ticket: Option<u64>,
}

impl InLine<'_> {
    fn poll(&mut self, name: Option<&Arc<str>>, priority: i32, cx: &mut Context<'_>) -> Poll<Room> {
        let mut core = self.shared.lock();
        let room = core.request_room(name, priority, &mut self.ticket, Some(cx.waker()));
        self.shared.unlock(core);
        match room {
            Room::Waiting => Poll::Pending,
            room => Poll::Ready(room),
        }
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let mut core = self.shared.lock();
            core.release_room(self.ticket.take(), false);
            self.shared.unlock(core);
        }
    }
}
