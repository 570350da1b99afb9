//! The values operations take and return.

use crate::error::StateError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds since the Unix epoch, UTC.
///
/// Every operation takes `now` from its caller rather than reading a clock: one request is
/// judged at one instant across all its checks, tests can move time, and both backends compare
/// the same numbers. Microseconds keep rate-limit arithmetic exact: a millisecond is too coarse
/// for 1000 calls a second, and nanoseconds since 1970 exceed the 2^53 that Redis' Lua numbers
/// hold exactly (microseconds stay below it until the year 2255).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The system clock now (the epoch if the clock is before it).
    pub fn now() -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let micros = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        Timestamp(u64::try_from(micros).unwrap_or(u64::MAX))
    }

    pub const fn from_unix_micros(micros: u64) -> Timestamp {
        Timestamp(micros)
    }

    pub const fn from_unix_millis(millis: u64) -> Timestamp {
        Timestamp(millis.saturating_mul(1000))
    }

    pub const fn as_unix_micros(self) -> u64 {
        self.0
    }

    pub const fn as_unix_millis(self) -> u64 {
        self.0 / 1000
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// This instant plus `d` (saturating).
impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_micros(d)))
    }
}

pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A rate limit: on average `count` calls per `per`, with up to `burst` calls at once after a
/// quiet period. Checked with GCRA (see [`crate::gcra`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub per: Duration,
    pub count: u32,
    pub burst: u32,
}

impl Limit {
    /// `count` calls per `per`, all of which may come at once.
    pub fn new(count: u32, per: Duration) -> Limit {
        Limit {
            per,
            count,
            burst: count,
        }
    }

    pub fn per_second(count: u32) -> Limit {
        Limit::new(count, Duration::from_secs(1))
    }

    pub fn per_minute(count: u32) -> Limit {
        Limit::new(count, Duration::from_secs(60))
    }

    pub fn with_burst(self, burst: u32) -> Limit {
        Limit { burst, ..self }
    }
}

/// The answer of [`crate::State::check_rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateOutcome {
    /// The call is counted. `remaining`: how many more calls would be allowed at this instant.
    Allowed { remaining: u32 },
    /// Refused, nothing counted; a call is allowed again after `retry_after`.
    Limited { retry_after: Duration },
}

/// The period a budget counts over. Calendar windows are UTC and restart from zero at their
/// boundary; `Until` counts from the first reservation until a fixed instant (a session's
/// expiry, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Month,
    Until(Timestamp),
}

impl Window {
    /// The window containing `now`: its id (part of the storage key) and its end.
    pub(crate) fn at(self, now: Timestamp) -> Result<(String, Timestamp), StateError> {
        let secs = i64::try_from(now.as_unix_micros() / 1_000_000)
            .map_err(|_| StateError::WindowClosed)?;
        let dt = time::OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|_| StateError::WindowClosed)?;
        let (y, m, d, h) = (dt.year(), u8::from(dt.month()), dt.day(), dt.hour());
        let at_secs =
            |s: i64| Timestamp::from_unix_micros(u64::try_from(s).unwrap_or(0) * 1_000_000);
        match self {
            Window::Hour => {
                let start = secs - secs.rem_euclid(3600);
                Ok((format!("h{y:04}{m:02}{d:02}{h:02}"), at_secs(start + 3600)))
            }
            Window::Day => {
                let start = secs - secs.rem_euclid(86_400);
                Ok((format!("d{y:04}{m:02}{d:02}"), at_secs(start + 86_400)))
            }
            Window::Month => {
                let next = if m == 12 {
                    time::Date::from_calendar_date(y + 1, time::Month::January, 1)
                } else {
                    time::Date::from_calendar_date(y, dt.month().next(), 1)
                }
                .map_err(|_| StateError::WindowClosed)?;
                let end = next.midnight().assume_utc().unix_timestamp();
                Ok((format!("m{y:04}{m:02}"), at_secs(end)))
            }
            Window::Until(end) => {
                if end <= now {
                    return Err(StateError::WindowClosed);
                }
                Ok((format!("u{}", end.as_unix_micros()), end))
            }
        }
    }
}

/// The dimensions a budget counts, in the order they are checked and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Calls,
    RequestBytes,
    ResponseBytes,
    DurationMs,
    Spend,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Calls,
        Dimension::RequestBytes,
        Dimension::ResponseBytes,
        Dimension::DurationMs,
        Dimension::Spend,
    ];

    /// The stable name (`calls`, `request_bytes`, `response_bytes`, `duration_ms`, `spend`).
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Calls => "calls",
            Dimension::RequestBytes => "request_bytes",
            Dimension::ResponseBytes => "response_bytes",
            Dimension::DurationMs => "duration_ms",
            Dimension::Spend => "spend",
        }
    }
}

/// Figures of one or more calls. Each at most [`crate::MAX_AMOUNT`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amounts {
    pub calls: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: u64,
    pub spend: u64,
}

impl Amounts {
    pub const ZERO: Amounts = Amounts {
        calls: 0,
        request_bytes: 0,
        response_bytes: 0,
        duration_ms: 0,
        spend: 0,
    };

    /// One call and nothing else.
    pub const ONE_CALL: Amounts = Amounts {
        calls: 1,
        ..Amounts::ZERO
    };

    pub fn get(&self, d: Dimension) -> u64 {
        self.to_array()[d as usize]
    }

    pub(crate) fn to_array(self) -> [u64; 5] {
        [
            self.calls,
            self.request_bytes,
            self.response_bytes,
            self.duration_ms,
            self.spend,
        ]
    }

    pub(crate) fn from_array(a: [u64; 5]) -> Amounts {
        Amounts {
            calls: a[0],
            request_bytes: a[1],
            response_bytes: a[2],
            duration_ms: a[3],
            spend: a[4],
        }
    }
}

/// Limits of a budget, per dimension; `None` leaves a dimension unlimited (still counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub calls: Option<u64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    pub duration_ms: Option<u64>,
    pub spend: Option<u64>,
}

impl Limits {
    pub fn get(&self, d: Dimension) -> Option<u64> {
        self.to_array()[d as usize]
    }

    pub(crate) fn to_array(self) -> [Option<u64>; 5] {
        [
            self.calls,
            self.request_bytes,
            self.response_bytes,
            self.duration_ms,
            self.spend,
        ]
    }

    pub(crate) fn from_array(a: [Option<u64>; 5]) -> Limits {
        Limits {
            calls: a[0],
            request_bytes: a[1],
            response_bytes: a[2],
            duration_ms: a[3],
            spend: a[4],
        }
    }

    /// What is left of each limited dimension after `used` (zero when used is past it).
    pub fn remaining_after(&self, used: &Amounts) -> Limits {
        let u = used.to_array();
        let mut out = self.to_array();
        for (i, v) in out.iter_mut().enumerate() {
            *v = v.map(|limit| limit.saturating_sub(u[i]));
        }
        Limits::from_array(out)
    }

    /// How far `used` is past each limit, or `None` when it is within all of them.
    pub fn overrun(&self, used: &Amounts) -> Option<Amounts> {
        let u = used.to_array();
        let mut over = [0u64; 5];
        let mut any = false;
        for (i, limit) in self.to_array().iter().enumerate() {
            if let Some(limit) = limit {
                if u[i] > *limit {
                    over[i] = u[i] - limit;
                    any = true;
                }
            }
        }
        any.then(|| Amounts::from_array(over))
    }
}

/// A reservation against a budget, to be settled with [`crate::State::settle`].
///
/// The fields the gateway reads are public; the rest (where it is stored) are private, so a
/// reservation only comes from [`crate::State::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// 128 random bits, URL-safe base64 (`rsv_` + 22 characters): unique across replicas.
    pub id: String,
    /// What is reserved.
    pub reserved: Amounts,
    /// What is left of each limited dimension with this reservation counted.
    pub remaining: Limits,
    /// When the reservation is released if not settled.
    pub expires_at: Timestamp,
    /// The end of the budget window it counts in.
    pub window_end: Timestamp,
    pub(crate) limits: Limits,
    pub(crate) bucket: String,
    pub(crate) index: String,
}

/// The answer of [`crate::State::reserve`]. (Not boxed: it is made once per call and
/// matched at once.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    Reserved(Reservation),
    /// Refused, nothing reserved: `dimension` (the first in [`Dimension::ALL`] order that
    /// would pass its limit) has `used` of `limit`, `remaining` left.
    Exceeded {
        dimension: Dimension,
        limit: u64,
        used: u64,
        remaining: u64,
    },
}

/// The answer of [`crate::State::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// The actual figures replace the reserved ones. `used` and `remaining` are the window's
    /// after settling; `overrun` says how far `used` is now past a limit (the actual figures
    /// were larger than reserved, or the settle came late). `late`: the reservation had
    /// expired and been released, so the actual figures were added afresh.
    Settled {
        used: Amounts,
        remaining: Limits,
        overrun: Option<Amounts>,
        late: bool,
    },
    /// No open or released reservation with this id: it was settled already (a settle is
    /// idempotent), or it came after the window's records were gone. Nothing changed.
    Unknown,
}

/// A session bound to a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `sess_` + 32 URL-safe base64 characters (192 random bits).
    pub id: String,
    pub principal: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The answer of [`crate::State::use_nonce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceOutcome {
    /// First use in this session: recorded.
    Fresh,
    /// Used before in this session: refuse the call.
    Reused,
}

/// The answer of [`crate::State::advance_counter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterOutcome {
    /// Greater than every value before: recorded.
    Advanced,
    /// Not greater than `last`, the highest value recorded: refuse the call.
    NotMonotonic { last: u64 },
}
