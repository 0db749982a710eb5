//! Task identity and the context handed to every attempt.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deps::TypedParent;
use crate::error::{DependencyCause, DependencyError, TaskError};
use crate::handle::TaskHandle;
use crate::job::Job;
use crate::progress::Progress;
use crate::signal::CancelReason;

/// The identity of a task.
///
/// Either the string the user gave with [`TaskBuilder::id`](crate::TaskBuilder::id)
/// or one the cluster generated. A generated id holds the task's number and
/// where the task lives in its cluster's registry (so a lookup by it needs no
/// hash map). It prints as `#{number}@{slot}`, e.g. `#6@0`, and that printed
/// form parses back to the same id ([`FromStr`](std::str::FromStr), or
/// `TaskId::from(&str)`), so an id read from a log addresses the same task.
///
/// - Task numbers are unique in the whole process, across all its clusters
///   (each cluster takes blocks of numbers from one process-wide counter), so
///   a generated id binds to the cluster that made it and addresses nothing
///   in any other: [`Cluster::cancel_task`](crate::Cluster::cancel_task)
///   there is [`NotFound`](crate::CancelOutcome::NotFound) and
///   [`Cluster::subscribe`](crate::Cluster::subscribe) is
///   [`UnknownId`](crate::SubscribeError::UnknownId). Within a cluster the
///   numbers grow with submission order.
/// - The `#` prefix is reserved for them: a user id starting with `#` is
///   refused at submit ([`SubmitError::InvalidId`](crate::SubmitError::InvalidId)),
///   so a user id never looks like a generated one.
///
/// Cloning is cheap (a copy, or a reference count for user ids).
///
/// ```
/// use std::time::Duration;
/// use corral::{CancelOutcome, Cluster, TaskId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let handle = cluster
///     .task(|_ctx| async { Ok::<_, String>(()) })
///     .delay(Duration::from_secs(60))
///     .submit()
///     .unwrap();
/// let printed = handle.id().to_string(); // e.g. "#0@0"
/// let parsed: TaskId = printed.parse().unwrap();
/// assert_eq!(parsed, handle.id());
/// assert_eq!(cluster.cancel_task(parsed), CancelOutcome::Cancelled);
///
/// // Another cluster's id addresses nothing here.
/// let other = Cluster::new(1).unwrap();
/// assert_eq!(other.cancel_task(handle.id()), CancelOutcome::NotFound);
/// # }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TaskId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// `slot` is where the task lives in its cluster's registry, so that
    /// lookups by a generated id need no hash map; `seq` makes it unique in
    /// the process (see `core::NEXT_SEQ_BLOCK`).
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

    /// A user id known to be valid (no parsing).
    pub(crate) fn named(name: Arc<str>) -> Self {
        TaskId(Repr::Named(name))
    }

    /// The user-given string, or `None` for a generated id.
    pub fn as_str(&self) -> Option<&str> {
        self.name().map(|s| &**s)
    }

    /// `true` if the cluster generated this id.
    pub fn is_generated(&self) -> bool {
        matches!(self.0, Repr::Generated { .. })
    }

    pub(crate) fn name(&self) -> Option<&Arc<str>> {
        match &self.0 {
            Repr::Named(s) => Some(s),
            Repr::Generated { .. } => None,
        }
    }

    /// Parses the printed form of a generated id, `#{seq}@{slot}`.
    fn parse_generated(s: &str) -> Option<TaskId> {
        let (seq, slot) = parse_generated_parts(s)?;
        Some(TaskId::generated(seq, slot))
    }

    /// This id borrowed for a lookup.
    pub(crate) fn as_ref(&self) -> IdRef<'_> {
        match &self.0 {
            Repr::Generated { seq, slot } => IdRef::Generated {
                seq: *seq,
                slot: *slot,
            },
            Repr::Named(s) => IdRef::Named(s),
        }
    }
}

/// `(seq, slot)` from the printed form of a generated id, `#{seq}@{slot}`.
fn parse_generated_parts(s: &str) -> Option<(u64, u32)> {
    let (seq, slot) = s.strip_prefix('#')?.split_once('@')?;
    // Digits only: `u64::from_str` would also take a leading `+`, and
    // then two spellings would name one id.
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !(digits(seq) && digits(slot)) {
        return None;
    }
    Some((seq.parse().ok()?, slot.parse().ok()?))
}

/// A task id borrowed for one lookup: what a [`TaskRef`] gives the engine,
/// so that naming a task by a string costs no allocation. Public only to
/// be the sealed trait's return type; not nameable outside the crate.
#[derive(Debug, Clone, Copy)]
pub enum IdRef<'a> {
    /// A generated id's parts.
    Generated {
        /// Its sequence number.
        seq: u64,
        /// Its registry slot.
        slot: u32,
    },
    /// A user-given id.
    Named(&'a str),
}

impl<'a> IdRef<'a> {
    /// A string as [`From<&str> for TaskId`](TaskId#impl-From<%26str>-for-TaskId) reads it.
    /// Inline, with the test for the `#` of a generated id first: most
    /// strings are user ids, and the parser's call cost a cancel by name
    /// a tenth of its lookup (W6).
    #[inline]
    fn from_str(s: &'a str) -> Self {
        if s.as_bytes().first() != Some(&b'#') {
            return IdRef::Named(s);
        }
        match parse_generated_parts(s) {
            Some((seq, slot)) => IdRef::Generated { seq, slot },
            None => IdRef::Named(s),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// What names a task to [`Cluster::cancel_task`](crate::Cluster::cancel_task):
/// a [`TaskId`] (owned or borrowed) or a string, read as
/// [`From<&str> for TaskId`](TaskId#impl-From<%26str>-for-TaskId) reads it.
/// A string is looked up as it is, without being copied into a `TaskId`
/// first: cancelling by a user string id allocates nothing.
///
/// Sealed: implemented for `TaskId`, `&TaskId`, `&str`, `String`,
/// `&String` and `Arc<str>`.
///
/// ```
/// use corral::{CancelOutcome, Cluster};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let name = String::from("report");
/// let handle = cluster
///     .task(|_ctx| async { Ok::<_, String>(1) })
///     .id(&name)
///     .submit()
///     .unwrap();
/// assert_eq!(cluster.cancel_task(&name), CancelOutcome::Cancelled);
/// assert_eq!(cluster.cancel_task(handle.id()), CancelOutcome::NotFound);
/// # }
/// ```
pub trait TaskRef: sealed::Sealed {
    /// The id, borrowed for one lookup.
    #[doc(hidden)]
    fn id_ref(&self) -> IdRef<'_>;
}

macro_rules! task_ref {
    ($($ty:ty => |$s:ident| $body:expr;)*) => {$(
        impl sealed::Sealed for $ty {}
        impl TaskRef for $ty {
            #[inline]
            fn id_ref(&self) -> IdRef<'_> {
                let $s = self;
                $body
            }
        }
    )*};
}

task_ref! {
    TaskId => |s| s.as_ref();
    &TaskId => |s| s.as_ref();
    &str => |s| IdRef::from_str(s);
    String => |s| IdRef::from_str(s);
    &String => |s| IdRef::from_str(s);
    Arc<str> => |s| IdRef::from_str(s);
}

/// Why a string is not a [`TaskId`]: it starts with `#` (reserved for
/// generated ids) but is not the printed form of one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` starts with `#` but is not a generated task id (`#<number>@<slot>`)")]
pub struct ParseTaskIdError(String);

impl std::str::FromStr for TaskId {
    type Err = ParseTaskIdError;

    /// The printed form of a generated id gives that id back; any other
    /// string not starting with `#` is a user id.
    ///
    /// # Errors
    /// [`ParseTaskIdError`] for a string that starts with `#` but is not a
    /// generated id's printed form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match TaskId::parse_generated(s) {
            Some(id) => Ok(id),
            None if s.starts_with('#') => Err(ParseTaskIdError(s.to_owned())),
            None => Ok(TaskId(Repr::Named(Arc::from(s)))),
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
            Repr::Generated { seq, slot } => write!(f, "#{seq}@{slot}"),
            Repr::Named(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Generated { .. } => write!(f, "TaskId({self})"),
            Repr::Named(s) => write!(f, "TaskId({s:?})"),
        }
    }
}

/// A user id, or, for the printed form of a generated id, that id. A string
/// that starts with `#` but is not one becomes a user id that addresses
/// nothing (such ids are refused at submit); use
/// [`str::parse`] to have it reported instead.
impl From<&str> for TaskId {
    fn from(s: &str) -> Self {
        TaskId::parse_generated(s).unwrap_or_else(|| TaskId(Repr::Named(Arc::from(s))))
    }
}

/// As `From<&str>`.
impl From<String> for TaskId {
    fn from(s: String) -> Self {
        TaskId::parse_generated(&s).unwrap_or_else(|| TaskId(Repr::Named(Arc::from(s))))
    }
}

/// As `From<&str>`.
impl From<&String> for TaskId {
    fn from(s: &String) -> Self {
        TaskId::from(s.as_str())
    }
}

/// As `From<&str>`.
impl From<Arc<str>> for TaskId {
    fn from(s: Arc<str>) -> Self {
        TaskId::parse_generated(&s).unwrap_or(TaskId(Repr::Named(s)))
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
/// carries the cancellation signal.
///
/// ```
/// use std::time::Duration;
/// use corral::Cluster;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(2).unwrap();
/// let h = cluster
///     .task(|ctx| async move {
///         // Work handed elsewhere gets the attempt's token, so a cancel or
///         // timeout of this attempt stops it too.
///         let token = ctx.cancellation_token();
///         let helper = tokio::spawn(async move {
///             tokio::select! {
///                 _ = token.cancelled() => None,
///                 _ = tokio::time::sleep(Duration::from_millis(5)) => Some(2),
///             }
///         });
///         let helped = helper.await.unwrap().unwrap_or(0);
///         Ok::<_, String>(format!("{} attempt {}: {helped}", ctx.id(), ctx.attempt()))
///     })
///     .id("job")
///     .submit()
///     .unwrap();
/// assert_eq!(h.await, Ok("job attempt 1: 2".to_string()));
/// # }
/// ```
///
/// # How an attempt is told to stop
/// | what happens | async body | blocking body |
/// |---|---|---|
/// | its timeout passes | dropped at once, at the `.await` where it waits; never polled again | signalled ([`CancelReason::TimedOut`]); keeps its worker until it returns |
/// | [`cancel_task`](crate::Cluster::cancel_task) | signalled ([`CancelReason::Cancelled`]), then dropped; it may be polled once more first, up to its next `.await` that is not ready | signalled; keeps its worker until it returns |
/// | [`cancel`](crate::Cluster::cancel), or the timeout of a `stop`/`drain` | as a cancel, with [`CancelReason::Shutdown`] | as a cancel, with [`CancelReason::Shutdown`] |
/// | a graceful [`stop`](crate::Cluster::stop) or [`drain`](crate::Cluster::drain) | nothing: the attempt runs to its end | nothing |
///
/// Whatever the attempt then returns is ignored: the outcome is already
/// decided (`TimedOut`, `Cancelled`, `Shutdown`). So an async body does
/// not clean up after [`cancelled`](Self::cancelled) (it is dropped first);
/// it cleans up in `Drop` (what it holds is dropped with it). The signal is
/// for work the body hands elsewhere ([`cancellation_token`](Self::cancellation_token),
/// or the context moved into a spawned task) and for blocking bodies, which
/// poll [`is_cancelled`](Self::is_cancelled) to stop early.
///
/// # Waiting for another task inside a body
/// Awaiting another task's handle or subscription directly inside a body
/// holds this body's worker, and can deadlock a busy or one-worker pool:
/// wait through [`wait_for`](Self::wait_for) or [`wait`](Self::wait),
/// which free the worker while they wait (see "Waiting for another task
/// inside a body" on [`Cluster::task`](crate::Cluster::task)).
pub struct TaskContext {
    // No id: it is read from the task when asked for, which most bodies
    // never do (a context is made per attempt).
    attempt: u32,
    deadline: Option<Instant>,
    job: Arc<dyn Job>,
}

impl TaskContext {
    pub(crate) fn new(attempt: u32, deadline: Option<Instant>, job: Arc<dyn Job>) -> Self {
        TaskContext {
            attempt,
            deadline,
            job,
        }
    }

    /// The task's id. By value, as [`TaskHandle::id`](crate::TaskHandle::id)
    /// (which holds no id to lend): a copy, or a reference count to clone.
    pub fn id(&self) -> TaskId {
        self.job.id()
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

    /// Resolves when this attempt is asked to stop, with the reason: its
    /// timeout passed, it was cancelled by id, or the cluster shut down
    /// ([`Cluster::cancel`](crate::Cluster::cancel), or the timeout of a
    /// `stop` or `drain`). A graceful stop does not ask running attempts to
    /// stop, so it does not fire this.
    ///
    /// An async body is dropped when this fires (at once on a timeout; see
    /// the [type docs](Self#how-an-attempt-is-told-to-stop)), so code after
    /// awaiting it inside the body itself may never run. Await it in work
    /// the context was moved into (a spawned task), or from a blocking body
    /// with `tokio::runtime::Handle::block_on`.
    ///
    /// Cancel safe: dropping the future loses nothing.
    pub async fn cancelled(&self) -> CancelReason {
        let token = self.job.token();
        token.cancelled().await;
        // A token is only cancelled after its reason is set.
        self.cancel_reason().unwrap_or(CancelReason::Cancelled)
    }

    /// The outcome of the parent `id` of this task (see
    /// [`TaskBuilder::after`](crate::TaskBuilder::after)), as its handle
    /// sees it: a copy, for each call and each attempt.
    ///
    /// With the default [`OnParentFailure::Propagate`](crate::OnParentFailure::Propagate)
    /// a body only runs once every parent succeeded, so this is `Ok`; with
    /// [`Run`](crate::OnParentFailure::Run) it may be the parent's error.
    /// The value may still be on its way when the body starts (the parent's
    /// delivery follows its end at once), hence the `await`.
    ///
    /// # Errors
    /// The parent's own error, or [`TaskError::Dependency`](crate::TaskError::Dependency)
    /// with [`DependencyCause::Unknown`](crate::DependencyCause::Unknown) if
    /// `id` is not a parent of this task,
    /// [`Untyped`](crate::DependencyCause::Untyped) for an edge made with
    /// [`After::any`](crate::After::any), or
    /// [`TypeMismatch`](crate::DependencyCause::TypeMismatch) if `T, E` are
    /// not the edge's types.
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let words = cluster
    ///     .task(|_| async { Ok::<_, String>(vec!["a".to_string(), "b".to_string()]) })
    ///     .submit()
    ///     .unwrap();
    /// let id = words.id();
    /// let count = cluster
    ///     .task(move |ctx| {
    ///         let id = id.clone();
    ///         async move { ctx.parent::<Vec<String>, String>(id).await.map(|w| w.len()) }
    ///     })
    ///     .after(&words)
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(count.await, Ok(2));
    /// # }
    /// ```
    pub async fn parent<T, E>(&self, id: impl Into<TaskId>) -> Result<T, TaskError<E>>
    where
        T: Clone + Send + 'static,
        E: Clone + Send + 'static,
    {
        let id = id.into();
        let fail = |cause| Err(DependencyError::new(id.clone(), cause).into());
        let parents = self.job.parents();
        let Some(edge) = parents.iter().find(|a| a.id_now() == Some(&id)) else {
            return fail(DependencyCause::Unknown);
        };
        let Some(typed) = &edge.typed else {
            return fail(DependencyCause::Untyped);
        };
        let Some(slot) = typed.as_any().downcast_ref::<TypedParent<T, E>>() else {
            tracing::warn!(
                parent = %id,
                expected = std::any::type_name::<Result<T, E>>(),
                found = typed.expected().1,
                "TaskContext::parent asked for the wrong types"
            );
            return fail(DependencyCause::TypeMismatch);
        };
        slot.read(&id).await
    }

    /// Waits for the outcome of the task `id` (pending, running or cached)
    /// **without holding this task's worker**: while it waits, the attempt
    /// is parked and the worker runs other tasks; when the outcome comes, a
    /// worker resumes the attempt. So a body may wait for another task even
    /// on a one-worker cluster. The attempt's timeout and a cancel still
    /// apply while it waits (the attempt ends as `TimedOut` or `Cancelled`).
    ///
    /// Await it in the body itself (in an async task body): awaited
    /// elsewhere it returns [`DependencyCause::NotInBody`](crate::DependencyCause::NotInBody).
    /// A parked attempt counts in [`ClusterStats::waiting`](crate::ClusterStats::waiting),
    /// not in `running`. A graceful stop lets it finish (the workers stay
    /// until it has).
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap(); // one worker
    /// let price = cluster
    ///     .task(|_| async { Ok::<u32, String>(21) })
    ///     .id("price")
    ///     .delay(std::time::Duration::from_millis(10))
    ///     .submit()
    ///     .unwrap();
    /// let waiter = cluster
    ///     .task(|ctx| async move {
    ///         // Runs first; the only worker is freed while it waits, so "price" can run.
    ///         let price = ctx.wait_for::<u32, String>("price").await.map_err(|e| e.to_string())?;
    ///         Ok::<_, String>(price * 2)
    ///     })
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(waiter.await, Ok(42));
    /// assert_eq!(price.await, Ok(21));
    /// # }
    /// ```
    ///
    /// # Errors
    /// The task's own outcome, or [`TaskError::Dependency`](crate::TaskError::Dependency)
    /// naming `id` with [`DependencyCause::Cycle`](crate::DependencyCause::Cycle)
    /// if `id` is this task, or waits (through waits and dependencies) for
    /// this task: an error instead of a deadlock;
    /// [`Unknown`](crate::DependencyCause::Unknown) if no such task is known;
    /// [`TypeMismatch`](crate::DependencyCause::TypeMismatch) for other types.
    pub async fn wait_for<T, E>(&self, id: impl Into<TaskId>) -> Result<T, TaskError<E>>
    where
        T: Clone + Send + 'static,
        E: Clone + Send + 'static,
    {
        crate::wait::wait_for(self.job.seq(), &self.id(), id.into()).await
    }

    /// Awaits `handle` as [`wait_for`](Self::wait_for) waits for an id:
    /// without holding this task's worker. No `Clone` is needed (the handle
    /// is the task's own copy of the outcome). Awaited outside a body, it is
    /// an ordinary await.
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let c = cluster.clone();
    /// let outer = cluster
    ///     .task(move |ctx| {
    ///         let c = c.clone();
    ///         async move {
    ///             let inner = c.task(|_| async { Ok::<_, String>(5) }).submit().map_err(|e| e.to_string())?;
    ///             ctx.wait(inner).await.map_err(|e| e.to_string())
    ///         }
    ///     })
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(outer.await, Ok(5));
    /// # }
    /// ```
    ///
    /// # Errors
    /// The task's own outcome, or [`DependencyCause::Cycle`](crate::DependencyCause::Cycle)
    /// (in a [`TaskError::Dependency`](crate::TaskError::Dependency)) if
    /// the task waits, transitively, for this one.
    pub async fn wait<T, E>(&self, handle: TaskHandle<T, E>) -> Result<T, TaskError<E>> {
        crate::wait::wait_handle(self.job.seq(), handle).await
    }

    /// Reports progress: a count of work done (`ctx.progress(3)`) or a
    /// [`Progress`] with a total and a message. The latest report wins; it
    /// is read from the task's handle ([`TaskHandle::progress`](crate::TaskHandle::progress))
    /// and by id ([`Cluster::progress`](crate::Cluster::progress)), and
    /// records this attempt's number. Each report also feeds the task's
    /// [`stall_timeout`](crate::TaskBuilder::stall_timeout), if it has one.
    /// Cheap (one short lock); never blocks on the readers.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let h = cluster
    ///     .task(|ctx| async move {
    ///         for row in 0..3u64 {
    ///             tokio::time::sleep(Duration::from_millis(5)).await;
    ///             ctx.progress(row + 1); // a heartbeat for the stall timeout
    ///         }
    ///         Ok::<_, String>("imported")
    ///     })
    ///     .stall_timeout(Duration::from_secs(1))
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.await, Ok("imported"));
    /// # }
    /// ```
    pub fn progress(&self, progress: impl Into<Progress>) {
        let mut progress = progress.into();
        progress.attempt = self.attempt;
        self.job.report_progress(progress);
    }

    /// The task, for the crate's features that extend the context
    /// (`crate::limit`).
    pub(crate) fn job(&self) -> &Arc<dyn Job> {
        &self.job
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
            .field("id", &self.id())
            .field("attempt", &self.attempt)
            .field("deadline", &self.deadline)
            .field("cancel_reason", &self.cancel_reason())
            .finish()
    }
}
