//! The one narrow interface between the durable layer and a database:
//! bytes (JSON text) and ids, never the user's job types.
//!
//! Glossary:
//! - **lease**: a worker process's registration, renewed by heartbeats. A
//!   lease whose expiry has passed is lost for good: a heartbeat never
//!   revives it (so a rescuer acting on any snapshot agrees with every later
//!   reader), and the worker registers a new one.
//! - **claim**: moving due `available` rows of a queue to `running` under a
//!   live lease, with the attempt incremented, in one statement.
//! - **fence**: every write of a running job names the job, its attempt and
//!   the lease; it applies only if the row is still `running` with that
//!   attempt and lease and the lease is alive. A refused write tells the
//!   writer it lost the job.
//! - **rescue**: requeueing running rows whose lease expired; self-guarding
//!   (it re-checks state and lease on the row it changes).
//! - **stage**: moving due `scheduled` rows to `available` (the leader does it
//!   at the earliest start time, so start times are not rounded to a period).
//!
//! Both stores implement the same states:
//! `scheduled -> available -> running -> (completed | failed | cancelled)`,
//! with `running -> scheduled/available` on a retry, a snooze, a stop or a
//! rescue.

pub(crate) mod memory;
#[cfg(test)]
mod model;
pub(crate) mod pg;
pub(crate) mod signals;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::error::StoreError;
use crate::id::JobId;

pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// The id of a worker's lease.
pub(crate) type LeaseId = i64;

/// When a new job may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// As soon as a worker is free.
    Now,
    /// At this wall-clock time (judged by the store's clock).
    At(SystemTime),
    /// This long after the insert, added by the store's clock.
    After(Duration),
}

/// A job to insert, already encoded and validated.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub(crate) key: Option<String>,
    /// Borrowed for the default queue: a batch allocates per row only its
    /// arguments (and key).
    pub(crate) queue: Cow<'static, str>,
    pub(crate) kind: Cow<'static, str>,
    pub(crate) args: String,
    pub(crate) priority: i32,
    pub(crate) start: Start,
    pub(crate) max_attempts: i32,
    pub(crate) timeout_ms: Option<i64>,
    /// The backoff as JSON (see `options::BackoffSpec`); borrowed for the
    /// default backoff.
    pub(crate) backoff: Cow<'static, str>,
    pub(crate) jitter: f32,
    pub(crate) retention_ms: i64,
    /// Retry mode `Immediate`: the worker waits out the backoff in its slot.
    pub(crate) immediate: bool,
}

/// A row a worker claimed: everything needed to run one attempt.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) id: JobId,
    pub(crate) key: Option<String>,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) args: String,
    /// The attempt this claim started (1 for the first).
    pub(crate) attempt: i32,
    /// Attempts lost to expired leases so far (they do not count against retries).
    pub(crate) lost: i32,
    pub(crate) max_attempts: i32,
    pub(crate) timeout_ms: Option<i64>,
    pub(crate) backoff: String,
    pub(crate) jitter: f32,
    pub(crate) immediate: bool,
    /// Where this row sits in the claim order.
    pub(crate) cursor: ClaimCursor,
}

/// What one claim took.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClaimBatch {
    /// The rows now running under the caller's lease, in claim order.
    pub(crate) rows: Vec<Claimed>,
    /// The claim came back short, yet due rows of the queue it may take
    /// were left: another session held them locked. No notice comes when
    /// such a lock goes, so the caller claims again after a backoff.
    pub(crate) skipped: bool,
}

/// What one stage did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Staged {
    /// Rows moved to `available` (`limit` of them: more may be due now).
    pub(crate) staged: u64,
    /// How long until the next scheduled row not yet due is due.
    pub(crate) next_due: Option<Duration>,
    /// Due rows stayed scheduled because another session held them
    /// locked: the caller stages again after a backoff.
    pub(crate) skipped: bool,
}

/// A position in a queue's claim order (priority descending, then start
/// time, then id): the last row of a full claim. The next claim may start
/// past it instead of walking again, from the front of the claim index,
/// the entries of rows claimed meanwhile (dead entries, while an open
/// snapshot holds back vacuum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClaimCursor {
    pub(crate) priority: i32,
    pub(crate) run_at: SystemTime,
    pub(crate) id: JobId,
}

/// How a running attempt's row is written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Final: `completed` with this output.
    Complete { output: String },
    /// Final: `failed` with this stored error.
    Fail { error: String },
    /// Final: `cancelled` (the body saw a cancel).
    Cancel,
    /// Back to the queue after `delay`; the attempt stays spent.
    Retry { delay: Duration, error: String },
    /// Back to the queue after `delay`; the attempt is given back.
    Snooze { delay: Duration },
    /// Back to the queue at once; the attempt is given back (a worker's stop).
    Release,
}

/// One fenced write.
#[derive(Debug, Clone)]
pub(crate) struct Finish {
    pub(crate) id: JobId,
    pub(crate) attempt: i32,
    pub(crate) action: Action,
}

/// What became of one fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Refused: the writer no longer holds the job (its lease expired or
    /// the job was rescued and moved on).
    Refused,
    /// Applied as asked.
    Applied,
    /// Applied, but a cancel request turned it into `cancelled`.
    CancelledInstead,
    /// Not written: another session held the row locked. The row is still
    /// the writer's; the write is tried again later (a row lock held for
    /// long must not hold up the writer's other results).
    Busy,
}

/// A finished job's stored outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawOutcome {
    Completed(String),
    Failed(String),
    Cancelled,
}

/// What a lookup by id found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lookup {
    /// Queued or running.
    Pending { kind: String },
    /// Finished and still retained.
    Done { kind: String, outcome: RawOutcome },
    /// The id was handed out once, and the row has been pruned.
    Expired,
    /// No such id was ever handed out.
    NotFound,
}

/// What a cancel did (the public `CancelOutcome` mirrors it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelResult {
    Cancelled,
    Requested,
    AlreadyFinished,
    NotFound,
}

/// The reply to a heartbeat.
#[derive(Debug, Clone, Default)]
pub(crate) struct Beat {
    /// `false`: the lease had expired; it is lost for good.
    pub(crate) alive: bool,
    /// This lease holds (or just took) the leader row.
    pub(crate) leader: bool,
    /// Running jobs of this lease that someone asked to cancel.
    pub(crate) cancels: Vec<JobId>,
    /// Another lease holds the leader row: how long until it expires (this
    /// worker contends again then, so a dead leader is replaced at once).
    pub(crate) leader_expires_in: Option<Duration>,
    /// This lease leads: how long until another lease expires (zero: one
    /// already has, its running rows may need a rescue).
    pub(crate) rescue_in: Option<Duration>,
    /// This lease leads: how long until the earliest finished row is due
    /// for pruning (zero: some are due now).
    pub(crate) prune_in: Option<Duration>,
    /// Running rows of this lease the worker does not hold, with their
    /// attempt: a claim committed but its answer never arrived. The worker
    /// gives them back.
    pub(crate) unknown: Vec<(JobId, i32)>,
}

/// Counts of jobs by queue and state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RawStats {
    pub(crate) rows: Vec<(String, String, i64)>,
}

/// The interface both stores implement. Object safe: the client and the
/// worker hold an `Arc<dyn Store>`.
pub(crate) trait Store: Send + Sync + 'static {
    /// Inserts jobs in one statement; returns their ids in order.
    /// A live key already present fails the whole batch with `DuplicateKey`.
    fn insert(&self, jobs: Vec<NewJob>) -> BoxFut<'_, StoreResult<Vec<JobId>>>;
    /// Registers a new lease that expires after `ttl` unless renewed.
    fn register(&self, ttl: Duration) -> BoxFut<'_, StoreResult<LeaseId>>;
    /// Renews a lease (only if still alive), contends for the leader row,
    /// reports cancel requests for the lease's running jobs, and the
    /// lease's running rows the worker does not know: claimed by a claim
    /// numbered below `settled_below` (all of which have answered) and not
    /// among `held` (a claim whose answer was lost).
    fn heartbeat(
        &self,
        lease: LeaseId,
        ttl: Duration,
        held: Vec<i64>,
        settled_below: i64,
    ) -> BoxFut<'_, StoreResult<Beat>>;
    /// Ends a lease at a clean stop (its running rows, if any, are rescued later).
    fn retire(&self, lease: LeaseId) -> BoxFut<'_, StoreResult<()>>;
    /// Claims up to `limit` due rows of `queue` whose kind is in `kinds`,
    /// stamping them with the caller's claim number `claim_no`. With `after`, only rows of the cursor's priority past it in claim
    /// order (a hint: a store may ignore it; the caller makes a claim
    /// without it whenever one with it comes back short). Says whether a
    /// short claim without `after` passed over due rows held locked.
    fn claim<'a>(
        &'a self,
        lease: LeaseId,
        queue: &'a str,
        kinds: &'a [String],
        limit: usize,
        after: Option<ClaimCursor>,
        claim_no: i64,
    ) -> BoxFut<'a, StoreResult<ClaimBatch>>;
    /// Applies fenced writes in one statement; the fate of each, in order.
    fn finish(&self, lease: LeaseId, batch: Vec<Finish>) -> BoxFut<'_, StoreResult<Vec<Fate>>>;
    /// Finds a job by id.
    fn lookup(&self, id: JobId) -> BoxFut<'_, StoreResult<Lookup>>;
    /// The newest job with this key, live first.
    fn find_key<'a>(&'a self, key: &'a str) -> BoxFut<'a, StoreResult<Option<JobId>>>;
    /// Cancels a job wherever it is.
    fn cancel(&self, id: JobId) -> BoxFut<'_, StoreResult<CancelResult>>;
    /// Counts by queue and state.
    fn stats(&self) -> BoxFut<'_, StoreResult<RawStats>>;
    /// Moves up to `limit` due scheduled rows to available (see [`Staged`]).
    fn stage(&self, limit: i64) -> BoxFut<'_, StoreResult<Staged>>;
    /// Requeues running rows of expired leases; returns how many, and how
    /// long until the next live lease other than `own` (the caller's,
    /// which it keeps renewing) expires: when the next rescue may have work.
    fn rescue(&self, own: LeaseId) -> BoxFut<'_, StoreResult<(u64, Option<Duration>)>>;
    /// Deletes up to `limit` finished rows past their retention.
    fn prune(&self, limit: i64) -> BoxFut<'_, StoreResult<u64>>;
    /// The wake-up signals of this store (work per queue, finished ids,
    /// cancel requests, scheduled rows).
    fn signals(&self) -> &std::sync::Arc<signals::Signals>;
    /// The PostgreSQL store behind this one, for submits in a caller's transaction.
    fn pg(&self) -> Option<&pg::PgStore> {
        None
    }
}
