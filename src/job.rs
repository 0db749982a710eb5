//! The engine's view of a task, and the type erasure between it and the
//! user's typed handles.
//!
//! The engine sees a task as `Arc<dyn Job>`; the user's [`TaskHandle`] sees
//! the same allocation (a [`TaskCell`](crate::cell::TaskCell)) as
//! `Arc<dyn OutcomeSlot<T, E>>`. Type erasure happens here and nowhere else:
//! the engine never names `T` or `E`.
//!
//! [`TaskHandle`]: crate::TaskHandle

use std::any::{Any, TypeId};
use std::future::{pending, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use crate::builder::RetryMode;
use crate::deps::After;
use crate::error::{DependencyCause, TaskError};
use crate::history::History;
use crate::limit::TaskLimits;
use crate::panic::drop_guarded;
use crate::progress::Progress;
use crate::signal::{CancelReason, Signal};
use crate::task::TaskId;

/// The final result of a task.
pub(crate) type Outcome<T, E> = Result<T, TaskError<E>>;

/// Copies an outcome for a second reader (set only where `T, E: Clone`).
pub(crate) type Cloner<T, E> = fn(&Outcome<T, E>) -> Outcome<T, E>;

/// An attempt's future, in an allocation a worker reuses from attempt to
/// attempt: [`Job::start_attempt`] writes the next attempt over the last
/// one, which costs no allocation when their futures have one layout (a
/// stream of tasks of one type), instead of one per attempt.
///
/// Between attempts it holds a finished attempt or none (a zero-sized
/// placeholder), so writing over it runs no user code: a finished attempt
/// has dropped everything it held. An attempt that stops before it
/// finishes (parked, timed out, cancelled) leaves with its allocation
/// ([`take`](Self::take)), and the worker's next attempt makes a new one.
/// Dropping one is user code (an unfinished attempt's futures), so it is
/// guarded, wherever it happens (`crate::cell` invariant 3).
pub(crate) struct AttemptBox(ReusableBoxFuture<'static, AttemptStatus>);

impl AttemptBox {
    /// A box holding no attempt (and no allocation: the placeholder is
    /// zero-sized).
    pub(crate) fn empty() -> Self {
        AttemptBox(ReusableBoxFuture::new(pending()))
    }

    /// Takes the future out, leaving the placeholder.
    fn take_inner(&mut self) -> ReusableBoxFuture<'static, AttemptStatus> {
        std::mem::replace(&mut self.0, ReusableBoxFuture::new(pending()))
    }

    /// Puts attempt `fut` in the box, over the finished attempt (or the
    /// placeholder) it holds.
    #[inline]
    pub(crate) fn set(&mut self, fut: impl Future<Output = AttemptStatus> + Send + 'static) {
        self.0.set(fut);
    }

    /// Takes the attempt (and its allocation) out, leaving the box empty.
    pub(crate) fn take(&mut self) -> AttemptBox {
        std::mem::replace(self, AttemptBox::empty())
    }

    /// Drops the attempt, logging `what` instead of unwinding if its drop
    /// panics.
    pub(crate) fn discard(mut self, what: &str) {
        drop_guarded(self.take_inner(), what);
    }
}

impl Future for AttemptBox {
    type Output = AttemptStatus;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AttemptStatus> {
        self.get_mut().0.poll(cx)
    }
}

impl Drop for AttemptBox {
    fn drop(&mut self) {
        drop_guarded(self.take_inner(), "an attempt");
    }
}

/// How an attempt ended, as far as the untyped engine needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptStatus {
    Succeeded,
    /// The body returned an error or panicked; the error is stored in the cell.
    Failed,
}

/// An outcome the cluster imposes instead of the body's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forced {
    Cancelled,
    Shutdown,
    /// Dropped from a full queue for a higher-priority task (`crate::capacity`).
    Dropped,
    /// A newer task of its key took its place (`crate::keys`); only ever
    /// imposed on a task that has not started.
    Replaced,
}

impl Forced {
    /// The task's error for this outcome.
    pub(crate) fn error<E>(self) -> crate::error::TaskError<E> {
        use crate::error::TaskError;
        match self {
            Forced::Cancelled => TaskError::Cancelled,
            Forced::Shutdown => TaskError::Shutdown,
            Forced::Dropped => TaskError::Dropped,
            Forced::Replaced => TaskError::Replaced,
        }
    }
}

/// The options the engine reads on every attempt. The cell stores the fields
/// flat (see [`TaskCell`]) and hands out this copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// Per-attempt timeout in nanoseconds; 0 means none.
    pub(crate) timeout_ns: u64,
    pub(crate) retries: u32,
    pub(crate) mode: RetryMode,
    pub(crate) blocking: bool,
}

impl Policy {
    /// A timeout beyond `u64::MAX` nanoseconds (584 years) counts as none.
    pub(crate) fn new(
        timeout: Option<Duration>,
        retries: u32,
        mode: RetryMode,
        blocking: bool,
    ) -> Self {
        let timeout_ns = timeout.map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(0));
        Policy {
            timeout_ns,
            retries,
            mode,
            blocking,
        }
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        (self.timeout_ns != 0).then(|| Duration::from_nanos(self.timeout_ns))
    }
}

/// The engine's view of a task. See the module docs.
pub(crate) trait Job: Send + Sync + 'static {
    /// The user-given id, if any.
    fn name(&self) -> Option<&Arc<str>>;
    fn policy(&self) -> Policy;
    /// The submission order among tasks (also part of a generated id).
    fn seq(&self) -> u64;
    fn priority(&self) -> i32;
    /// How long the outcome is cached after completion, if it is.
    fn retention(&self) -> Option<Duration>;
    fn signal(&self) -> &Signal;
    /// Raises `reason` on the signal and cancels the body's token, if any.
    fn raise(&self, reason: CancelReason);
    /// The current attempt's token (made on first use): cancelled once any
    /// reason is raised.
    fn token(&self) -> CancellationToken;
    /// Starts attempt `attempt` (1-based) in `into` (see [`AttemptBox`]).
    /// The future stores the body's result in the cell before it resolves.
    fn start_attempt(
        self: Arc<Self>,
        attempt: u32,
        deadline: Option<tokio::time::Instant>,
        into: &mut AttemptBox,
    );
    /// Records that the current attempt timed out.
    fn record_timeout(&self, limit: Duration);
    /// Whether to retry after failed attempt `attempt` (0-based), and the
    /// delay before the retry: asks the task's `retry_with` function (or
    /// `retry_if` predicate) about the stored error, then its backoff
    /// strategy (jitter applied) unless the decision named a delay. `None`:
    /// no retry (so decided, or the function or strategy panicked).
    fn retry_delay(&self, attempt: u32) -> Option<Duration>;
    /// Delivers the final outcome: see `crate::cell` invariant 2.
    fn complete(&self, forced: Option<Forced>, retain: bool);
    /// The cache dropped this task: keep the outcome only for an unread handle.
    fn release(&self);
    /// Registers a typed subscriber, or lends it the retained outcome;
    /// `req` is a `SubscribeRequest<T, E>`. If the types do not match,
    /// returns the name of the task's `Result<T, E>`.
    fn subscribe(self: Arc<Self>, req: &mut dyn Any) -> Result<(), &'static str>;

    // Dependencies and waits (`crate::deps`, `crate::wait`): called only
    // for tasks that use them, never on the plain path.

    /// [`TaskCell::assign`](crate::cell::TaskCell::assign), for a task
    /// admitted through the engine's group path.
    fn assign(&self, seq: u64, slot: u32);
    /// The `TypeId` and name of the task's `Outcome<T, E>`.
    fn result_type(&self) -> (TypeId, &'static str);
    /// How the task's outcome ended, as its dependents see it: `None` for a
    /// value. Reads the last attempt's result (before delivery) or the
    /// delivered outcome (of a retained task).
    fn outcome_cause(&self) -> Option<DependencyCause>;
    /// Decides the outcome of a task that never ran because of a parent:
    /// [`TaskError::Dependency`], or [`TaskError::Skipped`] if `skipped`.
    fn impose(&self, parent: TaskId, cause: DependencyCause, skipped: bool);
    /// The task's parent edges (empty for most tasks).
    fn parents(&self) -> &[After];
    /// The task's id.
    fn id(&self) -> TaskId;
    /// Whether a finished (retained) task still holds its id at tick `now`
    /// (its dedup window, see `crate::dedup`).
    fn holds_id(&self, now: i64) -> bool;
    /// The task finished at tick `now` and is retained: starts its dedup
    /// window, if it has one.
    fn start_window(&self, now: i64);
    /// The latest progress report, if any (see `crate::progress`).
    fn progress(&self) -> Option<Progress>;
    /// Records a progress report (the latest wins).
    fn report_progress(&self, progress: Progress);
    /// When the latest progress report came.
    fn last_report(&self) -> Option<tokio::time::Instant>;
    /// The task's stall timeout, if it has one.
    fn stall_timeout(&self) -> Option<Duration>;
    /// Records that the current attempt stalled.
    fn record_stall(&self, limit: Duration);

    // Rate limits (`crate::limit`): read by a claim only once the cluster
    // has a limiter, and by a failed attempt.

    /// The limiters the task names, if any.
    fn limits(&self) -> Option<&TaskLimits>;

    /// The task's key and the cost it takes of its key's limit
    /// (`crate::keys`). Called only once a cluster has seen a key.
    fn key(&self) -> Option<(&Arc<str>, u32)> {
        None
    }
}

/// The user's typed view of the outcome, behind a [`TaskHandle`](crate::TaskHandle).
pub(crate) trait OutcomeSlot<T, E>: Send + Sync {
    fn task_id(&self) -> TaskId;
    /// Panics if the handle already resolved (the future contract).
    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome<T, E>>>;
    fn drop_handle(&self);
    /// Takes back the retained outcome lent by [`Job::subscribe`], after
    /// serving (unlocked) the subscribers that came while it was out.
    fn give_back(&self, outcome: Outcome<T, E>);
    /// `true` for a handle that joined another submit's task (`crate::dedup`).
    fn deduplicated(&self) -> bool {
        false
    }
    /// The task's latest progress report.
    fn progress(&self) -> Option<Progress>;
    /// Takes the task's attempt history (once the outcome is read).
    fn take_history(&self) -> History<E>;
}

/// A typed subscription request, passed through [`Job::subscribe`] as `dyn Any`.
pub(crate) struct SubscribeRequest<T, E> {
    pub(crate) cloner: Cloner<T, E>,
    /// What the cell answered: a receiver for the outcome to come, or the
    /// retained outcome itself, lent out so that the caller copies it once
    /// every lock is released (`Clone` is user code) and then gives it back.
    pub(crate) answer: Option<Answer<T, E>>,
    /// A completion hook to call with the outcome as well (a joining batch
    /// member's, `crate::dedup`). Taken by a task still to finish; left
    /// here if the answer is `Lent` (the caller calls it with its copy) or
    /// `Gone`.
    pub(crate) hook: Option<crate::cell::Settled<T, E>>,
}

/// A cell's answer to a subscriber (see [`SubscribeRequest`]).
pub(crate) enum Answer<T, E> {
    Pending(oneshot::Receiver<Outcome<T, E>>),
    /// The retained outcome, lent out: copy it, then hand it to
    /// [`OutcomeSlot::give_back`] of the cell that lent it.
    Lent(Outcome<T, E>, Arc<dyn OutcomeSlot<T, E>>),
    /// Finished and not retained (an expired or uncacheable outcome that
    /// the registry has not forgotten yet).
    Gone,
}
