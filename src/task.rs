//! Task identity and the context handed to every attempt.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::Job;
use crate::signal::CancelReason;

/// The identity of a task.
///
/// Either the string the user gave with [`TaskBuilder::id`](crate::TaskBuilder::id)
/// or a number the cluster generated. Generated ids are unique for the life of
/// the cluster; they are addressed by the `TaskId` value (keep the one from
/// [`TaskHandle::id`](crate::TaskHandle::id)), never by their printed form,
/// and live apart from user ids: `TaskId::from("#7")` names a user task, not
/// the generated task printed as `#7`.
///
/// Cloning is cheap (a copy, or a reference count for user ids).
#[derive(Clone)]
pub struct TaskId(Repr);

#[derive(Clone)]
enum Repr {
    /// `slot` is where the task lives in the cluster's registry, so that
    /// lookups by a generated id need no hash map; `seq` makes it unique.
    Generated {
        seq: u64,
        slot: u32,
    },
    Named(Arc<str>),
}

impl TaskId {
    pub(crate) fn generated(seq: u64, slot: u32) -> Self {
        TaskId(Repr::Generated { seq, slot })
    }

    /// The user-given string, or `None` for a generated id.
    pub fn as_str(&self) -> Option<&str> {
        self.name().map(|s| &**s)
    }

    /// `true` if the cluster generated this id.
    pub fn is_generated(&self) -> bool {
        matches!(self.0, Repr::Generated { .. })
    }

    /// `(seq, slot)` for a generated id.
    pub(crate) fn generated_parts(&self) -> Option<(u64, u32)> {
        match self.0 {
            Repr::Generated { seq, slot } => Some((seq, slot)),
            Repr::Named(_) => None,
        }
    }

    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        match &self.0 {
            Repr::Named(s) => Some(s),
            Repr::Generated { .. } => None,
        }
    }
}

impl PartialEq for TaskId {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Generated { seq: a, .. }, Repr::Generated { seq: b, .. }) => a == b,
            (Repr::Named(a), Repr::Named(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for TaskId {}

impl Hash for TaskId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Generated { seq, .. } => {
                0u8.hash(state);
                seq.hash(state);
            }
            Repr::Named(s) => {
                1u8.hash(state);
                s.hash(state);
            }
        }
    }
}

impl PartialEq<str> for TaskId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}

impl PartialEq<&str> for TaskId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Generated { seq, .. } => write!(f, "#{seq}"),
            Repr::Named(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Generated { seq, .. } => write!(f, "TaskId(#{seq})"),
            Repr::Named(s) => write!(f, "TaskId({s:?})"),
        }
    }
}

impl From<&str> for TaskId {
    fn from(s: &str) -> Self {
        TaskId(Repr::Named(Arc::from(s)))
    }
}

impl From<String> for TaskId {
    fn from(s: String) -> Self {
        TaskId(Repr::Named(Arc::from(s)))
    }
}

impl From<&String> for TaskId {
    fn from(s: &String) -> Self {
        TaskId::from(s.as_str())
    }
}

impl From<Arc<str>> for TaskId {
    fn from(s: Arc<str>) -> Self {
        TaskId(Repr::Named(s))
    }
}

impl From<&TaskId> for TaskId {
    fn from(id: &TaskId) -> Self {
        id.clone()
    }
}

/// What an attempt knows about itself, handed to the task body.
///
/// It tells the task id, which attempt this is, the attempt's deadline, and
/// carries the cancellation signal. An async body is dropped at once when it
/// is cancelled or times out, so it only needs the signal for work it hands
/// to other tasks ([`cancellation_token`](Self::cancellation_token)); a
/// blocking body must poll [`is_cancelled`](Self::is_cancelled) to stop early.
pub struct TaskContext {
    id: TaskId,
    attempt: u32,
    deadline: Option<Instant>,
    job: Arc<dyn Job>,
}

impl TaskContext {
    pub(crate) fn new(
        id: TaskId,
        attempt: u32,
        deadline: Option<Instant>,
        job: Arc<dyn Job>,
    ) -> Self {
        TaskContext {
            id,
            attempt,
            deadline,
            job,
        }
    }

    /// The task's id. By value, as [`TaskHandle::id`](crate::TaskHandle::id)
    /// (which holds no id to lend): a copy, or a reference count to clone.
    pub fn id(&self) -> TaskId {
        self.id.clone()
    }

    /// The attempt number, starting at 1 (a task with `retry(2)` runs attempts 1 to 3 at most).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When this attempt times out, if the task has a timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// `true` once this attempt has been asked to stop, for any reason.
    pub fn is_cancelled(&self) -> bool {
        self.job.signal().reason().is_some()
    }

    /// Why this attempt was asked to stop, if it was: tells a cancel by id
    /// from a timeout and from a cluster shutdown.
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.job.signal().reason()
    }

    /// Resolves when this attempt is asked to stop, with the reason.
    ///
    /// Cancel safe: dropping the future loses nothing.
    pub async fn cancelled(&self) -> CancelReason {
        let token = self.job.token();
        token.cancelled().await;
        // A token is only cancelled after its reason is set.
        self.cancel_reason().unwrap_or(CancelReason::Cancelled)
    }

    /// A token cancelled when this attempt is asked to stop; hand it to work
    /// the body spawns elsewhere. Each attempt has its own token.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.job.token()
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("attempt", &self.attempt)
            .field("deadline", &self.deadline)
            .field("cancel_reason", &self.cancel_reason())
            .finish()
    }
}
