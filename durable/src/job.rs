//! The job model: a job is a type whose value is its (serialized) arguments,
//! and whose code (run, retry decision, backoff, hooks) ships with the worker.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{CompleteError, JobError};
use crate::id::JobId;
use crate::store::pg::PgStore;
use crate::store::{Fate, LeaseId};

/// What an attempt's body returns: the output, or how it ended otherwise.
pub type JobResult<T, E> = Result<T, Ending<E>>;

/// How an attempt ends when it does not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending<E> {
    /// A failure worth retrying (if retries remain and `retry_if` agrees),
    /// after the job's backoff.
    Retry(E),
    /// A failure never retried.
    Permanent(E),
    /// A failure retried after exactly `delay` (if retries remain and
    /// `retry_if` agrees), instead of the backoff.
    RetryAfter {
        /// The body's error.
        error: E,
        /// How long to wait before the next attempt.
        delay: Duration,
    },
    /// Not a failure: run again after `delay` without spending an attempt.
    Snooze(Duration),
}

impl<E> From<E> for Ending<E>
where
    E: std::error::Error,
{
    /// `?` on an error type makes a retryable failure.
    fn from(error: E) -> Self {
        Ending::Retry(error)
    }
}

/// A durable job type.
///
/// The value is the job's arguments, serialized as JSON (a `jsonb` column in
/// PostgreSQL, so SQL can read and insert jobs). [`KIND`](Job::KIND) names
/// the type in the store and must stay stable: rename the Rust type freely,
/// and when the kind itself must change, keep the old name in
/// [`ALIASES`](Job::ALIASES) until no row of it remains.
///
/// Where the in-process builder took closures, a job has code: [`run`](Job::run),
/// the retry decision [`retry_if`](Job::retry_if), a custom [`backoff`](Job::backoff)
/// and the hooks [`on_complete`](Job::on_complete) / [`on_failure`](Job::on_failure).
/// Everything else (priority, start time, timeout, retries, backoff, jitter,
/// retention) is data given at enqueue.
///
/// ```
/// use corral_durable::{Ending, Job, JobContext, JobResult};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String }
///
/// impl Job for SendEmail {
///     const KIND: &'static str = "send_email";
///     type Output = u32;
///     type Error = String;
///
///     async fn run(&self, ctx: JobContext) -> JobResult<u32, String> {
///         if self.to.is_empty() {
///             return Err(Ending::Permanent("no recipient".into()));
///         }
///         Ok(ctx.attempt())
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name of this job type in the store.
    const KIND: &'static str;
    /// Former kind names that still run as this type.
    const ALIASES: &'static [&'static str] = &[];
    /// The output of a successful attempt (stored as JSON).
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The body's error type (stored as JSON).
    type Error: Serialize + DeserializeOwned + Send + 'static;

    /// Runs one attempt. Dropped (cancelled) at a timeout, a cancel, or a
    /// worker's stop timeout; do not rely on code after an `.await` running.
    ///
    /// CPU-bound or blocking work belongs in `tokio::task::spawn_blocking`,
    /// awaited here: the attempt keeps its slot while it runs. A blocking
    /// call cut short by a timeout keeps running on its thread; poll
    /// [`JobContext::is_cancelled`] in it to stop early.
    fn run(
        &self,
        ctx: JobContext,
    ) -> impl Future<Output = JobResult<Self::Output, Self::Error>> + Send;

    /// Whether a failed attempt (a [`Ending::Retry`] or
    /// [`Ending::RetryAfter`] error, a panic or a timeout) is retried, when
    /// retries remain. `attempt` is the attempt that failed (1-based).
    ///
    /// # Default
    /// `true`: every such failure is retried.
    fn retry_if(&self, error: &JobError<Self::Error>, attempt: u32) -> bool {
        let _ = (error, attempt);
        true
    }

    /// A delay before the retry after `attempt` (1-based) failed, replacing
    /// the enqueued backoff; `None` keeps it.
    ///
    /// # Default
    /// `None`.
    fn backoff(&self, attempt: u32) -> Option<Duration> {
        let _ = attempt;
        None
    }

    /// Called on the worker once the job's final outcome is stored, whatever
    /// it is. A panic here is caught and logged.
    fn on_complete(&self, id: JobId, outcome: &Result<Self::Output, JobError<Self::Error>>) {
        let _ = (id, outcome);
    }

    /// Called on the worker once a final failure (not a success) is stored,
    /// before `on_complete`.
    fn on_failure(&self, id: JobId, error: &JobError<Self::Error>) {
        let _ = (id, error);
    }
}

/// What an attempt knows about itself.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) key: Option<String>,
    pub(crate) attempt: u32,
    pub(crate) queue: String,
    pub(crate) token: CancellationToken,
    pub(crate) fence: Option<Arc<InBody>>,
}

/// What a body needs to write its own completion (PostgreSQL only), and
/// whether it did.
#[derive(Debug)]
pub(crate) struct InBody {
    pub(crate) store: PgStore,
    pub(crate) lease: LeaseId,
    pub(crate) attempt: i32,
    /// The id of the body's transaction in which a completion was applied
    /// (`0`: none). That transaction may still commit or roll back: should
    /// the worker's own write then be refused, the transaction's status
    /// says whether the body completed the job or the lease was lost.
    pub(crate) applied_in: AtomicI64,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The key given at enqueue, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The attempt number, from 1. It counts every claim of the job by a
    /// worker: every attempt started, and also every one lost with a
    /// worker, even a claim whose worker died before the body started (the
    /// store cannot tell the two apart). A snooze or a worker's stop gives
    /// its attempt back.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The queue the job was claimed from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// `"{id}:{attempt}"`: a key for the body's own writes, unique per
    /// attempt, so a write made twice (at least once execution) can be
    /// recognised.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.id, self.attempt)
    }

    /// Writes this attempt's completion with `output` inside the caller's
    /// PostgreSQL transaction (on the store's database), fenced like every
    /// write of a running job, so
    /// that the body's own writes and the completion commit together
    /// (effectively once for database side effects). Then commit, and return
    /// `Ok(output)` from the body as usual; the worker sees that the row is
    /// already complete. On an error, roll the transaction back.
    ///
    /// ```no_run
    /// # use corral_durable::{Ending, Job, JobContext, JobResult};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Pay { cents: i64 }
    /// # impl Job for Pay {
    /// #   const KIND: &'static str = "pay"; type Output = i64; type Error = String;
    /// async fn run(&self, ctx: JobContext) -> JobResult<i64, String> {
    ///     let (mut db, conn) = tokio_postgres::connect("postgres://app", tokio_postgres::NoTls)
    ///         .await
    ///         .map_err(|e| Ending::Retry(e.to_string()))?;
    ///     tokio::spawn(conn);
    ///     let tx = db.transaction().await.map_err(|e| Ending::Retry(e.to_string()))?;
    ///     tx.execute("INSERT INTO payments (key, cents) VALUES ($1, $2)",
    ///                &[&ctx.idempotency_key(), &self.cents])
    ///         .await
    ///         .map_err(|e| Ending::Retry(e.to_string()))?;
    ///     ctx.complete_in(&tx, &self.cents).await.map_err(|e| Ending::Retry(e.to_string()))?;
    ///     tx.commit().await.map_err(|e| Ending::Retry(e.to_string()))?;
    ///     Ok(self.cents)
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// See [`CompleteError`]; the transaction must then be rolled back.
    pub async fn complete_in<T: Serialize>(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        output: &T,
    ) -> Result<(), CompleteError> {
        let Some(fence) = &self.fence else {
            return Err(CompleteError::NotPostgres);
        };
        let text =
            serde_json::to_string(output).map_err(|e| CompleteError::Encode(e.to_string()))?;
        match fence
            .store
            .complete_in(tx, fence.lease, self.id, fence.attempt, text)
            .await?
        {
            (Fate::Applied, xid) => {
                // Only an applied write, in a transaction that commits, makes
                // the worker's own (refused) write count as finalized.
                fence.applied_in.store(xid, Ordering::Release);
                Ok(())
            }
            (Fate::CancelledInstead, _) => Err(CompleteError::Cancelled),
            (Fate::Refused, _) => Err(CompleteError::LeaseLost),
            // Not answered in a caller's transaction (its statement waits
            // for a lock instead); were it, the write did not apply.
            (Fate::Busy, _) => Err(CompleteError::LeaseLost),
        }
    }

    /// `true` once the attempt was asked to stop (timeout, cancel, stop).
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the attempt is asked to stop. Cancel safe.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}

/// The stored form of a job's error (the `error` column).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StoredError {
    Failed(serde_json::Value),
    Panicked(String),
    TimedOut { limit_ms: u64 },
    Abandoned { attempts: u32 },
    Undecodable(String),
}

impl StoredError {
    pub(crate) fn encode<E: Serialize>(error: &JobError<E>) -> String {
        let stored = match error {
            JobError::Failed(e) => match serde_json::to_value(e) {
                Ok(v) => StoredError::Failed(v),
                Err(err) => StoredError::Undecodable(format!("error does not serialize: {err}")),
            },
            JobError::Panicked { message } => StoredError::Panicked(message.clone()),
            JobError::TimedOut { limit } => StoredError::TimedOut {
                limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            },
            JobError::Abandoned { attempts } => StoredError::Abandoned {
                attempts: *attempts,
            },
            JobError::Undecodable { message } => StoredError::Undecodable(message.clone()),
            // Cancels and expiries are states, not stored errors.
            JobError::Cancelled | JobError::Expired => StoredError::Undecodable(error_kind(error)),
        };
        let text = serde_json::to_string(&stored).expect("a stored error always serializes");
        if crate::error::has_nul(&text) {
            let stored = StoredError::Undecodable(
                "the error holds a NUL character, which the store cannot keep".into(),
            );
            return serde_json::to_string(&stored).expect("a stored error always serializes");
        }
        text
    }

    pub(crate) fn decode<E: DeserializeOwned>(text: &str) -> JobError<E> {
        let stored: StoredError = match serde_json::from_str(text) {
            Ok(s) => s,
            Err(e) => {
                return JobError::Undecodable {
                    message: format!("stored error: {e}"),
                }
            }
        };
        match stored {
            StoredError::Failed(v) => match serde_json::from_value(v) {
                Ok(e) => JobError::Failed(e),
                Err(e) => JobError::Undecodable {
                    message: format!("stored error: {e}"),
                },
            },
            StoredError::Panicked(message) => JobError::Panicked { message },
            StoredError::TimedOut { limit_ms } => JobError::TimedOut {
                limit: Duration::from_millis(limit_ms),
            },
            StoredError::Abandoned { attempts } => JobError::Abandoned { attempts },
            StoredError::Undecodable(message) => JobError::Undecodable { message },
        }
    }
}

fn error_kind<E>(e: &JobError<E>) -> String {
    match e {
        JobError::Cancelled => "cancelled".into(),
        _ => "expired".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_errors_round_trip() {
        let cases: Vec<JobError<String>> = vec![
            JobError::Failed("boom".into()),
            JobError::Panicked {
                message: "p".into(),
            },
            JobError::TimedOut {
                limit: Duration::from_millis(1500),
            },
            JobError::Abandoned { attempts: 7 },
        ];
        for case in cases {
            let text = StoredError::encode(&case);
            assert_eq!(StoredError::decode::<String>(&text), case);
        }
        assert!(matches!(
            StoredError::decode::<u32>(r#"{"failed":"not a number"}"#),
            JobError::Undecodable { .. }
        ));
    }
}
