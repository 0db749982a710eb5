//! Attempt history: how many attempts a task ran and the errors of the
//! attempts before its final one, for tasks that ask for it
//! ([`TaskBuilder::keep_history`](crate::TaskBuilder::keep_history)),
//! read with the outcome through [`TaskHandle::with_history`](crate::TaskHandle::with_history).
//!
//! Opt-in because keeping it is not free: the errors of failed attempts,
//! which are otherwise dropped when the next attempt starts, are kept until
//! the task's handle reads them. The count and the errors live in the cell's
//! runtime box (`Rare`), made at submit for such tasks; a plain task pays
//! nothing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::TaskError;
use crate::handle::TaskHandle;

/// The attempts of a finished task: see [`TaskHandle::with_history`].
///
/// ```
/// use corral::{Cluster, TaskError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let h = cluster
///     .task(|ctx| async move {
///         if ctx.attempt() < 3 { Err(format!("busy {}", ctx.attempt())) } else { Ok(7) }
///     })
///     .retry(5)
///     .keep_history()
///     .submit()
///     .unwrap();
/// let (outcome, history) = h.with_history().await;
/// assert_eq!(outcome, Ok(7));
/// assert_eq!(history.attempts(), Some(3));
/// assert_eq!(
///     history.errors(),
///     [TaskError::Failed("busy 1".to_string()), TaskError::Failed("busy 2".to_string())]
/// );
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct History<E> {
    /// `None`: not recorded.
    attempts: Option<u32>,
    errors: Vec<TaskError<E>>,
}

impl<E> History<E> {
    pub(crate) fn not_recorded() -> Self {
        History {
            attempts: None,
            errors: Vec::new(),
        }
    }

    pub(crate) fn recorded() -> Self {
        History {
            attempts: Some(0),
            errors: Vec::new(),
        }
    }

    /// Attempt `attempt` (1-based) started.
    pub(crate) fn started(&mut self, attempt: u32) {
        if let Some(n) = &mut self.attempts {
            *n = (*n).max(attempt);
        }
    }

    /// Keeps the error of an attempt that is not the final one.
    pub(crate) fn push(&mut self, err: TaskError<E>) {
        self.errors.push(err);
    }

    /// How many attempts started (0 if the task was cancelled or shut down
    /// before its first); `None` if the task did not
    /// [`keep_history`](crate::TaskBuilder::keep_history), or for a handle
    /// that [joined](crate::Duplicate::Join) another submit's task (the
    /// history goes to that task's own handle).
    pub fn attempts(&self) -> Option<u32> {
        self.attempts
    }

    /// The errors of the attempts before the final outcome, oldest first:
    /// failures, panics, timeouts and stalls that were retried (and, for a
    /// task cancelled or shut down while waiting for a retry or during a
    /// later attempt, the last attempt's error, which the forced outcome
    /// replaced). Empty if nothing failed or nothing was recorded.
    pub fn errors(&self) -> &[TaskError<E>] {
        &self.errors
    }

    /// The errors, by value (see [`errors`](Self::errors)).
    pub fn into_errors(self) -> Vec<TaskError<E>> {
        self.errors
    }
}

impl<E: fmt::Debug> fmt::Debug for History<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("attempts", &self.attempts)
            .field("errors", &self.errors)
            .finish()
    }
}

/// The future of [`TaskHandle::with_history`]: the outcome, then the
/// task's [`History`].
#[must_use = "futures do nothing unless awaited"]
pub struct WithHistory<T, E> {
    pub(crate) handle: TaskHandle<T, E>,
}

impl<T, E> Future for WithHistory<T, E> {
    type Output = (Result<T, TaskError<E>>, History<E>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.handle)
            .poll(cx)
            .map(|outcome| (outcome, self.handle.take_history()))
    }
}

impl<T, E> fmt::Debug for WithHistory<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithHistory")
            .field("id", &self.handle.id())
            .finish()
    }
}
