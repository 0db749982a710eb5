//! Delays between retries: the [`Backoff`] trait, the three built-in
//! strategies and jitter.
//!
//! All arithmetic saturates: no strategy overflows or panics, whatever the
//! attempt number or parameters; the largest delay is [`Duration::MAX`].

use std::time::Duration;

use rand::Rng;

/// Computes the delay before a retry.
///
/// `attempt` is the index of the attempt that just failed, starting at 0: the
/// delay before the first retry is `delay(0)`, before the second `delay(1)`,
/// and so on.
///
/// Any `Fn(u32) -> Duration + Send + Sync` closure is a backoff strategy.
/// A strategy sees only the attempt; for a delay chosen from the error (an
/// HTTP `Retry-After`), see [`TaskBuilder::retry_with`](crate::TaskBuilder::retry_with).
/// A strategy that panics is caught: the task then ends with the error of its
/// last attempt instead of retrying.
///
/// ```
/// use std::time::Duration;
/// use corral::Backoff;
///
/// // Retry quickly twice, then slowly.
/// let custom = |attempt: u32| {
///     if attempt < 2 { Duration::from_millis(10) } else { Duration::from_secs(5) }
/// };
/// assert_eq!(custom.delay(3), Duration::from_secs(5));
/// ```
pub trait Backoff: Send + Sync + 'static {
    /// The delay before the retry that follows failed attempt `attempt` (0-based).
    fn delay(&self, attempt: u32) -> Duration;
}

impl<F> Backoff for F
where
    F: Fn(u32) -> Duration + Send + Sync + 'static,
{
    fn delay(&self, attempt: u32) -> Duration {
        self(attempt)
    }
}

/// What a [`retry_with`](crate::TaskBuilder::retry_with) function decides
/// after a failed attempt (see there for a full example).
///
/// ```
/// use std::time::Duration;
/// use corral::{RetryDecision, TaskError};
///
/// // Honour a server's Retry-After, capped at a minute; else the backoff.
/// fn decide(err: &TaskError<Option<Duration>>, _attempt: u32) -> RetryDecision {
///     match err {
///         TaskError::Failed(Some(after)) => {
///             RetryDecision::RetryAfter((*after).min(Duration::from_secs(60)))
///         }
///         TaskError::Failed(None) | TaskError::TimedOut { .. } => RetryDecision::Retry,
///         _ => RetryDecision::Stop,
///     }
/// }
/// assert_eq!(
///     decide(&TaskError::Failed(Some(Duration::from_secs(5))), 1),
///     RetryDecision::RetryAfter(Duration::from_secs(5))
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryDecision {
    /// Retry after the task's [`backoff`](crate::TaskBuilder::backoff) delay,
    /// with its [`jitter`](crate::TaskBuilder::jitter).
    Retry,
    /// Retry after exactly this delay, instead of the backoff's (no jitter
    /// either): the delay the error itself asks for, such as an HTTP
    /// `Retry-After`.
    RetryAfter(Duration),
    /// Do not retry: the task ends with this attempt's error.
    Stop,
}

/// The same delay before every retry.
///
/// # Default
/// A task with retries and no strategy uses `FixedBackoff::new(Duration::ZERO)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedBackoff {
    delay: Duration,
}

impl FixedBackoff {
    /// Waits `delay` before every retry.
    pub const fn new(delay: Duration) -> Self {
        FixedBackoff { delay }
    }
}

impl Backoff for FixedBackoff {
    fn delay(&self, _attempt: u32) -> Duration {
        self.delay
    }
}

/// A delay that grows by a constant step: `base + step * attempt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearBackoff {
    base: Duration,
    step: Duration,
}

impl LinearBackoff {
    /// Waits `base` before the first retry and `step` more before each next one.
    pub const fn new(base: Duration, step: Duration) -> Self {
        LinearBackoff { base, step }
    }
}

impl Backoff for LinearBackoff {
    fn delay(&self, attempt: u32) -> Duration {
        self.base.saturating_add(self.step.saturating_mul(attempt))
    }
}

/// A delay that grows geometrically: `base * multiplier^attempt`, capped by
/// `max` when one is given.
///
/// A multiplier below 1, NaN, or infinite is replaced by 2 (as in the
/// reference API), so the delay always grows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialBackoff {
    base: Duration,
    multiplier: f64,
    max: Option<Duration>,
}

impl ExponentialBackoff {
    /// `base * multiplier^attempt`, uncapped. See the type docs for how a bad
    /// multiplier is clamped.
    pub fn new(base: Duration, multiplier: f64) -> Self {
        let multiplier = if multiplier.is_finite() && multiplier >= 1.0 {
            multiplier
        } else {
            2.0
        };
        ExponentialBackoff {
            base,
            multiplier,
            max: None,
        }
    }

    /// Caps every delay at `max`. The task's
    /// [`jitter`](crate::TaskBuilder::jitter) applies after the cap, so a
    /// capped delay with jitter `r` lies in `[max * (1 - r), max * (1 + r)]`.
    pub fn with_max(mut self, max: Duration) -> Self {
        self.max = Some(max);
        self
    }

    /// The multiplier in use after clamping.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }
}

impl Backoff for ExponentialBackoff {
    fn delay(&self, attempt: u32) -> Duration {
        if self.base.is_zero() {
            // 0 * inf would be NaN below; zero stays zero.
            return Duration::ZERO;
        }
        let cap = self.max.unwrap_or(Duration::MAX);
        // powi takes an i32; past that the factor is infinite anyway.
        let exp = i32::try_from(attempt).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.multiplier.powi(exp);
        // Out-of-range (including infinite) values saturate to the cap.
        Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
    }
}

/// Spreads `delay` uniformly over `[delay * (1 - ratio), delay * (1 + ratio)]`.
///
/// `ratio` is validated to lie in `0.0..=1.0` when the task is submitted.
pub(crate) fn jittered(delay: Duration, ratio: f64) -> Duration {
    if ratio <= 0.0 || delay.is_zero() {
        return delay;
    }
    let factor = rand::rng().random_range((1.0 - ratio)..=(1.0 + ratio));
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn fixed_is_constant() {
        let b = FixedBackoff::new(5 * MS);
        assert_eq!(b.delay(0), 5 * MS);
        assert_eq!(b.delay(u32::MAX), 5 * MS);
    }

    #[test]
    fn linear_grows_by_step_and_saturates() {
        let b = LinearBackoff::new(10 * MS, 5 * MS);
        assert_eq!(b.delay(0), 10 * MS);
        assert_eq!(b.delay(3), 25 * MS);
        let huge = LinearBackoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.delay(u32::MAX), Duration::MAX);
    }

    #[test]
    fn exponential_grows_caps_and_saturates() {
        let b = ExponentialBackoff::new(10 * MS, 2.0);
        assert_eq!(b.delay(0), 10 * MS);
        assert_eq!(b.delay(3), 80 * MS);
        let capped = b.with_max(50 * MS);
        assert_eq!(capped.delay(3), 50 * MS);
        let big = ExponentialBackoff::new(Duration::from_secs(1), 10.0);
        assert_eq!(big.delay(10_000), Duration::MAX);
        assert_eq!(
            big.with_max(Duration::from_secs(60)).delay(10_000),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn bad_multipliers_become_two() {
        for m in [0.5, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(ExponentialBackoff::new(MS, m).multiplier(), 2.0, "{m}");
        }
        assert_eq!(ExponentialBackoff::new(MS, 1.0).multiplier(), 1.0);
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let d = Duration::from_secs(10);
        for _ in 0..1000 {
            let j = jittered(d, 0.1);
            assert!(
                j >= Duration::from_secs(9) && j <= Duration::from_secs(11),
                "{j:?}"
            );
        }
        assert_eq!(jittered(d, 0.0), d);
        // Saturates instead of overflowing.
        assert!(jittered(Duration::MAX, 0.5) >= Duration::from_secs(u64::MAX / 4));
    }
}
