//! The worker: claims rows of the kinds it registered, runs attempts on
//! corral's in-process [`Cluster`], heartbeats its lease, finalizes in
//! fenced batches, and stops without failing jobs.
//!
//! Background tasks of one worker (each survives store outages with capped
//! backoff and logs them):
//! - one **claim loop** per queue (`claim.rs`): claims as many rows as the
//!   queue has free slots, in one statement, when a notice came, a slot
//!   freed after a full claim, or the fallback poll fired;
//! - one task per **attempt** (`attempt.rs`), holding its slot;
//! - the **finalizer** (`finalize.rs`): writes every finished attempt that
//!   is waiting in one fenced statement;
//! - the **heartbeat** (`lease.rs`): renews the lease every third of its
//!   TTL while the worker holds claimed rows, every two thirds while it
//!   holds none; learns leadership and cancel requests; a lost lease cuts
//!   local attempts short and registers a new one;
//! - the **leader** duties (`lease.rs`), while this worker holds the leader
//!   row: stage scheduled rows at their time, rescue expired leases, prune,
//!   each only when it can have work.
//!
//! Stop protocol: claim loops end first; then the engine's `stop(timeout)`
//! lets running attempts finish and cuts the rest short at the timeout,
//! which gives their attempts back (`Release`); the finalizer flushes; the
//! lease is retired.

mod attempt;
mod claim;
mod finalize;
mod lease;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral::Cluster;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::attempt::{Erased, ErasedJob};
use crate::client::Backend;
use crate::error::WorkerError;
use crate::id::JobId;
use crate::job::Job;
use crate::store::{Claimed, LeaseId, Store};

/// The default lease TTL: a worker silent this long is presumed dead and its
/// jobs are rescued.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// The longest lease TTL a worker accepts (365 days): a longer one would
/// only delay the rescue of a dead worker's jobs, and overflow the stores'
/// clocks at `Duration::MAX`.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Configures a [`Worker`].
///
/// # Default
/// | option | default |
/// |---|---|
/// | job types | none (at least one is required) |
/// | queues | none (at least one is required) |
/// | `lease_ttl` | [`DEFAULT_LEASE_TTL`] (30 s; heartbeats every 10 s while running jobs, every 20 s when idle) |
/// | `prune_interval` | 60 s |
#[must_use = "a builder does nothing until `start` is called"]
pub struct WorkerBuilder {
    store: Backend,
    jobs: HashMap<String, Arc<dyn ErasedJob>>,
    queues: Vec<(String, usize)>,
    ttl: Duration,
    prune_every: Duration,
    stage_batch: i64,
    prune_batch: i64,
}

/// Finished rows deleted per prune statement.
const PRUNE_BATCH: i64 = 1000;

/// Scheduled rows the leader stages per statement.
const STAGE_BATCH: i64 = 10_000;

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("kinds", &self.jobs.keys().collect::<Vec<_>>())
            .field("queues", &self.queues)
            .field("lease_ttl", &self.ttl)
            .finish()
    }
}

impl WorkerBuilder {
    /// Runs jobs of type `J` (its kind and aliases). A worker claims only
    /// the kinds it registered; others wait for a worker that knows them.
    pub fn register<J: Job>(mut self) -> Self {
        let erased: Arc<dyn ErasedJob> = Arc::new(Erased::<J>::new());
        for kind in std::iter::once(J::KIND).chain(J::ALIASES.iter().copied()) {
            self.jobs.insert(kind.to_owned(), erased.clone());
        }
        self
    }

    /// Serves `queue` with up to `slots` attempts at once. The name follows
    /// the submit's rule (1 to [`MAX_QUEUE_LEN`](crate::MAX_QUEUE_LEN) bytes,
    /// no NUL), checked at [`start`](Self::start).
    pub fn queue(mut self, queue: impl Into<String>, slots: usize) -> Self {
        self.queues.push((queue.into(), slots));
        self
    }

    /// The lease TTL (at least 300 ms, at most [`MAX_LEASE_TTL`]). Heartbeats go every third of it
    /// while the worker holds claimed jobs, every two thirds while it holds
    /// none (an idle worker's lease guards nothing; losing it would only
    /// mean registering again).
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often the leader deletes finished rows past their retention (in
    /// batches of 1,000, at most 10 batches a round; a round that deleted
    /// all it could is followed by the next at once, until none is left).
    /// Rounds run only while rows finish or some are due (the leader's
    /// heartbeat reports the earliest): an idle leader does not prune. Any
    /// interval is accepted; one too long to add to the clock (up to
    /// `Duration::MAX`) means no rounds on a schedule.
    pub fn prune_interval(mut self, every: Duration) -> Self {
        self.prune_every = every;
        self
    }

    /// Scheduled rows the leader stages per statement (default 10,000; a
    /// full batch is followed by another at once). For tests.
    #[doc(hidden)]
    pub fn stage_batch(mut self, rows: u32) -> Self {
        self.stage_batch = i64::from(rows.max(1));
        self
    }

    /// Finished rows the leader deletes per statement (default 1,000; a
    /// round of full statements is followed by another at once). For tests.
    #[doc(hidden)]
    pub fn prune_batch(mut self, rows: u32) -> Self {
        self.prune_batch = i64::from(rows.max(1));
        self
    }

    /// Registers the lease and starts the background tasks.
    ///
    /// # Errors
    /// [`WorkerError::Config`] for no job type, no queue, a queue with zero
    /// slots or an invalid name, or a TTL too short or over
    /// [`MAX_LEASE_TTL`];
    /// [`WorkerError::Start`] outside a tokio runtime; [`WorkerError::Store`]
    /// if the lease cannot be registered, or
    /// ([`StoreError::SchemaBehind`](crate::StoreError::SchemaBehind)) the
    /// PostgreSQL schema lacks migrations of this build.
    pub async fn start(self) -> Result<Worker, WorkerError> {
        if self.jobs.is_empty() {
            return Err(WorkerError::Config("no job type registered"));
        }
        if self.queues.is_empty() {
            return Err(WorkerError::Config("no queue given"));
        }
        if self.queues.iter().any(|(_, n)| *n == 0) {
            return Err(WorkerError::Config("every queue needs at least one slot"));
        }
        if self
            .queues
            .iter()
            .any(|(q, _)| crate::client::check_queue(q).is_err())
        {
            return Err(WorkerError::Config(
                "every queue needs a name of at most MAX_QUEUE_LEN (1024) bytes, without NUL",
            ));
        }
        if self.ttl < Duration::from_millis(300) {
            return Err(WorkerError::Config("the lease TTL must be at least 300 ms"));
        }
        if self.ttl > MAX_LEASE_TTL {
            // Checked here, the same for every store: the memory store's
            // clock would overflow, PostgreSQL's interval would not.
            return Err(WorkerError::Config(
                "the lease TTL must be at most 365 days",
            ));
        }
        let store = self.store.0;
        if let Some(pg) = store.pg() {
            // A schema behind this build fails every claim: say so now.
            pg.check_schema().await?;
        }
        let slots: usize = self.queues.iter().map(|(_, n)| n).sum();
        let cluster = start_cluster(slots)?;
        let lease = store.register(self.ttl).await?;
        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        let mut kinds: Vec<String> = self.jobs.keys().cloned().collect();
        kinds.sort();
        let shared = Arc::new(Shared {
            store,
            jobs: self.jobs,
            kinds,
            cluster,
            ttl: self.ttl,
            prune_every: self.prune_every,
            stage_batch: self.stage_batch,
            prune_batch: self.prune_batch,
            lease: AtomicI64::new(lease),
            lease_renewed: tokio::sync::watch::Sender::new(0),
            running: Mutex::default(),
            runs: AtomicU64::new(0),
            finish_tx,
            leader: AtomicBool::new(false),
            leader_changed: tokio::sync::Notify::new(),
            claiming: CancellationToken::new(),
            halt: CancellationToken::new(),
            attempts: TaskTracker::new(),
            counters: Counters::default(),
            book: Mutex::default(),
            busy: tokio::sync::Notify::new(),
            hints: tokio::sync::watch::Sender::new(lease::Hints::default()),
        });
        let loops = TaskTracker::new();
        for (queue, n) in self.queues {
            loops.spawn(claim::claim_loop(shared.clone(), queue, n));
        }
        loops.close();
        let background = TaskTracker::new();
        background.spawn(lease::heartbeat(shared.clone()));
        background.spawn(lease::lead(shared.clone()));
        background.close();
        let finalizer = tokio::spawn(finalize::finalizer(shared.clone(), finish_rx));
        Ok(Worker {
            shared,
            loops,
            background,
            finalizer: Mutex::new(Some(finalizer)),
        })
    }
}

/// Starts the local engine: `slots` workers, no engine retries (each
/// durable attempt is one engine task). A cluster built inside a runtime
/// starts at once; `run` then is a no-op, and it is what reports a missing
/// runtime.
fn start_cluster(slots: usize) -> Result<Cluster, WorkerError> {
    let cluster = Cluster::new(slots).map_err(|_| WorkerError::Config("too many slots"))?;
    match cluster.run() {
        Ok(()) => Ok(cluster),
        Err(_) => Err(WorkerError::Start("the engine needs a tokio runtime")),
    }
}

/// The claims of one worker and the rows they gave it.
#[derive(Debug, Default)]
struct ClaimBook {
    /// The next claim's number.
    next: i64,
    /// Claims sent and not answered yet.
    in_flight: BTreeSet<i64>,
    /// Rows claimed and not yet written back: (job, attempt) -> runs not
    /// yet written back. A count, not a set: a snooze gives the attempt
    /// back, so this worker may claim the same (job, attempt) again before
    /// the snoozed run's write is unheld, and that late unhold must not
    /// forget the new run (the heartbeat would give the running row back as
    /// unknown).
    held: HashMap<(JobId, i32), u32>,
}

#[derive(Debug, Default)]
struct Counters {
    finalized: AtomicU64,
    lost: AtomicU64,
    leases_lost: AtomicU64,
}

/// What a worker has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Writes of finished attempts the store accepted.
    pub finalized: u64,
    /// Writes refused because this worker no longer held the job (its lease
    /// expired; another worker may have run it). Each is logged.
    pub lost: u64,
    /// Times this worker found its lease expired and registered a new one.
    pub leases_lost: u64,
}

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    jobs: HashMap<String, Arc<dyn ErasedJob>>,
    kinds: Vec<String>,
    cluster: Cluster,
    ttl: Duration,
    prune_every: Duration,
    stage_batch: i64,
    prune_batch: i64,
    lease: AtomicI64,
    /// Bumped after a new lease is stored: a claim made with the lost lease
    /// came back empty, so every claim loop looks again.
    lease_renewed: tokio::sync::watch::Sender<u64>,
    /// Running attempts: job -> engine task id, and the token that ends an
    /// immediate-mode retry wait (for cancels and a lost lease).
    running: Mutex<HashMap<JobId, (String, CancellationToken)>>,
    /// Numbers the runs of this worker: each run's engine task id is unique
    /// (a snoozed job runs again with the same id and attempt, maybe while
    /// the engine still knows the last run's task id; a duplicate id would
    /// be refused, and a refused run is given back and claimed again).
    runs: AtomicU64,
    finish_tx: mpsc::UnboundedSender<finalize::Item>,
    leader: AtomicBool,
    leader_changed: tokio::sync::Notify,
    /// Cancelled first at a stop: no more claims.
    claiming: CancellationToken,
    /// Cancelled last: heartbeat and leader duties end.
    halt: CancellationToken,
    attempts: TaskTracker,
    counters: Counters,
    /// Claims in flight and the rows claimed and not yet written back.
    book: Mutex<ClaimBook>,
    /// The heartbeat's wake-up when the worker starts holding rows.
    busy: tokio::sync::Notify,
    /// What the leader's last heartbeat learned (when a rescue or a prune
    /// can have work), for the leader's duties.
    hints: tokio::sync::watch::Sender<lease::Hints>,
}

impl Shared {
    fn lease(&self) -> LeaseId {
        self.lease.load(Ordering::Acquire)
    }

    /// A claim is about to be sent: its number.
    fn begin_claim(&self) -> i64 {
        let mut book = self.book.lock();
        let no = book.next;
        book.next += 1;
        book.in_flight.insert(no);
        no
    }

    /// Claim `no` answered with `rows` (none if it failed: rows it may
    /// have claimed anyway are unknown to this worker, and the heartbeat
    /// gives them back). The rows are held before the claim stops being in
    /// flight, so a heartbeat never sees them as neither.
    fn end_claim(&self, no: i64, rows: &[Claimed]) {
        let mut book = self.book.lock();
        let was_idle = book.held.is_empty();
        for r in rows {
            *book.held.entry((r.id, r.attempt)).or_insert(0) += 1;
        }
        book.in_flight.remove(&no);
        if was_idle && !book.held.is_empty() {
            self.busy.notify_one();
        }
    }

    /// A claimed row was written back (or given up): one run of it is no
    /// longer held. A later claim of the same (job, attempt) stays held.
    fn unhold(&self, id: JobId, attempt: i32) {
        let mut book = self.book.lock();
        if let Some(n) = book.held.get_mut(&(id, attempt)) {
            *n -= 1;
            if *n == 0 {
                book.held.remove(&(id, attempt));
            }
        }
    }

    /// Whether the worker holds claimed rows (then its lease guards them).
    fn is_busy(&self) -> bool {
        !self.book.lock().held.is_empty()
    }

    /// For a heartbeat: the ids held, and the number below which every
    /// claim has answered (read together, under the lock).
    fn held_and_settled(&self) -> (Vec<i64>, i64) {
        let book = self.book.lock();
        let below = book.in_flight.first().copied().unwrap_or(book.next);
        (book.held.keys().map(|(id, _)| id.0).collect(), below)
    }

    /// Cuts a local attempt short (a cancel from another process, or a
    /// lost lease). The only call of the engine's cancel.
    fn cancel_local(&self, id: JobId) {
        let task = self.running.lock().get(&id).cloned();
        if let Some((task, interrupt)) = task {
            // The body, if it still runs; else a retry wait in the slot.
            interrupt.cancel();
            let _ = self.cluster.cancel_task(task.as_str());
        }
    }
}

/// A running worker. Stop it with [`stop`](Self::stop); dropping it stops
/// claiming at once and cuts running attempts short without waiting: those
/// whose release is not written are rescued once the lease TTL passes.
///
/// ```
/// # use corral_durable::{Job, JobContext, JobResult, MemoryStore, Worker};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Noop;
/// # impl Job for Noop {
/// #     const KIND: &'static str = "noop"; type Output = (); type Error = ();
/// #     async fn run(&self, _ctx: JobContext) -> JobResult<(), ()> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let worker = Worker::builder(&store)
///     .register::<Noop>()
///     .queue("default", 4)
///     .start()
///     .await
///     .unwrap();
/// worker.stop(std::time::Duration::from_secs(10)).await;
/// # }
/// ```
pub struct Worker {
    shared: Arc<Shared>,
    loops: TaskTracker,
    background: TaskTracker,
    finalizer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("lease", &self.shared.lease())
            .field("kinds", &self.shared.kinds)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Worker {
    /// A builder for a worker of `store`.
    pub fn builder(store: impl Into<Backend>) -> WorkerBuilder {
        WorkerBuilder {
            store: store.into(),
            jobs: HashMap::new(),
            queues: Vec::new(),
            ttl: DEFAULT_LEASE_TTL,
            prune_every: Duration::from_secs(60),
            stage_batch: STAGE_BATCH,
            prune_batch: PRUNE_BATCH,
        }
    }

    /// Counters of what this worker did.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.shared.counters;
        WorkerStats {
            finalized: c.finalized.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            leases_lost: c.leases_lost.load(Ordering::Relaxed),
        }
    }

    /// The id of this worker's current lease (the `workers` row).
    pub fn lease_id(&self) -> i64 {
        self.shared.lease()
    }

    /// Stops without failing jobs: claims stop at once; running attempts
    /// may finish until `timeout`, then are cut short and requeued without
    /// spending their attempt; results are written (for up to `timeout`
    /// more, if the store is down or hangs); the lease is retired (waiting
    /// up to `timeout` once more; else it expires, and its jobs are
    /// rescued). Safe to call more than once.
    pub async fn stop(&self, timeout: Duration) {
        let shared = &self.shared;
        shared.claiming.cancel();
        self.loops.wait().await;
        // Attempts still running at the timeout resolve as shut down, which
        // `attempt::decide` turns into a release (attempt given back).
        if let Err(e) = shared.cluster.stop(timeout).await {
            tracing::info!(error = %e, "corral-durable worker cut attempts short at its stop timeout");
        }
        shared.attempts.close();
        shared.attempts.wait().await;
        // Every attempt task has queued its write; the finalizer drains the
        // channel and ends once this (last) sender set is closed.
        shared.halt.cancel();
        let finalizer = self.finalizer.lock().take();
        if let Some(mut f) = finalizer {
            // The finalizer retries through store outages; with the store
            // gone for good it gives up after `timeout` more, and the rows
            // are rescued once the lease expires.
            if tokio::time::timeout(timeout, &mut f).await.is_err() {
                f.abort();
                tracing::warn!(
                    "corral-durable worker could not write its last results; they will be rescued"
                );
            }
        }
        self.background.wait().await;
        // Bounded too: a server that hangs (no answer, connection open)
        // would hold the stop forever; an unretired lease just expires.
        match tokio::time::timeout(timeout, shared.store.retire(shared.lease())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "corral-durable worker could not retire its lease; it will expire");
            }
            Err(_) => {
                tracing::warn!("corral-durable worker's store did not answer its retire; the lease will expire");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.claiming.cancel();
        self.shared.halt.cancel();
        self.shared.cluster.cancel();
    }
}

#[cfg(test)]
mod tests;
