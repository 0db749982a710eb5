//! The cluster's time base: instants as signed nanosecond "ticks" from the
//! cluster's creation, which are what the queue orders by (8 bytes instead
//! of an `Instant`'s 16).

use std::time::Duration;

use tokio::time::Instant;

/// Converts between instants and ticks. Ticks are signed so that start times
/// before the epoch keep their order; both directions saturate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            epoch: Instant::now(),
        }
    }

    #[inline]
    pub(crate) fn tick(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.epoch) {
            Some(d) => duration_ticks(d),
            None => duration_ticks(self.epoch - t).saturating_neg(),
        }
    }

    /// The current tick (tokio's clock, so it follows a paused test clock).
    #[inline]
    pub(crate) fn now(&self) -> i64 {
        self.tick(Instant::now())
    }

    /// The instant of `tick`, or `None` if it is beyond what `Instant` holds.
    pub(crate) fn instant(&self, tick: i64) -> Option<Instant> {
        let d = Duration::from_nanos(tick.unsigned_abs());
        if tick >= 0 {
            self.epoch.checked_add(d)
        } else {
            self.epoch.checked_sub(d)
        }
    }
}

/// The tick of "never": where a start time or a retry's time saturates (a
/// delay that ends more than about 292 years after the cluster was made,
/// `Duration::MAX` included). A task scheduled for it is never due, however
/// long the process lives; a cancel or a shutdown still ends it.
pub(crate) const NEVER: i64 = i64::MAX;

/// `true` if `tick` has come by `now` (never for [`NEVER`]).
pub(crate) fn is_due(tick: i64, now: i64) -> bool {
    tick <= now && tick != NEVER
}

/// Nanoseconds in `d`, saturating.
pub(crate) fn duration_ticks(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_round_trip_and_saturate() {
        let c = Clock::new();
        let t = Instant::now() + Duration::from_millis(1500);
        assert_eq!(c.tick(t), 1_500_000_000);
        assert_eq!(c.instant(1_500_000_000), Some(t));
        assert_eq!(duration_ticks(Duration::MAX), i64::MAX);
        if let Some(past) = Instant::now().checked_sub(Duration::from_secs(1)) {
            assert_eq!(c.tick(past), -1_000_000_000);
        }
    }
}
