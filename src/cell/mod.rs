//! The task cell: the one allocation that holds a task's body, its options,
//! its interruption signal and its outcome slot, and implements both views
//! of it ([`Job`] for the engine, [`OutcomeSlot`] for the handle).
//!
//! Invariants:
//! 1. Only the worker that owns the running attempt touches the pending
//!    attempt result (`CellState::result` while `done` is false) and the
//!    body while it starts an attempt (lent out of the lock meanwhile).
//! 2. `complete` runs once per task, after the task has left the cluster's
//!    registry (or been marked retained there), and never under the
//!    cluster's lock: it runs user callbacks and drops the body (what it
//!    captured lives until then), and either may call back into the cluster.
//! 3. No user code runs while `state` is locked, and every piece of it runs
//!    under a panic guard (`crate::panic`), without exception. The places:
//!    - the body, called per attempt ([`Job::start_attempt`]), and the
//!      future it returns, polled and dropped by the worker;
//!    - the `retry_with` function (or `retry_if` predicate) and the backoff
//!      strategy ([`Job::retry_delay`]), with the pending error lent out;
//!    - `on_failure` and `on_complete`, in [`Job::complete`], and after
//!      them a crate feature's completion hook (`Extras::settled`, a
//!      batch's: `crate::batch`);
//!    - `Clone` of the outcome: for the cache and for subscribers in
//!      `complete`, and for a late subscriber (or a submit that joins a
//!      finished task, `crate::dedup`) by the subscriber itself, on
//!      the retained outcome lent out of the lock (`Answer::Lent`; whoever
//!      borrows it serves the subscribers that come meanwhile, then gives
//!      it back);
//!    - `Drop` of the body and what it captured (at completion), of an
//!      attempt's result that a retry, a timeout, a stall, a cancel or a
//!      shutdown replaces (or of the attempt history that keeps it), of an
//!      outcome nobody will read, of an expired cached
//!      outcome, and of everything the cell holds when its last reference
//!      goes (`impl Drop for TaskCell`), wherever that happens.
//!
//!    So user code may call back into the cluster (`stats`, `subscribe`,
//!    `cancel_task`, `submit`, `cancel`, `stop`), on its own id or others.
//! 4. The cache may let go of a task (its retention passed, or its id was
//!    reused) between the registry's finalize and the delivery; it then
//!    only sets `expired`, and `complete` delivers the decided outcome
//!    without retaining it. Nothing that expires changes an outcome.
//!
//! This file holds the cell and its attempts; `outcome` holds how the final
//! outcome reaches the handle, the subscribers, the callbacks and the cache.

use std::any::{Any, TypeId};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

mod outcome;

pub(crate) use self::outcome::{call_settled, copy_for_subscriber};

use crate::backoff::{jittered, Backoff, RetryDecision};
use crate::body::Body;
use crate::builder::RetryMode;
use crate::dedup::Window;
use crate::deps::After;
use crate::error::{DependencyCause, DependencyError, TaskError};
use crate::history::History;
use crate::job::{AttemptBox, AttemptStatus, Cloner, Forced, Job, Outcome, OutcomeSlot, Policy};
use crate::limit::TaskLimits;
use crate::panic::{drop_guarded, guard};
use crate::progress::{Progress, Reports};
use crate::signal::{CancelReason, Signal};
use crate::task::{TaskContext, TaskId};

/// `retry_with`'s function, or `retry_if`'s predicate wrapped as one.
pub(crate) type RetryWith<E> = Box<dyn Fn(&TaskError<E>, u32) -> RetryDecision + Send + Sync>;
pub(crate) type OnFailure<E> = Box<dyn Fn(&TaskId, &TaskError<E>) + Send + Sync>;
pub(crate) type OnComplete<T, E> = Box<dyn Fn(&TaskId, &Outcome<T, E>) + Send + Sync>;
/// A crate feature's completion hook (a batch member's, `crate::batch`).
/// Shared, not boxed: a submit that joins another task
/// ([`Duplicate::Join`](crate::Duplicate::Join)) hands its hook to that
/// task, whose outcome is then this member's.
pub(crate) type Settled<T, E> = Arc<dyn Fn(&TaskId, &Outcome<T, E>) + Send + Sync>;

/// Options most tasks do not use, boxed so that a plain task stays small.
pub(crate) struct Extras<T, E> {
    /// The user-given id; generated ids need no storage beyond `seq` and
    /// `slot`, and a task with no other option keeps its id in its cell
    /// instead ([`NameOnly`]).
    pub(crate) name: Option<Arc<str>>,
    /// `Some` when the outcome is cached after completion.
    pub(crate) retention: Option<Duration>,
    pub(crate) backoff: Option<Box<dyn Backoff>>,
    pub(crate) jitter: f64,
    pub(crate) retry_with: Option<RetryWith<E>>,
    pub(crate) on_failure: Option<OnFailure<E>>,
    pub(crate) on_complete: Option<OnComplete<T, E>>,
    /// A crate feature's completion hook (a batch's, `crate::batch`), run
    /// after the user's callbacks, with the same guard and rules.
    pub(crate) settled: Option<Settled<T, E>>,
    /// The task's parents (`crate::deps`).
    pub(crate) parents: Vec<After>,
    /// How long the id stays taken after the task finished (`crate::dedup`).
    pub(crate) window: Option<Window>,
    /// A submit that finds its id taken joins the task holding it, and
    /// copies its outcome with this. Read at submit only.
    pub(crate) join: Option<Cloner<T, E>>,
    /// Each attempt must report progress within this (`crate::progress`).
    pub(crate) stall: Option<Duration>,
    /// Keep the attempt count and earlier errors (`crate::history`). Read
    /// at submit only (it makes the history in `Rare`).
    pub(crate) history: bool,
    /// The rate limiters the task names (`crate::limit`).
    pub(crate) limits: Option<Box<TaskLimits>>,
    /// The task's key, its cost and its full-key policy (`crate::keys`).
    pub(crate) key: Option<crate::keys::KeyOptions>,
}

impl<T, E> Default for Extras<T, E> {
    fn default() -> Self {
        Extras {
            name: None,
            retention: None,
            backoff: None,
            jitter: 0.0,
            retry_with: None,
            on_failure: None,
            on_complete: None,
            settled: None,
            parents: Vec::new(),
            window: None,
            join: None,
            stall: None,
            history: false,
            limits: None,
            key: None,
        }
    }
}

/// How a cell keeps its user id and its boxed options: a type parameter of
/// the cell, so that a task whose only option is its id holds the id in
/// place ([`NameOnly`]) instead of in a boxed [`Extras`], while every other
/// task keeps one pointer for both ([`Boxed`]). A plain task's cell stays
/// as small as it was (`size_of_a_small_cell`); a task with only an id
/// allocates and frees one block less (the `Extras` box: a cancel by name
/// frees it, W6, `bench/README.md#w6-cancel-by-id`).
pub(crate) trait Options<T, E> {
    /// The boxed options, if the task has any.
    fn extras(&self) -> Option<&Extras<T, E>>;
    /// The user-given id, if any.
    fn name(&self) -> Option<&Arc<str>>;
    /// The boxed options, taken to be dropped (user code: callbacks,
    /// predicates, strategies).
    fn take_extras(&mut self) -> Option<Box<Extras<T, E>>>;
}

/// The options of any task: none, or boxed with the id among them.
pub(crate) type Boxed<T, E> = Option<Box<Extras<T, E>>>;

impl<T, E> Options<T, E> for Boxed<T, E> {
    #[inline]
    fn extras(&self) -> Option<&Extras<T, E>> {
        self.as_deref()
    }

    #[inline]
    fn name(&self) -> Option<&Arc<str>> {
        self.as_deref().and_then(|x| x.name.as_ref())
    }

    fn take_extras(&mut self) -> Option<Box<Extras<T, E>>> {
        self.take()
    }
}

/// A task whose only option is its user-given id (its cell is 16 bytes
/// larger than a plain task's, and it has no `Extras`).
pub(crate) struct NameOnly(pub(crate) Arc<str>);

impl<T, E> Options<T, E> for NameOnly {
    #[inline]
    fn extras(&self) -> Option<&Extras<T, E>> {
        None
    }

    #[inline]
    fn name(&self) -> Option<&Arc<str>> {
        Some(&self.0)
    }

    fn take_extras(&mut self) -> Option<Box<Extras<T, E>>> {
        None
    }
}

struct CellState<B, T, E> {
    /// `None` while an attempt is being started (user code, run unlocked)
    /// and once released: at completion, or after the last attempt started
    /// if dropping it runs nothing.
    body: Option<B>,
    /// Before `done`: the last attempt's result. After: the handle's copy of
    /// the final outcome, until the handle reads it or is dropped (the
    /// cache has a copy of its own, in `Rare::cached`).
    result: Option<Outcome<T, E>>,
    done: bool,
    /// The cache let go of the task (its retention passed, or its id was
    /// reused). It may do so between the registry's finalize and the
    /// delivery: then the outcome is delivered, just not retained.
    expired: bool,
    handle_gone: bool,
    handle_waker: Option<Waker>,
    /// What most tasks never need, boxed on first use so a plain task stays small.
    rare: Option<Box<Rare<T, E>>>,
}

struct Rare<T, E> {
    /// Copies the outcome for readers besides the handle. Set by the first
    /// subscriber or by `cacheable`, whose bounds guarantee `Clone`.
    cloner: Option<Cloner<T, E>>,
    subscribers: Vec<oneshot::Sender<Outcome<T, E>>>,
    /// Completion hooks of submits that joined this task (a batch member's,
    /// see [`Settled`]), called with the outcome where subscribers get theirs.
    hooks: Vec<Settled<T, E>>,
    /// The current attempt's cancellation token, made when the body asks.
    token: Option<CancellationToken>,
    /// The retained outcome. A late subscriber borrows it out of the lock
    /// to copy it (`lent`); subscribers that come meanwhile queue in
    /// `subscribers`, and the borrower serves them before giving it back.
    /// (Sharing it instead would need `T: Sync`.)
    cached: Option<Outcome<T, E>>,
    lent: bool,
    /// How the retained outcome ended, for dependents submitted later
    /// (`Job::outcome_cause`) while the cached copy is lent out.
    final_cause: Option<Option<DependencyCause>>,
    /// Progress and history, boxed again: most users of `Rare` (subscribers,
    /// the cache) never need them, and `Rare`'s drop stays small.
    observed: Option<Box<Observed<E>>>,
}

struct Observed<E> {
    /// The latest progress report (`crate::progress`).
    reports: Reports,
    /// Set at submit for a task that keeps its history (`crate::history`).
    history: Option<History<E>>,
}

impl<T, E> Rare<T, E> {
    fn observed(&mut self) -> &mut Observed<E> {
        self.observed.get_or_insert_with(|| {
            Box::new(Observed {
                reports: Reports::default(),
                history: None,
            })
        })
    }

    fn boxed(cloner: Option<Cloner<T, E>>) -> Box<Self> {
        Box::new(Rare {
            cloner,
            subscribers: Vec::new(),
            hooks: Vec::new(),
            token: None,
            cached: None,
            lent: false,
            final_cause: None,
            observed: None,
        })
    }

    /// Adds a subscriber. Subscriptions dropped before the outcome came
    /// are pruned whenever the list would grow, so it stays within twice
    /// the live subscribers however many come and go.
    fn add_subscriber(&mut self, tx: oneshot::Sender<Outcome<T, E>>) {
        if self.subscribers.len() == self.subscribers.capacity() {
            self.subscribers.retain(|tx| !tx.is_closed());
            let live = self.subscribers.len();
            if self.subscribers.capacity() > 8 && live < self.subscribers.capacity() / 4 {
                self.subscribers.shrink_to(live * 2);
            }
        }
        self.subscribers.push(tx);
    }
}

impl<B, T, E> CellState<B, T, E> {
    fn rare(&mut self) -> &mut Rare<T, E> {
        self.rare.get_or_insert_with(|| Rare::boxed(None))
    }

    fn cloner(&self) -> Option<Cloner<T, E>> {
        self.rare.as_ref().and_then(|r| r.cloner)
    }

    /// Keeps a replaced attempt result in the history if the task keeps
    /// one and it is an error; otherwise gives it back to be dropped
    /// (unlocked: it is user data).
    fn keep_in_history(&mut self, old: Outcome<T, E>) -> Option<Outcome<T, E>> {
        let history = self
            .rare
            .as_deref_mut()
            .and_then(|r| r.observed.as_deref_mut())
            .and_then(|o| o.history.as_mut());
        match (history, old) {
            (Some(h), Err(err)) => {
                h.push(err);
                None
            }
            (_, old) => Some(old),
        }
    }
}

/// See the module docs. `O` keeps the user id and the boxed options
/// ([`Options`]).
pub(crate) struct TaskCell<B, T, E, O: Options<T, E> = Boxed<T, E>> {
    /// The id is assembled from these and the user id (`O::name`): the cell is
    /// allocated before the cluster's lock is taken (to keep the allocation
    /// out of it), and the sequence number and slot are only known under it.
    /// They are written once, under that lock, before any other thread can
    /// see the cell.
    seq: AtomicU64,
    slot: AtomicU32,
    // The policy's fields sit flat so that the compiler packs the small
    // ones together: a cell with an 8-byte body is 120 bytes (a 136-byte
    // allocation with the `Arc` counts), which `size_of_a_small_cell` checks.
    timeout_ns: u64,
    retries: u32,
    priority: i32,
    mode: RetryMode,
    blocking: bool,
    signal: Signal,
    /// The handle has taken its outcome: it may be polled no more, and its
    /// drop needs no lock. Set under `state`'s lock; read by the handle's
    /// owner (a handle that moves between threads is synchronised by the
    /// move) and by `release`, under the lock.
    handle_resolved: AtomicBool,
    opts: O,
    state: Mutex<CellState<B, T, E>>,
}

impl<B, T, E> TaskCell<B, T, E> {
    pub(crate) fn new(
        body: B,
        policy: Policy,
        priority: i32,
        extras: Option<Box<Extras<T, E>>>,
        cloner: Option<Cloner<T, E>>,
    ) -> Self {
        TaskCell::with_options(body, policy, priority, extras, cloner)
    }
}

impl<B, T, E> TaskCell<B, T, E, NameOnly> {
    /// A task whose only option is its id `name` (see [`NameOnly`]).
    pub(crate) fn named(
        body: B,
        policy: Policy,
        priority: i32,
        name: Arc<str>,
        cloner: Option<Cloner<T, E>>,
    ) -> Self {
        TaskCell::with_options(body, policy, priority, NameOnly(name), cloner)
    }
}

impl<B, T, E, O: Options<T, E>> TaskCell<B, T, E, O> {
    fn with_options(
        body: B,
        policy: Policy,
        priority: i32,
        opts: O,
        cloner: Option<Cloner<T, E>>,
    ) -> Self {
        TaskCell {
            seq: AtomicU64::new(0),
            slot: AtomicU32::new(u32::MAX),
            timeout_ns: policy.timeout_ns,
            retries: policy.retries,
            priority,
            mode: policy.mode,
            blocking: policy.blocking,
            signal: Signal::default(),
            handle_resolved: AtomicBool::new(false),
            opts,
            state: Mutex::new(CellState {
                body: Some(body),
                result: None,
                done: false,
                expired: false,
                handle_gone: false,
                handle_waker: None,
                rare: cloner.map(|cloner| Rare::boxed(Some(cloner))),
            }),
        }
    }

    /// Makes the task keep its attempt history (`crate::history`); called
    /// at submit, before the cell is shared (after it is allocated: the
    /// plain path builds the cell in place).
    #[cold]
    pub(crate) fn keep_history(&self) {
        self.state.lock().rare().observed().history = Some(History::recorded());
    }

    pub(crate) fn keeps_history(&self) -> bool {
        self.opts.extras().is_some_and(|x| x.history)
    }

    /// The task's key options, if it has a key (`crate::keys`).
    pub(crate) fn key_options(&self) -> Option<&crate::keys::KeyOptions> {
        self.opts.extras()?.key.as_ref()
    }

    /// For a named task that joins duplicates: how to copy the outcome, and the id.
    pub(crate) fn joiner(&self) -> Option<(Cloner<T, E>, &Arc<str>)> {
        let x = self.opts.extras()?;
        Some((x.join?, x.name.as_ref()?))
    }

    /// The crate's completion hook, for a submit that joins another task
    /// and hands the hook to it (`crate::dedup`).
    pub(crate) fn settled_hook(&self) -> Option<Settled<T, E>> {
        self.opts.extras()?.settled.clone()
    }

    /// Drops the result of an earlier attempt that a later one replaced, or
    /// keeps it in the history (invariant 1: only this worker touches it).
    #[cold]
    fn retire(&self, old: Outcome<T, E>) {
        let old = if self.keeps_history() {
            self.state.lock().keep_in_history(old)
        } else {
            Some(old)
        };
        if let Some(old) = old {
            drop_guarded(old, "a previous attempt's error");
        }
    }

    fn user_id(&self) -> Option<&Arc<str>> {
        self.opts.name()
    }

    /// Records the sequence number and registry slot picked at submit.
    pub(crate) fn assign(&self, seq: u64, slot: u32) {
        self.seq.store(seq, Relaxed);
        self.slot.store(slot, Relaxed);
    }

    /// The task's id (cheap: a copy, or a reference count for a user id).
    fn id(&self) -> TaskId {
        match self.user_id() {
            Some(name) => TaskId::named(name.clone()),
            None => TaskId::generated(self.seq.load(Relaxed), self.slot.load(Relaxed)),
        }
    }

    fn store_attempt(&self, outcome: Outcome<T, E>) {
        // A raised signal means the worker has already decided this attempt's
        // fate (a blocking body finishing after its timeout or cancel).
        if self.signal.reason().is_none() {
            let old = self.state.lock().result.replace(outcome);
            if let Some(old) = old {
                self.retire(old);
            }
        } else {
            drop_guarded(
                outcome,
                "an attempt's result overridden by a cancel or shutdown",
            );
        }
    }
}

impl<B, T, E, O: Options<T, E>> TaskCell<B, T, E, O> {
    /// Records a failed attempt's error that the worker decided (a timeout
    /// or a stall), replacing what the attempt stored, if anything.
    fn record_failure(&self, err: TaskError<E>) {
        let old = self.state.lock().result.replace(Err(err));
        if let Some(old) = old {
            self.retire(old);
        }
    }

    fn latest_progress(&self) -> Option<Progress> {
        self.state
            .lock()
            .rare
            .as_ref()
            .and_then(|r| r.observed.as_ref())
            .and_then(|o| o.reports.latest.clone())
    }
}

pin_project! {
    /// An attempt's future: the body's, then its result stored in the cell
    /// ([`Job::start_attempt`]). Written by hand rather than as an `async`
    /// block, which would hold the body's future twice (captured, then
    /// moved to be awaited): the attempt is copied into the worker's box
    /// (`AttemptBox`), and a smaller one copies faster.
    struct Attempt<B, T, E, O: Options<T, E>, F> {
        // `None` once the result is stored: a finished attempt holds
        // nothing (see `AttemptBox`), the body's future included.
        cell: Option<Arc<TaskCell<B, T, E, O>>>,
        #[pin]
        body: F,
    }
}

impl<B, T, E, O: Options<T, E>, F> Future for Attempt<B, T, E, O, F>
where
    F: Future<Output = Result<Result<T, E>, String>>,
{
    type Output = AttemptStatus;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AttemptStatus> {
        let this = self.project();
        let outcome = match ready!(this.body.poll(cx)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(TaskError::Failed(e)),
            Err(message) => Err(TaskError::Panicked { message }),
        };
        let status = if outcome.is_ok() {
            AttemptStatus::Succeeded
        } else {
            AttemptStatus::Failed
        };
        match this.cell.take() {
            Some(cell) => cell.store_attempt(outcome),
            // Unreachable: not polled after `Ready`.
            None => drop_guarded(outcome, "an attempt's result"),
        }
        Poll::Ready(status)
    }
}

impl<B, T, E, O: Options<T, E>> Drop for TaskCell<B, T, E, O> {
    /// What the user handed in (the body and its captures, callbacks,
    /// predicate, strategy) and what the task produced are user code when
    /// dropped; the last reference may go on any thread (a worker, the
    /// sweeper, a handle), so each drop is guarded. Never under an engine
    /// lock: engine invariant 4.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if std::mem::needs_drop::<B>() {
            if let Some(body) = st.body.take() {
                drop_guarded(body, "a task body");
            }
        }
        if std::mem::needs_drop::<Outcome<T, E>>() {
            if let Some(result) = st.result.take() {
                drop_guarded(result, "an unread outcome");
            }
        }
        if let Some(rare) = st.rare.take() {
            drop_guarded(rare, "a retained outcome");
        }
        if let Some(extras) = self.opts.take_extras() {
            drop_guarded(extras, "a task's callbacks, predicate or backoff");
        }
    }
}

impl<B, T, E, O> Job for TaskCell<B, T, E, O>
where
    O: Options<T, E> + Send + Sync + 'static,
    B: Body<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    fn name(&self) -> Option<&Arc<str>> {
        self.user_id()
    }

    fn policy(&self) -> Policy {
        Policy {
            timeout_ns: self.timeout_ns,
            retries: self.retries,
            mode: self.mode,
            blocking: self.blocking,
        }
    }

    fn seq(&self) -> u64 {
        self.seq.load(Relaxed)
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn retention(&self) -> Option<Duration> {
        self.opts.extras().and_then(|x| x.retention)
    }

    fn signal(&self) -> &Signal {
        &self.signal
    }

    fn raise(&self, reason: CancelReason) {
        if self.signal.raise(reason) {
            let token = self
                .state
                .lock()
                .rare
                .as_ref()
                .and_then(|r| r.token.clone());
            if let Some(t) = token {
                t.cancel();
            }
        }
    }

    fn token(&self) -> CancellationToken {
        let token = self
            .state
            .lock()
            .rare()
            .token
            .get_or_insert_with(CancellationToken::new)
            .clone();
        // `raise` sets the reason before it looks for a token, so a token
        // made after that look is cancelled here.
        if self.signal.reason().is_some() {
            token.cancel();
        }
        token
    }

    fn start_attempt(
        self: Arc<Self>,
        attempt: u32,
        deadline: Option<tokio::time::Instant>,
        into: &mut AttemptBox,
    ) {
        let reset = self.signal.reset_timeout();
        // Only the worker that claimed the task starts attempts, and the task
        // cannot complete meanwhile, so the body can be lent out of the lock
        // while it runs (user code).
        let body = {
            let mut st = self.state.lock();
            if let Some(rare) = st.rare.as_deref_mut() {
                if reset {
                    // The old token fired for the old attempt; this one gets a fresh one.
                    rare.token = None;
                }
                if let Some(h) = rare
                    .observed
                    .as_deref_mut()
                    .and_then(|o| o.history.as_mut())
                {
                    h.started(attempt);
                }
            }
            st.body.take()
        };
        let ctx = TaskContext::new(attempt, deadline, self.clone());
        let started = match &body {
            Some(body) => guard(|| body.start(ctx)),
            None => Err("the task body was already released".to_owned()),
        };
        // It goes back for a later attempt, and to be dropped at completion.
        // Not after the last attempt of a body without drop glue: nothing can
        // tell, and it saves a lock per task (W1, W7: `bench/README.md#workloads`).
        if attempt <= self.retries || std::mem::needs_drop::<B>() {
            self.state.lock().body = body;
        }
        match started {
            Ok(body) => into.set(Attempt {
                cell: Some(self),
                body,
            }),
            Err(message) => {
                // The attempt failed before it had a future: its result is stored now.
                self.store_attempt(Err(TaskError::Panicked { message }));
                into.set(std::future::ready(AttemptStatus::Failed));
            }
        }
    }

    fn record_timeout(&self, limit: Duration) {
        self.record_failure(TaskError::TimedOut { limit });
    }

    fn record_stall(&self, limit: Duration) {
        self.record_failure(TaskError::Stalled { limit });
    }

    fn id(&self) -> TaskId {
        TaskCell::id(self)
    }

    fn holds_id(&self, now: i64) -> bool {
        self.opts
            .extras()
            .and_then(|x| x.window.as_ref())
            .is_some_and(|w| w.holds(now))
    }

    fn start_window(&self, now: i64) {
        if let Some(w) = self.opts.extras().and_then(|x| x.window.as_ref()) {
            w.start(now);
        }
    }

    fn progress(&self) -> Option<Progress> {
        self.latest_progress()
    }

    fn report_progress(&self, progress: Progress) {
        let now = tokio::time::Instant::now();
        let old = {
            let mut st = self.state.lock();
            let reports = &mut st.rare().observed().reports;
            reports.at = Some(now);
            reports.latest.replace(progress)
        };
        // Its message may be the last reference to a large string: freed unlocked.
        drop(old);
    }

    fn last_report(&self) -> Option<tokio::time::Instant> {
        self.state
            .lock()
            .rare
            .as_ref()
            .and_then(|r| r.observed.as_ref())
            .and_then(|o| o.reports.at)
    }

    fn stall_timeout(&self) -> Option<Duration> {
        self.opts.extras().and_then(|x| x.stall)
    }

    fn retry_delay(&self, attempt: u32) -> Option<Duration> {
        let extras = self.opts.extras();
        let decision = match extras.and_then(|x| x.retry_with.as_ref()) {
            None => RetryDecision::Retry,
            Some(decide) => {
                // Invariant 1: only this worker touches the pending result, so
                // it can be lent out while the function (user code) runs unlocked.
                let pending = self.state.lock().result.take();
                let decision = match &pending {
                    Some(Err(err)) => guard(|| decide(err, attempt.saturating_add(1)))
                        .unwrap_or_else(|msg| {
                            tracing::error!(task = %self.id(), panic = %msg, "retry_if / retry_with panicked; not retrying");
                            RetryDecision::Stop
                        }),
                    _ => RetryDecision::Stop,
                };
                self.state.lock().result = pending;
                decision
            }
        };
        let delay = match decision {
            RetryDecision::Stop => return None,
            RetryDecision::RetryAfter(delay) => return Some(delay),
            RetryDecision::Retry => match extras.and_then(|x| x.backoff.as_ref()) {
                None => Duration::ZERO,
                Some(b) => match guard(|| b.delay(attempt)) {
                    Ok(d) => d,
                    Err(msg) => {
                        tracing::error!(task = %self.id(), panic = %msg, "backoff strategy panicked; not retrying");
                        return None;
                    }
                },
            },
        };
        Some(jittered(delay, extras.map_or(0.0, |x| x.jitter)))
    }

    fn complete(&self, forced: Option<Forced>, retain: bool) {
        self.deliver(forced, retain);
    }

    fn release(&self) {
        self.expire();
    }

    fn subscribe(self: Arc<Self>, req: &mut dyn Any) -> Result<(), &'static str> {
        self.subscribe_or_lend(req)
    }

    fn assign(&self, seq: u64, slot: u32) {
        TaskCell::assign(self, seq, slot);
    }

    fn result_type(&self) -> (TypeId, &'static str) {
        (
            TypeId::of::<Outcome<T, E>>(),
            std::any::type_name::<Result<T, E>>(),
        )
    }

    fn outcome_cause(&self) -> Option<DependencyCause> {
        let cause = |o: &Outcome<T, E>| o.as_ref().err().map(TaskError::cause);
        let st = self.state.lock();
        if let Some(r) = &st.result {
            return cause(r);
        }
        match st.rare.as_deref() {
            Some(Rare {
                final_cause: Some(c),
                ..
            }) => *c,
            Some(Rare {
                cached: Some(c), ..
            }) => cause(c),
            // Unreachable by construction: a finished task read here is
            // retained, and its cause recorded.
            _ => Some(DependencyCause::Shutdown),
        }
    }

    fn impose(&self, parent: TaskId, cause: DependencyCause, skipped: bool) {
        let err = DependencyError::new(parent, cause);
        let err = if skipped { err.skipped() } else { err.into() };
        // A task that never ran has no result to replace (so nothing of the
        // user's is dropped here, under the engine's lock).
        let old = self.state.lock().result.replace(Err(err));
        if let Some(old) = old {
            drop_guarded(old, "a result replaced by a dependency's failure");
        }
    }

    fn parents(&self) -> &[After] {
        self.opts.extras().map_or(&[], |x| &x.parents)
    }

    fn limits(&self) -> Option<&TaskLimits> {
        self.opts.extras()?.limits.as_deref()
    }

    fn key(&self) -> Option<(&Arc<str>, u32)> {
        let k = self.opts.extras()?.key.as_ref()?;
        Some((k.key.as_ref()?, k.cost))
    }
}

impl<B, T, E, O> OutcomeSlot<T, E> for TaskCell<B, T, E, O>
where
    O: Options<T, E> + Send + Sync + 'static,
    B: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn task_id(&self) -> TaskId {
        self.id()
    }

    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome<T, E>>> {
        self.poll_handle(cx)
    }

    fn drop_handle(&self) {
        self.handle_dropped();
    }

    fn give_back(&self, outcome: Outcome<T, E>) {
        self.take_back(outcome);
    }

    fn progress(&self) -> Option<Progress> {
        self.latest_progress()
    }

    fn take_history(&self) -> History<E> {
        self.state
            .lock()
            .rare
            .as_deref_mut()
            .and_then(|r| r.observed.as_deref_mut())
            .and_then(|o| o.history.take())
            .unwrap_or_else(History::not_recorded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::AsyncBody;

    /// A body capturing 8 bytes (W5's shape: `move |_| async move { Ok(i) }`).
    struct EightBytes(#[allow(dead_code)] u64);

    #[test]
    fn size_of_a_small_cell() {
        // Pending memory per task (W5, `bench/README.md#w5-pending-memory`) is this cell plus 48
        // bytes of registry and queue entries; see `TaskCell`.
        let cell =
            std::mem::size_of::<TaskCell<AsyncBody<EightBytes>, u64, std::convert::Infallible>>();
        assert!(cell <= 120, "a cell with an 8-byte body is {cell} bytes");
    }

    #[test]
    fn size_of_a_cell_with_only_an_id() {
        // The id in place (16 bytes) of the options' pointer (8): a
        // 144-byte allocation with the `Arc` counts, and no `Extras` box.
        let cell = std::mem::size_of::<
            TaskCell<AsyncBody<EightBytes>, u64, std::convert::Infallible, NameOnly>,
        >();
        assert!(
            cell <= 128,
            "a named cell with an 8-byte body is {cell} bytes"
        );
    }
}
