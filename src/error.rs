//! Error types: the outcome error of a task, and the errors of the cluster's
//! own operations (building, running, submitting, subscribing, stopping).

use std::sync::Arc;
use std::time::Duration;

use crate::task::TaskId;

/// Why a task did not produce a value.
///
/// Every task resolves to exactly one `Result<T, TaskError<E>>`. The variants
/// tell apart the task's own error from what the cluster did to it:
///
/// | variant | cause | retried? |
/// |---|---|---|
/// | [`Failed`](TaskError::Failed) | the body returned `Err(e)` | yes, if retries remain and `retry_if` / `retry_with` agree |
/// | [`Panicked`](TaskError::Panicked) | the body panicked | same as `Failed` |
/// | [`TimedOut`](TaskError::TimedOut) | an attempt ran past its timeout | same as `Failed` (the predicate sees it) |
/// | [`Stalled`](TaskError::Stalled) | an attempt went past its [stall timeout](crate::TaskBuilder::stall_timeout) without a progress report | same as `Failed` (the predicate sees it) |
/// | [`Cancelled`](TaskError::Cancelled) | [`Cluster::cancel_task`](crate::Cluster::cancel_task) | never |
/// | [`Shutdown`](TaskError::Shutdown) | the cluster stopped before the task could finish | never |
/// | [`Dropped`](TaskError::Dropped) | a full queue dropped it for a higher-priority task ([`Overflow::DropLowest`](crate::Overflow::DropLowest)) | never |
///
/// ```
/// use std::time::Duration;
/// use corral::{Cluster, TaskError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(2).unwrap();
/// let failed = cluster.task(|_| async { Err::<(), _>("disk full") }).submit().unwrap();
/// let panicked = cluster
///     .task(|_| async { if true { panic!("bug") } Ok::<(), &str>(()) })
///     .submit()
///     .unwrap();
/// let slow = cluster
///     .task(|_| async {
///         tokio::time::sleep(Duration::from_secs(60)).await;
///         Ok::<(), &str>(())
///     })
///     .timeout(Duration::from_millis(10))
///     .submit()
///     .unwrap();
///
/// let err = failed.await.unwrap_err();
/// assert!(err.is_failed());
/// assert_eq!(err.failure(), Some(&"disk full")); // the body's own error
/// assert_eq!(err.to_string(), "task failed: disk full");
/// assert!(matches!(panicked.await, Err(TaskError::Panicked { message }) if message == "bug"));
/// assert!(slow.await.unwrap_err().is_timeout());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError<E> {
    /// The task body returned this error on its last attempt.
    #[error("task failed: {0}")]
    Failed(E),
    /// The task body panicked on its last attempt.
    #[error("task panicked: {message}")]
    Panicked {
        /// The panic message, or a placeholder when the payload was not a string.
        message: String,
    },
    /// The last attempt did not finish within the task's timeout.
    #[error("task timed out after {limit:?}")]
    TimedOut {
        /// The per-attempt timeout that was exceeded.
        limit: Duration,
    },
    /// The last attempt reported no progress for its
    /// [stall timeout](crate::TaskBuilder::stall_timeout).
    #[error("task stalled: no progress for {limit:?}")]
    Stalled {
        /// The stall timeout that was exceeded.
        limit: Duration,
    },
    /// The task was cancelled by id before it produced an outcome.
    #[error("task was cancelled")]
    Cancelled,
    /// The cluster was stopped or cancelled before the task could finish.
    #[error("cluster shut down before the task finished")]
    Shutdown,
    /// A task this one depends on ended without a value, so this one did
    /// not run (the default [`OnParentFailure::Propagate`](crate::OnParentFailure::Propagate));
    /// or, read through [`TaskContext::parent`](crate::TaskContext::parent)
    /// or [`TaskContext::wait_for`](crate::TaskContext::wait_for), the task
    /// depended on could not be read (see [`DependencyCause`]). Boxed, so
    /// that every `TaskError` stays small.
    #[error("{0}")]
    Dependency(Box<DependencyError>),
    /// A parent ended without a value and the edge said
    /// [`OnParentFailure::Skip`](crate::OnParentFailure::Skip): this task was
    /// skipped, never run.
    #[error("skipped: {0}")]
    Skipped(Box<DependencyError>),
    /// The cluster's queue was full and dropped this task, still waiting
    /// to run, to admit one of higher priority
    /// ([`Overflow::DropLowest`](crate::Overflow::DropLowest)).
    #[error("task was dropped from a full queue for a higher-priority task")]
    Dropped,
    /// The task never started: a newer task of its key, submitted with
    /// [`KeyFull::Replace`](crate::KeyFull::Replace), took its place.
    /// (A [batch](crate::Batch) counts it as
    /// [`OutcomeKind::Cancelled`](crate::OutcomeKind::Cancelled).)
    #[error("replaced by a newer task of its key")]
    Replaced,
}

/// Which task a task depended on and how it ended: the payload of
/// [`TaskError::Dependency`] and [`TaskError::Skipped`].
///
/// ```
/// use corral::{DependencyCause, DependencyError, TaskError};
///
/// let err: TaskError<String> = DependencyError::new("fetch", DependencyCause::Failed).into();
/// assert_eq!(err.to_string(), "dependency fetch failed");
/// assert_eq!(err.dependency().map(|d| d.cause), Some(DependencyCause::Failed));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("dependency {task} {cause}")]
pub struct DependencyError {
    /// The task depended on (the direct parent, or the task waited for).
    pub task: TaskId,
    /// How it ended, or why it could not be read.
    pub cause: DependencyCause,
}

impl DependencyError {
    /// The error for `task`, which ended (or could not be read) as `cause`.
    pub fn new(task: impl Into<TaskId>, cause: DependencyCause) -> Self {
        DependencyError {
            task: task.into(),
            cause,
        }
    }

    /// This error as [`TaskError::Skipped`].
    pub fn skipped<E>(self) -> TaskError<E> {
        TaskError::Skipped(Box::new(self))
    }
}

/// As [`TaskError::Dependency`].
impl<E> From<DependencyError> for TaskError<E> {
    fn from(e: DependencyError) -> Self {
        TaskError::Dependency(Box::new(e))
    }
}

/// How a task depended on (a parent, or a task waited for) ended without a
/// value, or why it could not be read. Carried by [`TaskError::Dependency`]
/// and [`TaskError::Skipped`]; it names the kind of the other task's error
/// (whose own error type may differ from this task's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DependencyCause {
    /// It failed ([`TaskError::Failed`]).
    #[error("failed")]
    Failed,
    /// It panicked ([`TaskError::Panicked`]).
    #[error("panicked")]
    Panicked,
    /// It timed out ([`TaskError::TimedOut`]).
    #[error("timed out")]
    TimedOut,
    /// It was cancelled ([`TaskError::Cancelled`]).
    #[error("was cancelled")]
    Cancelled,
    /// The cluster shut down before it finished ([`TaskError::Shutdown`]).
    #[error("was shut down")]
    Shutdown,
    /// Its last attempt stopped reporting progress ([`TaskError::Stalled`]).
    #[error("stalled")]
    Stalled,
    /// It did not run because one of its own parents failed ([`TaskError::Dependency`]).
    #[error("failed through one of its own dependencies")]
    Dependency,
    /// It was skipped ([`TaskError::Skipped`]).
    #[error("was skipped")]
    Skipped,
    /// A full queue dropped it ([`TaskError::Dropped`]).
    #[error("was dropped from a full queue")]
    Dropped,
    /// A newer task of its key took its place ([`TaskError::Replaced`]).
    #[error("was replaced by a newer task of its key")]
    Replaced,
    /// Waiting for it would wait for the waiter itself (directly, or through
    /// a cycle of waits and dependencies): an error instead of a hang.
    #[error("cannot be waited for: the wait would close a cycle")]
    Cycle,
    /// No such task is pending, running or cached (for `wait_for`), or it
    /// is not a parent of this task (for `parent`).
    #[error("is not known here")]
    Unknown,
    /// The edge to this parent was declared without types
    /// ([`After::any`](crate::After::any)): it orders, but carries no value.
    #[error("is an untyped parent: declare the edge with types to read it")]
    Untyped,
    /// The task's outcome is not the `Result<T, E>` asked for (the types
    /// are logged with `tracing::warn!`).
    #[error("produces another type than the one asked for")]
    TypeMismatch,
    /// `wait_for` was awaited outside the body of one of its cluster's tasks
    /// (a task spawned from the body, say), where nothing can free a worker.
    #[error("cannot be waited for outside the waiting task's own body")]
    NotInBody,
}

impl<E> TaskError<E> {
    /// `true` if the body itself returned an error.
    pub fn is_failed(&self) -> bool {
        matches!(self, TaskError::Failed(_))
    }

    /// `true` if the body panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, TaskError::Panicked { .. })
    }

    /// `true` if an attempt ran past its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TaskError::TimedOut { .. })
    }

    /// `true` if an attempt went past its stall timeout without progress.
    pub fn is_stalled(&self) -> bool {
        matches!(self, TaskError::Stalled { .. })
    }

    /// `true` if the task was cancelled by id.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled)
    }

    /// `true` if the cluster shut down before the task finished.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, TaskError::Shutdown)
    }

    /// `true` if a task this one depended on ended without a value (or
    /// could not be read): see [`TaskError::Dependency`].
    pub fn is_dependency(&self) -> bool {
        matches!(self, TaskError::Dependency(_))
    }

    /// Which task this one depended on and how it ended, for
    /// [`TaskError::Dependency`] and [`TaskError::Skipped`].
    pub fn dependency(&self) -> Option<&DependencyError> {
        match self {
            TaskError::Dependency(d) | TaskError::Skipped(d) => Some(d),
            _ => None,
        }
    }

    /// `true` if a full queue dropped the task ([`TaskError::Dropped`]).
    pub fn is_dropped(&self) -> bool {
        matches!(self, TaskError::Dropped)
    }

    /// `true` if the task was skipped because a parent failed.
    pub fn is_skipped(&self) -> bool {
        matches!(self, TaskError::Skipped(_))
    }

    /// The kind of this error, as a dependent task sees its parent's.
    pub(crate) fn cause(&self) -> DependencyCause {
        match self {
            TaskError::Failed(_) => DependencyCause::Failed,
            TaskError::Panicked { .. } => DependencyCause::Panicked,
            TaskError::TimedOut { .. } => DependencyCause::TimedOut,
            TaskError::Stalled { .. } => DependencyCause::Stalled,
            TaskError::Cancelled => DependencyCause::Cancelled,
            TaskError::Shutdown => DependencyCause::Shutdown,
            TaskError::Dependency(_) => DependencyCause::Dependency,
            TaskError::Skipped(_) => DependencyCause::Skipped,
            TaskError::Dropped => DependencyCause::Dropped,
            TaskError::Replaced => DependencyCause::Replaced,
        }
    }

    /// The task's own error, if that is what this is.
    pub fn failure(&self) -> Option<&E> {
        match self {
            TaskError::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Consumes the error and returns the task's own error, if that is what this is.
    pub fn into_failure(self) -> Option<E> {
        match self {
            TaskError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`TaskBuilder::submit`](crate::TaskBuilder::submit) refused a task.
///
/// Nothing already queued is touched when a submit fails; the rejected task's
/// body is dropped without being run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A task with this id is scheduled, ready, running or waiting for a
    /// retry, or finished within its [dedup window](crate::TaskBuilder::dedup_window).
    /// (To get a handle to that task instead, see [`Duplicate::Join`](crate::Duplicate::Join).)
    #[error(
        "a task with id {0} is already pending or running (or finished within its dedup window)"
    )]
    DuplicateId(TaskId),
    /// [`Duplicate::Join`](crate::Duplicate::Join) found the task holding the
    /// id, but its value or error type is not this submit's (see
    /// [`SubscribeError::TypeMismatch`], whose message it shares).
    #[error(
        "task {id} produces {}, not {}",
        short_type_name(found),
        short_type_name(expected)
    )]
    TypeMismatch {
        /// The id that was joined.
        id: TaskId,
        /// This submit's type, as the body's `Result<T, E>`.
        expected: &'static str,
        /// The existing task's type, as its body's `Result<T, E>`.
        found: &'static str,
    },
    /// The id is empty, too long, starts with `#` (reserved for generated
    /// ids), or is a generated id.
    #[error("invalid task id: {0}")]
    InvalidId(&'static str),
    /// An option of the task is out of range (see the message).
    #[error("invalid task option `{option}`: {reason}")]
    InvalidOption {
        /// The builder method whose value was rejected.
        option: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The task's key has no room for it, and it was submitted with
    /// [`KeyFull::Reject`](crate::KeyFull::Reject): the key's unfinished
    /// tasks (running, queued or waiting on it) already take its limit.
    #[error("key {key:?} is full (limit {limit})")]
    KeyFull {
        /// The task's key.
        key: Arc<str>,
        /// The key's limit at the submit.
        limit: u32,
    },
    /// The cluster is stopping, draining or stopped and takes no new tasks.
    #[error("the cluster is shutting down and accepts no new tasks")]
    ShuttingDown,
    /// The cluster's queue holds its [capacity](crate::ClusterBuilder::capacity)
    /// of pending tasks (and, under [`Overflow::DropLowest`](crate::Overflow::DropLowest),
    /// none of lower priority than this one). The task was not queued; see
    /// [`TaskBuilder::try_submit`](crate::TaskBuilder::try_submit) to get it back.
    #[error("the cluster's queue is full ({capacity} pending tasks)")]
    Full {
        /// The cluster's capacity.
        capacity: usize,
    },
    /// The cluster already holds the most tasks it can (2^32 - 1: pending,
    /// running and cached together).
    #[error("the cluster holds too many tasks (2^32 - 1 at most)")]
    TooManyTasks,
    /// A parent given to [`TaskBuilder::after`](crate::TaskBuilder::after) is
    /// not pending, running or cached in this cluster (nor an earlier node of
    /// the same [`Graph`](crate::Graph)).
    #[error("unknown parent task {0}")]
    UnknownParent(TaskId),
    /// A limiter named by [`TaskBuilder::limit`](crate::TaskBuilder::limit)
    /// or [`limit_by`](crate::TaskBuilder::limit_by) was never added to
    /// the cluster ([`Cluster::add_limiter`](crate::Cluster::add_limiter)).
    #[error("unknown rate limiter `{0}` (see Cluster::add_limiter)")]
    UnknownLimiter(std::sync::Arc<str>),
    /// A typed parent does not produce the `Result<T, E>` its edge names.
    #[error(
        "parent {id} produces {}, not {}",
        short_type_name(found),
        short_type_name(expected)
    )]
    ParentTypeMismatch {
        /// The parent.
        id: TaskId,
        /// The type the edge names, as the body's `Result<T, E>`.
        expected: &'static str,
        /// The parent's real type.
        found: &'static str,
    },
}

/// Why a [`Cluster::watch`](crate::Cluster::watch) ended
/// without the task's outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The timeout passed before the task finished (or was even submitted).
    #[error("no outcome for task {id} within {timeout:?}")]
    TimedOut {
        /// The id watched.
        id: TaskId,
        /// The watch's timeout.
        timeout: Duration,
    },
    /// The task exists but does not produce the `Result<T, E>` asked for.
    #[error(
        "task {id} produces {}, not {}",
        short_type_name(found),
        short_type_name(expected)
    )]
    TypeMismatch {
        /// The id watched.
        id: TaskId,
        /// The type asked for, as the body's `Result<T, E>`.
        expected: &'static str,
        /// The task's real type.
        found: &'static str,
    },
    /// The cluster shut down before a task with this id was submitted (a
    /// task that was submitted answers with its own outcome, `Shutdown` included).
    #[error("the cluster shut down before task {0} was submitted")]
    ShutDown(TaskId),
    /// A generated id that is not (or no longer) known: no task can ever
    /// take it, so waiting for it would only wait for the timeout.
    #[error("task {0} is not known, and a generated id is never submitted later")]
    UnknownGenerated(TaskId),
}

/// Why [`ClusterBuilder::build`](crate::ClusterBuilder::build) refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A cluster needs at least one worker.
    #[error("a cluster needs at least one worker")]
    ZeroWorkers,
    /// More workers than the cluster supports (65,535).
    #[error("a cluster supports at most 65535 workers")]
    TooManyWorkers,
    /// An option of the cluster is out of range (see the message).
    #[error("invalid cluster option `{option}`: {reason}")]
    InvalidOption {
        /// The builder method whose value was rejected.
        option: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// [`ClusterBuilder::key_limit`](crate::ClusterBuilder::key_limit) was 0.
    #[error("a key limit must be at least 1")]
    ZeroKeyLimit,
}

/// Why [`Cluster::run`](crate::Cluster::run) could not start the workers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The cluster was stopped or cancelled; a stopped cluster cannot be restarted.
    #[error("the cluster has been shut down")]
    ShutDown,
    /// `run` was called outside a tokio runtime on a cluster whose workers
    /// have not started.
    #[error("Cluster::run must be called from within a tokio runtime")]
    NoRuntime,
}

/// Why [`Cluster::subscribe`](crate::Cluster::subscribe) found nothing to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// No task with this id is pending, running, or cached.
    #[error("no pending, running or cached task has id {0}")]
    UnknownId(TaskId),
    /// The task exists, but its value or error type is not the one asked for.
    ///
    /// The message names both as the body's `Result<T, E>`, without module
    /// paths: `task fetch produces Result<u32, String>, not Result<i64, String>`.
    /// The fields keep the full paths ([`std::any::type_name`]).
    #[error(
        "task {id} produces {}, not {}",
        short_type_name(found),
        short_type_name(expected)
    )]
    TypeMismatch {
        /// The id that was found.
        id: TaskId,
        /// The type asked for, as the body's `Result<T, E>`.
        expected: &'static str,
        /// The task's real type, as its body's `Result<T, E>`.
        found: &'static str,
    },
}

/// Why [`Cluster::stop`](crate::Cluster::stop) or [`Cluster::drain`](crate::Cluster::drain)
/// did not end cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// Attempts were still running when the timeout passed. They have been
    /// cancelled and will resolve as [`TaskError::Shutdown`].
    #[error("{running} attempt(s) still running after {timeout:?}; they were cancelled")]
    Timeout {
        /// How many attempts were still running at the timeout.
        running: usize,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// `stop` or `drain` was called from inside a task body of this cluster
    /// (an async body, or a blocking one that blocks on it). Waiting there
    /// would wait for the caller's own worker until the timeout, so the call
    /// returned at once: the stop (or drain) has begun exactly as from
    /// outside, and the caller's own attempt, like every running one, is
    /// left to finish. To wait for the workers, call `stop` from outside the
    /// cluster's bodies (for example from a task spawned with `tokio::spawn`).
    #[error(
        "stop or drain called from inside one of the cluster's own tasks:          the stop has begun, but waiting for the workers would wait for the caller itself"
    )]
    FromInsideTask,
}

/// `type_name` without module paths: `core::result::Result<u32,
/// alloc::string::String>` becomes `Result<u32, String>`.
pub(crate) fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    // The start (in `out`) of the path segment being copied.
    let mut segment = 0;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            // Drop the module path written so far for this name.
            out.truncate(segment);
        } else {
            out.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                segment = out.len();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_type_names_drop_module_paths() {
        assert_eq!(
            short_type_name(std::any::type_name::<Result<u32, String>>()),
            "Result<u32, String>"
        );
        assert_eq!(
            short_type_name(std::any::type_name::<
                Result<Vec<std::sync::Arc<str>>, std::io::Error>,
            >()),
            "Result<Vec<Arc<str>>, Error>"
        );
        assert_eq!(
            short_type_name("(a::B, [c::D; 2], &e::F)"),
            "(B, [D; 2], &F)"
        );
        assert_eq!(short_type_name("u8"), "u8");
    }
}
