//! Rate limits: named limiters that pace the tasks naming them
//! ([`Cluster::add_limiter`](crate::Cluster::add_limiter),
//! [`TaskBuilder::limit`](crate::TaskBuilder::limit),
//! [`TaskBuilder::limit_by`](crate::TaskBuilder::limit_by),
//! [`TaskContext::slow_down`](crate::TaskContext::slow_down)).
//!
//! The user's side lives here: the [`Rate`] type, its validation, the GCRA
//! arithmetic ([`Gcra`]) and what a task carries ([`TaskLimits`], in its
//! boxed `Extras`). The engine's side (admission at claim, the tasks set
//! aside, their wake-ups) is `crate::engine::limit`.
//!
//! # The algorithm
//! GCRA ("generic cell rate algorithm", a leaky bucket kept as one number),
//! in integer nanoseconds on the cluster's clock, so nothing drifts:
//! - emission interval `T = period / count` (truncated to whole
//!   nanoseconds, at least 1);
//! - tolerance `tau = T * (burst - 1)`;
//! - a bucket holds its theoretical arrival time `TAT` (a fresh bucket has
//!   none, read as "now");
//! - a request at `now` conforms iff `now >= TAT - tau`; it then sets
//!   `TAT = max(TAT, now) + T`.
//!
//! So `burst` requests conform at once on a fresh bucket, then one per `T`.
//! This is the `governor` crate's algorithm, and the tests check that both
//! give the same answers on random sequences.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::duration_ticks;
use crate::cluster::Cluster;
use crate::engine::Plan;
use crate::job::Job;
use crate::shared::Shared;
use crate::task::TaskContext;

/// How fast a limiter admits tasks: `count` per `period`, with bursts of up
/// to `burst` at once (by default `count`: a fresh limiter admits a whole
/// period's worth at once, then paces the rest evenly, one every
/// `period / count`).
///
/// Checked by [`Cluster::add_limiter`](crate::Cluster::add_limiter): a
/// zero count, period or burst is refused there with a [`LimiterError`].
///
/// The burst also absorbs the timer's lateness: a task set aside is woken
/// by tokio's timer, which has millisecond resolution, and GCRA counts
/// from each admission. With a burst of 1 that lateness (up to about a
/// millisecond) is lost at every admission, which matters at rates near
/// 1,000/s (measured: about 400/s achieved for 1,000/s, `bench/README.md`
/// W11); a burst of a few intervals' worth keeps the achieved rate at the
/// limit.
///
/// ```
/// use std::time::Duration;
/// use corral::Rate;
///
/// let github = Rate::per_second(10).burst(5); // one every 100 ms, 5 at once
/// assert_eq!(github.interval(), Duration::from_millis(100));
/// assert_eq!(github.burst_size(), 5);
/// let slow = Rate::per(3, Duration::from_secs(60));
/// assert_eq!(slow.burst_size(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    period: Duration,
    /// `None`: `count`.
    burst: Option<u32>,
}

impl Rate {
    /// `count` tasks per `period`.
    pub fn per(count: u32, period: Duration) -> Self {
        Rate {
            count,
            period,
            burst: None,
        }
    }

    /// `count` tasks per second.
    pub fn per_second(count: u32) -> Self {
        Rate::per(count, Duration::from_secs(1))
    }

    /// `count` tasks per minute.
    pub fn per_minute(count: u32) -> Self {
        Rate::per(count, Duration::from_secs(60))
    }

    /// `count` tasks per hour.
    pub fn per_hour(count: u32) -> Self {
        Rate::per(count, Duration::from_secs(3600))
    }

    /// At most `burst` tasks at once (after an idle spell); the rest are
    /// paced at the rate. `1` paces strictly.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The time between two admissions once the burst is used up:
    /// `period / count`, in whole nanoseconds (at least one). Zero for a
    /// zero count (refused by `add_limiter`).
    pub fn interval(&self) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        (self.period / self.count).max(Duration::from_nanos(1))
    }

    /// The burst size: as set by [`burst`](Self::burst), else the count.
    pub fn burst_size(&self) -> u32 {
        self.burst.unwrap_or(self.count)
    }

    /// The checks of [`Cluster::add_limiter`](crate::Cluster::add_limiter).
    pub(crate) fn validate(&self) -> Result<Gcra, LimiterError> {
        if self.count == 0 {
            return Err(LimiterError::ZeroRate);
        }
        if self.period.is_zero() {
            return Err(LimiterError::ZeroPeriod);
        }
        if self.burst_size() == 0 {
            return Err(LimiterError::ZeroBurst);
        }
        let t = duration_ticks(self.interval());
        if t == i64::MAX {
            return Err(LimiterError::PeriodTooLong);
        }
        Ok(Gcra {
            t,
            tau: t.saturating_mul(i64::from(self.burst_size() - 1)),
        })
    }
}

/// Why [`Cluster::add_limiter`](crate::Cluster::add_limiter) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimiterError {
    /// A rate of zero tasks per period would admit nothing, ever.
    #[error("a limiter's rate must be at least one task per period")]
    ZeroRate,
    /// A zero period has no rate.
    #[error("a limiter's period must be greater than zero")]
    ZeroPeriod,
    /// A burst of zero would admit nothing, ever.
    #[error("a limiter's burst must be at least 1")]
    ZeroBurst,
    /// The interval between two admissions is beyond what the cluster's
    /// clock counts (about 292 years).
    #[error("a limiter's interval must be shorter than 292 years")]
    PeriodTooLong,
    /// The name is empty.
    #[error("a limiter's name must not be empty")]
    EmptyName,
    /// A limiter of this name exists already (limiters are never replaced:
    /// queued tasks were admitted against it).
    #[error("a limiter named `{0}` exists already")]
    Exists(Arc<str>),
}

/// The GCRA parameters of a validated [`Rate`], in ticks (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Emission interval.
    pub(crate) t: i64,
    /// Tolerance: `t * (burst - 1)`.
    pub(crate) tau: i64,
}

/// A bucket's state: its theoretical arrival time, or [`FRESH`].
pub(crate) type Tat = i64;

/// The TAT of a bucket that has admitted nothing (or nothing recently):
/// it conforms at any time.
pub(crate) const FRESH: Tat = i64::MIN;

impl Gcra {
    /// The burst size: `tau / t + 1`.
    pub(crate) fn burst(&self) -> u64 {
        (self.tau / self.t).unsigned_abs() + 1
    }

    /// When a request to a bucket at `tat` first conforms: `TAT - tau`
    /// (`now` or earlier means "now").
    pub(crate) fn earliest(&self, tat: Tat) -> i64 {
        tat.saturating_sub(self.tau)
    }

    /// Whether a request at `now` conforms.
    #[cfg(test)]
    pub(crate) fn allows(&self, tat: Tat, now: i64) -> bool {
        now >= self.earliest(tat)
    }

    /// The TAT after a conforming request at `now`.
    pub(crate) fn charge(&self, tat: Tat, now: i64) -> Tat {
        tat.max(now).saturating_add(self.t)
    }

    /// The TAT that makes the bucket admit nothing before `until`, and
    /// then one request per `t` (an upstream's "slow down").
    pub(crate) fn hold(&self, tat: Tat, until: i64) -> Tat {
        tat.max(until.saturating_add(self.tau))
    }

    /// A bucket whose TAT is not after `now` behaves as a fresh one: it
    /// can be forgotten.
    pub(crate) fn is_idle(tat: Tat, now: i64) -> bool {
        tat <= now
    }
}

/// One limiter a task names: which, and which bucket.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LimitRef {
    pub(crate) limiter: Arc<str>,
    /// `None`: the limiter's global bucket; `Some(key)`: the bucket of
    /// that key value.
    pub(crate) key: Option<Arc<str>>,
}

/// The limiters a task names (in its boxed `Extras`), and the slow-down
/// request of its current attempt, if the body made one.
#[derive(Debug, Default)]
pub(crate) struct TaskLimits {
    pub(crate) refs: Vec<LimitRef>,
    /// Set by [`TaskContext::slow_down`](crate::TaskContext::slow_down):
    /// which of `refs` and for how long. Read by the worker when the
    /// attempt fails.
    slow_down: Mutex<Option<(usize, Duration)>>,
}

impl TaskLimits {
    /// Adds a limiter; naming the same limiter and key twice counts once.
    pub(crate) fn add(&mut self, limiter: Arc<str>, key: Option<Arc<str>>) {
        let r = LimitRef { limiter, key };
        if !self.refs.contains(&r) {
            self.refs.push(r);
        }
    }

    /// Records a slow-down request for the bucket this task is charged to
    /// under `limiter` (the first, if it names it twice). `false` if the
    /// task does not name it.
    pub(crate) fn request_slow_down(&self, limiter: &str, delay: Duration) -> bool {
        let Some(i) = self.refs.iter().position(|r| &*r.limiter == limiter) else {
            return false;
        };
        let mut slot = self.slow_down.lock();
        // Two requests in one attempt: the longer wins.
        let delay = match *slot {
            Some((j, d)) if j == i => d.max(delay),
            _ => delay,
        };
        *slot = Some((i, delay));
        true
    }

    /// Takes the current attempt's slow-down request, if any.
    pub(crate) fn take_slow_down(&self) -> Option<(usize, Duration)> {
        self.slow_down.lock().take()
    }
}

/// What [`Cluster::limiter`](crate::Cluster::limiter) reports about one
/// limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimiterStats {
    /// The limiter's rate.
    pub rate: Rate,
    /// How long until its global bucket admits a task (zero: now). Tasks
    /// naming it with [`limit_by`](crate::TaskBuilder::limit_by) have
    /// buckets of their own.
    pub global_wait: Duration,
    /// Per-key-value buckets held. Idle buckets (which behave as fresh
    /// ones) are dropped as new key values come: see
    /// [`Cluster::add_limiter`](crate::Cluster::add_limiter) for the bound.
    pub buckets: usize,
}

/// What a failed attempt's worker does if its body asked to slow down
/// ([`TaskContext::slow_down`]): applies the request to the limiter and
/// requeues the task at once (its limiter then holds it back). `None`: no
/// request, the failure counts as usual. Only failed attempts come here.
pub(crate) fn slowed_down(shared: &Shared, job: &dyn Job) -> Option<Plan> {
    let (index, delay) = job.limits()?.take_slow_down()?;
    let mut core = shared.lock();
    core.slow_limiter(job, index, delay);
    shared.unlock(core);
    Some(Plan::Requeue(Duration::ZERO))
}

/// Rate limits: named limiters that tasks name with
/// [`TaskBuilder::limit`](crate::TaskBuilder::limit) and
/// [`limit_by`](crate::TaskBuilder::limit_by).
impl Cluster {
    /// Adds a rate limiter named `name`, admitting tasks at `rate` (GCRA,
    /// see [`Rate`]). Tasks name it with
    /// [`limit`](crate::TaskBuilder::limit) (its one global bucket) or
    /// [`limit_by`](crate::TaskBuilder::limit_by) (a bucket per key value,
    /// each at `rate`).
    ///
    /// A task its limiters do not admit yet waits without a worker and
    /// without being polled, and does not hold up tasks that do not name
    /// them: idle workers run those meanwhile. It starts at the instant all
    /// its limiters admit it, in the queue's exact order (priority, start
    /// time, submission) among the tasks due then.
    ///
    /// Limiters live as long as the cluster and are never replaced.
    /// Memory: a limiter holds its global bucket and the per-key-value
    /// buckets not yet idle; an idle bucket (one that would admit a full
    /// burst) behaves as a fresh one and is dropped as new key values
    /// arrive, so a limiter holds at most about twice as many keyed
    /// buckets as were busy at once (and at least 64), however many key
    /// values come and go.
    ///
    /// # Errors
    /// [`LimiterError`]: a zero rate, period or burst, an interval beyond
    /// 292 years, an empty name, or a name already taken. Nothing changes.
    ///
    /// ```
    /// use corral::{Cluster, LimiterError, Rate};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cluster = Cluster::new(4).unwrap();
    /// cluster.add_limiter("github", Rate::per_second(10).burst(5)).unwrap();
    /// assert_eq!(
    ///     cluster.add_limiter("github", Rate::per_second(1)),
    ///     Err(LimiterError::Exists("github".into()))
    /// );
    /// assert_eq!(cluster.add_limiter("s3", Rate::per_second(0)), Err(LimiterError::ZeroRate));
    /// # }
    /// ```
    pub fn add_limiter(&self, name: impl Into<Arc<str>>, rate: Rate) -> Result<(), LimiterError> {
        let name = name.into();
        self.shared().locked(|core| core.add_limiter(name, rate))
    }

    /// The state of the limiter `name`, or `None` if there is none.
    ///
    /// ```
    /// use std::time::Duration;
    /// use corral::{Cluster, Rate};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// cluster.add_limiter("api", Rate::per_second(2).burst(1)).unwrap();
    /// let h = cluster.task(|_| async { Ok::<_, String>(()) }).limit("api").submit().unwrap();
    /// h.await.unwrap();
    /// let stats = cluster.limiter("api").unwrap();
    /// assert_eq!(stats.global_wait, Duration::from_millis(500));
    /// assert!(cluster.limiter("nope").is_none());
    /// # }
    /// ```
    pub fn limiter(&self, name: &str) -> Option<LimiterStats> {
        self.shared().locked(|core| core.limiter_stats(name))
    }
}

impl TaskContext {
    /// Tells the limiter `limiter` that the upstream asked to slow down
    /// (an HTTP 429 or 503 with a `Retry-After` of `delay`, say): the
    /// bucket this task is charged to under `limiter` (its global bucket,
    /// or its key value's for [`limit_by`](crate::TaskBuilder::limit_by))
    /// admits nothing until `delay` from the attempt's end, then one task
    /// per interval.
    ///
    /// Call it, then return an error (any: it is discarded). The attempt
    /// then does not count: the task goes back to the queue with its retry
    /// budget untouched ([`retry`](crate::TaskBuilder::retry) need not
    /// allow a retry), its next attempt has the same
    /// [`attempt`](Self::attempt) number, and it starts when the limiter
    /// admits it again (in any [`RetryMode`](crate::RetryMode): it waits
    /// without a worker). A body that returns a value after calling it
    /// succeeds as usual, and the request is dropped. A timeout or panic
    /// after the call counts as the error.
    ///
    /// Returns `false`, and does nothing, if the task does not name
    /// `limiter`. Several calls in one attempt: the longest delay of the
    /// last limiter named wins.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use corral::{Cluster, Rate};
    /// use tokio::time::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let cluster = Cluster::new(1).unwrap();
    /// cluster.add_limiter("github", Rate::per_second(10)).unwrap();
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let t0 = Instant::now();
    /// let h = cluster
    ///     .task(move |ctx| {
    ///         let calls = calls.clone();
    ///         async move {
    ///             if calls.fetch_add(1, Ordering::SeqCst) == 0 {
    ///                 // The server answered 429, Retry-After: 2 s.
    ///                 ctx.slow_down("github", Duration::from_secs(2));
    ///                 return Err("429".to_string());
    ///             }
    ///             Ok((ctx.attempt(), t0.elapsed()))
    ///         }
    ///     })
    ///     .limit("github") // no retry(): the 429 does not count
    ///     .submit()
    ///     .unwrap();
    /// assert_eq!(h.await, Ok((1, Duration::from_secs(2))));
    /// # }
    /// ```
    pub fn slow_down(&self, limiter: &str, delay: Duration) -> bool {
        self.job()
            .limits()
            .is_some_and(|l| l.request_slow_down(limiter, delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rates_are_refused() {
        assert_eq!(Rate::per_second(0).validate(), Err(LimiterError::ZeroRate));
        assert_eq!(
            Rate::per(1, Duration::ZERO).validate(),
            Err(LimiterError::ZeroPeriod)
        );
        assert_eq!(
            Rate::per_second(5).burst(0).validate(),
            Err(LimiterError::ZeroBurst)
        );
        assert_eq!(
            Rate::per(1, Duration::MAX).validate(),
            Err(LimiterError::PeriodTooLong)
        );
        let g = Rate::per_second(10).burst(5).validate().unwrap();
        assert_eq!((g.t, g.tau), (100_000_000, 400_000_000));
        // Faster than one per nanosecond is one per nanosecond.
        let g = Rate::per(u32::MAX, Duration::from_nanos(1))
            .validate()
            .unwrap();
        assert_eq!(g.t, 1);
    }

    #[test]
    fn a_fresh_bucket_admits_a_burst_then_paces() {
        let g = Rate::per_second(10).burst(3).validate().unwrap();
        let mut tat = FRESH;
        for _ in 0..3 {
            assert!(g.allows(tat, 0));
            tat = g.charge(tat, 0);
        }
        assert!(!g.allows(tat, 0));
        assert_eq!(g.earliest(tat), 100_000_000);
        assert!(g.allows(tat, 100_000_000));
        tat = g.charge(tat, 100_000_000);
        assert_eq!(g.earliest(tat), 200_000_000);
    }

    #[test]
    fn a_hold_admits_nothing_before_its_end_then_one_per_interval() {
        let g = Rate::per_second(10).burst(3).validate().unwrap();
        let tat = g.hold(FRESH, 1_000_000_000);
        assert!(!g.allows(tat, 999_999_999));
        assert!(g.allows(tat, 1_000_000_000));
        let tat = g.charge(tat, 1_000_000_000);
        assert_eq!(g.earliest(tat), 1_100_000_000);
    }

    #[test]
    fn slow_down_names_a_bucket_of_the_task() {
        let mut l = TaskLimits::default();
        l.add("a".into(), None);
        l.add("b".into(), Some("k".into()));
        l.add("a".into(), None);
        assert_eq!(l.refs.len(), 2);
        assert!(!l.request_slow_down("c", Duration::from_secs(1)));
        assert!(l.request_slow_down("b", Duration::from_secs(2)));
        assert!(l.request_slow_down("b", Duration::from_secs(1)));
        assert_eq!(l.take_slow_down(), Some((1, Duration::from_secs(2))));
        assert_eq!(l.take_slow_down(), None);
    }

    mod against_governor {
        use std::num::NonZeroU32;

        use governor::clock::FakeRelativeClock;
        use governor::{Quota, RateLimiter};
        use proptest::prelude::*;

        use super::super::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Advance the clock by this many nanoseconds.
            Advance(u64),
            /// Try to take one.
            Acquire,
        }

        fn op(interval: u64) -> impl Strategy<Value = Op> {
            prop_oneof![
                2 => Just(Op::Acquire),
                // Steps below, around and above the interval, and exact ones.
                1 => (0..interval * 3).prop_map(Op::Advance),
                1 => (0u64..4).prop_map(move |k| Op::Advance(k * interval)),
                1 => (0u64..3).prop_map(Op::Advance),
            ]
        }

        fn case() -> impl Strategy<Value = (u32, u64, u32, Vec<Op>)> {
            (1u32..50, 1u64..5_000_000_000, 1u32..20).prop_flat_map(|(count, period, burst)| {
                let interval = (period / u64::from(count)).max(1);
                (
                    Just(count),
                    Just(period),
                    Just(burst),
                    prop::collection::vec(op(interval), 1..300),
                )
            })
        }

        /// Plays `ops` on our GCRA `g` (from tick `start`) and on governor's
        /// limiter for `quota`, and checks that every acquire gets the same
        /// answer from both.
        fn agree(g: &Gcra, quota: Quota, start: i64, ops: Vec<Op>) -> Result<(), TestCaseError> {
            let clock = FakeRelativeClock::default();
            let reference = RateLimiter::direct_with_clock(quota, clock.clone());
            let (mut now, mut tat) = (start, FRESH);
            for op in ops {
                match op {
                    Op::Advance(d) => {
                        clock.advance(Duration::from_nanos(d));
                        now += d as i64;
                    }
                    Op::Acquire => {
                        let ours = g.allows(tat, now);
                        if ours {
                            tat = g.charge(tat, now);
                        }
                        prop_assert_eq!(ours, reference.check().is_ok(), "at {}", now);
                    }
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 512,
                failure_persistence: None,
                rng_seed: proptest::test_runner::RngSeed::Fixed(0x6c_1d),
                ..ProptestConfig::default()
            })]

            /// Random sequences of (advance time, try to acquire) get the
            /// same allow/deny answers from our GCRA as from `governor`.
            #[test]
            fn same_answers_as_governor((count, period, burst, ops) in case()) {
                let rate = Rate::per(count, Duration::from_nanos(period)).burst(burst);
                let g = rate.validate().unwrap();
                let quota = Quota::with_period(rate.interval())
                    .unwrap()
                    .allow_burst(NonZeroU32::new(burst).unwrap());
                // Our clock starts anywhere: tick 0 is the cluster's creation.
                agree(&g, quota, 12_345, ops)?;
            }

            /// `Rate::per_second(n)` is governor's `Quota::per_second(n)`,
            /// burst included.
            #[test]
            fn per_second_is_governors(n in 1u32..2000, ops in prop::collection::vec(op(1_000_000), 1..300)) {
                let g = Rate::per_second(n).validate().unwrap();
                agree(&g, Quota::per_second(NonZeroU32::new(n).unwrap()), 0, ops)?;
            }
        }
    }
}
