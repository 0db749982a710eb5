//! Typed futures of a task's outcome: the submitter's [`TaskHandle`] and a
//! subscriber's [`Subscription`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::TaskError;
use crate::history::{History, WithHistory};
use crate::job::OutcomeSlot;
use crate::progress::Progress;
use crate::task::TaskId;

/// The submitter's handle to a task's outcome; await it for the result.
///
/// Resolves exactly once to `Ok(value)` or a [`TaskError`], however the
/// task ends; awaiting it never races with completion. Dropping the handle
/// does not cancel the task (use [`Cluster::cancel_task`](crate::Cluster::cancel_task)).
///
/// Cancel safe: dropping the future before it resolves loses nothing but
/// this handle's copy of the outcome. Polling it again after it resolved panics,
/// as for any future.
///
/// Awaiting a handle directly inside another task's body holds that body's
/// worker while it waits, and can deadlock a busy or one-worker pool: await
/// it through [`TaskContext::wait`](crate::TaskContext::wait) there, which
/// frees the worker (see "Waiting for another task inside a body" on
/// [`Cluster::task`](crate::Cluster::task)).
///
/// ```
/// use corral::{Cluster, TaskError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(2).unwrap();
/// let ok = cluster.task(|_ctx| async { Ok::<_, String>(1) }).submit().unwrap();
/// let bad = cluster.task(|_ctx| async { Err::<u32, _>("no".to_string()) }).submit().unwrap();
/// println!("waiting for {}", ok.id()); // a generated id, e.g. #0@0
/// assert_eq!(ok.await, Ok(1));
/// assert_eq!(bad.await, Err(TaskError::Failed("no".to_string())));
/// # }
/// ```
#[must_use = "a task handle does nothing unless awaited; dropping it detaches the task"]
pub struct TaskHandle<T, E> {
    /// The task's cell, which also records whether this handle resolved.
    slot: Arc<dyn OutcomeSlot<T, E>>,
}

impl<T, E> TaskHandle<T, E> {
    pub(crate) fn new(slot: Arc<dyn OutcomeSlot<T, E>>) -> Self {
        TaskHandle { slot }
    }

    /// The task's id (generated unless one was given). Cheap: a copy, or a
    /// reference count for a user id. It is made on request, which keeps the
    /// handle two words; so every `id()` of the crate returns a `TaskId` by
    /// value, for one convention.
    pub fn id(&self) -> TaskId {
        self.slot.task_id()
    }

    /// `true` if this handle came from a submit that
    /// [joined](crate::Duplicate::Join) the task already holding its id
    /// (this submit's own body never runs); `false` for the handle of a task
    /// this submit queued.
    pub fn deduplicated(&self) -> bool {
        self.slot.deduplicated()
    }

    /// The task's latest progress report ([`TaskContext::progress`](crate::TaskContext::progress)),
    /// if it made one. Still readable after the task finished, for as long
    /// as this handle lives (read it before awaiting the handle by value, or
    /// await `&mut handle`).
    ///
    /// ```
    /// use corral::{Cluster, Progress};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let mut h = cluster
    ///     .task(|ctx| async move {
    ///         ctx.progress(Progress::new(1).of(2));
    ///         ctx.progress(Progress::new(2).of(2).message("done"));
    ///         Ok::<_, String>(())
    ///     })
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.progress(), None); // not started yet
    /// (&mut h).await.unwrap();
    /// assert_eq!(h.progress().unwrap().to_string(), "2/2 (100%): done");
    /// # }
    /// ```
    pub fn progress(&self) -> Option<Progress> {
        self.slot.progress()
    }

    /// A future of the outcome together with the task's [`History`]: how
    /// many attempts ran and the errors of those before the last. Recorded
    /// only for tasks built with [`keep_history`](crate::TaskBuilder::keep_history)
    /// (see [`History::attempts`]).
    pub fn with_history(self) -> WithHistory<T, E> {
        WithHistory { handle: self }
    }

    pub(crate) fn take_history(&self) -> History<E> {
        self.slot.take_history()
    }
}

impl<T, E> Future for TaskHandle<T, E> {
    type Output = Result<T, TaskError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `None` cannot happen for the one handle of a task; answer "shut
        // down" rather than panic if it ever did.
        self.slot
            .poll_outcome(cx)
            .map(|outcome| outcome.unwrap_or_else(|| Err(TaskError::Shutdown)))
    }
}

impl<T, E> Drop for TaskHandle<T, E> {
    fn drop(&mut self) {
        self.slot.drop_handle();
    }
}

impl<T, E> fmt::Debug for TaskHandle<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id())
            .finish()
    }
}

/// A subscriber's copy of a task's outcome, from [`Cluster::subscribe`](crate::Cluster::subscribe).
///
/// Resolves once, to a clone of the outcome. Cancel safe: a subscription
/// dropped before it resolves loses nothing but its own copy.
///
/// As for a [`TaskHandle`], awaiting it inside another task's body holds
/// that body's worker (see [`TaskHandle`]); use
/// [`TaskContext::wait_for`](crate::TaskContext::wait_for) there.
///
/// ```
/// use corral::Cluster;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let handle = cluster
///     .task(|_ctx| async { Ok::<_, String>(vec![1u8, 2, 3]) })
///     .id("rows")
///     .submit()
///     .unwrap();
/// // Two more readers of the same outcome, each with its own copy.
/// let a = cluster.subscribe::<Vec<u8>, String>("rows").unwrap();
/// let b = cluster.subscribe::<Vec<u8>, String>("rows").unwrap();
/// assert_eq!(a.id(), "rows");
/// assert_eq!(handle.await, Ok(vec![1, 2, 3]));
/// assert_eq!(a.await, Ok(vec![1, 2, 3]));
/// assert_eq!(b.await, Ok(vec![1, 2, 3]));
/// # }
/// ```
#[must_use = "a subscription does nothing unless awaited"]
pub struct Subscription<T, E> {
    id: TaskId,
    rx: oneshot::Receiver<Result<T, TaskError<E>>>,
}

impl<T, E> Subscription<T, E> {
    pub(crate) fn new(id: TaskId, rx: oneshot::Receiver<Result<T, TaskError<E>>>) -> Self {
        Subscription { id, rx }
    }

    /// The id subscribed to. By value, as [`TaskHandle::id`] and
    /// [`TaskContext::id`](crate::TaskContext::id): a [`TaskId`] is a copy or
    /// a reference count to clone.
    pub fn id(&self) -> TaskId {
        self.id.clone()
    }
}

impl<T, E> Future for Subscription<T, E> {
    type Output = Result<T, TaskError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            // The sender is only dropped unanswered if the cluster itself is
            // torn down without settling the task.
            .map(|r| r.unwrap_or_else(|_| Err(TaskError::Shutdown)))
    }
}

impl<T, E> fmt::Debug for Subscription<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_two_words() {
        // Callers keep one per task (W1 holds 200,000 at once: `bench/README.md#w1-throughput`).
        let size = std::mem::size_of::<TaskHandle<u64, std::convert::Infallible>>();
        assert_eq!(size, 2 * std::mem::size_of::<usize>());
    }
}
