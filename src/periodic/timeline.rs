//! When a schedule's firings fall: the driver's view of a trigger.
//!
//! Firings are numbered by `i64` keys that only grow: the firing's index
//! for a fixed interval, its Unix second for a cron expression. A key names
//! one firing for good, so the driver never fires a key twice.

use std::time::Duration;

use tokio::time::Instant;

use super::FiringTime;

/// Where a trigger's firings fall; see the module docs.
pub(crate) trait Timeline: Send + 'static {
    /// The key before the first firing (the schedule's start).
    fn origin(&self) -> i64;
    /// The first firing strictly after `key`; `None` if there is none.
    fn next_after(&self, key: i64) -> Option<i64>;
    /// The latest `n` firings (at least one) strictly after `after` that
    /// are due by now, oldest first.
    fn latest_due(&self, after: i64, n: usize) -> Vec<i64>;
    /// How long to sleep before looking again at firing `key`; `None` if
    /// it is due. May be shorter than the time left (a wall clock is
    /// looked at again at least every minute, so that clock changes count).
    fn until(&self, key: i64) -> Option<Duration>;
    /// The firing's part of its task id (after `schedule@`).
    fn label(&self, key: i64) -> String;
    fn time(&self, key: i64) -> FiringTime;
}

/// A fixed interval on the engine's clock (tokio's, so a paused test clock
/// drives it): firing `n` is due at `anchor + n * period`, `n >= 1`.
pub(crate) struct Interval {
    pub(crate) anchor: Instant,
    pub(crate) period: Duration,
}

impl Interval {
    /// When firing `key` is due; `None` past what an `Instant` holds
    /// (`Duration::checked_mul` takes a `u32`, which would end a 1 ms
    /// schedule after 49.7 days, so the product is taken in nanoseconds).
    fn at(&self, key: i64) -> Option<Instant> {
        let n = u128::try_from(key).ok()?;
        let nanos = self.period.as_nanos().checked_mul(n)?;
        let offset = Duration::new(
            u64::try_from(nanos / 1_000_000_000).ok()?,
            (nanos % 1_000_000_000) as u32,
        );
        self.anchor.checked_add(offset)
    }

    /// The index of the latest firing due by now (0: none yet).
    fn now_index(&self) -> i64 {
        let elapsed = Instant::now().saturating_duration_since(self.anchor);
        let n = elapsed.as_nanos() / self.period.as_nanos().max(1);
        i64::try_from(n).unwrap_or(i64::MAX)
    }
}

impl Timeline for Interval {
    fn origin(&self) -> i64 {
        0
    }

    fn next_after(&self, key: i64) -> Option<i64> {
        // The schedule ends where an `Instant` ends (hundreds of years).
        key.checked_add(1).filter(|&k| self.at(k).is_some())
    }

    fn latest_due(&self, after: i64, n: usize) -> Vec<i64> {
        let last = self.now_index();
        let n = i64::try_from(n.max(1)).unwrap_or(i64::MAX);
        let first = after.saturating_add(1).max(last.saturating_sub(n - 1));
        (first..=last).collect()
    }

    fn until(&self, key: i64) -> Option<Duration> {
        let at = self.at(key)?;
        let now = Instant::now();
        (at > now).then(|| at - now)
    }

    fn label(&self, key: i64) -> String {
        key.to_string()
    }

    fn time(&self, key: i64) -> FiringTime {
        FiringTime::Interval {
            number: u64::try_from(key).unwrap_or(0),
            at: self.at(key).unwrap_or(self.anchor),
        }
    }
}
