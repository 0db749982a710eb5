//! Periodic tasks: a schedule submits one task per firing, on a fixed
//! interval or (feature `cron`) on a cron expression in a time zone.
//!
//! A schedule is one small tokio task of its own (the *driver*), not queue
//! entries: it sleeps until the next firing, then submits that firing as an
//! ordinary task whose id is `"{schedule}@{firing}"` (the firing's number
//! for an interval, its local time with the zone's offset for cron). So the
//! queue holds at most the firings that run (or, for
//! [`Overlap::Queue`], wait in the driver's bounded backlog), never one
//! entry per future firing; and a firing's id names it for good, so none
//! runs twice. A plain task pays nothing for any of it.
//!
//! Decisions:
//! - The driver holds no strong reference to the cluster: dropping the
//!   user's last clone cancels the cluster as before, and a `stop`,
//!   `drain` or `cancel` ends every schedule (running firings end as any
//!   task does). A schedule is also ended by [`ScheduleHandle::cancel`];
//!   dropping the handle leaves it running.
//! - Firings missed while a schedule could not fire them (paused, or a
//!   cron schedule started with `ScheduleBuilder::catch_up_from` after a
//!   restart, or a runtime so late that several firings came due at once)
//!   are handled by the [`Missed`] policy, then offered in order to the
//!   [`Overlap`] policy like any firing.
//! - Intervals run on the engine's clock (tokio's: a paused test clock
//!   drives them). Cron runs on a `WallClock` (the system's unless
//!   another is given), looked at again at least every minute. A wall
//!   clock set back fires nothing twice (the driver's firing keys only
//!   grow); set forward, the firings it jumped over count as missed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::body::AsyncBody;
use crate::builder::{TaskBuilder, MAX_ID_LEN};
use crate::cluster::Cluster;
use crate::task::{TaskContext, TaskId};

#[cfg(feature = "cron")]
mod cron;
mod driver;
mod timeline;

#[cfg(feature = "cron")]
pub use self::cron::{AnchoredClock, CronSchedule, SystemClock, WallClock};

/// The longest schedule name, in bytes: room is left in [`MAX_ID_LEN`] for
/// the firing's part of the id.
pub const MAX_SCHEDULE_NAME_LEN: usize = MAX_ID_LEN - 64;

/// Why a schedule could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The schedule's name is empty, starts with `#`, contains `@` or is
    /// longer than [`MAX_SCHEDULE_NAME_LEN`].
    #[error("invalid schedule name: {0}")]
    InvalidName(&'static str),
    /// A zero interval.
    #[error("invalid trigger: {0}")]
    InvalidTrigger(String),
    /// A cron expression that does not parse.
    #[error("invalid cron expression {expression:?}: {reason}")]
    InvalidCron {
        /// The expression given.
        expression: String,
        /// What the parser said.
        reason: String,
    },
    /// A time zone name not in the IANA database (as `Europe/Berlin`).
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(String),
    /// The cluster is stopping or stopped.
    #[error("the cluster is shutting down")]
    ShuttingDown,
    /// `start` was called outside a tokio runtime.
    #[error("a schedule must be started inside a tokio runtime")]
    NoRuntime,
}

/// When a schedule fires: [`every`](Trigger::every) fixed interval, or
/// (feature `cron`) on a cron expression (`CronSchedule`).
#[derive(Clone)]
pub struct Trigger(Kind);

#[derive(Clone)]
enum Kind {
    Every(Duration),
    #[cfg(feature = "cron")]
    Cron(Box<CronSchedule>),
}

impl Trigger {
    /// Fires every `period` on the engine's clock, the first time one
    /// `period` after the start; firing `n` is due `n * period` after the
    /// start, however late earlier firings ran (no drift). Zero is refused
    /// at [`start`](ScheduleBuilder::start).
    pub fn every(period: Duration) -> Trigger {
        Trigger(Kind::Every(period))
    }

    /// Fires on a cron expression read in the IANA time zone `zone`; see
    /// [`CronSchedule::parse`] for the rules, daylight-saving changes
    /// included.
    ///
    /// # Errors
    /// As [`CronSchedule::parse`].
    #[cfg(feature = "cron")]
    pub fn cron(expression: &str, zone: &str) -> Result<Trigger, ScheduleError> {
        Ok(Trigger::from(CronSchedule::parse(expression, zone)?))
    }
}

#[cfg(feature = "cron")]
impl From<CronSchedule> for Trigger {
    fn from(cron: CronSchedule) -> Self {
        Trigger(Kind::Cron(Box::new(cron)))
    }
}

impl fmt::Debug for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Every(d) => f.debug_tuple("Every").field(d).finish(),
            #[cfg(feature = "cron")]
            Kind::Cron(c) => f.debug_tuple("Cron").field(c).finish(),
        }
    }
}

/// What a firing does when the schedule's previous run has not finished.
///
/// # Default
/// [`Overlap::Skip`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overlap {
    /// The firing is dropped (counted in [`ScheduleStats::skipped`]).
    #[default]
    Skip,
    /// The firing waits in the schedule's backlog and starts when the run
    /// before it ends. The backlog holds one firing (or, with
    /// [`Missed::RunAll`], up to its limit); a firing that finds it full is
    /// dropped. The backlog lives in the schedule, not in the cluster's queue.
    Queue,
    /// The firing starts at once, beside the runs still going.
    Allow,
    /// The running firing is cancelled (as by [`Cluster::cancel_task`]:
    /// it resolves as cancelled) and the new one starts.
    Replace,
}

/// What happens to firings missed while the schedule could not fire them:
/// paused ([`ScheduleHandle::pause`] until [`resume`](ScheduleHandle::resume)),
/// before a restart (a cron schedule's `ScheduleBuilder::catch_up_from`),
/// or past because the runtime was late by more than one firing.
///
/// # Default
/// [`Missed::Skip`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Missed {
    /// They are dropped; the schedule goes on with its next firing (a late
    /// runtime still runs the latest due firing: it is the on-time one).
    #[default]
    Skip,
    /// The latest of them runs, once, at once (its own id, so its own time).
    RunOnce,
    /// The latest `n` of them run (`0` counts as 1), oldest first, each
    /// with its own id, offered in turn to the [`Overlap`] policy: with
    /// [`Overlap::Queue`] one after another, with [`Overlap::Allow`] all at
    /// once (with `Skip` or `Replace` only one survives). Earlier ones are
    /// dropped: the catch-up is bounded.
    RunAll(usize),
}

impl Missed {
    fn limit(self) -> usize {
        match self {
            Missed::Skip | Missed::RunOnce => 1,
            Missed::RunAll(n) => n.max(1),
        }
    }
}

/// When a firing was due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FiringTime {
    /// Firing `number` (1 for the first) of a fixed interval, due `at` on
    /// the engine's clock.
    Interval {
        /// 1 for the first firing after the start.
        number: u64,
        /// When it was due.
        at: Instant,
    },
    /// A cron firing, due at this wall-clock time.
    #[cfg(feature = "cron")]
    Wall(std::time::SystemTime),
}

/// One firing of a schedule, given to its body with the task's context.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Firing {
    /// The task's id: `"{schedule}@{firing}"`.
    pub id: TaskId,
    /// The schedule's name.
    pub schedule: Arc<str>,
    /// When it was due.
    pub due: FiringTime,
    /// `true` for a firing run late by the [`Missed`] policy.
    pub catch_up: bool,
}

/// A firing's future, boxed: a schedule's firings share one body.
pub type FiringFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The body of each firing's task, as seen by [`ScheduleBuilder::each_task`].
pub type FiringBody<T, E> = AsyncBody<Box<dyn Fn(TaskContext) -> FiringFuture<T, E> + Send + Sync>>;

type SharedBody<T, E> = Arc<dyn Fn(TaskContext, Firing) -> FiringFuture<T, E> + Send + Sync>;

/// Sets a firing task's options (`for<'c>`: any builder lifetime).
type Configure<T, E> = Arc<
    dyn for<'c> Fn(
            TaskBuilder<'c, FiringBody<T, E>, T, E>,
        ) -> TaskBuilder<'c, FiringBody<T, E>, T, E>
        + Send
        + Sync,
>;

/// Configures a schedule; [`start`](Self::start) starts it. Made by
/// [`Cluster::schedule`].
///
/// # Default
/// | option | default |
/// |---|---|
/// | `overlap` | [`Overlap::Skip`] |
/// | `missed` | [`Missed::Skip`] |
/// | `each_task` | plain tasks (priority 0, no timeout, no retry) |
/// | `wall_clock` (feature `cron`) | `SystemClock` |
#[must_use = "a schedule does nothing until `start` is called"]
pub struct ScheduleBuilder<'c, T, E> {
    cluster: &'c Cluster,
    name: String,
    trigger: Trigger,
    body: SharedBody<T, E>,
    overlap: Overlap,
    missed: Missed,
    configure: Option<Configure<T, E>>,
    #[cfg(feature = "cron")]
    wall: Option<Arc<dyn WallClock>>,
    #[cfg(feature = "cron")]
    catch_up_from: Option<std::time::SystemTime>,
}

impl<'c, T, E> ScheduleBuilder<'c, T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    pub(crate) fn new<F, Fut>(cluster: &'c Cluster, name: String, trigger: Trigger, body: F) -> Self
    where
        F: Fn(TaskContext, Firing) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let body: SharedBody<T, E> = Arc::new(move |ctx, firing| Box::pin(body(ctx, firing)));
        ScheduleBuilder {
            cluster,
            name,
            trigger,
            body,
            overlap: Overlap::Skip,
            missed: Missed::Skip,
            configure: None,
            #[cfg(feature = "cron")]
            wall: None,
            #[cfg(feature = "cron")]
            catch_up_from: None,
        }
    }

    /// What a firing does while the previous run goes on: see [`Overlap`].
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// What happens to missed firings: see [`Missed`].
    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    /// Sets each firing task's options (priority, timeout, retries,
    /// callbacks...), as on any [`TaskBuilder`]. The id is the firing's
    /// and cannot be changed here. Called in the schedule's driver for
    /// every firing, under a panic guard (a panic skips that firing).
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, Trigger};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// let schedule = cluster
    ///     .schedule("poll", Trigger::every(Duration::from_secs(30)), |_ctx, _firing| async {
    ///         Ok::<_, String>(())
    ///     })
    ///     .each_task(|task| task.timeout(Duration::from_secs(10)).retry(2).priority(5))
    ///     .start()
    ///     .unwrap();
    /// schedule.cancel();
    /// # }
    /// ```
    pub fn each_task(
        mut self,
        configure: impl for<'b> Fn(
                TaskBuilder<'b, FiringBody<T, E>, T, E>,
            ) -> TaskBuilder<'b, FiringBody<T, E>, T, E>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }

    /// The wall clock a cron schedule reads (by default the system's).
    /// [`AnchoredClock`] follows tokio's clock from a given time, so a test
    /// on a paused clock can cross a daylight-saving change without waiting.
    #[cfg(feature = "cron")]
    pub fn wall_clock(mut self, clock: impl WallClock) -> Self {
        self.wall = Some(Arc::new(clock));
        self
    }

    /// For a cron schedule restarted after a stop (a new process, say):
    /// the time of its last firing before the stop. The firings between
    /// then and the start count as missed (see [`Missed`]). A time in the
    /// future is treated as now. Ignored by interval triggers.
    #[cfg(feature = "cron")]
    pub fn catch_up_from(mut self, last_firing: std::time::SystemTime) -> Self {
        self.catch_up_from = Some(last_firing);
        self
    }

    /// Starts the schedule on the current tokio runtime.
    ///
    /// # Errors
    /// [`ScheduleError::InvalidName`], [`ScheduleError::InvalidTrigger`] (a
    /// zero interval), [`ScheduleError::ShuttingDown`] if the cluster is
    /// stopping or stopped, [`ScheduleError::NoRuntime`] outside a runtime.
    pub fn start(self) -> Result<ScheduleHandle, ScheduleError> {
        validate_name(&self.name)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ScheduleError::NoRuntime)?;
        let shared = self.cluster.shared();
        if shared.stopping.is_cancelled() || shared.closing.is_cancelled() {
            return Err(ScheduleError::ShuttingDown);
        }
        let (timeline, start): (Box<dyn timeline::Timeline>, Option<i64>) = match self.trigger.0 {
            Kind::Every(period) => {
                if period.is_zero() {
                    return Err(ScheduleError::InvalidTrigger("a zero interval".into()));
                }
                let t = timeline::Interval {
                    anchor: Instant::now(),
                    period,
                };
                (Box::new(t), None)
            }
            #[cfg(feature = "cron")]
            Kind::Cron(cron) => {
                let clock = self.wall.unwrap_or_else(|| Arc::new(SystemClock));
                let t = cron::CronTimeline::new(*cron, clock);
                let from = self.catch_up_from.map(|at| t.key_at_or_before(at));
                (Box::new(t), from)
            }
        };
        let name: Arc<str> = self.name.into();
        let control = Arc::new(Control::default());
        let driver = driver::Driver {
            cluster: self.cluster.downgrade(),
            stopping: shared.stopping.clone(),
            closing: shared.closing.clone(),
            control: control.clone(),
            name: name.clone(),
            body: self.body,
            configure: self.configure,
            overlap: self.overlap,
            missed: self.missed,
            timeline,
        };
        runtime.spawn(driver.run(start));
        Ok(ScheduleHandle { name, control })
    }
}

impl<T, E> fmt::Debug for ScheduleBuilder<'_, T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleBuilder")
            .field("name", &self.name)
            .field("trigger", &self.trigger)
            .field("overlap", &self.overlap)
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts building a periodic schedule named `name`: on every firing
    /// of `trigger`, a task runs `body` with its context and the
    /// [`Firing`] (the task's id is `"{name}@{firing}"`). See the
    /// [`Overlap`] and [`Missed`] policies; [`ScheduleBuilder::start`]
    /// starts it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, Missed, Overlap, Trigger};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(2).unwrap();
    /// let schedule = cluster
    ///     .schedule("heartbeat", Trigger::every(Duration::from_secs(60)), |_ctx, firing| async move {
    ///         println!("{} (due {:?})", firing.id, firing.due); // heartbeat@1, heartbeat@2, ...
    ///         Ok::<_, String>(())
    ///     })
    ///     .overlap(Overlap::Skip)
    ///     .missed(Missed::RunOnce)
    ///     .start()
    ///     .unwrap();
    /// tokio::time::sleep(Duration::from_secs(150)).await; // paused clock: instant
    /// assert_eq!(schedule.stats().fired, 2);
    /// cluster.stop(Duration::from_secs(5)).await.unwrap(); // ends the schedule
    /// schedule.finished().await;
    /// # }
    /// ```
    ///
    /// With feature `cron`:
    ///
    /// ```
    /// use corral::{Cluster, Trigger};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// // Every night at 02:30, Berlin time (ids: "backup@2026-03-30T02:30:00+02:00").
    /// let nightly = cluster
    ///     .schedule("backup", Trigger::cron("30 2 * * *", "Europe/Berlin").unwrap(), |_ctx, _firing| async {
    ///         Ok::<_, String>(())
    ///     })
    ///     .start()
    ///     .unwrap();
    /// nightly.cancel();
    /// # }
    /// ```
    pub fn schedule<F, Fut, T, E>(
        &self,
        name: impl Into<String>,
        trigger: Trigger,
        body: F,
    ) -> ScheduleBuilder<'_, T, E>
    where
        F: Fn(TaskContext, Firing) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        ScheduleBuilder::new(self, name.into(), trigger, body)
    }
}

fn validate_name(name: &str) -> Result<(), ScheduleError> {
    if name.is_empty() {
        return Err(ScheduleError::InvalidName("the name is empty"));
    }
    if name.starts_with('#') {
        return Err(ScheduleError::InvalidName(
            "names starting with '#' are reserved",
        ));
    }
    if name.contains('@') {
        return Err(ScheduleError::InvalidName(
            "'@' separates the name from the firing in task ids",
        ));
    }
    if name.len() > MAX_SCHEDULE_NAME_LEN {
        return Err(ScheduleError::InvalidName(
            "the name is longer than MAX_SCHEDULE_NAME_LEN",
        ));
    }
    Ok(())
}

/// What the handle and the driver share.
#[derive(Default)]
pub(crate) struct Control {
    pub(crate) cancel: CancellationToken,
    /// Cancelled when the driver has left.
    pub(crate) done: CancellationToken,
    pub(crate) paused: AtomicBool,
    /// Wakes the driver on a pause or resume.
    pub(crate) changed: Notify,
    pub(crate) fired: AtomicU64,
    pub(crate) skipped: AtomicU64,
}

/// Counts of a schedule's firings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleStats {
    /// Firings submitted as tasks.
    pub fired: u64,
    /// Firings dropped: by the overlap policy, a full backlog, a refused
    /// submit (say, its id taken) or a panic in `each_task`. Missed firings
    /// dropped by [`Missed`] are not counted.
    pub skipped: u64,
}

/// Controls a running schedule; clones control the same one. Dropping
/// every handle leaves the schedule running until its cluster stops: keep
/// one to [`cancel`](Self::cancel) it.
///
/// ```
/// use std::time::Duration;
/// use corral::{Cluster, Trigger};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cluster = Cluster::new(1).unwrap();
/// let schedule = cluster
///     .schedule("tick", Trigger::every(Duration::from_millis(10)), |_ctx, firing| async move {
///         Ok::<_, String>(firing.id)
///     })
///     .start()
///     .unwrap();
/// tokio::time::sleep(Duration::from_millis(35)).await;
/// schedule.cancel();
/// schedule.finished().await;
/// assert!(schedule.stats().fired >= 1);
/// # }
/// ```
#[derive(Clone)]
pub struct ScheduleHandle {
    name: Arc<str>,
    control: Arc<Control>,
}

impl ScheduleHandle {
    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends the schedule: it submits no firing once this has returned
    /// (the driver checks before each submit; only a submit already past
    /// that check on another thread can still land). Firings already
    /// submitted run on; cancel them by id if need be. Idempotent.
    pub fn cancel(&self) {
        self.control.cancel.cancel();
    }

    /// Stops firing until [`resume`](Self::resume); firings due meanwhile
    /// are missed (see [`Missed`]). Runs already started go on; firings
    /// queued behind a run ([`Overlap::Queue`]) start only after the resume.
    /// A pause during which no firing came due misses nothing.
    pub fn pause(&self) {
        self.control.paused.store(true, Relaxed);
        self.control.changed.notify_one();
    }

    /// Fires again after a [`pause`](Self::pause), handling the firings
    /// missed meanwhile by the [`Missed`] policy.
    pub fn resume(&self) {
        self.control.paused.store(false, Relaxed);
        self.control.changed.notify_one();
    }

    /// `true` while paused.
    pub fn is_paused(&self) -> bool {
        self.control.paused.load(Relaxed)
    }

    /// `true` once the schedule has ended: cancelled, its cluster stopping
    /// or gone, or its trigger has no firing left.
    pub fn is_finished(&self) -> bool {
        self.control.done.is_cancelled()
    }

    /// Resolves once the schedule has ended (see [`is_finished`](Self::is_finished)).
    pub async fn finished(&self) {
        self.control.done.cancelled().await;
    }

    /// Counts of the firings so far.
    pub fn stats(&self) -> ScheduleStats {
        ScheduleStats {
            fired: self.control.fired.load(Relaxed),
            skipped: self.control.skipped.load(Relaxed),
        }
    }
}

impl fmt::Debug for ScheduleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScheduleHandle")
            .field("name", &self.name)
            .field("paused", &self.is_paused())
            .field("finished", &self.is_finished())
            .field("stats", &self.stats())
            .finish()
    }
}
