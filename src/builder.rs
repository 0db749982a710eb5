//! The task builder: every option of a task, validated at `submit`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::{Backoff, RetryDecision};
use crate::body::Body;
use crate::cell::{Extras, TaskCell};
use crate::clock::duration_ticks;
use crate::cluster::Cluster;
use crate::dedup::{join_or_submit, Duplicate, Joined, JoinedSlot, Window};
use crate::deps::After;
use crate::engine::{Engine, NewTask, Phase};
use crate::error::{SubmitError, TaskError};
use crate::handle::TaskHandle;
use crate::job::{Cloner, Job, Outcome, OutcomeSlot, Policy};
use crate::panic::drop_guarded;
use crate::queue::Stamp;
use crate::task::TaskId;

/// The longest user-given task id, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// Where a failed task waits for its retry.
///
/// # Default
/// [`RetryMode::Requeue`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryMode {
    /// The worker is freed; the task goes back to the queue with start time
    /// `now + backoff` and its original priority.
    #[default]
    Requeue,
    /// The worker waits for the backoff and retries at once, keeping its slot.
    Immediate,
}

#[derive(Debug, Clone, Copy)]
enum Start {
    Now,
    At(Instant),
    After(Duration),
}

/// Configures one task; [`submit`](TaskBuilder::submit) queues it.
///
/// Made by [`Cluster::task`] (async body) or [`Cluster::blocking_task`]
/// (blocking body). Setters consume and return the builder; values are
/// checked at `submit`, which reports the first bad one.
///
/// # Default
/// | option | default |
/// |---|---|
/// | `id` | generated, unique for the cluster's life |
/// | `priority` | `0` (higher runs first) |
/// | start | now (as soon as a worker is free) |
/// | `timeout` | none |
/// | `retry` | `0` retries (one attempt) |
/// | `backoff` | [`FixedBackoff`](crate::FixedBackoff) of zero |
/// | `jitter` | none |
/// | `retry_if` / `retry_with` | retry every failure, panic and timeout, after the backoff delay |
/// | `retry_mode` | [`RetryMode::Requeue`] |
/// | `cacheable` | off; when on, kept for the cluster's retention (5 minutes unless set) |
#[must_use = "a task builder does nothing until `submit` is called"]
pub struct TaskBuilder<'c, B, T, E> {
    cluster: &'c Cluster,
    body: B,
    blocking: bool,
    id: Option<TaskId>,
    priority: i32,
    start: Start,
    timeout: Option<Duration>,
    retries: u32,
    mode: RetryMode,
    /// `Some(None)`: cached for the cluster's default retention.
    cache: Option<Option<Duration>>,
    /// Boxed on first use: it goes into the task as is, and a plain task
    /// (the common case) never allocates it.
    extras: Option<Box<Extras<T, E>>>,
    cloner: Option<Cloner<T, E>>,
}

impl<'c, B, T, E> TaskBuilder<'c, B, T, E> {
    fn extras(&mut self) -> &mut Extras<T, E> {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Sets the crate's own completion hook (a batch's, see `crate::batch`),
    /// which the user's `on_complete` does not replace.
    pub(crate) fn settled(
        mut self,
        hook: impl Fn(&TaskId, &Outcome<T, E>) + Send + Sync + 'static,
    ) -> Self {
        self.extras().settled = Some(Arc::new(hook));
        self
    }

    pub(crate) fn new(cluster: &'c Cluster, body: B, blocking: bool) -> Self {
        TaskBuilder {
            cluster,
            body,
            blocking,
            id: None,
            priority: 0,
            start: Start::Now,
            timeout: None,
            retries: 0,
            mode: RetryMode::Requeue,
            cache: None,
            extras: None,
            cloner: None,
        }
    }

    /// Names the task. At most one pending or running task may hold a name;
    /// a finished one's name may be reused (replacing its cached outcome).
    /// Empty ids, ids over [`MAX_ID_LEN`] bytes and ids starting with `#`
    /// (reserved for generated ids, see [`TaskId`]) are rejected at submit.
    pub fn id(mut self, id: impl Into<TaskId>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Higher priorities run first. Equal priorities run by start time, then
    /// in submission order.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The task is not started before `at`. A time in the past or now means
    /// "as soon as a worker is free"; an earlier start time still runs first
    /// among tasks of equal priority.
    pub fn start_at(mut self, at: Instant) -> Self {
        self.start = Start::At(at);
        self
    }

    /// The task is not started before `delay` has passed since `submit`.
    /// A start more than about 292 years after the cluster was made
    /// (`Duration::MAX` included) means never: the task is never due, on
    /// any clock, and stays pending until cancelled or shut down (a drain
    /// shuts it down at once).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.start = Start::After(delay);
        self
    }

    /// Each attempt may run at most `timeout`. An async attempt is then
    /// dropped; a blocking one is signalled (its [`TaskContext`](crate::TaskContext)
    /// reports [`CancelReason::TimedOut`](crate::CancelReason::TimedOut)) and
    /// keeps its worker until it returns. Zero is rejected at submit; a
    /// timeout too large to be an [`Instant`] means no timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries a failed attempt up to `retries` times (`retries + 1` attempts
    /// in all). Failures, panics and timeouts are retried; cancels and
    /// shutdowns never are.
    pub fn retry(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// The delay before each retry (see [`Backoff`]). A delay that ends more
    /// than about 292 years after the cluster was made (`Duration::MAX`
    /// included) means the retry never comes, in both [`RetryMode`]s: the task
    /// waits until cancelled or shut down (a drain shuts it down at once).
    pub fn backoff(mut self, backoff: impl Backoff) -> Self {
        self.extras().backoff = Some(Box::new(backoff));
        self
    }

    /// Multiplies each retry delay by a factor drawn uniformly from
    /// `[1 - ratio, 1 + ratio]`, after any cap of the backoff (so a delay
    /// capped at `max` may come out up to `max * (1 + ratio)`). The
    /// reference API's jitter is `0.1`. A ratio
    /// outside `0.0..=1.0` (or NaN) is rejected at submit.
    pub fn jitter(mut self, ratio: f64) -> Self {
        self.extras().jitter = ratio;
        self
    }

    /// Retries only the failures `predicate` accepts. It sees the error of
    /// the failed attempt: [`TaskError::Failed`], [`TaskError::Panicked`] or
    /// [`TaskError::TimedOut`] (so returning `false` for timeouts stops
    /// retrying them). A predicate that panics counts as `false`. It is only
    /// asked while retries remain (see [`retry`](Self::retry)).
    ///
    /// `retry_if(p)` is `retry_with(|err, _| if p(err) { Retry } else { Stop })`:
    /// the later of the two calls wins.
    ///
    /// ```
    /// use corral::{Cluster, TaskError};
    ///
    /// #[derive(Debug, Clone, PartialEq)]
    /// enum FetchError { Busy, NotFound }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let h = cluster
    ///     .task(|ctx| async move {
    ///         let err = if ctx.attempt() == 1 { FetchError::Busy } else { FetchError::NotFound };
    ///         Err::<String, _>(err)
    ///     })
    ///     .retry(5)
    ///     // A busy server is worth another try; a missing page is not.
    ///     .retry_if(|err| matches!(err, TaskError::Failed(FetchError::Busy) | TaskError::TimedOut { .. }))
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.await, Err(TaskError::Failed(FetchError::NotFound))); // 2 attempts, not 6
    /// # }
    /// ```
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&TaskError<E>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.extras().retry_with = Some(Box::new(move |err, _| {
            if predicate(err) {
                RetryDecision::Retry
            } else {
                RetryDecision::Stop
            }
        }));
        self
    }

    /// Decides each retry from the error: whether to retry, and after which
    /// delay. `decide` sees the error of the failed attempt (as for
    /// [`retry_if`](Self::retry_if)) and that attempt's number (1 for the
    /// first, as [`TaskContext::attempt`](crate::TaskContext::attempt)), and
    /// returns a [`RetryDecision`]: [`Retry`](RetryDecision::Retry) after the
    /// [`backoff`](Self::backoff) delay, [`RetryAfter(d)`](RetryDecision::RetryAfter)
    /// after exactly `d` (say, an HTTP `Retry-After`), or
    /// [`Stop`](RetryDecision::Stop). It is only asked while retries remain
    /// (see [`retry`](Self::retry)), and replaces an earlier `retry_if`
    /// (the later call wins). A `decide` that panics counts as `Stop`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, ExponentialBackoff, RetryDecision, TaskError};
    ///
    /// #[derive(Debug, Clone, PartialEq)]
    /// enum HttpError {
    ///     /// 429 or 503, with the server's `Retry-After`, if it sent one.
    ///     Unavailable { retry_after: Option<Duration> },
    ///     /// Any other status: retrying will not help.
    ///     Status(u16),
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let h = cluster
    ///     .task(|ctx| async move {
    ///         match ctx.attempt() {
    ///             1 => Err(HttpError::Unavailable { retry_after: Some(Duration::from_millis(30)) }),
    ///             2 => Err(HttpError::Unavailable { retry_after: None }),
    ///             _ => Ok("page"),
    ///         }
    ///     })
    ///     .retry(5)
    ///     .backoff(ExponentialBackoff::new(Duration::from_millis(10), 2.0))
    ///     .retry_with(|err, _attempt| match err {
    ///         TaskError::Failed(HttpError::Unavailable { retry_after: Some(d) }) => {
    ///             RetryDecision::RetryAfter(*d)
    ///         }
    ///         TaskError::Failed(HttpError::Unavailable { retry_after: None })
    ///         | TaskError::TimedOut { .. } => RetryDecision::Retry, // the backoff's delay
    ///         _ => RetryDecision::Stop,
    ///     })
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.await, Ok("page"));
    /// # }
    /// ```
    pub fn retry_with(
        mut self,
        decide: impl Fn(&TaskError<E>, u32) -> RetryDecision + Send + Sync + 'static,
    ) -> Self {
        self.extras().retry_with = Some(Box::new(decide));
        self
    }

    /// Where the retry waits: see [`RetryMode`].
    pub fn retry_mode(mut self, mode: RetryMode) -> Self {
        self.mode = mode;
        self
    }

    /// Called once with the final outcome, whatever it is, after
    /// `on_failure` and before the handle resolves. It runs on the thread
    /// that settles the task (usually a worker): keep it short. A panic in
    /// it is caught and logged.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use corral::Cluster;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let l = log.clone();
    /// let h = cluster
    ///     .task(|_ctx| async { Ok::<u32, String>(3) })
    ///     .id("count")
    ///     .on_complete(move |id, outcome| l.lock().unwrap().push(format!("{id}: {outcome:?}")))
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.await, Ok(3));
    /// assert_eq!(*log.lock().unwrap(), ["count: Ok(3)"]); // ran before the handle resolved
    /// # }
    /// ```
    pub fn on_complete(
        mut self,
        callback: impl Fn(&TaskId, &Result<T, TaskError<E>>) + Send + Sync + 'static,
    ) -> Self {
        self.extras().on_complete = Some(Box::new(callback));
        self
    }

    /// Called once if the final outcome is an error (failure, panic, timeout,
    /// cancel or shutdown), before `on_complete`; never per failed attempt.
    /// Same rules as [`on_complete`](Self::on_complete).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use corral::{Cluster, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let alerts = Arc::new(AtomicU32::new(0));
    /// let a = alerts.clone();
    /// let h = cluster
    ///     .task(|_ctx| async { Err::<(), _>("down") })
    ///     .retry(2) // three attempts, one final failure
    ///     .on_failure(move |id, err| {
    ///         eprintln!("alert: {id} failed: {err}");
    ///         a.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.await, Err(TaskError::Failed("down")));
    /// assert_eq!(alerts.load(Ordering::SeqCst), 1);
    /// # }
    /// ```
    pub fn on_failure(
        mut self,
        callback: impl Fn(&TaskId, &TaskError<E>) + Send + Sync + 'static,
    ) -> Self {
        self.extras().on_failure = Some(Box::new(callback));
        self
    }

    /// Ends an attempt that goes `limit` without a progress report
    /// ([`TaskContext::progress`](crate::TaskContext::progress); the
    /// attempt's start counts as one) with [`TaskError::Stalled`]. The
    /// attempt is stopped as by a [`timeout`](Self::timeout) (an async one
    /// is dropped, a blocking one is signalled with
    /// [`CancelReason::Stalled`](crate::CancelReason::Stalled)), and it
    /// counts as a failed attempt: it is retried like a timeout, if retries
    /// remain and `retry_if` / `retry_with` agree. Zero is rejected at submit.
    /// An attempt that parks in a wait that frees its worker
    /// ([`TaskContext::wait_for`](crate::TaskContext::wait_for)) is not
    /// watched for stalls from then on: it waits for another task, whose
    /// own limits apply.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let h = cluster
    ///     .task(|ctx| async move {
    ///         if ctx.attempt() == 1 {
    ///             std::future::pending::<()>().await; // hangs without a word
    ///         }
    ///         Ok::<_, String>(ctx.attempt())
    ///     })
    ///     .stall_timeout(Duration::from_millis(20))
    ///     .retry(1)
    ///     .keep_history()
    ///     .submit()
    ///     .unwrap();
    /// let (outcome, history) = h.with_history().await;
    /// assert_eq!(outcome, Ok(2));
    /// assert_eq!(history.errors(), [TaskError::Stalled { limit: Duration::from_millis(20) }]);
    /// # }
    /// ```
    pub fn stall_timeout(mut self, limit: Duration) -> Self {
        self.extras().stall = Some(limit);
        self
    }

    /// Keeps the task's attempt history (how many attempts started, and
    /// the errors of those before the final outcome) for
    /// [`TaskHandle::with_history`](crate::TaskHandle::with_history).
    /// Off by default: the errors of retried attempts are then dropped as
    /// soon as the next attempt's result replaces them, and nothing is
    /// counted. See [`History`](crate::History) for an example.
    pub fn keep_history(mut self) -> Self {
        self.extras().history = true;
        self
    }

    /// Paces the task by the limiter `limiter` (see
    /// [`Cluster::add_limiter`](crate::Cluster::add_limiter)), in its
    /// global bucket, which every task naming it with `limit` shares.
    ///
    /// A task may name several limiters (call `limit` or
    /// [`limit_by`](Self::limit_by) once per limiter): it starts only when
    /// all of them admit it at once, and is then charged to all of them
    /// (never to some only). Until then it is set aside: in no queue, on
    /// no worker, never polled, blocking no other task; it comes back into
    /// the queue with its place (priority, start time, submission order)
    /// at the instant its limiters admit it, and is checked again then.
    /// [`ClusterStats::waiting_on_limiter`](crate::ClusterStats::waiting_on_limiter)
    /// counts such tasks; [`cancel_task`](crate::Cluster::cancel_task),
    /// [`stop`](crate::Cluster::stop) and [`cancel`](crate::Cluster::cancel)
    /// end them at once, and [`drain`](crate::Cluster::drain) runs them as
    /// their limiters admit them (so it waits for them, up to its timeout).
    ///
    /// A limiter is charged when an attempt is about to start: once per
    /// task, and again for a [requeued](crate::RetryMode::Requeue) retry
    /// (an [immediate](crate::RetryMode::Immediate) retry keeps its worker
    /// and is not charged again).
    ///
    /// # Errors (at submit)
    /// [`SubmitError::UnknownLimiter`] if the cluster has no such limiter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, Rate};
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(4).unwrap();
    /// cluster.add_limiter("github", Rate::per_second(10).burst(2)).unwrap();
    /// let t0 = Instant::now();
    /// let handles: Vec<_> = (0..4)
    ///     .map(|_| {
    ///         cluster
    ///             .task(move |_| async move { Ok::<_, String>(t0.elapsed()) })
    ///             .limit("github")
    ///             .submit()
    ///             .unwrap()
    ///     })
    ///     .collect();
    /// let mut started = Vec::new();
    /// for h in handles {
    ///     started.push(h.await.unwrap());
    /// }
    /// // A burst of two, then one every 100 ms.
    /// let ms = |n| Duration::from_millis(n);
    /// assert_eq!(started, [ms(0), ms(0), ms(100), ms(200)]);
    /// # }
    /// ```
    pub fn limit(mut self, limiter: impl Into<Arc<str>>) -> Self {
        let limits = self.extras().limits.get_or_insert_with(Box::default);
        limits.add(limiter.into(), None);
        self
    }

    /// Paces the task by the limiter `limiter`, in the bucket of `key`:
    /// each key value has a bucket of its own, at the limiter's rate (say,
    /// 5 calls per second per customer). Otherwise as
    /// [`limit`](Self::limit), whose rules apply (several limiters, when
    /// the task is charged, errors at submit). A task may name the same
    /// limiter by key and globally: both buckets must admit it.
    ///
    /// ```
    /// use corral::{Cluster, Rate};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(2).unwrap();
    /// cluster.add_limiter("per-customer", Rate::per_second(1).burst(1)).unwrap();
    /// cluster.add_limiter("api", Rate::per_second(100)).unwrap();
    /// for customer in [7, 7, 8] {
    ///     cluster
    ///         .task(|_| async { Ok::<_, String>(()) })
    ///         .limit_by("per-customer", customer.to_string())
    ///         .limit("api") // and the API's global rate
    ///         .submit()
    ///         .unwrap();
    /// }
    /// tokio::task::yield_now().await;
    /// // Customer 8 did not wait for customer 7's second task.
    /// assert_eq!(cluster.stats().waiting_on_limiter, 1);
    /// # }
    /// ```
    pub fn limit_by(mut self, limiter: impl Into<Arc<str>>, key: impl Into<Arc<str>>) -> Self {
        let limits = self.extras().limits.get_or_insert_with(Box::default);
        limits.add(limiter.into(), Some(key.into()));
        self
    }

    /// The key options, made on first use (`crate::keys` sets them).
    pub(crate) fn key_slot(&mut self) -> &mut crate::keys::KeyOptions {
        self.extras()
            .key
            .get_or_insert_with(crate::keys::KeyOptions::unset)
    }

    /// Starts the task only after `parent` has finished (call it once per
    /// parent). Until then the task is in no queue and holds no worker.
    /// `parent` is a handle (`&handle`: a typed edge, whose outcome the body
    /// reads with [`TaskContext::parent`](crate::TaskContext::parent)), an
    /// [`After`] (by id, typed or not, with an [`OnParentFailure`](crate::OnParentFailure)
    /// policy), or a node of the same [`Graph`](crate::Graph).
    ///
    /// A parent that failed (error, panic, timeout, cancel, shutdown, or a
    /// failure of its own parents) resolves the task at once as
    /// [`TaskError::Dependency`] by default, naming the parent and how it
    /// ended; see [`OnParentFailure`](crate::OnParentFailure) for running
    /// it anyway or skipping it. A parent that already finished and is still
    /// cached counts as it stands. A start time or delay still applies: the
    /// task is due at the later of its start time and its last parent's end.
    ///
    /// A task still waiting for its parents is cancelled by
    /// [`cancel_task`](Cluster::cancel_task) at once; [`stop`](Cluster::stop)
    /// and [`cancel`](Cluster::cancel) shut it down at once;
    /// [`drain`](Cluster::drain) lets it run if its parents finish during the
    /// drain and it is due by then (else it is shut down).
    ///
    /// ```
    /// use corral::{Cluster, DependencyCause, DependencyError, TaskError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let fetch = cluster.task(|_| async { Err::<u32, _>("404".to_string()) }).id("fetch").submit().unwrap();
    /// let parse = cluster
    ///     .task(|ctx| async move { ctx.parent::<u32, String>("fetch").await.map(|n| n + 1) })
    ///     .after(&fetch)
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(fetch.await, Err(TaskError::Failed("404".to_string())));
    /// assert_eq!(
    ///     parse.await,
    ///     Err(DependencyError::new("fetch", DependencyCause::Failed).into())
    /// );
    /// # }
    /// ```
    pub fn after(mut self, parent: impl Into<After>) -> Self {
        self.extras().parents.push(parent.into());
        self
    }
}

impl<B, T, E> TaskBuilder<'_, B, T, E>
where
    T: Clone,
    E: Clone,
{
    /// Keeps the outcome after completion for the cluster's retention
    /// (5 minutes unless [`ClusterBuilder::retention`](crate::ClusterBuilder::retention)
    /// says otherwise), so that late [`subscribe`](Cluster::subscribe)rs get it.
    /// Needs `Clone` because each reader gets its own copy.
    ///
    /// ```
    /// use corral::{Cluster, SubscribeError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let kept = cluster
    ///     .task(|_ctx| async { Ok::<_, String>("config v2") })
    ///     .id("config")
    ///     .cacheable(true)
    ///     .submit()
    ///     .unwrap();
    /// let gone = cluster.task(|_ctx| async { Ok::<_, String>(0) }).id("tmp").submit().unwrap();
    /// kept.await.unwrap();
    /// gone.await.unwrap();
    /// // After the end: the cached outcome is still there; the other is forgotten.
    /// let late = cluster.subscribe::<&str, String>("config").unwrap();
    /// assert_eq!(late.await, Ok("config v2"));
    /// assert!(matches!(cluster.subscribe::<i32, String>("tmp"), Err(SubscribeError::UnknownId(_))));
    /// # }
    /// ```
    pub fn cacheable(mut self, cacheable: bool) -> Self {
        self.cache = cacheable.then_some(None);
        // A dedup window keeps the outcome whatever this says.
        let window = self.extras.as_ref().is_some_and(|x| x.window.is_some());
        self.cloner =
            (cacheable || window).then_some(<Outcome<T, E> as Clone>::clone as fn(&_) -> _);
        self
    }

    /// What this submit does if its id is taken (see [`Duplicate`]):
    /// [`Reject`](Duplicate::Reject) it with [`SubmitError::DuplicateId`]
    /// (the default), or [`Join`](Duplicate::Join) the task holding the id:
    /// the submit returns a handle to that task, which resolves to a copy of
    /// its outcome (hence `Clone`) and says
    /// [`deduplicated`](TaskHandle::deduplicated). The id is taken while a
    /// task holding it is pending or running, and after it finished while
    /// its [`dedup_window`](Self::dedup_window) lasts.
    ///
    /// Whether the submit joins or queues a fresh task is decided in the
    /// same lock section that decides whether the first task finished, so a
    /// join racing that task's end either joins it (and gets its real
    /// outcome) or finds the id free and queues this task: never a lost or
    /// hung handle. A task without a user id never finds a duplicate.
    ///
    /// # Errors (at submit)
    /// [`SubmitError::TypeMismatch`] if the task holding the id does not
    /// produce `Result<T, TaskError<E>>`.
    ///
    /// See [`Duplicate`] for an example.
    pub fn on_duplicate(mut self, duplicate: Duplicate) -> Self {
        self.extras().join = match duplicate {
            Duplicate::Reject => None,
            Duplicate::Join => Some(<Outcome<T, E> as Clone>::clone as fn(&_) -> _),
        };
        self
    }

    /// Keeps this task's id taken for `window` after the task finished, so
    /// that a resubmit within it is refused ([`Duplicate::Reject`]) or joins
    /// this finished task ([`Duplicate::Join`]) instead of running again:
    /// "at most once per window". The outcome is cached at least that long
    /// (implies [`cacheable`](Self::cacheable); a longer
    /// [`retention`](Self::retention) is kept), so a join within the window
    /// resolves to a copy of the very outcome this task's handle got. After
    /// the window the id is free again, as for any finished task (a
    /// resubmit replaces the cached outcome). Cancelled and shut-down
    /// outcomes hold the id too: they are this task's outcome.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, Duplicate, SubmitError};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let submit = |n: u32| {
    ///     cluster
    ///         .task(move |_ctx| async move { Ok::<_, String>(n) })
    ///         .id("digest")
    ///         .dedup_window(Duration::from_secs(60))
    ///         .on_duplicate(Duplicate::Join)
    ///         .submit()
    ///         .unwrap()
    /// };
    /// assert_eq!(submit(1).await, Ok(1));
    /// let again = submit(2); // within the minute: joins the finished task
    /// assert!(again.deduplicated());
    /// assert_eq!(again.await, Ok(1));
    /// tokio::time::sleep(Duration::from_secs(61)).await;
    /// let later = submit(3); // the window passed: runs again
    /// assert!(!later.deduplicated());
    /// assert_eq!(later.await, Ok(3));
    /// # }
    /// ```
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.extras().window = Some(Window::new(window));
        self.cloner = Some(<Outcome<T, E> as Clone>::clone as fn(&_) -> _);
        self
    }

    /// Caches the outcome for `retention` after completion (implies
    /// [`cacheable`](Self::cacheable)).
    pub fn retention(mut self, retention: Duration) -> Self {
        self = self.cacheable(true);
        self.cache = Some(Some(retention));
        self
    }
}

impl<'c, B, T, E> TaskBuilder<'c, B, T, E>
where
    B: Body<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    /// Validates the options and queues the task.
    ///
    /// Tasks submitted to a cluster whose workers have not started (see
    /// [`ClusterBuilder::paused`](crate::ClusterBuilder::paused)) wait in the
    /// queue until [`Cluster::run`].
    ///
    /// # Errors
    /// - [`SubmitError::InvalidId`]: the id is empty, longer than
    ///   [`MAX_ID_LEN`], starts with `#`, or is a generated id.
    /// - [`SubmitError::TooManyTasks`]: the cluster holds 2^32 - 1 tasks.
    /// - [`SubmitError::InvalidOption`]: a zero timeout, or a jitter ratio
    ///   outside `0.0..=1.0`.
    /// - [`SubmitError::DuplicateId`]: a task with this id is pending or running.
    /// - [`SubmitError::ShuttingDown`]: the cluster is stopping or stopped.
    /// - [`SubmitError::UnknownLimiter`]: a limiter named by
    ///   [`limit`](Self::limit) or [`limit_by`](Self::limit_by) was never added.
    ///
    /// On error the body is dropped without running and nothing queued is touched.
    pub fn submit(self) -> Result<TaskHandle<T, E>, SubmitError> {
        if self.extras.as_ref().is_some_and(|x| !x.parents.is_empty()) {
            return submit_dependent(self);
        }
        if self.extras.is_none() && self.cache.is_none() && self.id.is_some() {
            return self.submit_named();
        }
        let cluster = self.cluster;
        let (priority, start) = (self.priority, self.start);
        let (cell, special) = self.into_cell(false)?;
        if special {
            let shared = cluster.shared();
            let job: Arc<dyn Job> = cell.clone();
            let now = shared.clock.now();
            let due = start.due(now, &shared.clock);
            return submit_special(cluster, cell, job, priority, due, now);
        }
        submit_cell(cluster, cell, priority, start)
    }

    /// The submit of a task whose only option is its id: the id is held in
    /// the cell, with no `Extras` to allocate and free
    /// (`crate::cell::NameOnly`). The checks are `into_cell`'s for a task
    /// without boxed options.
    fn submit_named(self) -> Result<TaskHandle<T, E>, SubmitError> {
        let TaskBuilder {
            cluster,
            body,
            blocking,
            id,
            priority,
            start,
            timeout,
            retries,
            mode,
            cache: _,
            extras: _,
            cloner,
        } = self;
        let name = match id {
            Some(id) => validate_id(&id)?.clone(),
            None => unreachable!("submit_named is called with an id"),
        };
        validate::<T, E>(timeout, None)?;
        let policy = Policy::new(timeout, retries, mode, blocking);
        let cell = TaskCell::named(body, policy, priority, name, cloner);
        submit_cell(cluster, Arc::new(cell), priority, start)
    }

    /// The cluster the task is built for.
    pub(crate) fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    /// The task's priority, as set (`crate::capacity`).
    pub(crate) fn priority_value(&self) -> i32 {
        self.priority
    }

    /// The task's user-given id, if any (`crate::capacity`).
    pub(crate) fn name_value(&self) -> Option<&Arc<str>> {
        self.id.as_ref().and_then(TaskId::name)
    }

    /// Validates the options and makes the task's cell, not yet admitted
    /// (for a task with parents, and for a [`Graph`](crate::Graph)).
    pub(crate) fn prepare(self) -> Result<(Cell<B, T, E>, NewTask), SubmitError> {
        let shared = self.cluster.shared();
        let start = self.start;
        let (cell, _) = self.into_cell(true)?;
        let job: Arc<dyn Job> = cell.clone();
        let start = start.tick(shared.clock.now(), &shared.clock);
        Ok((cell, NewTask { job, start }))
    }

    /// Validates the options (all of them, in one place, for every way to
    /// submit) and makes the task's cell. `group`: the task is admitted
    /// with its parents or its graph ([`prepare`](Self::prepare)), which
    /// refuses the options a group admission has no path for. Returns the
    /// cell and whether its submit takes [`submit_special`]. A plain task
    /// (no boxed options) tests one `Option` here.
    #[inline(always)]
    fn into_cell(self, group: bool) -> Result<(Cell<B, T, E>, bool), SubmitError> {
        let TaskBuilder {
            cluster,
            body,
            blocking,
            id,
            priority,
            start: _,
            timeout,
            retries,
            mode,
            cache,
            extras,
            cloner,
        } = self;
        let name = match id {
            None => None,
            Some(id) => Some(validate_id(&id)?.clone()),
        };
        validate(timeout, extras.as_deref())?;
        let shared = cluster.shared();
        let mut retention = cache.map(|r| r.unwrap_or(shared.retention));
        // The options of `crate::dedup`, `crate::progress`, `crate::history`,
        // `crate::keys` and `crate::limit` all live in `extras`: a plain
        // task skips them.
        let special = match extras.as_deref() {
            None => false,
            Some(x) => check_extras(x, name.is_some(), &mut retention, group.then_some(shared))?,
        };
        let policy = Policy::new(timeout, retries, mode, blocking);
        let extras = if name.is_some() || retention.is_some() {
            let mut x = extras.unwrap_or_default();
            x.name = name;
            x.retention = retention;
            Some(x)
        } else {
            extras
        };
        let cell = Arc::new(TaskCell::new(body, policy, priority, extras, cloner));
        if special && cell.keeps_history() {
            // Before the cell is shared.
            cell.keep_history();
        }
        Ok((cell, special))
    }
}

impl Start {
    /// The start tick, given the tick of the submit.
    #[inline(always)]
    fn tick(self, now: i64, clock: &crate::clock::Clock) -> i64 {
        match self {
            Start::Now => now,
            Start::At(at) => clock.tick(at),
            Start::After(d) => now.saturating_add(duration_ticks(d)),
        }
    }

    /// The start tick, and whether it is the submit's own time (no start
    /// time given, or a zero delay), which the queue may raise to keep its
    /// keys in order (see [`Stamp`]).
    #[inline(always)]
    fn due(self, now: i64, clock: &crate::clock::Clock) -> Stamp {
        let start = self.tick(now, clock);
        Stamp {
            start,
            now: !matches!(self, Start::At(_)) && start == now,
        }
    }
}

/// The checks of the options that do not depend on the cluster.
#[inline(always)]
fn validate<T, E>(
    timeout: Option<Duration>,
    extras: Option<&Extras<T, E>>,
) -> Result<(), SubmitError> {
    if timeout == Some(Duration::ZERO) {
        return Err(SubmitError::InvalidOption {
            option: "timeout",
            reason: "must be greater than zero",
        });
    }
    if extras.is_some_and(|x| !(0.0..=1.0).contains(&x.jitter)) {
        return Err(SubmitError::InvalidOption {
            option: "jitter",
            reason: "must be a ratio between 0.0 and 1.0",
        });
    }
    Ok(())
}

/// A task's cell, typed.
type Cell<B, T, E> = Arc<TaskCell<B, T, E>>;

/// The plain submit once the cell is made, for a cell of either kind of
/// options (`crate::cell::Options`): one lock section.
#[inline(always)]
fn submit_cell<C, T, E>(
    cluster: &Cluster,
    cell: Arc<C>,
    priority: i32,
    start: Start,
) -> Result<TaskHandle<T, E>, SubmitError>
where
    C: Job + OutcomeSlot<T, E>,
{
    let shared = cluster.shared();
    let job: Arc<dyn Job> = cell.clone();
    // Read after the allocation and before locking: the lock is the
    // cluster's one contended resource, so nothing that can run outside
    // it runs inside. A task without a start time starts at its
    // submission, which orders it exactly among due tasks of its
    // priority (see `crate::queue`): the read cannot be skipped.
    let now = shared.clock.now();
    let start = start.due(now, &shared.clock);
    let mut core = shared.lock();
    let unstarted = core.phase == Phase::Idle;
    let admitted = core.submit(
        job,
        cell.name(),
        |seq, slot| cell.assign(seq, slot),
        priority,
        start,
        now,
    );
    shared.unlock(core);
    // On error the body (in `cell`) is dropped here, after the unlock.
    let replaced = admitted?;
    if let Some(old) = replaced {
        old.release();
    }
    if unstarted {
        cluster.watch_unstarted();
    }
    Ok(TaskHandle::new(cell))
}

/// Submits a task with parents (see `crate::deps`), out of the hot path.
#[cold]
fn submit_dependent<B, T, E>(
    builder: TaskBuilder<'_, B, T, E>,
) -> Result<TaskHandle<T, E>, SubmitError>
where
    B: Body<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    let cluster = builder.cluster;
    let (cell, task) = builder.prepare()?;
    if task
        .job
        .parents()
        .iter()
        .any(|a| matches!(a.target, crate::deps::Target::Node { .. }))
    {
        return Err(SubmitError::InvalidOption {
            option: "after",
            reason: "a graph node can only be a parent within its graph (Graph::add)",
        });
    }
    crate::deps::admit(cluster, vec![task])?;
    Ok(TaskHandle::new(cell))
}

/// The submit of a task that keeps its history or joins a duplicate
/// (`crate::history`, `crate::dedup`): as the plain submit, but under one
/// lock section it joins the task holding the id, if any. Kept out of line,
/// and behind one flag: the plain submit is the hottest path there is.
#[cold]
#[inline(never)]
fn submit_special<B, T, E>(
    cluster: &Cluster,
    cell: Arc<TaskCell<B, T, E>>,
    job: Arc<dyn Job>,
    priority: i32,
    start: Stamp,
    now: i64,
) -> Result<TaskHandle<T, E>, SubmitError>
where
    B: Body<T, E>,
    T: Send + 'static,
    E: Send + 'static,
{
    let joiner = cell.joiner();
    let shared = cluster.shared();
    let mut core = shared.lock();
    let unstarted = core.phase == Phase::Idle;
    let c = &cell;
    let admit = |core: &mut Engine| {
        core.check_limiters(job.as_ref())?;
        let key = c.key_options();
        let key = key.and_then(|k| Some((k.key.as_ref()?, k)));
        if let Some((name, k)) = key {
            core.key_admit(name, k.cost, k.on_full)?;
        }
        let mut placed = (0, 0);
        let admitted = core.submit(
            job,
            c.name(),
            |seq, slot| {
                placed = (seq, slot);
                c.assign(seq, slot)
            },
            priority,
            start,
            now,
        )?;
        if let Some((name, k)) = key {
            core.key_admitted(name, k.on_full, placed);
        }
        Ok(admitted)
    };
    let admitted = match (joiner, cell.name()) {
        (Some((cloner, name)), _) => {
            join_or_submit(&mut core, name, now, cloner, cell.settled_hook(), admit)
        }
        _ => admit(&mut core).map(Joined::Fresh),
    };
    shared.unlock(core);
    // On error or a join, this submit's body (in `cell`) is dropped here,
    // after the unlock.
    match admitted? {
        Joined::Fresh(replaced) => {
            if let Some(old) = replaced {
                old.release();
            }
            if unstarted {
                cluster.watch_unstarted();
            }
            Ok(TaskHandle::new(cell))
        }
        Joined::Existing(job, state, hook) => {
            let cloner = joiner.expect("only a joining submit joins").0;
            drop_guarded(cell, "the body of a submit that joined another task");
            Ok(TaskHandle::new(Arc::new(JoinedSlot::new(
                job, state, cloner, hook,
            ))))
        }
    }
}

/// Checks the boxed options and applies a dedup window to the retention;
/// returns whether the task takes the special submit path
/// ([`submit_special`]). `group`: the task is admitted with its parents or
/// its graph (see [`TaskBuilder::prepare`]), on this cluster. Out of line:
/// a plain task has no `Extras`.
#[inline(never)]
fn check_extras<T, E>(
    x: &Extras<T, E>,
    named: bool,
    retention: &mut Option<Duration>,
    group: Option<&crate::shared::Shared>,
) -> Result<bool, SubmitError> {
    if group.is_some() && x.join.is_some() && named {
        // Admission with parents is a group admission, which has no join
        // path: say so rather than ignore the option.
        return Err(SubmitError::InvalidOption {
            option: "on_duplicate",
            reason: "Duplicate::Join cannot be combined with after() or a Graph",
        });
    }
    // `jitter` is checked by `validate`.
    if x.stall == Some(Duration::ZERO) {
        return Err(SubmitError::InvalidOption {
            option: "stall_timeout",
            reason: "must be greater than zero",
        });
    }
    if let Some(w) = &x.window {
        // A joined finished task gives the outcome its handle got: it is
        // cached at least as long as the id is held.
        *retention = Some(retention.map_or(w.length, |r| r.max(w.length)));
    }
    if let Some(k) = &x.key {
        k.validate()?;
        if let Some(shared) = group {
            if k.on_full != crate::keys::KeyFull::Queue {
                return Err(SubmitError::InvalidOption {
                    option: "on_key_full",
                    reason: "only KeyFull::Queue can be combined with after() or a Graph",
                });
            }
            // The key state must exist before the task is queued.
            if let Some(name) = &k.key {
                shared.locked(|core| core.key_admit(name, k.cost, k.on_full))?;
            }
        }
    }
    Ok(x.history || (x.join.is_some() && named) || x.limits.is_some() || x.key.is_some())
}

fn validate_id(id: &TaskId) -> Result<&Arc<str>, SubmitError> {
    let name = id.name().ok_or(SubmitError::InvalidId(
        "a generated id cannot be given as a task's id",
    ))?;
    if name.is_empty() {
        return Err(SubmitError::InvalidId("the id is empty"));
    }
    if name.starts_with('#') {
        return Err(SubmitError::InvalidId(
            "ids starting with '#' are reserved for generated ids",
        ));
    }
    if name.len() > MAX_ID_LEN {
        return Err(SubmitError::InvalidId(
            "the id is longer than MAX_ID_LEN (1024) bytes",
        ));
    }
    Ok(name)
}

impl<B, T, E> fmt::Debug for TaskBuilder<'_, B, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("blocking", &self.blocking)
            .field("id", &self.id)
            .field("priority", &self.priority)
            .field("start", &self.start)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("retry_mode", &self.mode)
            .field("jitter", &self.extras.as_ref().map_or(0.0, |x| x.jitter))
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}
