//! The producer side: enqueue (alone, in a batch, or in the caller's
//! transaction), await or subscribe to outcomes, cancel, stats.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use corral::RetryMode;

use crate::error::{JobError, StoreError, SubmitError, SubscribeError};
use crate::id::{JobId, JobRef};
use crate::job::{Job, StoredError};
use crate::options::Backoff;
use crate::store::{CancelResult, Lookup, NewJob, RawOutcome, Start, Store};
use crate::{MemoryStore, PgStore};

/// The longest user-given job id (key), in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// The longest queue name, in bytes. PostgreSQL sends a queue's name in
/// its notices (at most 8000 bytes each) and keeps it in the claim index (a
/// few KiB an entry): a longer name would fail the statements that stage
/// or notify every queue's rows, not just its own.
pub const MAX_QUEUE_LEN: usize = 1024;

/// Why `queue` cannot name a queue, if it cannot: the same rule for every
/// store, at submit and at a worker's start.
pub(crate) fn check_queue(queue: &str) -> Result<(), &'static str> {
    if queue.is_empty() {
        Err("must not be empty")
    } else if queue.len() > MAX_QUEUE_LEN {
        Err("longer than MAX_QUEUE_LEN (1024) bytes")
    } else if queue.contains('\0') {
        // PostgreSQL's text cannot hold it.
        Err("holds a NUL character")
    } else {
        Ok(())
    }
}
/// The default limit on encoded arguments: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// How long a finished job's outcome is kept unless the job says otherwise: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// The queue used when none is given.
pub const DEFAULT_QUEUE: &str = "default";
/// How often a handle looks at its job when no notice came (a safety net).
const HANDLE_FALLBACK: Duration = Duration::from_secs(60);

/// A store, as the client and the worker take it: a [`MemoryStore`] or a
/// [`PgStore`] (by value or by reference).
#[derive(Clone)]
pub struct Backend(pub(crate) Arc<dyn Store>);

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.pg().is_some() {
            "Backend(PgStore)"
        } else {
            "Backend(MemoryStore)"
        })
    }
}

impl From<MemoryStore> for Backend {
    fn from(s: MemoryStore) -> Self {
        Backend(Arc::new(s))
    }
}

impl From<&MemoryStore> for Backend {
    fn from(s: &MemoryStore) -> Self {
        Backend(Arc::new(s.clone()))
    }
}

impl From<PgStore> for Backend {
    fn from(s: PgStore) -> Self {
        Backend(Arc::new(s))
    }
}

impl From<&PgStore> for Backend {
    fn from(s: &PgStore) -> Self {
        Backend(Arc::new(s.clone()))
    }
}

/// What [`Client::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// It was waiting; it will never run. Its outcome is [`JobError::Cancelled`].
    Cancelled,
    /// It is running in some worker, which is told to cut it short. Its
    /// outcome is [`JobError::Cancelled`] whatever the body does next.
    Requested,
    /// It had already finished; nothing changed.
    AlreadyFinished,
    /// No job has this id (or key), or it was pruned.
    NotFound,
}

/// Counts of one queue's jobs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting for their start time.
    pub scheduled: u64,
    /// Due, waiting for a worker.
    pub available: u64,
    /// Running on some worker.
    pub running: u64,
    /// Finished with an output (retained ones).
    pub completed: u64,
    /// Finished with an error (retained ones).
    pub failed: u64,
    /// Cancelled (retained ones).
    pub cancelled: u64,
}

/// The producer's handle on a store: enqueues, awaits, subscribes, cancels.
/// Needs no running worker. Cheap to clone.
///
/// ```
/// use corral_durable::{Client, Job, JobContext, JobResult, MemoryStore, Worker};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Add(u32, u32);
/// impl Job for Add {
///     const KIND: &'static str = "add";
///     type Output = u32;
///     type Error = String;
///     async fn run(&self, _ctx: JobContext) -> JobResult<u32, String> { Ok(self.0 + self.1) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let worker = Worker::builder(&store).register::<Add>().queue("default", 2).start().await.unwrap();
/// let client = Client::new(&store);
/// let handle = client.enqueue(Add(2, 3)).priority(5).submit().await.unwrap();
/// assert_eq!(handle.await, Ok(5));
/// worker.stop(std::time::Duration::from_secs(5)).await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    store: Backend,
    max_payload: usize,
}

impl Client {
    /// A client of `store`.
    pub fn new(store: impl Into<Backend>) -> Client {
        Client {
            store: store.into(),
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Sets the limit on encoded arguments (default [`DEFAULT_MAX_PAYLOAD`]).
    pub fn with_max_payload(mut self, bytes: usize) -> Client {
        self.max_payload = bytes;
        self
    }

    fn store(&self) -> &dyn Store {
        &*self.store.0
    }

    /// Starts building a job: `job` is its arguments.
    pub fn enqueue<J: Job>(&self, job: J) -> EnqueueBuilder<'_, J> {
        EnqueueBuilder {
            client: self,
            job,
            opts: Options::default(),
        }
    }

    /// Inserts many jobs in one statement. Each builder must come from this
    /// client. All are inserted or none (a bad option or a live key fails
    /// the whole batch).
    ///
    /// # Errors
    /// As [`EnqueueBuilder::submit`], for the first job that fails.
    pub async fn submit_batch<J: Job>(
        &self,
        jobs: Vec<EnqueueBuilder<'_, J>>,
    ) -> Result<Vec<JobHandle<J>>, SubmitError> {
        let rows = jobs
            .into_iter()
            .map(EnqueueBuilder::into_row)
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self.store().insert(rows).await?;
        Ok(ids.into_iter().map(|id| self.handle(id)).collect())
    }

    fn handle<J: Job>(&self, id: JobId) -> JobHandle<J> {
        JobHandle {
            client: self.clone(),
            id,
            _job: PhantomData,
        }
    }

    async fn resolve(&self, job: JobRef) -> Result<Option<JobId>, StoreError> {
        match job {
            JobRef::Id(id) => Ok(Some(id)),
            JobRef::Key(key) => self.store().find_key(&key).await,
        }
    }

    /// A handle on a job submitted anywhere (by id or key), while it is
    /// pending or running, and after it finished while its outcome is
    /// retained.
    ///
    /// # Errors
    /// [`SubscribeError::NotFound`] if no job ever had this id, or no
    /// retained job has this key (a key is forgotten when its job's row is
    /// pruned: by key, a pruned job is `NotFound`),
    /// [`SubscribeError::Expired`] if the job of this id was pruned after
    /// its retention (ids are never reused, so a pruned one is told from
    /// one never handed out),
    /// [`SubscribeError::KindMismatch`] if it is not a `J`,
    /// [`SubscribeError::Store`] if the store cannot be reached.
    pub async fn subscribe<J: Job>(
        &self,
        job: impl Into<JobRef>,
    ) -> Result<JobHandle<J>, SubscribeError> {
        let job = job.into();
        let Some(id) = self.resolve(job.clone()).await? else {
            return Err(SubscribeError::NotFound(job));
        };
        let kind = match self.store().lookup(id).await? {
            Lookup::Pending { kind } | Lookup::Done { kind, .. } => kind,
            Lookup::Expired => return Err(SubscribeError::Expired(id)),
            Lookup::NotFound => return Err(SubscribeError::NotFound(job)),
        };
        if kind != J::KIND && !J::ALIASES.contains(&kind.as_str()) {
            return Err(SubscribeError::KindMismatch {
                expected: J::KIND,
                found: kind,
            });
        }
        Ok(self.handle(id))
    }

    /// Cancels a job wherever it is, from any process.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be reached.
    pub async fn cancel(&self, job: impl Into<JobRef>) -> Result<CancelOutcome, StoreError> {
        let Some(id) = self.resolve(job.into()).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        Ok(match self.store().cancel(id).await? {
            CancelResult::Cancelled => CancelOutcome::Cancelled,
            CancelResult::Requested => CancelOutcome::Requested,
            CancelResult::AlreadyFinished => CancelOutcome::AlreadyFinished,
            CancelResult::NotFound => CancelOutcome::NotFound,
        })
    }

    /// Counts of jobs per queue and state. On PostgreSQL one grouped count:
    /// live states read small partial indexes; finished rows are counted as
    /// long as they are retained, so a long retention makes this dearer.
    ///
    /// # Errors
    /// [`StoreError`] if the store cannot be reached.
    pub async fn stats(&self) -> Result<BTreeMap<String, QueueStats>, StoreError> {
        let raw = self.store().stats().await?;
        let mut out: BTreeMap<String, QueueStats> = BTreeMap::new();
        for (queue, state, n) in raw.rows {
            let q = out.entry(queue).or_default();
            let n = u64::try_from(n).unwrap_or(0);
            match state.as_str() {
                "scheduled" => q.scheduled += n,
                "available" => q.available += n,
                "running" => q.running += n,
                "completed" => q.completed += n,
                "failed" => q.failed += n,
                _ => q.cancelled += n,
            }
        }
        Ok(out)
    }

    /// Waits for job `id` to be final, then decodes its outcome.
    async fn outcome<J: Job>(&self, id: JobId) -> Result<J::Output, JobError<J::Error>> {
        let signals = self.store().signals().clone();
        let mut waiter = signals.done(id);
        let mut backoff = Duration::from_millis(50);
        loop {
            waiter.mark_seen();
            match self.store().lookup(id).await {
                Ok(Lookup::Done { outcome, .. }) => return decode::<J>(outcome),
                Ok(Lookup::Expired | Lookup::NotFound) => return Err(JobError::Expired),
                Ok(Lookup::Pending { .. }) => {
                    backoff = Duration::from_millis(50);
                    tokio::select! {
                        () = waiter.changed() => {}
                        () = tokio::time::sleep(HANDLE_FALLBACK) => {}
                    }
                }
                Err(e) => {
                    // The store is down: keep trying (with backoff) rather
                    // than give the caller an outcome the job may not have.
                    tracing::warn!(error = %e, job = %id, "cannot read job outcome; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn decode<J: Job>(outcome: RawOutcome) -> Result<J::Output, JobError<J::Error>> {
    match outcome {
        RawOutcome::Completed(text) => {
            serde_json::from_str(&text).map_err(|e| JobError::Undecodable {
                message: format!("stored output of {}: {e}", J::KIND),
            })
        }
        RawOutcome::Failed(text) => Err(StoredError::decode(&text)),
        RawOutcome::Cancelled => Err(JobError::Cancelled),
    }
}

#[derive(Debug, Clone)]
struct Options {
    key: Option<String>,
    queue: Cow<'static, str>,
    priority: i32,
    start: Start,
    timeout: Option<Duration>,
    retries: u32,
    backoff: Backoff,
    jitter: f64,
    retention: Duration,
    immediate: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            key: None,
            queue: Cow::Borrowed(DEFAULT_QUEUE),
            priority: 0,
            start: Start::Now,
            timeout: None,
            retries: 0,
            backoff: Backoff::default(),
            jitter: 0.0,
            retention: DEFAULT_RETENTION,
            immediate: false,
        }
    }
}

/// Configures one job; [`submit`](Self::submit) inserts it. Every option is
/// data stored with the row, checked at submit.
///
/// # Default
/// | option | default |
/// |---|---|
/// | `id` | none (the store's [`JobId`] only) |
/// | `queue` | [`DEFAULT_QUEUE`] |
/// | `priority` | `0` (higher runs first) |
/// | start | now |
/// | `timeout` | none |
/// | `retry` | `0` retries (one attempt; an attempt lost with a worker is run again regardless) |
/// | `backoff` | [`Backoff::Fixed`] of zero |
/// | `jitter` | none |
/// | `retry_mode` | [`RetryMode::Requeue`] |
/// | `retention` | [`DEFAULT_RETENTION`] (24 hours) |
#[must_use = "a builder does nothing until `submit` is called"]
pub struct EnqueueBuilder<'c, J> {
    client: &'c Client,
    job: J,
    opts: Options,
}

impl<J> fmt::Debug for EnqueueBuilder<'_, J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnqueueBuilder")
            .field("options", &self.opts)
            .finish_non_exhaustive()
    }
}

impl<J: Job> EnqueueBuilder<'_, J> {
    /// A key naming the job, unique among live (scheduled, available,
    /// running) jobs: submitting a live key again is
    /// [`SubmitError::DuplicateId`]. A finished job's key may be reused.
    pub fn id(mut self, key: impl Into<String>) -> Self {
        self.opts.key = Some(key.into());
        self
    }

    /// The queue (workers say which queues they serve): a name of 1 to
    /// [`MAX_QUEUE_LEN`] bytes without NUL, checked at submit
    /// ([`SubmitError::InvalidOption`]).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.opts.queue = Cow::Owned(queue.into());
        self
    }

    /// Higher priorities run first; then earlier start times; then insertion order.
    pub fn priority(mut self, priority: i32) -> Self {
        self.opts.priority = priority;
        self
    }

    /// Not started before this wall-clock time, as judged by the store's
    /// clock (the database server's, for PostgreSQL). At most 100 years
    /// ahead; any time in the past (however far) means due now.
    pub fn start_at(mut self, at: SystemTime) -> Self {
        self.opts.start = Start::At(at);
        self
    }

    /// Not started before `delay` after the insert, added by the store's clock.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.opts.start = Start::After(delay);
        self
    }

    /// Each attempt may run at most this long (zero is rejected).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opts.timeout = Some(timeout);
        self
    }

    /// Retries failed attempts up to `retries` times.
    pub fn retry(mut self, retries: u32) -> Self {
        self.opts.retries = retries;
        self
    }

    /// The delay before each retry (the job's [`Job::backoff`] overrides it).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.opts.backoff = backoff;
        self
    }

    /// Where a retry waits: [`RetryMode::Requeue`] (the default) frees the
    /// slot and requeues the job with start time `now + backoff`;
    /// [`RetryMode::Immediate`] keeps the slot (and the lease) while the
    /// backoff passes, then requeues it due at once (a worker's stop ends
    /// the wait early and requeues with the rest of the delay).
    pub fn retry_mode(mut self, mode: RetryMode) -> Self {
        self.opts.immediate = mode == RetryMode::Immediate;
        self
    }

    /// Multiplies each retry delay by a factor in `[1 - ratio, 1 + ratio]`
    /// (`0.0..=1.0`).
    pub fn jitter(mut self, ratio: f64) -> Self {
        self.opts.jitter = ratio;
        self
    }

    /// How long the outcome is kept after the job finished.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.opts.retention = retention;
        self
    }

    fn into_row(self) -> Result<NewJob, SubmitError> {
        let o = self.opts;
        if let Some(key) = &o.key {
            if key.is_empty() {
                return Err(SubmitError::InvalidId("the id is empty"));
            }
            if key.len() > MAX_KEY_LEN {
                return Err(SubmitError::InvalidId(
                    "the id is longer than MAX_KEY_LEN (1024) bytes",
                ));
            }
        }
        let invalid = |option, reason| Err(SubmitError::InvalidOption { option, reason });
        if let Err(reason) = check_queue(&o.queue) {
            return invalid("queue", reason);
        }
        if o.timeout == Some(Duration::ZERO) {
            return invalid("timeout", "must be greater than zero");
        }
        if !(0.0..=1.0).contains(&o.jitter) {
            return invalid("jitter", "must be a ratio between 0.0 and 1.0");
        }
        if o.retries >= i32::MAX as u32 {
            return invalid("retry", "must be below 2^31 - 1");
        }
        if let Err(reason) = o.backoff.validate() {
            return invalid("backoff", reason);
        }
        let millis = |d: Duration| i64::try_from(d.as_millis()).ok();
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        if o.retention > CENTURY {
            return invalid("retention", "more than 100 years");
        }
        let Some(retention_ms) = millis(o.retention) else {
            return invalid("retention", "too large");
        };
        let timeout_ms = match o.timeout.map(millis) {
            None => None,
            Some(Some(ms)) => Some(ms.max(1)),
            Some(None) => return invalid("timeout", "too large"),
        };
        match o.start {
            Start::After(d) if d > CENTURY => {
                return invalid("delay", "more than 100 years");
            }
            Start::At(at)
                if at
                    .duration_since(SystemTime::now())
                    .is_ok_and(|ahead| ahead > CENTURY) =>
            {
                return invalid("start_at", "more than 100 years ahead");
            }
            _ => {}
        }
        let args =
            serde_json::to_string(&self.job).map_err(|e| SubmitError::Encode(e.to_string()))?;
        if crate::error::has_nul(&args) {
            return Err(SubmitError::Encode(
                "the arguments hold a NUL character, which the store cannot keep".into(),
            ));
        }
        if args.len() > self.client.max_payload {
            return Err(SubmitError::PayloadTooLarge {
                size: args.len(),
                limit: self.client.max_payload,
            });
        }
        Ok(NewJob {
            key: o.key,
            queue: o.queue,
            kind: Cow::Borrowed(J::KIND),
            args,
            priority: o.priority,
            start: o.start,
            max_attempts: o.retries as i32 + 1,
            timeout_ms,
            backoff: encode_backoff(&o.backoff),
            jitter: o.jitter as f32,
            retention_ms,
            immediate: o.immediate,
        })
    }

    /// Validates the options and inserts the job.
    ///
    /// # Errors
    /// [`SubmitError::InvalidId`], [`SubmitError::InvalidOption`],
    /// [`SubmitError::Encode`], [`SubmitError::PayloadTooLarge`] before
    /// anything is sent; [`SubmitError::DuplicateId`] for a live key;
    /// [`SubmitError::Store`] if the store cannot be reached.
    pub async fn submit(self) -> Result<JobHandle<J>, SubmitError> {
        let client = self.client;
        let row = self.into_row()?;
        let ids = client.store().insert(vec![row]).await?;
        Ok(client.handle(ids[0]))
    }

    /// Inserts the job inside the caller's transaction (PostgreSQL only): it
    /// exists, and workers are notified, only if the transaction commits.
    /// Await the handle after the commit: before it (and after a rollback)
    /// the job is invisible to others, and the handle answers
    /// [`JobError::Expired`].
    ///
    /// # Errors
    /// As [`submit`](Self::submit); [`SubmitError::InvalidOption`] for a
    /// client that is not on a [`PgStore`].
    pub async fn submit_in(
        self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<JobHandle<J>, SubmitError> {
        let client = self.client;
        let Some(pg) = client.store().pg() else {
            return Err(SubmitError::InvalidOption {
                option: "transaction",
                reason: "submitting in a transaction needs a PgStore",
            });
        };
        let row = self.into_row()?;
        let ids = pg.insert_with(tx, None, &[row]).await?;
        Ok(client.handle(ids[0]))
    }
}

/// A backoff as JSON; the default one encoded once per process.
fn encode_backoff(backoff: &Backoff) -> Cow<'static, str> {
    static DEFAULT: OnceLock<String> = OnceLock::new();
    let encode = |b: &Backoff| serde_json::to_string(b).expect("a backoff serializes");
    if *backoff == Backoff::default() {
        Cow::Borrowed(DEFAULT.get_or_init(|| encode(backoff)))
    } else {
        Cow::Owned(encode(backoff))
    }
}

/// A typed handle on a job's outcome; `.await` it. Resolves in any process,
/// not only the one that runs the job, as long as the outcome is retained
/// (then [`JobError::Expired`]).
///
/// Waits through store outages (retrying with backoff); wrap it in a
/// timeout if you need a bound. Cancel safe. Cheap to clone.
#[must_use = "a handle does nothing unless awaited"]
pub struct JobHandle<J> {
    client: Client,
    id: JobId,
    _job: PhantomData<fn() -> J>,
}

impl<J> Clone for JobHandle<J> {
    fn clone(&self) -> Self {
        JobHandle {
            client: self.client.clone(),
            id: self.id,
            _job: PhantomData,
        }
    }
}

impl<J> fmt::Debug for JobHandle<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobHandle").field("id", &self.id).finish()
    }
}

impl<J> JobHandle<J> {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
}

impl<J: Job> IntoFuture for JobHandle<J> {
    type Output = Result<J::Output, JobError<J::Error>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.client.outcome::<J>(self.id).await })
    }
}
