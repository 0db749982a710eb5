//! Batches: a group of tasks with callbacks when all have finished and on
//! the first failure, and an await for the whole group.
//!
//! Built on the per-task completion hook (`Extras::settled`, boxed with the
//! task's other rare options), so a task outside any batch pays nothing.
//!
//! Protocol:
//! 1. [`Batch::task`] counts a member when it makes the builder, before the
//!    task can possibly finish; the member's hook (or, if the builder is
//!    dropped or its submit refused, the hook's `Drop`) uncounts it, once.
//!    A member that joins another task (`Duplicate::Join`) hands its hook
//!    to that task, which calls it with its own outcome.
//! 2. The group's callbacks are decided under the batch's own mutex and
//!    run after it is released, under a panic guard: never under any lock.
//! 3. Nothing fires before [`Batch::seal`]; `seal` consumes the `Batch`,
//!    and every member builder borrows it, so no member can be added after
//!    the seal nor be still unsubmitted at it.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::body::{AsyncBody, BlockingBody};
use crate::builder::TaskBuilder;
use crate::cluster::Cluster;
use crate::error::TaskError;
use crate::panic::guard;
use crate::task::{TaskContext, TaskId};

/// How a task ended, without its value or error: what a [`BatchSummary`]
/// counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// `Ok(value)`.
    Succeeded,
    /// [`TaskError::Failed`]: the body's own error.
    Failed,
    /// [`TaskError::Panicked`].
    Panicked,
    /// [`TaskError::TimedOut`].
    TimedOut,
    /// [`TaskError::Stalled`].
    Stalled,
    /// [`TaskError::Cancelled`].
    Cancelled,
    /// [`TaskError::Shutdown`].
    Shutdown,
    /// [`TaskError::Dependency`]: a task it depended on did not succeed.
    Dependency,
    /// [`TaskError::Skipped`]: skipped by its dependency policy. It did not
    /// succeed, so it counts among the failures.
    Skipped,
    /// [`TaskError::Dropped`]: dropped from a full queue.
    Dropped,
}

impl OutcomeKind {
    /// The kind of an outcome.
    ///
    /// ```
    /// use corral::{OutcomeKind, TaskError};
    /// assert_eq!(OutcomeKind::of(&Ok::<u8, TaskError<()>>(1)), OutcomeKind::Succeeded);
    /// assert_eq!(OutcomeKind::of(&Err::<u8, _>(TaskError::<()>::Cancelled)), OutcomeKind::Cancelled);
    /// ```
    pub fn of<T, E>(outcome: &Result<T, TaskError<E>>) -> Self {
        match outcome {
            Ok(_) => OutcomeKind::Succeeded,
            Err(TaskError::Failed(_)) => OutcomeKind::Failed,
            Err(TaskError::Panicked { .. }) => OutcomeKind::Panicked,
            Err(TaskError::TimedOut { .. }) => OutcomeKind::TimedOut,
            Err(TaskError::Stalled { .. }) => OutcomeKind::Stalled,
            Err(TaskError::Cancelled) => OutcomeKind::Cancelled,
            Err(TaskError::Shutdown) => OutcomeKind::Shutdown,
            Err(TaskError::Dependency(_)) => OutcomeKind::Dependency,
            Err(TaskError::Skipped(_)) => OutcomeKind::Skipped,
            Err(TaskError::Dropped) => OutcomeKind::Dropped,
            Err(TaskError::Replaced) => OutcomeKind::Cancelled,
        }
    }

    /// `true` for every kind but [`Succeeded`](Self::Succeeded).
    pub fn is_failure(&self) -> bool {
        *self != OutcomeKind::Succeeded
    }
}

/// What the members of a batch came to: counts per [`OutcomeKind`] and the
/// ids of the members that did not succeed, in the order they finished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchSummary {
    /// Members that returned `Ok`.
    pub succeeded: usize,
    /// Members whose body returned its own error.
    pub failed: usize,
    /// Members whose body panicked.
    pub panicked: usize,
    /// Members whose last attempt timed out.
    pub timed_out: usize,
    /// Members whose last attempt stopped reporting progress.
    pub stalled: usize,
    /// Members cancelled by id.
    pub cancelled: usize,
    /// Members ended by a shutdown of the cluster.
    pub shutdown: usize,
    /// Members resolved by a parent that did not succeed.
    pub dependency: usize,
    /// Members skipped by their dependency policy.
    pub skipped: usize,
    /// Members dropped from a full queue ([`TaskError::Dropped`]).
    pub dropped: usize,
    /// Every member that did not succeed, with how it ended, in the order
    /// the members finished.
    pub failures: Vec<(TaskId, OutcomeKind)>,
}

impl BatchSummary {
    /// Members finished so far (all of them, once the batch is done).
    pub fn total(&self) -> usize {
        self.succeeded
            + self.failed
            + self.panicked
            + self.timed_out
            + self.stalled
            + self.cancelled
            + self.shutdown
            + self.dependency
            + self.skipped
            + self.dropped
    }

    /// `true` if no member failed (also for an empty batch).
    pub fn all_succeeded(&self) -> bool {
        self.failures.is_empty()
    }

    /// The count for one kind.
    pub fn count(&self, kind: OutcomeKind) -> usize {
        match kind {
            OutcomeKind::Succeeded => self.succeeded,
            OutcomeKind::Failed => self.failed,
            OutcomeKind::Panicked => self.panicked,
            OutcomeKind::TimedOut => self.timed_out,
            OutcomeKind::Stalled => self.stalled,
            OutcomeKind::Cancelled => self.cancelled,
            OutcomeKind::Shutdown => self.shutdown,
            OutcomeKind::Dependency => self.dependency,
            OutcomeKind::Skipped => self.skipped,
            OutcomeKind::Dropped => self.dropped,
        }
    }

    fn record(&mut self, id: &TaskId, kind: OutcomeKind) {
        match kind {
            OutcomeKind::Succeeded => self.succeeded += 1,
            OutcomeKind::Failed => self.failed += 1,
            OutcomeKind::Panicked => self.panicked += 1,
            OutcomeKind::TimedOut => self.timed_out += 1,
            OutcomeKind::Stalled => self.stalled += 1,
            OutcomeKind::Cancelled => self.cancelled += 1,
            OutcomeKind::Shutdown => self.shutdown += 1,
            OutcomeKind::Dependency => self.dependency += 1,
            OutcomeKind::Skipped => self.skipped += 1,
            OutcomeKind::Dropped => self.dropped += 1,
        }
        if kind.is_failure() {
            self.failures.push((id.clone(), kind));
        }
    }
}

type OnDone = Box<dyn FnOnce(&BatchSummary) + Send>;
type OnFirstFailure = Box<dyn FnOnce(&TaskId, OutcomeKind) + Send>;

struct State {
    /// Members counted and not yet finished (or uncounted).
    pending: usize,
    summary: BatchSummary,
    sealed: bool,
    /// The group's completion has been decided (its callback taken).
    done: bool,
    first_failure_reported: bool,
    on_done: Option<OnDone>,
    on_first_failure: Option<OnFirstFailure>,
}

/// Callbacks decided under the batch's mutex, to run after it is released.
#[derive(Default)]
#[must_use]
struct Fire {
    first_failure: Option<(OnFirstFailure, TaskId, OutcomeKind)>,
    done: Option<(Option<OnDone>, BatchSummary)>,
}

struct Inner {
    state: Mutex<State>,
    /// `Some(summary)` once the group is done; `wait` watches it.
    done_tx: watch::Sender<Option<BatchSummary>>,
}

impl Inner {
    /// Decides what fires now (protocol step 2); under the mutex.
    fn decide(st: &mut State) -> Fire {
        let mut fire = Fire::default();
        if !st.sealed {
            return fire;
        }
        if !st.first_failure_reported {
            if let Some((id, kind)) = st.summary.failures.first() {
                st.first_failure_reported = true;
                if let Some(cb) = st.on_first_failure.take() {
                    fire.first_failure = Some((cb, id.clone(), *kind));
                }
            }
        }
        if st.pending == 0 && !st.done {
            st.done = true;
            st.on_first_failure = None;
            fire.done = Some((st.on_done.take(), st.summary.clone()));
        }
        fire
    }

    /// Runs what `decide` chose, with no lock held.
    fn run(&self, fire: Fire) {
        if let Some((cb, id, kind)) = fire.first_failure {
            if let Err(msg) = guard(|| cb(&id, kind)) {
                tracing::error!(task = %id, panic = %msg, "a batch's on_first_failure callback panicked");
            }
        }
        if let Some((cb, summary)) = fire.done {
            if let Some(cb) = cb {
                if let Err(msg) = guard(|| cb(&summary)) {
                    tracing::error!(panic = %msg, "a batch's on_done callback panicked");
                }
            }
            // After the callback: whoever awaits the batch sees its effects.
            self.done_tx.send_replace(Some(summary));
        }
    }

    /// A member finished (`Some`) or will never run (`None`).
    fn settle(&self, finished: Option<(&TaskId, OutcomeKind)>) {
        let fire = {
            let mut st = self.state.lock();
            st.pending -= 1;
            if let Some((id, kind)) = finished {
                st.summary.record(id, kind);
            }
            Self::decide(&mut st)
        };
        self.run(fire);
    }
}

/// One member's share of the batch, held by its completion hook: settles
/// the member once, at its outcome, or when dropped unrun (protocol step 1).
struct Member {
    inner: Arc<Inner>,
    settled: AtomicBool,
}

impl Member {
    fn finish(&self, id: &TaskId, kind: OutcomeKind) {
        if !self.settled.swap(true, Relaxed) {
            self.inner.settle(Some((id, kind)));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            self.inner.settle(None);
        }
    }
}

/// A group of tasks, open for new members until [`seal`](Self::seal)ed.
/// Made by [`Cluster::batch`].
///
/// Members are ordinary tasks (made by [`task`](Self::task) or
/// [`blocking_task`](Self::blocking_task), with every option and their own
/// handles); the batch only watches their outcomes. Its callbacks fire only
/// once it is sealed, each exactly once, on the thread that settles the last
/// member that decides them (or in `seal` if the members are already done),
/// after that member's own `on_complete`, with no lock held and under a
/// panic guard:
/// - [`on_first_failure`](Self::on_first_failure): with the first member
///   that did not succeed (if one failed while the batch was open, at the
///   seal); never if all succeed.
/// - [`on_done`](Self::on_done): with the [`BatchSummary`] when every member
///   has finished; an empty batch is done at its seal.
///
/// A member builder that is dropped, or whose submit is refused, is no
/// member. A member whose submit joins the task already holding its id
/// ([`Duplicate::Join`](crate::Duplicate::Join)) is counted with that
/// task's outcome, once that task has finished. Dropping an unsealed batch
/// seals it, so a forgotten `seal` still ends in the callbacks. Tasks
/// cannot join a sealed batch (`seal` consumes it).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use corral::{Cluster, OutcomeKind};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(2).unwrap();
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let (l1, l2) = (log.clone(), log.clone());
/// let batch = cluster
///     .batch()
///     .on_first_failure(move |id, kind| l1.lock().unwrap().push(format!("first failure: {id} {kind:?}")))
///     .on_done(move |summary| l2.lock().unwrap().push(format!("done: {} ok", summary.succeeded)));
/// for n in 0..3u32 {
///     batch
///         .task(move |_ctx| async move { if n == 1 { Err("odd") } else { Ok(n) } })
///         .id(format!("part-{n}"))
///         .submit()
///         .unwrap();
/// }
/// let sealed = batch.seal();
/// let summary = sealed.wait().await;
/// assert_eq!((summary.succeeded, summary.failed), (2, 1));
/// assert_eq!(summary.failures, [("part-1".into(), OutcomeKind::Failed)]);
/// assert_eq!(*log.lock().unwrap(), ["first failure: part-1 Failed", "done: 2 ok"]);
/// # }
/// ```
#[must_use = "a batch's callbacks fire only once it is sealed"]
pub struct Batch {
    cluster: Cluster,
    inner: Arc<Inner>,
}

impl Batch {
    pub(crate) fn new(cluster: Cluster) -> Self {
        let (done_tx, _) = watch::channel(None);
        Batch {
            cluster,
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    pending: 0,
                    summary: BatchSummary::default(),
                    sealed: false,
                    done: false,
                    first_failure_reported: false,
                    on_done: None,
                    on_first_failure: None,
                }),
                done_tx,
            }),
        }
    }

    /// Called once with the summary when the batch is sealed and every
    /// member has finished (at once for an empty batch). Replaces an
    /// earlier `on_done`.
    pub fn on_done(self, callback: impl FnOnce(&BatchSummary) + Send + 'static) -> Self {
        self.inner.state.lock().on_done = Some(Box::new(callback));
        self
    }

    /// Called once, with its id and kind, for the first member that did
    /// not succeed (failed, panicked, timed out, cancelled or shut down),
    /// as soon as it finishes once the batch is sealed; never if all
    /// succeed. Before `on_done` when both fire together. Replaces an
    /// earlier `on_first_failure`.
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let c = cluster.clone();
    /// // Fail fast: the first failure cancels the rest of the group.
    /// let batch = cluster.batch().on_first_failure(move |_id, _kind| {
    ///     c.cancel_task("slow");
    /// });
    /// batch.task(|_ctx| async { Err::<(), _>("broken") }).submit().unwrap();
    /// batch
    ///     .task(|_ctx| async {
    ///         tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    ///         Ok::<(), &str>(())
    ///     })
    ///     .id("slow")
    ///     .submit()
    ///     .unwrap();
    /// let summary = batch.seal().wait().await;
    /// assert_eq!((summary.failed, summary.cancelled), (1, 1));
    /// # }
    /// ```
    pub fn on_first_failure(
        self,
        callback: impl FnOnce(&TaskId, OutcomeKind) + Send + 'static,
    ) -> Self {
        self.inner.state.lock().on_first_failure = Some(Box::new(callback));
        self
    }

    /// A member hook; counts the member now (protocol step 1).
    fn member<T, E>(&self) -> impl Fn(&TaskId, &Result<T, TaskError<E>>) + Send + Sync + 'static {
        self.inner.state.lock().pending += 1;
        let member = Member {
            inner: self.inner.clone(),
            settled: AtomicBool::new(false),
        };
        move |id, outcome| member.finish(id, OutcomeKind::of(outcome))
    }

    /// Starts building a member task with an async body: as
    /// [`Cluster::task`], with every option; it joins the batch when
    /// submitted.
    pub fn task<F, Fut, T, E>(&self, body: F) -> TaskBuilder<'_, AsyncBody<F>, T, E>
    where
        F: Fn(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let hook = self.member();
        self.cluster.task(body).settled(hook)
    }

    /// Starts building a member task with a blocking body: as
    /// [`Cluster::blocking_task`]; it joins the batch when submitted.
    pub fn blocking_task<F, T, E>(&self, body: F) -> TaskBuilder<'_, BlockingBody<F>, T, E>
    where
        F: Fn(TaskContext) -> Result<T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let hook = self.member();
        self.cluster.blocking_task(body).settled(hook)
    }

    /// What the members that finished so far came to (the batch stays open).
    pub fn summary(&self) -> BatchSummary {
        self.inner.state.lock().summary.clone()
    }

    /// Closes the group: no member can join any more, and the callbacks
    /// may fire (here, if every member has already finished or there is
    /// none). Returns the handle to await the group.
    pub fn seal(self) -> SealedBatch {
        self.seal_now();
        SealedBatch {
            inner: self.inner.clone(),
        }
    }

    fn seal_now(&self) {
        let fire = {
            let mut st = self.inner.state.lock();
            if st.sealed {
                return;
            }
            st.sealed = true;
            Inner::decide(&mut st)
        };
        self.inner.run(fire);
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.seal_now();
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("Batch")
            .field("pending", &st.pending)
            .field("summary", &st.summary)
            .finish_non_exhaustive()
    }
}

/// A sealed [`Batch`]: await the whole group with [`wait`](Self::wait).
/// Dropping it changes nothing (the callbacks still fire).
#[derive(Clone)]
pub struct SealedBatch {
    inner: Arc<Inner>,
}

impl SealedBatch {
    /// Resolves with the summary once every member has finished (at once
    /// for an empty batch), after `on_done` has run. Any number of waits,
    /// at any time; each gets a copy. Cancel safe.
    pub async fn wait(&self) -> BatchSummary {
        let mut rx = self.inner.done_tx.subscribe();
        let done = rx.wait_for(Option::is_some).await;
        // The sender lives in `inner`, which `self` holds: never closed.
        match done {
            Ok(summary) => summary.clone().unwrap_or_default(),
            Err(_) => self.summary(),
        }
    }

    /// `true` once every member has finished.
    pub fn is_done(&self) -> bool {
        self.inner.state.lock().done
    }

    /// What the members that finished so far came to.
    pub fn summary(&self) -> BatchSummary {
        self.inner.state.lock().summary.clone()
    }
}

impl fmt::Debug for SealedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("SealedBatch")
            .field("pending", &st.pending)
            .field("done", &st.done)
            .field("summary", &st.summary)
            .finish()
    }
}
