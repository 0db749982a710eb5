//! Retry delays as data: stored with each job, so a retry waits the same
//! whichever worker runs it.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The delay before each retry, stored with the job.
///
/// `attempt` below is the 0-based index of the attempt that failed (the
/// engine's convention): the first retry waits `delay(0)`.
///
/// # Default
/// `Backoff::Fixed(Duration::ZERO)`.
///
/// ```
/// use std::time::Duration;
/// use corral_durable::Backoff;
///
/// let b = Backoff::exponential(Duration::from_millis(100), 2.0).with_max(Duration::from_secs(1));
/// assert_eq!(b.delay(0), Duration::from_millis(100));
/// assert_eq!(b.delay(2), Duration::from_millis(400));
/// assert_eq!(b.delay(10), Duration::from_secs(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// The same delay every time.
    Fixed(Duration),
    /// `base + step * attempt`.
    Linear {
        /// Delay before the first retry.
        base: Duration,
        /// Added for each further retry.
        step: Duration,
    },
    /// `base * multiplier^attempt`, capped at `max` if given.
    Exponential {
        /// Delay before the first retry.
        base: Duration,
        /// Growth per retry; at least 1 (checked at submit).
        multiplier: f64,
        /// The largest delay.
        max: Option<Duration>,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Fixed(Duration::ZERO)
    }
}

impl Backoff {
    /// `base * multiplier^attempt`, uncapped.
    pub fn exponential(base: Duration, multiplier: f64) -> Self {
        Backoff::Exponential {
            base,
            multiplier,
            max: None,
        }
    }

    /// Caps an exponential backoff at `max` (other kinds are unchanged).
    pub fn with_max(self, cap: Duration) -> Self {
        match self {
            Backoff::Exponential {
                base, multiplier, ..
            } => Backoff::Exponential {
                base,
                multiplier,
                max: Some(cap),
            },
            other => other,
        }
    }

    /// The delay after failed attempt `attempt` (0-based). Saturates.
    pub fn delay(&self, attempt: u32) -> Duration {
        match *self {
            Backoff::Fixed(d) => d,
            Backoff::Linear { base, step } => base.saturating_add(step.saturating_mul(attempt)),
            Backoff::Exponential {
                base,
                multiplier,
                max,
            } => {
                let factor = multiplier.powf(f64::from(attempt));
                let secs = base.as_secs_f64() * factor;
                let d = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
                max.map_or(d, |m| d.min(m))
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        match *self {
            Backoff::Exponential { multiplier, .. }
                if !(multiplier.is_finite() && multiplier >= 1.0) =>
            {
                Err("an exponential multiplier must be finite and at least 1")
            }
            _ => Ok(()),
        }
    }
}

/// Multiplies `delay` by a factor drawn from `[1 - ratio, 1 + ratio]`.
/// A ratio outside `(0, 1]` (a row written by hand with NaN, say) means no
/// jitter: the range would be empty and the draw would panic.
pub(crate) fn jittered(delay: Duration, ratio: f64) -> Duration {
    if !(ratio > 0.0 && ratio <= 1.0) || delay.is_zero() {
        return delay;
    }
    let factor = rand::rng().random_range((1.0 - ratio)..=(1.0 + ratio));
    Duration::try_from_secs_f64(delay.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_caps() {
        let ms = Duration::from_millis;
        assert_eq!(Backoff::Fixed(ms(5)).delay(1000), ms(5));
        assert_eq!(
            Backoff::Linear {
                base: ms(10),
                step: ms(5)
            }
            .delay(3),
            ms(25)
        );
        assert_eq!(
            Backoff::exponential(ms(1), 10.0).delay(400),
            Duration::MAX,
            "overflow saturates"
        );
        assert!(Backoff::exponential(ms(1), 0.5).validate().is_err());
        assert!(Backoff::exponential(ms(1), f64::NAN).validate().is_err());
    }

    #[test]
    fn jitter_stays_in_range() {
        let d = Duration::from_millis(100);
        for _ in 0..200 {
            let j = jittered(d, 0.2);
            assert!(
                j >= Duration::from_millis(80) && j <= Duration::from_millis(120),
                "{j:?}"
            );
        }
        assert_eq!(jittered(d, 0.0), d);
        // Bad stored ratios (a row written by SQL) never panic.
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5, 1.5, 3.0] {
            assert_eq!(jittered(d, bad), d, "{bad}");
        }
    }
}
