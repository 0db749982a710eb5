//! The task cell: the one allocation that holds a task's body, its options,
//! its interruption signal and its outcome slot, and the type erasure that
//! lets the untyped engine drive it.
//!
//! The engine sees a task as `Arc<dyn Job>`; the user's [`TaskHandle`] sees
//! the same allocation as `Arc<dyn OutcomeSlot<T, E>>`. Type erasure happens
//! here and nowhere else.
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
//!    - the `retry_if` predicate ([`Job::should_retry`]) and the backoff
//!      strategy ([`Job::retry_delay`]), with the pending error lent out;
//!    - `on_failure` and `on_complete`, in [`Job::complete`];
//!    - `Clone` of the outcome: for the cache and for subscribers in
//!      `complete`, and for a late subscriber by the subscriber itself, from
//!      a shared copy (`Answer::Retained`) taken out of the lock;
//!    - `Drop` of the body and what it captured (at completion), of an
//!      attempt's result that a retry, a timeout, a cancel or a shutdown
//!      replaces, of an outcome nobody will read, of an expired cached
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
//! [`TaskHandle`]: crate::TaskHandle

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::backoff::{jittered, Backoff, RetryDecision};
use crate::builder::RetryMode;
use crate::error::TaskError;
use crate::panic::{catch_unwind, drop_guarded, guard};
use crate::signal::{CancelReason, Signal};
use crate::task::{TaskContext, TaskId};

/// The final result of a task.
pub(crate) type Outcome<T, E> = Result<T, TaskError<E>>;

/// Copies an outcome for a second reader (set only where `T, E: Clone`).
pub(crate) type Cloner<T, E> = fn(&Outcome<T, E>) -> Outcome<T, E>;

pub(crate) type AttemptFuture = Pin<Box<dyn Future<Output = AttemptStatus> + Send>>;

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

/// `retry_with`'s function, or `retry_if`'s predicate wrapped as one.
pub(crate) type RetryWith<E> = Box<dyn Fn(&TaskError<E>, u32) -> RetryDecision + Send + Sync>;
pub(crate) type OnFailure<E> = Box<dyn Fn(&TaskId, &TaskError<E>) + Send + Sync>;
pub(crate) type OnComplete<T, E> = Box<dyn Fn(&TaskId, &Outcome<T, E>) + Send + Sync>;

/// Options most tasks do not use, boxed so that a plain task stays small.
pub(crate) struct Extras<T, E> {
    /// The user-given id; generated ids need no storage beyond `seq` and `slot`.
    pub(crate) name: Option<Arc<str>>,
    /// `Some` when the outcome is cached after completion.
    pub(crate) retention: Option<Duration>,
    pub(crate) backoff: Option<Box<dyn Backoff>>,
    pub(crate) jitter: f64,
    pub(crate) retry_with: Option<RetryWith<E>>,
    pub(crate) on_failure: Option<OnFailure<E>>,
    pub(crate) on_complete: Option<OnComplete<T, E>>,
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
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The kind of a task's body: [`AsyncBody`] or [`BlockingBody`].
///
/// It only appears in [`TaskBuilder`](crate::TaskBuilder)'s type; it is
/// sealed and has nothing to call.
pub trait Body<T, E>: sealed::Sealed + Send + 'static {
    /// Starts an attempt. The future yields `Err(panic message)` if the body panicked.
    #[doc(hidden)]
    fn start(
        &self,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Result<T, E>, String>> + Send + 'static;
}

/// The body of a task made by [`Cluster::task`](crate::Cluster::task): an
/// async closure, polled on the worker that runs the attempt.
pub struct AsyncBody<F>(pub(crate) F);

impl<F> sealed::Sealed for AsyncBody<F> {}

impl<F, Fut, T, E> Body<T, E> for AsyncBody<F>
where
    F: Fn(TaskContext) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    fn start(
        &self,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Result<T, E>, String>> + Send + 'static {
        catch_unwind((self.0)(ctx))
    }
}

/// The body of a task made by [`Cluster::blocking_task`](crate::Cluster::blocking_task):
/// a blocking closure, run on tokio's blocking pool while it holds a worker slot.
/// Shared through an `Arc` because each attempt hands it to another thread.
pub struct BlockingBody<F>(pub(crate) Arc<F>);

impl<F> sealed::Sealed for BlockingBody<F> {}

impl<F, T, E> Body<T, E> for BlockingBody<F>
where
    F: Fn(TaskContext) -> Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    fn start(
        &self,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Result<T, E>, String>> + Send + 'static {
        let f = Arc::clone(&self.0);
        // Lets `stop` from inside the body know it runs on its own worker.
        let cluster = crate::inside::current_worker();
        let join = tokio::task::spawn_blocking(move || {
            crate::inside::blocking_body(cluster, || guard(|| f(ctx)))
        });
        async move {
            match join.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(crate::panic::message(e.into_panic())),
                Err(_) => Err("the runtime shut down while the blocking body ran".to_owned()),
            }
        }
    }
}

impl<F> std::fmt::Debug for AsyncBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncBody")
    }
}

impl<F> std::fmt::Debug for BlockingBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingBody")
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
    /// Starts attempt `attempt` (1-based). The future stores the body's
    /// result in the cell before it resolves.
    fn start_attempt(
        self: Arc<Self>,
        attempt: u32,
        deadline: Option<tokio::time::Instant>,
    ) -> AttemptFuture;
    /// Records that the current attempt timed out.
    fn record_timeout(&self, limit: Duration);
    /// Whether to retry after failed attempt `attempt` (0-based), and the
    /// delay before the retry: asks the task's `retry_with` function (or
    /// `retry_if` predicate) about the stored error, then its backoff
    /// strategy (jitter applied) unless the decision named a delay. `None`:
    /// no retry (so decided, or the function or strategy panicked).
    fn retry_delay(&self, attempt: u32) -> Option<Duration>;
    /// Delivers the final outcome: see invariant 2.
    fn complete(&self, forced: Option<Forced>, retain: bool);
    /// The cache dropped this task: keep the outcome only for an unread handle.
    fn release(&self);
    /// Registers a typed subscriber, or lends it the retained outcome;
    /// `req` is a `SubscribeRequest<T, E>`. If the types do not match,
    /// returns the name of the task's `Result<T, E>`.
    fn subscribe(self: Arc<Self>, req: &mut dyn Any) -> Result<(), &'static str>;
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
}

/// A typed subscription request, passed through [`Job::subscribe`] as `dyn Any`.
pub(crate) struct SubscribeRequest<T, E> {
    pub(crate) cloner: Cloner<T, E>,
    /// What the cell answered: a receiver for the outcome to come, or the
    /// retained outcome itself, lent out so that the caller copies it once
    /// every lock is released (`Clone` is user code) and then gives it back.
    pub(crate) answer: Option<Answer<T, E>>,
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
    /// The current attempt's cancellation token, made when the body asks.
    token: Option<CancellationToken>,
    /// The retained outcome. A late subscriber borrows it out of the lock
    /// to copy it (`lent`); subscribers that come meanwhile queue in
    /// `subscribers`, and the borrower serves them before giving it back.
    /// (Sharing it instead would need `T: Sync`.)
    cached: Option<Outcome<T, E>>,
    lent: bool,
}

impl<T, E> Rare<T, E> {
    fn boxed(cloner: Option<Cloner<T, E>>) -> Box<Self> {
        Box::new(Rare {
            cloner,
            subscribers: Vec::new(),
            token: None,
            cached: None,
            lent: false,
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
}

/// See the module docs.
pub(crate) struct TaskCell<B, T, E> {
    /// The id is assembled from these and `Extras::name`: the cell is
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
    extras: Option<Box<Extras<T, E>>>,
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
            extras,
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

    fn user_id(&self) -> Option<&Arc<str>> {
        self.extras.as_ref().and_then(|x| x.name.as_ref())
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
                drop_guarded(old, "a previous attempt's error");
            }
        } else {
            drop_guarded(
                outcome,
                "an attempt's result overridden by a cancel or shutdown",
            );
        }
    }
}

impl<B, T, E> Drop for TaskCell<B, T, E> {
    /// What the user handed in (the body and its captures, callbacks,
    /// predicate, strategy) and what the task produced are user code when
    /// dropped; the last reference may go on any thread (a worker, the
    /// sweeper, a handle), so each drop is guarded. Never under an engine
    /// lock: core invariant 4.
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
        if let Some(extras) = self.extras.take() {
            drop_guarded(extras, "a task's callbacks, predicate or backoff");
        }
    }
}

impl<B, T, E> Job for TaskCell<B, T, E>
where
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
        self.extras.as_ref().and_then(|x| x.retention)
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
    ) -> AttemptFuture {
        let reset = self.signal.reset_timeout();
        // Only the worker that claimed the task starts attempts, and the task
        // cannot complete meanwhile, so the body can be lent out of the lock
        // while it runs (user code).
        let body = {
            let mut st = self.state.lock();
            if reset {
                // The old token fired for the old attempt; this one gets a fresh one.
                if let Some(rare) = st.rare.as_deref_mut() {
                    rare.token = None;
                }
            }
            st.body.take()
        };
        let ctx = TaskContext::new(self.id(), attempt, deadline, self.clone());
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
        Box::pin(async move {
            let result = match started {
                Ok(fut) => fut.await,
                Err(message) => Err(message),
            };
            let outcome = match result {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(TaskError::Failed(e)),
                Err(message) => Err(TaskError::Panicked { message }),
            };
            let status = if outcome.is_ok() {
                AttemptStatus::Succeeded
            } else {
                AttemptStatus::Failed
            };
            self.store_attempt(outcome);
            status
        })
    }

    fn record_timeout(&self, limit: Duration) {
        let old = self
            .state
            .lock()
            .result
            .replace(Err(TaskError::TimedOut { limit }));
        if let Some(old) = old {
            drop_guarded(old, "a previous attempt's error");
        }
    }

    fn retry_delay(&self, attempt: u32) -> Option<Duration> {
        let extras = self.extras.as_deref();
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
        let mut st = self.state.lock();
        // The common case, in one short lock section: the attempt's result
        // is the outcome, and there is nothing to call, copy or drop that
        // could run user code.
        let plain = forced.is_none()
            && st.rare.is_none()
            && !std::mem::needs_drop::<B>()
            && self.extras.as_deref().is_none_or(|x| {
                x.on_failure.is_none() && x.on_complete.is_none() && x.retention.is_none()
            });
        if plain {
            st.body = None;
            st.done = true;
            let unread = if st.handle_gone {
                st.result.take()
            } else {
                None
            };
            let waker = st.handle_waker.take();
            drop(st);
            if let Some(outcome) = unread {
                drop_guarded(outcome, "an unread outcome");
            }
            if let Some(w) = waker {
                w.wake();
            }
            return;
        }
        // What the body captured is released before anyone sees the outcome
        // (a blocking call abandoned at a timeout holds its own reference
        // until it returns). An attempt's result that a cancel or shutdown
        // overrides goes too. Both are user code when dropped: below, with
        // the lock released and under a guard.
        let body = st.body.take();
        let (outcome, overridden) = match (forced, st.result.take()) {
            (Some(Forced::Cancelled), last) => (Err(TaskError::Cancelled), last),
            (Some(Forced::Shutdown), last) => (Err(TaskError::Shutdown), last),
            (None, Some(r)) => (r, None),
            // Unreachable by construction; never invent a value.
            (None, None) => (Err(TaskError::Shutdown), None),
        };
        let hooks = self
            .extras
            .as_deref()
            .filter(|x| x.on_failure.is_some() || x.on_complete.is_some());
        // The cache keeps a copy of its own unless it already let go of the
        // task (a sweep between the registry's finalize and this delivery).
        let cloner = st.cloner().filter(|_| retain && !st.expired);
        let handle_gone = st.handle_gone;
        let mut handle_copy = Some(outcome);
        let mut cache_copy = None;
        let drops_user_code = (std::mem::needs_drop::<B>() && body.is_some())
            || (std::mem::needs_drop::<Outcome<T, E>>() && overridden.is_some());
        if drops_user_code || hooks.is_some() || cloner.is_some() {
            // Invariant 3: all of this runs unlocked. Nobody else reads the
            // result before `done` is set, so the outcome can be out meanwhile.
            drop(st);
            if let Some(body) = body {
                drop_guarded(body, "a task body");
            }
            if let Some(old) = overridden {
                drop_guarded(
                    old,
                    "an attempt's result overridden by a cancel or shutdown",
                );
            }
            let outcome = handle_copy.as_ref().expect("set above");
            if let Some(x) = hooks {
                self.run_callbacks(x, outcome);
            }
            if let Some(clone) = cloner {
                // A handle that is gone needs no copy: the cache takes the original.
                cache_copy = if handle_gone {
                    handle_copy.take()
                } else {
                    match guard(|| clone(outcome)) {
                        Ok(copy) => Some(copy),
                        Err(msg) => {
                            tracing::error!(task = %self.id(), panic = %msg, "cloning the outcome for the cache panicked; it is not retained");
                            None
                        }
                    }
                };
            }
            st = self.state.lock();
        }
        // Subscribers get copies made unlocked (`Clone` is user code). One
        // that subscribes meanwhile is served by the next round; the round
        // that finds none left marks the task done, under the same lock.
        loop {
            let round = st.rare.as_deref_mut().and_then(|rare| {
                let clone = rare.cloner?;
                (!rare.subscribers.is_empty())
                    .then(|| (clone, std::mem::take(&mut rare.subscribers)))
            });
            let Some((clone, subscribers)) = round else {
                break;
            };
            drop(st);
            let view = handle_copy
                .as_ref()
                .or(cache_copy.as_ref())
                .expect("the outcome is kept for the handle or the cache");
            for tx in subscribers {
                // A subscriber that gave up is not an error.
                if let Err(copy) = tx.send(copy_for_subscriber(clone, view)) {
                    drop_guarded(copy, "an unread copy of an outcome");
                }
            }
            st = self.state.lock();
        }
        st.done = true;
        let mut stale = None;
        if let Some(copy) = cache_copy {
            if st.expired {
                stale = Some(copy);
            } else {
                st.rare().cached = Some(copy);
            }
        }
        let unread = match handle_copy {
            Some(outcome) if !st.handle_gone => {
                st.result = Some(outcome);
                None
            }
            other => other,
        };
        let waker = st.handle_waker.take();
        drop(st);
        if let Some(outcome) = unread {
            // Nobody will read it: the handle is gone.
            drop_guarded(outcome, "an unread outcome");
        }
        if let Some(copy) = stale {
            drop_guarded(copy, "an expired cached outcome");
        }
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn release(&self) {
        let cached = {
            let mut st = self.state.lock();
            // Before `done`, this tells `complete` not to retain the outcome.
            st.expired = true;
            st.rare.as_mut().and_then(|r| r.cached.take())
        };
        if let Some(copy) = cached {
            drop_guarded(copy, "an expired cached outcome");
        }
    }

    fn subscribe(self: Arc<Self>, req: &mut dyn Any) -> Result<(), &'static str> {
        let Some(req) = req.downcast_mut::<SubscribeRequest<T, E>>() else {
            return Err(std::any::type_name::<Result<T, E>>());
        };
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock();
        let done = st.done;
        let rare = st.rare();
        let answer = match rare.cached.take() {
            // The copy is made by the caller, unlocked (invariant 3).
            Some(cached) => {
                rare.lent = true;
                Answer::Lent(cached, self.clone())
            }
            // Still to come, or being copied by another late subscriber,
            // who serves this one too (see `give_back`).
            None if !done || rare.lent => {
                rare.cloner.get_or_insert(req.cloner);
                rare.add_subscriber(tx);
                Answer::Pending(rx)
            }
            None => Answer::Gone,
        };
        drop(st);
        req.answer = Some(answer);
        Ok(())
    }
}

impl<B, T, E> TaskCell<B, T, E> {
    /// Runs `on_failure` then `on_complete`, each under a panic guard.
    fn run_callbacks(&self, x: &Extras<T, E>, outcome: &Outcome<T, E>) {
        let id = self.id();
        if let (Err(err), Some(cb)) = (outcome, &x.on_failure) {
            if let Err(msg) = guard(|| cb(&id, err)) {
                tracing::error!(task = %id, panic = %msg, "on_failure callback panicked");
            }
        }
        if let Some(cb) = &x.on_complete {
            if let Err(msg) = guard(|| cb(&id, outcome)) {
                tracing::error!(task = %id, panic = %msg, "on_complete callback panicked");
            }
        }
    }
}

/// A subscriber's copy of `outcome`, made with no lock held. A `Clone` that
/// panics costs only that subscriber, whose subscription then resolves as
/// [`TaskError::Panicked`] with a message that says so.
pub(crate) fn copy_for_subscriber<T, E>(
    clone: Cloner<T, E>,
    outcome: &Outcome<T, E>,
) -> Outcome<T, E> {
    guard(|| clone(outcome)).unwrap_or_else(|msg| {
        tracing::error!(panic = %msg, "cloning an outcome for a subscriber panicked");
        Err(TaskError::Panicked {
            message: format!("cloning the outcome for this subscriber panicked: {msg}"),
        })
    })
}

impl<B, T, E> OutcomeSlot<T, E> for TaskCell<B, T, E>
where
    B: Send,
    T: Send,
    E: Send,
{
    fn task_id(&self) -> TaskId {
        self.id()
    }

    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome<T, E>>> {
        assert!(
            !self.handle_resolved.load(Relaxed),
            "TaskHandle polled after it resolved"
        );
        let mut st = self.state.lock();
        if !st.done {
            match &st.handle_waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.handle_waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        // The handle's own copy: the cache, if any, keeps another.
        let outcome = st.result.take();
        self.handle_resolved.store(true, Relaxed);
        Poll::Ready(outcome)
    }

    fn drop_handle(&self) {
        // A handle that resolved already took (or copied) its outcome: the
        // cell has nothing left to keep for it.
        if self.handle_resolved.load(Relaxed) {
            return;
        }
        let dropped = {
            let mut st = self.state.lock();
            st.handle_gone = true;
            st.handle_waker = None;
            if st.done {
                st.result.take()
            } else {
                None
            }
        };
        if let Some(outcome) = dropped {
            drop_guarded(outcome, "an unread outcome");
        }
    }

    fn give_back(&self, outcome: Outcome<T, E>) {
        let mut st = self.state.lock();
        loop {
            let round = st.rare.as_deref_mut().and_then(|rare| {
                let clone = rare.cloner?;
                (!rare.subscribers.is_empty())
                    .then(|| (clone, std::mem::take(&mut rare.subscribers)))
            });
            let Some((clone, subscribers)) = round else {
                break;
            };
            drop(st);
            for tx in subscribers {
                if let Err(copy) = tx.send(copy_for_subscriber(clone, &outcome)) {
                    drop_guarded(copy, "an unread copy of an outcome");
                }
            }
            st = self.state.lock();
        }
        let expired = st.expired;
        let rare = st.rare();
        rare.lent = false;
        if expired {
            drop(st);
            drop_guarded(outcome, "an expired cached outcome");
        } else {
            rare.cached = Some(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
