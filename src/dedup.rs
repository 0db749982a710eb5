//! Deduplication: a submit whose id is taken can join the task that holds
//! it ([`Duplicate::Join`]) instead of failing, and a finished task can keep
//! its id taken for a while ([`TaskBuilder::dedup_window`](crate::TaskBuilder::dedup_window)).
//!
//! Decisions:
//! - The submitter of the duplicate chooses ([`TaskBuilder::on_duplicate`](crate::TaskBuilder::on_duplicate));
//!   the task that holds the id chooses how long it holds it after it
//!   finished (its window). Without a window an id is free again as soon as
//!   its task finished (the spec's reuse rule).
//! - A window keeps the outcome too: the task is retained for at least the
//!   window, so a submit that joins a finished task within its window gets
//!   a copy of the very outcome the task's own handle got. After the window
//!   (a longer retention may still keep the outcome for subscribers) the id
//!   is free: a submit replaces the cached outcome as usual.
//! - Whether the id is taken, and the joining subscription, are decided in
//!   one section of the engine's lock, the same one that decides whether a
//!   task finished. So a join racing the first task's completion gets one
//!   coherent answer: it joins (and then gets the real outcome, as any
//!   subscriber), or the task is gone and the submit queues a fresh task.
//! - A joined handle is a subscriber: it needs `T: Clone` and `E: Clone`,
//!   and its types must be the existing task's
//!   ([`SubmitError::TypeMismatch`] otherwise). The joining submit's own
//!   body and options are dropped unused, except a batch member's hook,
//!   which the joined task calls with its outcome, as it serves its
//!   subscribers.
//!
//! Cost: nothing for a task that does not use it. The window lives in the
//! task's boxed `Extras`, is read only when a submit finds a finished task
//! holding the same id, and set only when a retained task finishes.

use std::any::type_name;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::cell::{call_settled, copy_for_subscriber, Settled};
use crate::clock::duration_ticks;
use crate::engine::{Engine, Phase};
use crate::error::SubmitError;
use crate::history::History;
use crate::job::{Answer, Cloner, Job, Outcome, OutcomeSlot, SubscribeRequest};
use crate::panic::drop_guarded;
use crate::progress::Progress;
use crate::task::TaskId;

/// What a submit does when its id is already taken (a task with that id is
/// pending, running, or finished within its
/// [`dedup_window`](crate::TaskBuilder::dedup_window)).
///
/// # Default
/// [`Duplicate::Reject`].
///
/// ```
/// use std::time::Duration;
/// use corral::{Cluster, Duplicate, SubmitError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let first = cluster
///     .task(|_ctx| async { Ok::<_, String>("report") })
///     .id("nightly")
///     .delay(Duration::from_millis(10))
///     .submit()
///     .unwrap();
/// // The default: a second "nightly" is refused.
/// let again = cluster.task(|_ctx| async { Ok::<_, String>("other") }).id("nightly").submit();
/// assert!(matches!(again, Err(SubmitError::DuplicateId(_))));
/// // Joining: a handle to the task already there.
/// let joined = cluster
///     .task(|_ctx| async { Ok::<_, String>("other") })
///     .id("nightly")
///     .on_duplicate(Duplicate::Join)
///     .submit()
///     .unwrap();
/// assert!(joined.deduplicated());
/// assert!(!first.deduplicated());
/// assert_eq!(joined.await, Ok("report")); // the first task's outcome
/// assert_eq!(first.await, Ok("report"));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Duplicate {
    /// Refuse the submit with [`SubmitError::DuplicateId`].
    #[default]
    Reject,
    /// Return a handle to the task that holds the id (its
    /// [`deduplicated`](crate::TaskHandle::deduplicated) is `true`); this
    /// submit's body and options are dropped unused. A
    /// [batch](crate::Batch) member that joins stays a member: it is
    /// counted with the joined task's outcome.
    Join,
}

/// A finished task's hold on its id (see the module docs).
pub(crate) struct Window {
    pub(crate) length: Duration,
    /// The engine tick until which the id stays taken; set when the task
    /// finishes (under the engine's lock), `i64::MIN` until then.
    until: AtomicI64,
}

impl Window {
    pub(crate) fn new(length: Duration) -> Self {
        Window {
            length,
            until: AtomicI64::new(i64::MIN),
        }
    }

    /// The task finished at tick `now`.
    pub(crate) fn start(&self, now: i64) {
        self.until
            .store(now.saturating_add(duration_ticks(self.length)), Relaxed);
    }

    /// Whether the id is still taken at tick `now`.
    pub(crate) fn holds(&self, now: i64) -> bool {
        now < self.until.load(Relaxed)
    }
}

/// Submits a task that joins a duplicate: under one lock section, joins the
/// task holding `name` if there is one, else admits `admit`'s task.
/// `admit` runs under the engine's lock (it is the plain submit). `hook`,
/// the joining submit's completion hook (a batch member's), goes to the
/// task it joins: called with that task's outcome, as this submit's.
pub(crate) fn join_or_submit<T, E, R>(
    core: &mut Engine,
    name: &Arc<str>,
    now: i64,
    cloner: Cloner<T, E>,
    hook: Option<Settled<T, E>>,
    admit: impl FnOnce(&mut Engine) -> Result<R, SubmitError>,
) -> Result<Joined<R, T, E>, SubmitError>
where
    T: Send + 'static,
    E: Send + 'static,
{
    // A stopping cluster refuses every submit, joining ones too (as the
    // plain submit does), before it looks at the id.
    if !matches!(core.phase, Phase::Idle | Phase::Running) {
        return Err(SubmitError::ShuttingDown);
    }
    let mut req = SubscribeRequest::<T, E> {
        cloner,
        answer: None,
        hook,
    };
    match core.join(name, now, &mut req) {
        Some((job, Ok(()))) => match req.answer {
            // The task took the hook, if any, with the subscription.
            Some(Answer::Pending(rx)) => Ok(Joined::Existing(job, JoinState::Waiting(rx), None)),
            Some(Answer::Lent(cached, cell)) => Ok(Joined::Existing(
                job,
                JoinState::Lent(cached, cell),
                req.hook,
            )),
            // Not reachable while the registry holds the task retained (the
            // cache lets go only after the registry forgot it); a fresh task
            // is then the coherent answer.
            Some(Answer::Gone) | None => admit(core).map(Joined::Fresh),
        },
        Some((_, Err(found))) => Err(SubmitError::TypeMismatch {
            id: TaskId::named(name.clone()),
            expected: type_name::<Result<T, E>>(),
            found,
        }),
        None => admit(core).map(Joined::Fresh),
    }
}

/// What [`join_or_submit`] did.
pub(crate) enum Joined<R, T, E> {
    /// Nothing held the id: the task was admitted as usual.
    Fresh(R),
    /// The task that holds the id, how its outcome comes, and the joining
    /// submit's hook if the task did not take it (a lent outcome: the
    /// caller calls it with its copy, see [`JoinedSlot::new`]).
    Existing(Arc<dyn Job>, JoinState<T, E>, Option<Settled<T, E>>),
}

/// How a joined handle gets its outcome: as a subscriber, or from the
/// cache (lent under the lock, copied here unlocked and given back).
pub(crate) enum JoinState<T, E> {
    Waiting(oneshot::Receiver<Outcome<T, E>>),
    Lent(Outcome<T, E>, Arc<dyn OutcomeSlot<T, E>>),
    Ready(Outcome<T, E>),
    Taken,
}

/// The slot behind a joined [`TaskHandle`](crate::TaskHandle): a
/// subscription to the existing task, plus that task for its id and progress.
pub(crate) struct JoinedSlot<T, E> {
    job: Arc<dyn Job>,
    state: Mutex<JoinState<T, E>>,
}

impl<T, E> JoinedSlot<T, E> {
    /// Builds the slot; called with no lock held, since copying a lent
    /// outcome is user code (`Clone`). `hook`: the joining submit's
    /// completion hook, which a finished task did not take: called here
    /// with the outcome.
    pub(crate) fn new(
        job: Arc<dyn Job>,
        state: JoinState<T, E>,
        cloner: Cloner<T, E>,
        hook: Option<Settled<T, E>>,
    ) -> Self {
        let state = match state {
            JoinState::Lent(cached, cell) => {
                let copy = copy_for_subscriber(cloner, &cached);
                cell.give_back(cached);
                // The last reference if the cache let go meanwhile.
                drop_guarded(cell, "a finished task");
                if let Some(hook) = hook {
                    call_settled(&hook, &job.id(), &copy);
                }
                JoinState::Ready(copy)
            }
            other => other,
        };
        JoinedSlot {
            job,
            state: Mutex::new(state),
        }
    }
}

impl<T, E> OutcomeSlot<T, E> for JoinedSlot<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    fn task_id(&self) -> TaskId {
        self.job.id()
    }

    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome<T, E>>> {
        let mut st = self.state.lock();
        match &mut *st {
            JoinState::Waiting(rx) => match std::pin::Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(r) => {
                    *st = JoinState::Taken;
                    // A sender dropped unanswered: the cluster was torn down.
                    Poll::Ready(Some(r.unwrap_or(Err(crate::TaskError::Shutdown))))
                }
            },
            JoinState::Ready(_) => match std::mem::replace(&mut *st, JoinState::Taken) {
                JoinState::Ready(outcome) => Poll::Ready(Some(outcome)),
                _ => unreachable!("matched above"),
            },
            JoinState::Lent(..) => Poll::Ready(None),
            JoinState::Taken => panic!("TaskHandle polled after it resolved"),
        }
    }

    fn drop_handle(&self) {
        // The outcome (user data) is dropped here, unlocked and guarded.
        let st = std::mem::replace(&mut *self.state.lock(), JoinState::Taken);
        drop_guarded(st, "an unread outcome");
    }

    fn give_back(&self, outcome: Outcome<T, E>) {
        // Never lent: a joined handle is not a cache.
        drop_guarded(outcome, "an outcome");
    }

    fn deduplicated(&self) -> bool {
        true
    }

    fn progress(&self) -> Option<Progress> {
        self.job.progress()
    }

    fn take_history(&self) -> History<E> {
        // The history goes to the task's own handle.
        History::not_recorded()
    }
}
