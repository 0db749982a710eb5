//! One attempt of a claimed job: decode, run on the engine (no engine
//! retries: the durable layer decides), and turn how it ended into a fenced
//! write plus the hooks to call once that write is accepted.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use corral::{Cluster, TaskError};
use tokio_util::sync::CancellationToken;

use crate::error::JobError;
use crate::id::JobId;
use crate::job::{Ending, InBody, Job, JobContext, JobResult, StoredError};
use crate::options::{jittered, Backoff};
use crate::store::{Action, BoxFut, Claimed};

/// What the store kept of an attempt's write, for its hooks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Written {
    /// The write as the attempt asked.
    AsAsked,
    /// A cancel request turned it into `cancelled`.
    Cancelled,
    /// The database refused its data: the job failed instead, with an
    /// `Undecodable` error saying why (this message).
    Failed(String),
}

/// Called once the write is accepted, with what was kept of it.
pub(crate) type Hooks = Box<dyn FnOnce(JobId, Written) + Send>;

/// A job type with its type erased, as the worker's registry holds it.
pub(crate) trait ErasedJob: Send + Sync + 'static {
    /// Runs one attempt of `claimed` on `cluster` as engine task `task_id`;
    /// `stopping` (a worker's stop) and `interrupt` (a cancel request, a
    /// lost lease) end an immediate-mode retry wait early.
    fn run(
        &self,
        cluster: Cluster,
        claimed: Claimed,
        task_id: String,
        stopping: CancellationToken,
        interrupt: CancellationToken,
        in_body: Option<Arc<InBody>>,
    ) -> BoxFut<'static, (Action, Hooks)>;
}

pub(crate) struct Erased<J>(PhantomData<fn() -> J>);

impl<J> Erased<J> {
    pub(crate) fn new() -> Self {
        Erased(PhantomData)
    }
}

fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::error!("a job's {what} panicked; ignored");
            None
        }
    }
}

/// Hooks for a final outcome.
fn final_hooks<J: Job>(job: Arc<J>, outcome: Result<J::Output, JobError<J::Error>>) -> Hooks {
    Box::new(move |id, written| {
        let outcome = match written {
            Written::AsAsked => outcome,
            Written::Cancelled => Err(JobError::Cancelled),
            Written::Failed(message) => Err(JobError::Undecodable { message }),
        };
        if let Err(e) = &outcome {
            guarded("on_failure", || job.on_failure(id, e));
        }
        guarded("on_complete", || job.on_complete(id, &outcome));
    })
}

/// Hooks for a non-final write: they run only if the store made it final
/// (a cancel request, or its data refused).
fn requeue_hooks<J: Job>(job: Arc<J>) -> Hooks {
    Box::new(move |id, written| {
        if written != Written::AsAsked {
            final_hooks::<J>(job, Err(JobError::Cancelled))(id, written);
        }
    })
}

fn fail<J: Job>(job: Arc<J>, error: JobError<J::Error>) -> (Action, Hooks) {
    let action = Action::Fail {
        error: StoredError::encode(&error),
    };
    (action, final_hooks::<J>(job, Err(error)))
}

impl<J: Job> ErasedJob for Erased<J> {
    fn run(
        &self,
        cluster: Cluster,
        c: Claimed,
        task_id: String,
        stopping: CancellationToken,
        interrupt: CancellationToken,
        in_body: Option<Arc<InBody>>,
    ) -> BoxFut<'static, (Action, Hooks)> {
        Box::pin(async move {
            let job: J = match serde_json::from_str(&c.args) {
                Ok(job) => job,
                Err(e) => {
                    // Nothing to call hooks on: the value does not exist.
                    let error: JobError<J::Error> = JobError::Undecodable {
                        message: format!("arguments of {}: {e}", J::KIND),
                    };
                    let action = Action::Fail {
                        error: StoredError::encode(&error),
                    };
                    return (action, Box::new(|_, _| {}) as Hooks);
                }
            };
            let job = Arc::new(job);
            let attempt = u32::try_from(c.attempt).unwrap_or(0);
            let body_job = job.clone();
            let base = JobContext {
                id: c.id,
                key: c.key.clone(),
                attempt,
                queue: c.queue.clone(),
                token: Default::default(),
                fence: in_body,
            };
            let mut builder = cluster
                .task(move |tctx| {
                    let job = body_job.clone();
                    let ctx = JobContext {
                        token: tctx.cancellation_token(),
                        ..base.clone()
                    };
                    async move { Ok::<_, Infallible>(job.run(ctx).await) }
                })
                .id(task_id);
            let limit = c
                .timeout_ms
                .map(|ms| Duration::from_millis(ms.max(1) as u64));
            if let Some(limit) = limit {
                builder = builder.timeout(limit);
            }
            let ended = match builder.submit() {
                Ok(handle) => handle.await,
                // The engine is shutting down: give the claim back.
                Err(corral::SubmitError::ShuttingDown) => Err(TaskError::Shutdown),
                Err(e) => {
                    // Not expected (each run's task id is unique). Given back
                    // at once, the row would be claimed by this worker again
                    // and refused again, in a hot loop: it waits a while
                    // instead, without spending its attempt.
                    tracing::error!(error = %e, job = %c.id, retry_in = ?REFUSED_PAUSE, "corral-durable engine refused an attempt");
                    return (
                        Action::Snooze {
                            delay: REFUSED_PAUSE,
                        },
                        requeue_hooks::<J>(job),
                    );
                }
            };
            let (action, hooks) = decide::<J>(job, &c, ended);
            match clamp(action) {
                Action::Retry { delay, error } if c.immediate && !delay.is_zero() => {
                    // Immediate mode: wait out the backoff in this slot.
                    let now = tokio::time::Instant::now();
                    let until = now
                        .checked_add(delay)
                        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
                    // A stop requeues with the rest of the delay; so do a
                    // cancel request (the fenced write then turns it into
                    // `cancelled`) and a lost lease (the write is refused).
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = stopping.cancelled() => {}
                        () = interrupt.cancelled() => {}
                    }
                    let rest = until.saturating_duration_since(tokio::time::Instant::now());
                    (Action::Retry { delay: rest, error }, hooks)
                }
                action => (action, hooks),
            }
        })
    }
}

/// How long a row whose attempt the engine refused waits before it is
/// claimed again.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// The longest delay a retry or snooze is stored with: longer ones (up to
/// `Duration::MAX` from a saturating backoff) would overflow a timestamp.
const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn clamp(action: Action) -> Action {
    match action {
        Action::Retry { delay, error } => Action::Retry {
            delay: delay.min(MAX_DELAY),
            error,
        },
        Action::Snooze { delay } => Action::Snooze {
            delay: delay.min(MAX_DELAY),
        },
        other => other,
    }
}

/// How the engine task of one attempt ended.
type Ended<J> = Result<JobResult<<J as Job>::Output, <J as Job>::Error>, TaskError<Infallible>>;

/// The durable retry decision (the engine ran the attempt with no retries).
fn decide<J: Job>(job: Arc<J>, c: &Claimed, ended: Ended<J>) -> (Action, Hooks) {
    let attempt = u32::try_from(c.attempt).unwrap_or(0);
    let (error, delay) = match ended {
        Ok(Ok(output)) => {
            return match serde_json::to_string(&output) {
                Ok(text) if crate::error::has_nul(&text) => fail::<J>(
                    job,
                    JobError::Undecodable {
                        message: format!(
                            "output of {} holds a NUL character, which the store cannot keep",
                            J::KIND
                        ),
                    },
                ),
                Ok(text) => (
                    Action::Complete { output: text },
                    final_hooks::<J>(job, Ok(output)),
                ),
                Err(e) => fail::<J>(
                    job,
                    JobError::Undecodable {
                        message: format!("output of {} does not serialize: {e}", J::KIND),
                    },
                ),
            };
        }
        Ok(Err(Ending::Permanent(e))) => return fail::<J>(job, JobError::Failed(e)),
        Ok(Err(Ending::Snooze(delay))) => {
            return (Action::Snooze { delay }, requeue_hooks::<J>(job))
        }
        Ok(Err(Ending::Retry(e))) => (JobError::Failed(e), None),
        Ok(Err(Ending::RetryAfter { error, delay })) => (JobError::Failed(error), Some(delay)),
        Err(TaskError::Panicked { message }) => (JobError::Panicked { message }, None),
        Err(TaskError::TimedOut { limit }) => (JobError::TimedOut { limit }, None),
        Err(TaskError::Cancelled) => {
            return (
                Action::Cancel,
                final_hooks::<J>(job, Err(JobError::Cancelled)),
            )
        }
        // A worker's stop (or its engine going away): the attempt is given
        // back, not failed.
        Err(_) => return (Action::Release, requeue_hooks::<J>(job)),
    };
    // Attempts lost with a worker do not count against the retries.
    let spent = c.attempt - c.lost;
    let wanted = spent < c.max_attempts
        && guarded("retry_if", || job.retry_if(&error, attempt)).unwrap_or(false);
    if !wanted {
        return fail::<J>(job, error);
    }
    let delay = delay
        .or_else(|| guarded("backoff", || job.backoff(attempt)).flatten())
        .unwrap_or_else(|| {
            let backoff: Backoff = serde_json::from_str(&c.backoff).unwrap_or_default();
            let index = u32::try_from(spent - 1).unwrap_or(0);
            jittered(backoff.delay(index), f64::from(c.jitter))
        });
    let action = Action::Retry {
        delay,
        error: StoredError::encode(&error),
    };
    (action, requeue_hooks::<J>(job))
}
