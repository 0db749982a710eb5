//! The cluster handle: building, running, submitting, cancelling,
//! subscribing and shutting down.
//!
//! Shutdown protocol:
//! 1. `stop`/`drain`/`cancel` change the phase under the lock, so a racing
//!    submit either lands before (and is handled by the shutdown) or fails
//!    with [`SubmitError::ShuttingDown`](crate::SubmitError::ShuttingDown).
//! 2. Queued tasks are settled as shut down right there (invariant 2 of the
//!    engine module: each exactly once).
//! 3. `stopping` interrupts immediate-retry waits; `Shared::close` tells
//!    every worker to claim again (idle ones wake, see the new phase and
//!    leave; busy ones leave at their next claim) and sends the timekeeper
//!    home through `closing`.
//! 4. `stop`/`drain` wait on the tracker of worker tasks; at the timeout,
//!    running attempts are marked and signalled as shut down.
//! 5. Dropping the last `Cluster` clone runs `cancel`, so workers never leak.
//! 6. A worker or the timekeeper dropped by its runtime before it left as
//!    planned (the runtime shut down under a live cluster) runs `cancel`
//!    too (`worker::Presence`), so nothing waits for workers that are gone.

use std::any::type_name;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::body::{AsyncBody, BlockingBody};
use crate::builder::TaskBuilder;
use crate::cell::copy_for_subscriber;
use crate::engine::{ClusterStats, Delivery, Phase};
use crate::error::{BuildError, RunError, StopError, SubscribeError};
use crate::handle::Subscription;
use crate::inside;
use crate::job::{Answer, Outcome, SubscribeRequest};
use crate::panic::drop_guarded;
use crate::shared::Shared;
use crate::signal::CancelReason;
use crate::task::{TaskContext, TaskId, TaskRef};
use crate::worker::{timekeeper, worker};

/// How long a cached outcome is kept unless the cluster or task says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(5 * 60);

/// What [`Cluster::cancel_task`] did.
///
/// ```
/// use std::time::Duration;
/// use corral::{CancelOutcome, Cluster, TaskError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let slow = cluster
///     .task(|_ctx| async {
///         tokio::time::sleep(Duration::from_secs(60)).await;
///         Ok::<_, String>(())
///     })
///     .id("slow")
///     .submit()
///     .unwrap();
/// tokio::task::yield_now().await; // let it start
/// let outcome = cluster.cancel_task("slow");
/// assert_eq!(outcome, CancelOutcome::Requested); // running: signalled
/// assert!(outcome.took_effect());
/// assert_eq!(slow.await, Err(TaskError::Cancelled));
/// assert!(!cluster.cancel_task("slow").took_effect()); // NotFound by now
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The task was scheduled, due, or waiting for a requeued retry: it is
    /// removed and has resolved as [`TaskError::Cancelled`](crate::TaskError::Cancelled)
    /// before `cancel_task` returned.
    Cancelled,
    /// An attempt is running (or an immediate retry is waiting): it has been
    /// signalled, and the task will resolve as
    /// [`TaskError::Cancelled`](crate::TaskError::Cancelled), whatever the
    /// attempt returns.
    Requested,
    /// The task's outcome was already decided: it finished and its outcome
    /// is still cached, or a shutdown already decided it (it resolves as
    /// [`TaskError::Shutdown`](crate::TaskError::Shutdown)). Nothing changed.
    AlreadyFinished,
    /// No task with this id is pending, running or cached in this cluster
    /// (it never existed, finished without caching, its cache expired, or
    /// the id belongs to another cluster).
    NotFound,
}

impl CancelOutcome {
    /// `true` if the cancel decided the task's outcome
    /// ([`Cancelled`](Self::Cancelled) or [`Requested`](Self::Requested)):
    /// the task resolves as [`TaskError::Cancelled`](crate::TaskError::Cancelled).
    pub fn took_effect(&self) -> bool {
        matches!(self, CancelOutcome::Cancelled | CancelOutcome::Requested)
    }
}

/// Configures a [`Cluster`].
///
/// # Default
/// | option | default |
/// |---|---|
/// | `workers` | the number of CPUs |
/// | `retention` | [`DEFAULT_RETENTION`] (5 minutes) |
/// | `cancel_on` | none |
/// | `paused` | off: the workers start at `build` inside a runtime, else at the first [`Cluster::run`] |
/// | `capacity` | none: the queue is unbounded (see [`capacity`](Self::capacity)) |
/// | `aging` | off (see [`aging`](Self::aging)) |
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClusterBuilder {
    workers: usize,
    retention: Duration,
    parent: Option<CancellationToken>,
    paused: bool,
    /// Capacity and aging (`crate::capacity`).
    pub(crate) bounds: crate::capacity::Bounds,
    /// The default limit of keys (`crate::keys`).
    pub(crate) key_limit: Option<u32>,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            retention: DEFAULT_RETENTION,
            parent: None,
            paused: false,
            bounds: Default::default(),
            key_limit: None,
        }
    }
}

impl ClusterBuilder {
    /// At most this many attempts run at once. Zero, and more than 65,535,
    /// are rejected by `build`.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How long cached outcomes are kept after completion by default.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Builds a cluster whose workers wait for [`Cluster::run`] (they are
    /// not started; not to be confused with [`Cluster::pause`], which holds
    /// the workers of a running cluster until [`Cluster::resume`]): tasks
    /// submitted before it queue up and then start in their exact order
    /// (priority, start time, submission), as if all had arrived at once.
    ///
    /// A task left waiting in a cluster whose workers never started cannot
    /// resolve, so a forgotten `run` must not pass silently: a second after
    /// the first such submit, if the workers have still not started, the
    /// cluster reports it once through `tracing::warn!` and on standard error
    /// ("corral: N task(s) wait in a cluster whose workers never started...").
    ///
    /// ```
    /// # use corral::Cluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    /// let first = cluster.task(|_| async { Ok::<_, String>(1) }).submit().unwrap();
    /// cluster.run().unwrap();
    /// assert_eq!(first.await, Ok(1));
    /// # }
    /// ```
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    /// Ties the cluster to a parent token: cancelling it cancels the cluster
    /// as [`Cluster::cancel`] does (the reference API's parent context).
    pub fn cancel_on(mut self, parent: CancellationToken) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Builds the cluster, which accepts tasks at once.
    ///
    /// Inside a tokio runtime, its workers start at once, on that runtime
    /// (unless [`paused`](Self::paused)). Outside one, they start at the
    /// first [`Cluster::run`], called inside the runtime that is to run them;
    /// tasks submitted meanwhile wait (and a warning is printed if they still
    /// wait a second later, see [`paused`](Self::paused)).
    ///
    /// # Errors
    /// [`BuildError::ZeroWorkers`] if `workers` is zero,
    /// [`BuildError::TooManyWorkers`] if it is over 65,535,
    /// [`BuildError::InvalidOption`] for a zero [`capacity`](Self::capacity)
    /// or [`aging`](Self::aging) step.
    pub fn build(self) -> Result<Cluster, BuildError> {
        if self.workers == 0 {
            return Err(BuildError::ZeroWorkers);
        }
        if self.workers > usize::from(u16::MAX) {
            return Err(BuildError::TooManyWorkers);
        }
        self.bounds.check()?;
        if self.key_limit == Some(0) {
            return Err(BuildError::ZeroKeyLimit);
        }
        let cluster = Cluster {
            owner: Arc::new(Owner {
                shared: Arc::new(Shared::new(self.workers, self.retention, self.parent)),
                watching: AtomicBool::new(false),
            }),
        };
        self.bounds.apply(cluster.shared());
        if let Some(limit) = self.key_limit {
            cluster
                .shared()
                .locked(|core| core.set_default_key_limit(limit));
        }
        if !self.paused && tokio::runtime::Handle::try_current().is_ok() {
            // Cannot fail: the cluster is new and a runtime is present.
            let _ = cluster.run();
        }
        Ok(cluster)
    }
}

/// Runs `cancel` when the last user clone goes (shutdown protocol step 5).
/// Workers hold `Shared`, not `Owner`, so they do not keep the cluster alive.
struct Owner {
    shared: Arc<Shared>,
    /// A watch for tasks submitted to a cluster that never starts is armed
    /// (see [`Cluster::watch_unstarted`]).
    watching: AtomicBool,
}

/// How long tasks may wait in a cluster whose workers never started before
/// [`Cluster::watch_unstarted`] warns.
const UNSTARTED_WARNING: Duration = Duration::from_secs(1);

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.cancel_all();
    }
}

/// A task cluster: a queue of tasks and a bounded pool of workers.
///
/// Built inside a tokio runtime, its workers start at once on that runtime;
/// see [`ClusterBuilder::paused`] and [`Cluster::run`] to start them later.
///
/// Cheap to clone; all clones drive the same cluster. Dropping the last
/// clone cancels the cluster (as [`cancel`](Self::cancel)): pending tasks
/// resolve as [`TaskError::Shutdown`](crate::TaskError::Shutdown) and the workers exit.
///
/// ```
/// use std::time::Duration;
/// use corral::{Cluster, TaskError};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(2).unwrap();
/// let handle = cluster
///     .task(|ctx| async move { Ok::<_, String>(format!("attempt {}", ctx.attempt())) })
///     .priority(5)
///     .timeout(Duration::from_secs(1))
///     .submit()
///     .unwrap();
/// assert_eq!(handle.await, Ok("attempt 1".to_string()));
/// cluster.stop(Duration::from_secs(1)).await.unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct Cluster {
    owner: Arc<Owner>,
}

/// A reference to a cluster that does not keep it alive: periodic
/// schedules hold one, so that dropping the user's last clone still
/// cancels the cluster (shutdown protocol step 5).
#[derive(Clone)]
pub(crate) struct WeakCluster(std::sync::Weak<Owner>);

impl WeakCluster {
    pub(crate) fn upgrade(&self) -> Option<Cluster> {
        self.0.upgrade().map(|owner| Cluster { owner })
    }
}

impl Cluster {
    pub(crate) fn downgrade(&self) -> WeakCluster {
        WeakCluster(Arc::downgrade(&self.owner))
    }

    /// A cluster with `workers` workers and default settings.
    ///
    /// # Errors
    /// [`BuildError::ZeroWorkers`] if `workers` is zero,
    /// [`BuildError::TooManyWorkers`] if it is over 65,535.
    pub fn new(workers: usize) -> Result<Cluster, BuildError> {
        Cluster::builder().workers(workers).build()
    }

    /// A builder for the cluster's settings.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// The number of workers (attempts that may run at once): the target
    /// set by the builder or the last [`resize`](Self::resize). Just after a
    /// shrink, surplus workers may still finish their current task
    /// ([`live_workers`](Self::live_workers) counts those running).
    pub fn workers(&self) -> usize {
        self.shared().lock().flow.target()
    }

    /// Starts the workers of a cluster that has not started them yet: one
    /// built with [`ClusterBuilder::paused`], or built outside a tokio
    /// runtime. Tasks submitted before wait in the queue until now, and then
    /// run in their exact order. On a cluster whose workers run already (the
    /// usual case: built inside a runtime) it does nothing and returns `Ok`.
    ///
    /// The workers run on the runtime `run` is called from.
    ///
    /// ```
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::builder().workers(1).paused().build().unwrap();
    /// let low = cluster.task(|_| async { Ok::<_, String>("low") }).submit().unwrap();
    /// let high = cluster.task(|_| async { Ok::<_, String>("high") }).priority(9).submit().unwrap();
    /// cluster.run().unwrap(); // `high` runs first: both were queued before the start
    /// assert_eq!(high.await, Ok("high"));
    /// assert_eq!(low.await, Ok("low"));
    /// cluster.run().unwrap(); // already running: nothing to do
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`RunError::ShutDown`] after a stop or cancel (a stopped cluster
    /// cannot be restarted), [`RunError::NoRuntime`] if the workers are not
    /// running yet and this is called outside a tokio runtime.
    pub fn run(&self) -> Result<(), RunError> {
        let shared = self.shared();
        if shared
            .parent
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            shared.cancel_all();
        }
        let (runtime, indices) = {
            let mut core = shared.lock();
            match core.phase {
                Phase::Idle => {}
                Phase::Running => return Ok(()),
                Phase::Draining | Phase::Stopping | Phase::Cancelled => {
                    return Err(RunError::ShutDown)
                }
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Err(RunError::NoRuntime);
            };
            core.phase = Phase::Running;
            // Set under the lock: a grow after it spawns on this runtime.
            let runtime = shared.flow.runtime.get_or_init(|| runtime).clone();
            (runtime, core.flow.start())
        };
        for index in indices {
            spawn_worker(shared, index, &runtime);
        }
        shared.tracker.spawn(timekeeper(shared.clone()));
        Ok(())
    }

    /// Called after a submit found the workers not started: warns, once per
    /// cluster, if they still have not started a second later (see
    /// [`ClusterBuilder::paused`]). A thread, not a tokio task: the cluster may
    /// have been built outside any runtime, and the warning must come on
    /// real time, whatever a test's paused clock does.
    pub(crate) fn watch_unstarted(&self) {
        // A plain load first: every submit before the start comes here.
        if self.owner.watching.load(Relaxed) || self.owner.watching.swap(true, Relaxed) {
            return;
        }
        let shared = Arc::downgrade(self.shared());
        let spawned = std::thread::Builder::new()
            .name("corral-unstarted-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                std::thread::sleep(UNSTARTED_WARNING);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let held = {
                    let core = shared.lock();
                    (core.phase == Phase::Idle).then(|| core.stats().held)
                };
                if let Some(held) = held.filter(|&n| n > 0) {
                    let msg = format!(
                        "corral: {held} task(s) wait in a cluster whose workers never started: \
                         nothing runs and no handle resolves until `Cluster::run()` is called \
                         (the cluster was built with `ClusterBuilder::paused()` or outside a tokio runtime)"
                    );
                    tracing::warn!("{msg}");
                    eprintln!("{msg}");
                }
            });
        // Without a thread there is no warning, and nothing else is lost.
        drop(spawned);
    }

    /// Starts building a task whose body is an async closure, called once per
    /// attempt with that attempt's [`TaskContext`].
    ///
    /// ```
    /// # use corral::Cluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let cluster = Cluster::new(1).unwrap();
    /// let h = cluster.task(|_ctx| async { Ok::<u32, std::io::Error>(7) }).submit().unwrap();
    /// assert_eq!(h.await.unwrap(), 7);
    /// # }
    /// ```
    ///
    /// # Writing the error type
    /// The body's error type `E` must be known where the body is written.
    /// When the body returns `Ok(..)` and uses `?`, nothing says what `E`
    /// is: `?` converts its error *into* `E` (through `From`), and many
    /// types could receive it. The compiler then stops with "type
    /// annotations needed" (`error[E0283]`, "cannot infer type of the type
    /// parameter `E` declared on the enum `Result`"; `E0282` on some
    /// compiler versions):
    ///
    /// ```compile_fail,E0283
    /// # use corral::Cluster;
    /// # async fn demo(cluster: Cluster) {
    /// let h = cluster
    ///     .task(|_ctx| async {
    ///         let n: u32 = "42".parse()?; // into which error type?
    ///         Ok(n * 2)
    ///     })
    ///     .submit();
    /// # }
    /// ```
    ///
    /// Name it on the `Ok` (or on the block's type):
    ///
    /// ```
    /// # use corral::Cluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let cluster = Cluster::new(1).unwrap();
    /// let h = cluster
    ///     .task(|_ctx| async {
    ///         let n: u32 = "42".parse()?;
    ///         Ok::<_, std::num::ParseIntError>(n * 2)
    ///     })
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.await, Ok(84));
    /// # }
    /// ```
    ///
    /// # Waiting for another task inside a body
    /// A body that awaits another task's [`TaskHandle`](crate::TaskHandle) or
    /// [`Subscription`] directly holds its worker while it waits. If every
    /// worker is held that way (with one worker, a single such wait), the
    /// awaited task can never run: the pool deadlocks. So wait through the
    /// context instead: [`TaskContext::wait_for`] (by id) and
    /// [`TaskContext::wait`] (a handle) park the attempt and free the worker
    /// while they wait (a wait that would close a cycle is an error). Or
    /// declare the dependency up front with
    /// [`TaskBuilder::after`](crate::TaskBuilder::after): the dependent then
    /// waits in no queue and on no worker. `examples/dependent.rs` shows both.
    pub fn task<F, Fut, T, E>(&self, body: F) -> TaskBuilder<'_, AsyncBody<F>, T, E>
    where
        F: Fn(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        TaskBuilder::new(self, AsyncBody(body), false)
    }

    /// Starts building a task whose body is a blocking (CPU-bound) closure.
    /// It runs on tokio's blocking pool and holds a worker slot while it
    /// runs; poll [`TaskContext::is_cancelled`] to stop early on a cancel or
    /// timeout (a blocking body cannot be dropped midway as an async one is:
    /// at a timeout or cancel its outcome is decided at once, and its worker
    /// stays busy until the call returns).
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let sum = cluster
    ///     .blocking_task(|_ctx| Ok::<u64, String>((1..=1_000u64).sum()))
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(sum.await, Ok(500_500));
    ///
    /// // A long computation that checks for a cancel or timeout as it goes.
    /// let spin = cluster
    ///     .blocking_task(|ctx| {
    ///         while !ctx.is_cancelled() {
    ///             std::thread::sleep(Duration::from_millis(1)); // a slice of work
    ///         }
    ///         Err::<(), _>(format!("stopped: {:?}", ctx.cancel_reason()))
    ///     })
    ///     .timeout(Duration::from_millis(20))
    ///     .submit()
    ///     .unwrap();
    /// assert!(matches!(spin.await, Err(TaskError::TimedOut { .. })));
    /// # }
    /// ```
    pub fn blocking_task<F, T, E>(&self, body: F) -> TaskBuilder<'_, BlockingBody<F>, T, E>
    where
        F: Fn(TaskContext) -> Result<T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        TaskBuilder::new(self, BlockingBody(Arc::new(body)), true)
    }

    /// Starts a [`Batch`](crate::Batch): a group of tasks with callbacks
    /// when all have finished and on the first failure, and an await for
    /// the whole group. Open until sealed.
    ///
    /// ```
    /// # use corral::Cluster;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(2).unwrap();
    /// let batch = cluster.batch();
    /// for n in 0..4u64 {
    ///     batch.task(move |_ctx| async move { Ok::<_, String>(n) }).submit().unwrap();
    /// }
    /// let summary = batch.seal().wait().await;
    /// assert_eq!(summary.succeeded, 4);
    /// assert!(summary.all_succeeded());
    /// # }
    /// ```
    pub fn batch(&self) -> crate::batch::Batch {
        crate::batch::Batch::new(self.clone())
    }

    /// Subscribes to the outcome of the task `id`: pending, running, or
    /// finished with a cached outcome. Any number of subscribers may
    /// subscribe at any time; each gets its own copy, once.
    ///
    /// A finished task that was not cacheable is forgotten at once, so a
    /// subscribe after its end is [`SubscribeError::UnknownId`]; one that
    /// finds the task is always answered.
    ///
    /// Each copy is made by `T`'s and `E`'s `Clone` with no engine lock
    /// held, so a `Clone` may call back into the cluster. A `Clone` that
    /// panics costs only its own copy: that subscription resolves as
    /// [`TaskError::Panicked`](crate::TaskError::Panicked), naming the
    /// clone. (A `Clone` that subscribes to its own task on every copy adds
    /// a subscriber for each copy it makes: a loop of its own making.)
    ///
    /// Awaiting a subscription inside another task's body holds that body's
    /// worker, and can deadlock a busy pool; use
    /// [`TaskContext::wait_for`] there (see "Waiting for another task inside
    /// a body" on [`task`](Self::task)). To wait for an id that may not be
    /// submitted yet, see [`watch`](Self::watch).
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, SubscribeError, TaskId};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let handle = cluster
    ///     .task(|_ctx| async { Ok::<u32, String>(42) })
    ///     .id("answer")
    ///     .delay(Duration::from_millis(10))
    ///     .cacheable(true)
    ///     .submit()
    ///     .unwrap();
    /// // Anyone who knows the id can wait for the outcome, with its types.
    /// let early = cluster.subscribe::<u32, String>("answer").unwrap();
    /// assert_eq!(early.await, Ok(42));
    /// assert_eq!(handle.await, Ok(42));
    /// // Cached, so a late subscriber still gets it.
    /// assert_eq!(cluster.subscribe::<u32, String>("answer").unwrap().await, Ok(42));
    /// assert_eq!(
    ///     cluster.subscribe::<u32, String>("nobody").unwrap_err(),
    ///     SubscribeError::UnknownId(TaskId::from("nobody"))
    /// );
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`SubscribeError::UnknownId`] if no such task is known;
    /// [`SubscribeError::TypeMismatch`] if it does not produce `Result<T, TaskError<E>>`.
    pub fn subscribe<T, E>(
        &self,
        id: impl Into<TaskId>,
    ) -> Result<Subscription<T, E>, SubscribeError>
    where
        T: Clone + Send + 'static,
        E: Clone + Send + 'static,
    {
        let id = id.into();
        let cloner = <Outcome<T, E> as Clone>::clone;
        let mut req = SubscribeRequest::<T, E> {
            cloner,
            answer: None,
            hook: None,
        };
        let found = self.shared().locked(|core| core.subscribe(&id, &mut req));
        match (found, req.answer) {
            (Some(Ok(())), Some(Answer::Pending(rx))) => Ok(Subscription::new(id, rx)),
            (Some(Ok(())), Some(Answer::Lent(cached, cell))) => {
                // Copied here, with no lock held: `Clone` is user code.
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(copy_for_subscriber(cloner, &cached));
                cell.give_back(cached);
                // The last reference if the cache let go meanwhile.
                drop_guarded(cell, "a finished task");
                Ok(Subscription::new(id, rx))
            }
            (Some(Ok(())), Some(Answer::Gone)) => Err(SubscribeError::UnknownId(id)),
            (Some(Err(found)), _) => Err(SubscribeError::TypeMismatch {
                id,
                expected: type_name::<Result<T, E>>(),
                found,
            }),
            // Unreachable: a match always answers.
            (Some(Ok(())), None) | (None, _) => Err(SubscribeError::UnknownId(id)),
        }
    }

    /// Cancels the task `id` wherever it is, and says what happened (see
    /// [`CancelOutcome`]). When it [took effect](CancelOutcome::took_effect)
    /// (the task was scheduled, due, running or waiting for a retry), the
    /// outcome is [`TaskError::Cancelled`](crate::TaskError::Cancelled),
    /// guaranteed, even if the attempt was just finishing.
    ///
    /// A queued task is removed at once (its memory too). A running attempt
    /// is signalled; an async one is dropped at once, a blocking one holds its
    /// worker until it returns.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{CancelOutcome, Cluster, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let later = cluster
    ///     .task(|_ctx| async { Ok::<_, String>("report") })
    ///     .id("nightly")
    ///     .delay(Duration::from_secs(3600))
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(cluster.cancel_task("nightly"), CancelOutcome::Cancelled);
    /// assert_eq!(later.await, Err(TaskError::Cancelled));
    /// // Gone (not cached): nothing left to cancel.
    /// assert_eq!(cluster.cancel_task("nightly"), CancelOutcome::NotFound);
    /// # }
    /// ```
    pub fn cancel_task(&self, id: impl TaskRef) -> CancelOutcome {
        let id = id.id_ref();
        let shared = self.shared();
        let (outcome, delivery, running) = shared.locked(|core| core.cancel(id));
        // Only a running task is signalled (a call for none cost about 24
        // instructions per cancel of a queued task, W6).
        if running.is_some() {
            shared.interrupt(running, CancelReason::Cancelled);
        }
        if let Some(d) = delivery {
            d.deliver();
        }
        outcome
    }

    /// Graceful stop. New submits are refused at once; tasks not yet started
    /// resolve as [`TaskError::Shutdown`](crate::TaskError::Shutdown); running attempts finish untouched
    /// (their cancellation signal does not fire) but are not retried; tasks
    /// waiting for a retry resolve as shut down.
    ///
    /// Returns when every worker has finished. Calling it again (or after
    /// `cancel`) waits the same way.
    ///
    /// Called from inside one of this cluster's task bodies, it begins the
    /// stop the same way but returns [`StopError::FromInsideTask`] at once
    /// instead of waiting for the workers (the caller's own among them).
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let running = cluster
    ///     .task(|_ctx| async {
    ///         tokio::time::sleep(Duration::from_millis(20)).await;
    ///         Ok::<_, String>("finished")
    ///     })
    ///     .submit()
    ///     .unwrap();
    /// let later = cluster
    ///     .task(|_ctx| async { Ok::<_, String>("never") })
    ///     .delay(Duration::from_secs(60))
    ///     .submit()
    ///     .unwrap();
    /// tokio::task::yield_now().await; // let the first task start
    /// cluster.stop(Duration::from_secs(5)).await.unwrap();
    /// assert_eq!(running.await, Ok("finished")); // left to finish
    /// assert_eq!(later.await, Err(TaskError::Shutdown)); // never started
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`StopError::Timeout`] if attempts were still running after `timeout`;
    /// they are then cancelled (and resolve as shut down).
    /// [`StopError::FromInsideTask`] if called from one of the cluster's own
    /// task bodies (see above).
    ///
    /// Cancel safe: dropping the future leaves the cluster stopping.
    pub async fn stop(&self, timeout: Duration) -> Result<(), StopError> {
        let shared = self.shared();
        let deliveries = shared.locked(|core| match core.phase {
            Phase::Idle | Phase::Running | Phase::Draining => {
                core.phase = Phase::Stopping;
                core.shut_down_queued(None)
            }
            Phase::Stopping | Phase::Cancelled => Vec::new(),
        });
        shared.stopping.cancel();
        shared.close();
        deliveries.into_iter().for_each(Delivery::deliver);
        self.wait_workers(timeout).await
    }

    /// Like [`stop`](Self::stop), but first runs every task that is due at
    /// the call, with its retries; tasks scheduled for later resolve as
    /// [`TaskError::Shutdown`](crate::TaskError::Shutdown) at once. On a cluster that never ran it is `stop`.
    ///
    /// A drain ends a [pause](Self::pause) (it could not finish otherwise),
    /// and a pause called during a drain does nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let due: Vec<_> = (0..3)
    ///     .map(|i| cluster.task(move |_ctx| async move { Ok::<_, String>(i) }).submit().unwrap())
    ///     .collect();
    /// let later = cluster
    ///     .task(|_ctx| async { Ok::<_, String>(99) })
    ///     .delay(Duration::from_secs(60))
    ///     .submit()
    ///     .unwrap();
    /// cluster.drain(Duration::from_secs(5)).await.unwrap();
    /// for (i, h) in due.into_iter().enumerate() {
    ///     assert_eq!(h.await, Ok(i)); // everything due ran
    /// }
    /// assert_eq!(later.await, Err(TaskError::Shutdown));
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`StopError::Timeout`] if work remained after `timeout`; everything
    /// left is then shut down as by [`cancel`](Self::cancel).
    /// [`StopError::FromInsideTask`] if called from one of the cluster's own
    /// task bodies: the drain has begun, but the call did not wait (see
    /// [`stop`](Self::stop)).
    pub async fn drain(&self, timeout: Duration) -> Result<(), StopError> {
        let shared = self.shared();
        let now = shared.clock.now();
        let mut resumed = false;
        let (deliveries, finished) = shared.locked(|core| match core.phase {
            Phase::Idle => (None, false),
            Phase::Running => {
                // A drain runs what is due to the end: it ends a pause.
                resumed = shared.resume_locked(core) | core.keys_paused_any();
                core.phase = Phase::Draining;
                let d = core.shut_down_queued(Some(now));
                (Some(d), core.drained())
            }
            Phase::Draining | Phase::Stopping | Phase::Cancelled => (Some(Vec::new()), false),
        });
        let Some(deliveries) = deliveries else {
            // Never ran: nothing is due on any worker.
            return self.stop(timeout).await;
        };
        if resumed {
            shared.flow.wake_resumed();
        }
        if finished {
            shared.close();
        }
        deliveries.into_iter().for_each(Delivery::deliver);
        self.wait_workers(timeout).await
    }

    async fn wait_workers(&self, timeout: Duration) -> Result<(), StopError> {
        let shared = self.shared();
        shared.tracker.close();
        if inside::is_inside(inside::key(shared)) {
            // Waiting would wait for the caller's own worker.
            return Err(StopError::FromInsideTask);
        }
        if tokio::time::timeout(timeout, shared.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let running = shared.lock().running();
        shared.cancel_all();
        Err(StopError::Timeout { running, timeout })
    }

    /// Immediate stop: every running attempt is cancelled (async ones are
    /// dropped), every pending task and waiting subscriber is answered with
    /// [`TaskError::Shutdown`](crate::TaskError::Shutdown), and the workers exit. Does not wait; follow
    /// with [`stop`](Self::stop) to wait for the workers to be gone.
    pub fn cancel(&self) {
        self.shared().cancel_all();
    }

    /// Counts of the tasks the cluster holds. Cheap (one lock); `held`
    /// returns to zero once everything has settled and caches have expired
    /// (also on a stopped cluster: expired outcomes are dropped here then).
    pub fn stats(&self) -> ClusterStats {
        self.shared().locked(|core| core.stats())
    }

    /// The latest progress report of the task `id` ([`TaskContext::progress`]):
    /// `None` if the task made none, or if the cluster does not hold it
    /// (unknown, or finished and not cached: a finished task's report stays
    /// readable here while its outcome is cached, and from its handle while
    /// the handle lives). See [`Progress`](crate::Progress) for an example.
    pub fn progress(&self, id: impl Into<TaskId>) -> Option<crate::Progress> {
        let id = id.into();
        let job = self.shared().locked(|core| core.find(&id))?;
        let progress = job.progress();
        // The last reference if the cache let go meanwhile.
        drop_guarded(job, "a finished task");
        progress
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared();
        let (phase, stats, workers) = {
            let core = shared.lock();
            (core.phase, core.stats(), core.flow.target())
        };
        f.debug_struct("Cluster")
            .field("workers", &workers)
            .field("phase", &phase)
            .field("stats", &stats)
            .finish()
    }
}

/// Spawns worker `index` on `runtime`, under the cluster's tracker.
pub(crate) fn spawn_worker(shared: &Arc<Shared>, index: u16, runtime: &tokio::runtime::Handle) {
    let worker = worker(shared.clone(), index);
    shared
        .tracker
        .spawn_on(inside::worker(shared, worker), runtime);
}
