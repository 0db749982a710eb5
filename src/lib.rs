//! # corral
//!
//! An in-process task engine for tokio: a bounded pool of workers, an exact
//! priority queue, tasks scheduled for a start time, per-attempt timeouts,
//! retries with backoff and jitter, cancel by id, graceful and immediate
//! shutdown, typed results you can await or subscribe to by id, an opt-in
//! result cache, lifecycle callbacks and panic recovery.
//!
//! ```text
//!  Cluster::task(..).submit() ──► queue ──► workers (N long-lived tokio tasks) ──► outcome
//!        │  TaskHandle<T, E> ◄──────────────────────────────────────────────────────┤
//!        └─ Cluster::subscribe(id) ─► Subscription<T, E> ◄── (cached: late readers) ─┘
//! ```
//!
//! - **Order**: among due tasks, higher priority first, then earlier start
//!   time, then submission order (exact and stable).
//! - **Outcomes**: every task resolves exactly once to `Result<T, TaskError<E>>`,
//!   where [`TaskError`] tells the task's own error from a panic, a timeout, a
//!   cancel and a shutdown.
//! - **Cost**: a task is one allocation while it waits; bodies run inline on
//!   the workers, so there is no tokio task, timer or thread per task.
//! - **Periodic tasks**: [`Cluster::schedule`] fires a task on a fixed
//!   interval or (feature `cron`) a cron expression in a time zone, with
//!   policies for overlapping and missed runs; one small driver per
//!   schedule, never a queue entry per future firing.
//! - **Batches**: [`Cluster::batch`] groups tasks, with callbacks when all
//!   have finished and on the first failure, and an await for the group.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use corral::{Cluster, ExponentialBackoff, TaskError};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Built inside a tokio runtime, the cluster starts its workers at once.
//! let cluster = Cluster::new(4).unwrap();
//!
//! // A flaky task: fails twice, then succeeds; retried with exponential backoff.
//! let flaky = cluster
//!     .task(|ctx| async move {
//!         if ctx.attempt() < 3 { Err("not yet") } else { Ok(ctx.attempt()) }
//!     })
//!     .id("flaky")
//!     .retry(5)
//!     .backoff(ExponentialBackoff::new(Duration::from_millis(10), 2.0))
//!     .jitter(0.1)
//!     .submit()
//!     .unwrap();
//!
//! // A task that will not finish in time.
//! let slow = cluster
//!     .task(|_ctx| async {
//!         tokio::time::sleep(Duration::from_secs(60)).await;
//!         Ok::<_, String>(())
//!     })
//!     .timeout(Duration::from_millis(50))
//!     .submit()
//!     .unwrap();
//!
//! assert_eq!(flaky.await, Ok(3));
//! assert!(matches!(slow.await, Err(TaskError::TimedOut { .. })));
//! cluster.stop(Duration::from_secs(5)).await.unwrap();
//! # }
//! ```
//!
//! ## Coming from the Go library
//!
//! corral re-imagines a small Go library; README.md maps each of its calls
//! to corral's (section "Coming from the Go library").
//!
//! ## Decisions where the Go library is silent
//! - A cluster built inside a tokio runtime starts its workers at once, so a
//!   forgotten `run()` cannot hang a program. [`ClusterBuilder::paused`]
//!   builds one that waits for [`Cluster::run`] (to queue work first); tasks
//!   left waiting in a cluster that never starts are reported after a second
//!   (`tracing::warn!` and standard error). `run` on a running cluster is a
//!   no-op.
//! - `stop` or `drain` called from inside one of the cluster's own task
//!   bodies begins the stop and returns [`StopError::FromInsideTask`] at once
//!   (waiting would wait for its own worker).
//! - Generated ids print as `#{number}@{slot}` and parse back; numbers are
//!   unique in the process, so an id addresses nothing in another cluster;
//!   user ids may not start with `#`.
//! - Start time, when not given, is the submission time; it orders equal
//!   priorities (earlier first) and then submission order breaks ties.
//! - [`Cluster::cancel_task`] says what it did ([`CancelOutcome`]); when it
//!   took effect, the outcome is `Cancelled`, guaranteed, even if the
//!   attempt was just finishing.
//! - A task whose retry is refused by a stop resolves as `Shutdown`.
//! - A cacheable task caches whatever its final outcome is, cancels included.
//!   One sweeper expires the cache while the cluster runs; after a stop,
//!   expired outcomes are dropped by the next `stats`, `subscribe` or
//!   `cancel_task`.
//! - Callbacks run on the thread that settles the task, before the handle
//!   resolves: `on_failure`, then `on_complete`.
//! - What an async body captured lives until its task completes, and is
//!   dropped before the handle resolves. A blocking body's call abandoned at
//!   a timeout or cancel keeps its own reference until the call returns.
//! - User code never takes a worker down and never runs under an engine
//!   lock: a body and what it captured, a `retry_if` predicate, a backoff
//!   strategy, a callback, an outcome's `Clone` and every `Drop` the engine
//!   runs (of a body, of a future dropped at a timeout or cancel, of a
//!   result a cancel overrides, of an outcome nobody will read) runs under a
//!   panic guard, and may call back into the cluster (`stats`, `subscribe`,
//!   `cancel_task`, `submit`, `cancel`), on its own id or any other. A panic
//!   is logged where no outcome can carry it.
//! - Nothing that expires changes an outcome: a cached outcome whose
//!   retention passes while it is being delivered is delivered, then
//!   forgotten. Handle, subscribers and late subscribers see one outcome.
//! - If the runtime running the workers shuts down while the cluster lives
//!   on, the cluster shuts down as by [`Cluster::cancel`]: pending handles
//!   resolve [`TaskError::Shutdown`], submits are refused, and running
//!   blocking bodies see [`TaskContext::is_cancelled`].
//! - A worker gives the runtime a turn at least every 1,024 attempts, so
//!   bodies that never wait cannot starve a `current_thread` runtime.
//! - Dependencies ([`TaskBuilder::after`], [`Graph`]): a dependent waits in no
//!   queue and on no worker; a failed parent resolves it at once as
//!   [`TaskError::Dependency`] unless its edge says [`OnParentFailure::Run`]
//!   or [`Skip`](OnParentFailure::Skip); a cached parent counts as it stands.
//!   `stop` and `cancel` shut waiting dependents down at once; `drain` runs
//!   those whose parents finish during it (if due by then).
//! - A body waits for another task with [`TaskContext::wait_for`] or
//!   [`TaskContext::wait`], which park the attempt and free its worker; a
//!   wait that would close a cycle of waits and dependencies is an error.
//!   [`Cluster::watch`] waits from outside for an id that may not be
//!   submitted yet.
//! - [`Cluster::pause`] holds a running cluster (running attempts finish,
//!   nothing new starts, submits queue; an immediate retry keeps its worker
//!   and waits); [`Cluster::resize`] changes the worker count while it runs
//!   (a shrink cancels nothing: surplus workers leave after their current
//!   task). `drain` ends a pause; `resize` is refused after a stop or cancel.
//! - A submit whose id is taken is refused by default; with
//!   [`Duplicate::Join`] it returns a handle to the task holding the id
//!   ([`TaskHandle::deduplicated`]). A [`dedup_window`](TaskBuilder::dedup_window)
//!   keeps a finished task's id (and outcome) for a while. A join racing the
//!   first task's end either joins it or queues a fresh task, never neither.
//! - Progress is one concrete type, [`Progress`] (done, total, message),
//!   readable by id without the task's types; the latest report wins and
//!   outlives the task on its handle. A [`stall_timeout`](TaskBuilder::stall_timeout)
//!   fails a silent attempt like a timeout ([`TaskError::Stalled`]).
//! - A bounded queue ([`ClusterBuilder::capacity`]) counts pending tasks
//!   (queued, scheduled, waiting for parents; not running ones) and checks
//!   only new submits: a requeued retry keeps its place. A sync `submit`
//!   under [`Overflow::Wait`] cannot wait and is refused;
//!   [`TaskBuilder::submit_wait`] waits, first come first served.
//! - Priority aging ([`ClusterBuilder::aging`]) counts waiting from a task's
//!   start time, and orders by the static key `start - priority * step`.
//! - Attempt history (count and earlier errors) is opt-in
//!   ([`TaskBuilder::keep_history`], read by [`TaskHandle::with_history`]):
//!   keeping retried errors is not free, and plain tasks pay nothing.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod backoff;
mod batch;
mod body;
mod builder;
mod cache;
mod capacity;
mod cell;
mod clock;
mod cluster;
mod dedup;
mod deps;
mod engine;
mod error;
mod flow;
mod handle;
mod history;
mod idle;
mod inside;
mod job;
pub mod keys;
mod limit;
mod panic;
mod park;
mod periodic;
mod progress;
mod queue;
mod shared;
mod signal;
mod task;
mod wait;
mod wakes;
mod worker;

pub use crate::backoff::{Backoff, ExponentialBackoff, FixedBackoff, LinearBackoff, RetryDecision};
pub use crate::batch::{Batch, BatchSummary, OutcomeKind, SealedBatch};
pub use crate::body::{AsyncBody, BlockingBody, Body};
pub use crate::builder::{RetryMode, TaskBuilder, MAX_ID_LEN};
pub use crate::capacity::{Overflow, TrySubmitError};
pub use crate::cluster::{CancelOutcome, Cluster, ClusterBuilder, DEFAULT_RETENTION};
pub use crate::dedup::Duplicate;
pub use crate::deps::{After, Graph, GraphHandles, Node, OnParentFailure};
pub use crate::engine::ClusterStats;
pub use crate::error::{
    BuildError, DependencyCause, DependencyError, RunError, StopError, SubmitError, SubscribeError,
    TaskError, WaitError,
};
pub use crate::flow::ResizeError;
pub use crate::handle::{Subscription, TaskHandle};
pub use crate::history::{History, WithHistory};
pub use crate::keys::{KeyError, KeyFull, KeyStats};
pub use crate::limit::{LimiterError, LimiterStats, Rate};
#[cfg(feature = "cron")]
pub use crate::periodic::{AnchoredClock, CronSchedule, SystemClock, WallClock};
pub use crate::periodic::{
    Firing, FiringBody, FiringFuture, FiringTime, Missed, Overlap, ScheduleBuilder, ScheduleError,
    ScheduleHandle, ScheduleStats, Trigger, MAX_SCHEDULE_NAME_LEN,
};
pub use crate::progress::Progress;
pub use crate::signal::CancelReason;
pub use crate::task::{ParseTaskIdError, TaskContext, TaskId, TaskRef};
pub use crate::wait::Watch;
/// Re-exported from `tokio_util`: the type of
/// [`TaskContext::cancellation_token`] and [`ClusterBuilder::cancel_on`], so
/// a user needs no `tokio-util` dependency of their own.
pub use tokio_util::sync::CancellationToken;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
