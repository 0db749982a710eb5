//! Cron triggers (feature `cron`): expressions parsed and searched by the
//! `croner` crate (Vixie-cron rules), read in an IANA time zone from
//! `chrono-tz`, on an injectable wall clock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::Cron;

use super::timeline::Timeline;
use super::{FiringTime, ScheduleError};

/// A source of wall-clock time for cron schedules.
///
/// [`SystemClock`] is the default; [`AnchoredClock`] follows tokio's clock
/// (for tests on a paused clock). Implement it to read time elsewhere.
pub trait WallClock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock ([`SystemTime::now`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that reads `start` when made and then advances with
/// tokio's clock: on a paused test clock, a cron schedule can run through
/// days (and daylight-saving changes) without waiting.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use corral::{AnchoredClock, WallClock};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let clock = AnchoredClock::new(start);
/// tokio::time::sleep(Duration::from_secs(3600)).await; // instant on a paused clock
/// assert_eq!(clock.now(), start + Duration::from_secs(3600));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AnchoredClock {
    start: SystemTime,
    at: tokio::time::Instant,
}

impl AnchoredClock {
    /// A clock that reads `start` now.
    pub fn new(start: SystemTime) -> Self {
        AnchoredClock {
            start,
            at: tokio::time::Instant::now(),
        }
    }
}

impl WallClock for AnchoredClock {
    fn now(&self) -> SystemTime {
        self.start + self.at.elapsed()
    }
}

/// A cron expression read in a time zone: the pure rules of a cron
/// [`Trigger`](super::Trigger), to test or preview firings directly.
///
/// Expressions have five fields (minute, hour, day of month, month, day of
/// week) or six (seconds first), with lists, ranges, steps, names,
/// `L`/`W`/`#` and the `@hourly`-style aliases, as the `croner` crate reads
/// them (POSIX/Vixie rules: when both day fields are restricted, a day
/// matching either fires).
///
/// # Daylight saving
/// Firings are computed on the zone's wall clock, in real time order:
/// - **Skipped hour** (spring forward, e.g. 02:00 -> 03:00): a fixed-time
///   job inside the gap (`30 2 * * *`) fires once that day at the first
///   valid time after the gap (03:00, local); wildcard and step jobs
///   (`*/15 * * * *`) simply have no firings in the gap.
/// - **Repeated hour** (fall back, e.g. 03:00 -> 02:00): a fixed-time job
///   fires once, at the first pass; wildcard and step jobs fire on both
///   passes. Firing ids carry the UTC offset
///   (`backup@2026-10-25T02:30:00+02:00`), so the two passes never share
///   an id.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use corral::CronSchedule;
///
/// let daily = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
/// // 2026-03-28 12:00 UTC: the night Berlin skips 02:00-03:00.
/// let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_774_699_200);
/// let next = daily.next_after(t).unwrap();
/// assert_eq!(daily.label(next), "2026-03-29T03:00:00+02:00");
/// ```
#[derive(Clone)]
pub struct CronSchedule {
    cron: Arc<Cron>,
    zone: Tz,
}

impl CronSchedule {
    /// Parses `expression`, read in the IANA zone `zone` (`"UTC"`,
    /// `"Europe/Berlin"`, `"America/New_York"`...).
    ///
    /// # Errors
    /// [`ScheduleError::InvalidCron`] if the expression does not parse,
    /// [`ScheduleError::UnknownTimeZone`] if the zone is unknown.
    pub fn parse(expression: &str, zone: &str) -> Result<Self, ScheduleError> {
        let zone: Tz = zone
            .parse()
            .map_err(|_| ScheduleError::UnknownTimeZone(zone.to_owned()))?;
        let cron: Cron = expression.parse().map_err(|e: croner::errors::CronError| {
            ScheduleError::InvalidCron {
                expression: expression.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(CronSchedule {
            cron: Arc::new(cron),
            zone,
        })
    }

    /// The first firing strictly after `after` (whole seconds), or `None`
    /// if the expression fires no more (or only beyond the year 5000).
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.next_key(secs(after)).map(time_of)
    }

    /// The zone's local time of `at`, with its UTC offset, as in firing ids
    /// (`2026-03-29T03:00:00+02:00`).
    pub fn label(&self, at: SystemTime) -> String {
        self.local(secs(at)).map_or_else(
            || format!("{}s", secs(at)),
            |t| t.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        )
    }

    fn local(&self, key: i64) -> Option<DateTime<Tz>> {
        self.zone.timestamp_opt(key, 0).single()
    }

    fn next_key(&self, key: i64) -> Option<i64> {
        let from = self.local(key)?;
        self.cron
            .find_next_occurrence(&from, false)
            .ok()
            .map(|t| t.timestamp())
    }

    fn previous_key(&self, key: i64, inclusive: bool) -> Option<i64> {
        let from = self.local(key)?;
        self.cron
            .find_previous_occurrence(&from, inclusive)
            .ok()
            .map(|t| t.timestamp())
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSchedule")
            .field("expression", &self.cron.pattern.to_string())
            .field("zone", &self.zone.name())
            .finish()
    }
}

/// Whole seconds since the Unix epoch (negative before it), flooring.
fn secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() > 0 {
                -s - 1
            } else {
                -s
            }
        }
    }
}

fn time_of(key: i64) -> SystemTime {
    let d = Duration::from_secs(key.unsigned_abs());
    if key >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// How long the driver sleeps at most before reading the wall clock again,
/// so that a clock set forward or back is noticed.
const RECHECK: Duration = Duration::from_secs(60);

/// A cron trigger as the driver sees it: keys are Unix seconds.
pub(crate) struct CronTimeline {
    cron: CronSchedule,
    clock: Arc<dyn WallClock>,
    origin: i64,
}

impl CronTimeline {
    pub(crate) fn new(cron: CronSchedule, clock: Arc<dyn WallClock>) -> Self {
        let origin = secs(clock.now());
        CronTimeline {
            cron,
            clock,
            origin,
        }
    }

    /// The key of a last firing at `at` (a restart's catch-up point).
    pub(crate) fn key_at_or_before(&self, at: SystemTime) -> i64 {
        secs(at)
    }
}

impl Timeline for CronTimeline {
    fn origin(&self) -> i64 {
        self.origin
    }

    fn next_after(&self, key: i64) -> Option<i64> {
        self.cron.next_key(key)
    }

    fn latest_due(&self, after: i64, n: usize) -> Vec<i64> {
        let now = secs(self.clock.now());
        let mut keys = Vec::new();
        let mut last = self.cron.previous_key(now, true);
        while let Some(k) = last.filter(|&k| k > after) {
            keys.push(k);
            if keys.len() >= n.max(1) {
                break;
            }
            last = self.cron.previous_key(k, false);
        }
        keys.reverse();
        keys
    }

    fn until(&self, key: i64) -> Option<Duration> {
        let now = self.clock.now();
        time_of(key)
            .duration_since(now)
            .ok()
            .filter(|d| !d.is_zero())
            .map(|d| d.min(RECHECK))
    }

    fn label(&self, key: i64) -> String {
        self.cron.label(time_of(key))
    }

    fn time(&self, key: i64) -> FiringTime {
        FiringTime::Wall(time_of(key))
    }
}
