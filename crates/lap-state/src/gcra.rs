//! GCRA, the generic cell rate algorithm: the rate limiter both backends run.
//!
//! Why GCRA rather than a token bucket: it is the same limit (a bucket of `burst` tokens
//! refilled at `count / per`) but its whole state is one number per key, the *theoretical
//! arrival time* (TAT) — no separate refill timestamp to keep consistent, one integer
//! compare-and-set in SQL or Lua, and the record is useless (so may expire) as soon as the TAT
//! is in the past.
//!
//! With emission interval `T = per / count` (rounded up to a microsecond, so the limiter is
//! never looser than configured) and tolerance `τ = T · (burst − 1)`: a call at `now` is
//! allowed iff `max(TAT, now) − now ≤ τ`, and then `TAT := max(TAT, now) + T`. A refused call
//! changes nothing and may retry after `max(TAT, now) − τ − now`. From idle, `burst` calls pass
//! at once; over any interval of length `L`, at most `burst + L / T` calls pass.
//!
//! Clocks: the caller's `now` is used. Among replicas sharing Redis, a replica whose clock runs
//! ahead by `δ` can let through at most `⌈δ / T⌉` extra calls (one that runs behind only refuses
//! sooner), so replicas must keep their clocks synchronised (NTP) — the same assumption the
//! calendar budget windows and session expiry make.

use crate::error::StateError;
use crate::types::{duration_micros, Limit, RateOutcome};
use std::time::Duration;

/// The longest period a limit may have.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 86_400);
/// The largest burst.
pub const MAX_BURST: u32 = 1_000_000;

/// Checks a limit as [`crate::State::check_rate`] will (`RATE_LIMIT_INVALID`), so that a
/// configuration can be refused at start-up rather than at the first call.
pub fn validate(limit: Limit) -> Result<(), StateError> {
    Gcra::new(limit).map(drop)
}

/// The emission interval and tolerance of a limit, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    pub t: u64,
    pub tau: u64,
}

impl Gcra {
    pub fn new(limit: Limit) -> Result<Gcra, StateError> {
        if limit.count == 0 {
            return Err(StateError::LimitInvalid("count must be at least 1"));
        }
        if limit.burst == 0 || limit.burst > MAX_BURST {
            return Err(StateError::LimitInvalid(
                "burst must be between 1 and 1000000",
            ));
        }
        if limit.per < Duration::from_millis(1) || limit.per > MAX_PERIOD {
            return Err(StateError::LimitInvalid(
                "period must be between 1 ms and 366 days",
            ));
        }
        let per = duration_micros(limit.per);
        let t = per.div_ceil(u64::from(limit.count));
        let tau = t.saturating_mul(u64::from(limit.burst) - 1);
        // Keeps now + τ + T far below 2^53, where Lua's doubles stop being exact.
        if tau > (1 << 50) {
            return Err(StateError::LimitInvalid("burst × period is too large"));
        }
        Ok(Gcra { t, tau })
    }

    /// The outcome from what a backend answered: whether the call was allowed, and the TAT
    /// minus now (after the update when allowed, before it when refused).
    pub fn outcome(&self, allowed: bool, ahead: u64) -> RateOutcome {
        if allowed {
            let remaining = if ahead <= self.tau {
                (self.tau - ahead) / self.t + 1
            } else {
                0
            };
            RateOutcome::Allowed {
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            }
        } else {
            RateOutcome::Limited {
                retry_after: Duration::from_micros(ahead.saturating_sub(self.tau)),
            }
        }
    }

    /// The reference implementation (used by the tests of both backends): the next TAT and
    /// the backend's answer for a stored TAT.
    #[cfg(test)]
    pub fn step(&self, tat: Option<u64>, now: u64) -> (Option<u64>, bool, u64) {
        let base = tat.unwrap_or(now).max(now);
        if base - now > self.tau {
            (tat, false, base - now)
        } else {
            (Some(base + self.t), true, base + self.t - now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emission_interval_rounds_up() {
        let g = Gcra::new(Limit::new(3, Duration::from_secs(1)).with_burst(1)).unwrap();
        assert_eq!(g.t, 333_334);
        assert_eq!(g.tau, 0);
    }

    #[test]
    fn burst_then_steady_rate() {
        let g = Gcra::new(Limit::per_second(10).with_burst(5)).unwrap();
        let now = 1_000_000_000u64;
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..20 {
            let (next, ok, ahead) = g.step(tat, now);
            tat = next;
            if ok {
                allowed += 1;
                let RateOutcome::Allowed { remaining } = g.outcome(true, ahead) else {
                    panic!()
                };
                assert_eq!(remaining, 5 - allowed);
            } else {
                assert_eq!(
                    g.outcome(false, ahead),
                    RateOutcome::Limited {
                        retry_after: Duration::from_millis(100)
                    }
                );
            }
        }
        assert_eq!(allowed, 5);
        // One interval later exactly one more passes.
        let (_, ok, _) = g.step(tat, now + 100_000);
        assert!(ok);
    }

    #[test]
    fn nonsense_limits_are_refused() {
        for l in [
            Limit::per_second(0),
            Limit::per_second(1).with_burst(0),
            Limit::new(1, Duration::ZERO),
            Limit::new(1, Duration::from_secs(400 * 86_400)),
            Limit::per_second(1).with_burst(MAX_BURST + 1),
        ] {
            assert_eq!(Gcra::new(l).unwrap_err().code(), "RATE_LIMIT_INVALID");
        }
    }
}
