//! The LAP gateway's state layer: how much an agent may do.
//!
//! Policy says yes or no to one call; this crate keeps what must be counted across calls —
//! **rate limits**, **budgets**, **sessions** and **replay protection** (nonces and monotonic
//! counters) — so that the limits hold exactly under concurrency, across restarts and across
//! gateway replicas. One facade, [`State`], over two backends with the same semantics:
//!
//! * **embedded** ([`State::open_embedded`]): a SQLite file (WAL, bundled into the binary, so
//!   nothing to install) for a single gateway;
//! * **Redis** ([`State::connect_redis`], `redis://` or `rediss://`, with AUTH or an ACL user):
//!   N replicas share every counter.
//!
//! # Atomicity
//!
//! Every check-and-update is **one atomic operation in the store**: a SQLite transaction
//! (`BEGIN IMMEDIATE`, the write lock taken before the first read) or one Lua script in Redis.
//! The gateway never reads a value, decides and writes it back; two requests (or two replicas)
//! can therefore never both take the last unit of a budget or both use a nonce. The facade
//! validates input and computes every derived value (keys, windows, expiries, GCRA parameters,
//! random ids) once for both backends; each backend contains only its atomic step (see
//! `embedded.rs` and `redis_store.rs` with the scripts in `src/lua/`).
//!
//! # Operations
//!
//! **Rate limits** — [`State::check_rate`]`(key, Limit { per, count, burst }, now)`: GCRA (see
//! [`gcra`]): `count` calls per `per` on average, `burst` at once after a quiet period.
//! Answers [`RateOutcome::Allowed`] (the call is counted) or [`RateOutcome::Limited`] with
//! `retry_after` (nothing counted). Keys are opaque strings the gateway builds (principal ×
//! tool, principal, tool, global, client address).
//!
//! **Budgets** — [`State::reserve`]`(key, window, limits, want, now)` reserves `want`
//! ([`Amounts`]: calls, request bytes, response bytes, duration in ms, spend) in the
//! [`Window`] containing `now` (calendar hour, day or month in UTC, or until a fixed instant
//! such as a session's end), if `used + want ≤ limit` in every limited dimension; otherwise it
//! answers [`ReserveOutcome::Exceeded`] and reserves nothing. [`State::settle`]`(reservation,
//! actual)` replaces the reserved figures with the actual ones: the difference is given back,
//! or — when the call took more than reserved — added, and the settle reports by how much
//! `used` is now past a limit ([`SettleOutcome::Settled::overrun`]). `used` is never silently
//! wrong. Rolling windows are not offered: they need per-call history (unbounded storage, or an
//! approximation), while calendar windows are exact, bounded and match how spend is billed.
//!
//! *Reservations expire.* A reservation not settled within [`Options::reservation_ttl`] (the
//! gateway crashed, or lost the store while the call ran) is **released** by the next
//! operation on its window, and remembered as released for one more TTL: a settle that comes
//! in that time adds the actual figures afresh (`late: true`), so the window is still exact;
//! a settle after that, or a second settle, changes nothing ([`SettleOutcome::Unknown`]).
//! The TTL must exceed the longest call (the upstream timeout), or a slow call's capacity is
//! lent to others meanwhile and its late settle shows as an overrun.
//!
//! *Invariant:* reservations never take `used` past a limit, under any concurrency, on one
//! store or many replicas sharing Redis; only a settle's actual figures can, and that is
//! reported.
//!
//! **Sessions** — [`State::create_session`]`(principal, ttl, per_agent_cap, global_cap, now)`
//! makes a session with an unguessable id (`sess_` + 192 random bits, URL-safe), refusing with
//! `SESSION_LIMIT` when the principal, or everyone, already has that many live sessions;
//! [`State::get_session`], [`State::revoke_session`]; sessions end at their expiry. Ids are
//! checked strictly (`SESSION_ID_MALFORMED`) before the store is touched.
//!
//! **Replay protection** — [`State::use_nonce`]`(session, nonce)` answers
//! [`NonceOutcome::Fresh`] exactly once per nonce and session (across replicas and restarts),
//! then [`NonceOutcome::Reused`]; [`State::advance_counter`]`(session, value)` accepts only a
//! value greater than every one before in the session. Both need a live session
//! (`SESSION_NOT_FOUND`), and their records expire with it (bounded storage). Nonces are 1 to
//! 128 characters of `[A-Za-z0-9._~-]` (`NONCE_MALFORMED`), counters 0 to 2^53 − 1
//! (`COUNTER_OUT_OF_RANGE`).
//!
//! # Failure model
//!
//! Every operation has a **deadline** ([`Options::deadline`], 50 ms by default). Past it, the
//! caller gets `STATE_TIMEOUT`; when the store fails, `STATE_UNAVAILABLE`
//! ([`StateError::is_store_failure`]). The gateway refuses the call (fail closed). After a
//! store failure or timeout, whether the operation took effect is unknown, and each is safe
//! either way: a nonce may be spent (the agent uses a new one), a rate-limit unit taken (the
//! limiter is stricter for an instant), a reservation made (it expires and is released), a
//! session made that nobody knows (it counts against the caps until its TTL), a settle applied
//! (a retry finds nothing to do). The embedded store does not run an operation whose caller
//! already gave up. The Redis backend reconnects by itself when the server returns; nothing
//! needs restarting.
//!
//! Input is validated before any store access, so a refused input consumes nothing. Every
//! record has an expiry (Redis TTLs; SQLite rows swept), so storage stays bounded. All keys
//! start with [`Options::prefix`], so several gateways (or tests) can share one Redis.
//!
//! # Time
//!
//! Every operation takes `now` ([`Timestamp`], microseconds) from the caller: one request is
//! judged at one instant, tests can move time, and both backends compare the same numbers.
//! Replicas must keep their clocks synchronised (NTP); see [`gcra`] for what a skew costs.
//!
//! # Why these crates
//!
//! `rusqlite` (`bundled`): SQLite is the standard embeddable transactional store; bundled, it
//! needs no system library. `redis` (tokio, connection manager, scripts, rustls): the
//! maintained Rust client, multiplexing concurrent requests on one connection and reconnecting
//! by itself. `governor` was considered for the embedded rate limiter and not used: it keeps
//! its state in memory (limits would reset on restart, unlike the Redis backend's), reads its
//! own clock rather than the caller's `now`, and holds one limiter per quota, while here each
//! call names its limit; GCRA, which `governor` also implements, is a dozen lines in SQL and
//! Lua, sharing one formula across both backends.

mod backend;
mod embedded;
mod error;
pub mod gcra;
mod ids;
mod redis_store;
mod types;

pub use error::{BackendError, SessionScope, StateError};
pub use ids::{
    validate_nonce, validate_session_id, MAX_KEY_LEN, MAX_NONCE_LEN, MAX_PREFIX_LEN,
    MAX_PRINCIPAL_LEN, SESSION_ID_LEN, SESSION_ID_PREFIX,
};
pub use redis_store::RedisOptions;
pub use types::{
    Amounts, CounterOutcome, Dimension, Limit, Limits, NonceOutcome, RateOutcome, Reservation,
    ReserveOutcome, Session, SettleOutcome, Timestamp, Window,
};

use backend::*;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use types::duration_micros;

/// The largest budget amount or limit: 2^53 − 1, exact in Redis' Lua numbers (and in JSON).
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;
/// The largest counter value (same bound).
pub const MAX_COUNTER: u64 = (1 << 53) - 1;
/// The longest session.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(366 * 86_400);

/// Hooks for metrics (store latency and errors), so this crate stays free of a metrics
/// library.
pub trait Observer: Send + Sync {
    /// One operation finished: which backend and operation, how long it took, and the error
    /// code if it failed.
    fn observe(
        &self,
        backend: &'static str,
        op: &'static str,
        elapsed: Duration,
        error: Option<&'static str>,
    );
}

/// Settings shared by both backends.
#[derive(Clone)]
pub struct Options {
    /// Every storage key starts with it (at most 64 characters, no whitespace or control
    /// characters). Default `lap:`.
    pub prefix: String,
    /// The longest an operation may take before the caller gets `STATE_TIMEOUT`. Default 50 ms.
    pub deadline: Duration,
    /// How long a budget reservation stays reserved without a settle. Default 5 minutes; must
    /// exceed the longest upstream call.
    pub reservation_ttl: Duration,
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prefix: "lap:".into(),
            deadline: Duration::from_millis(50),
            reservation_ttl: Duration::from_secs(300),
            observer: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("prefix", &self.prefix)
            .field("deadline", &self.deadline)
            .field("reservation_ttl", &self.reservation_ttl)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Options {
    fn check(&self) -> Result<(), StateError> {
        if self.prefix.len() > MAX_PREFIX_LEN
            || self
                .prefix
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(StateError::KeyInvalid("key prefix"));
        }
        if self.deadline.is_zero() {
            return Err(StateError::KeyInvalid("deadline (must be positive)"));
        }
        if self.reservation_ttl < Duration::from_secs(1) || self.reservation_ttl > MAX_SESSION_TTL {
            return Err(StateError::KeyInvalid("reservation TTL (1 s to 366 days)"));
        }
        Ok(())
    }
}

/// The state layer. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct State {
    backend: Arc<dyn Backend>,
    options: Arc<Options>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("backend", &self.backend.name())
            .field("options", &self.options)
            .finish()
    }
}

impl State {
    /// Opens (creating if needed, mode 0600) the SQLite database at `path`.
    pub fn open_embedded(path: impl AsRef<Path>, options: Options) -> Result<State, StateError> {
        options.check()?;
        let backend = embedded::Embedded::open(path.as_ref())?;
        Ok(State {
            backend: Arc::new(backend),
            options: Arc::new(options),
        })
    }

    /// Connects to Redis at `url` (`redis://[user:password@]host:port[/db]`, or `rediss://`
    /// for TLS). Connects once now, so a wrong address or credential is reported here; later
    /// losses of the connection are repaired in the background.
    pub async fn connect_redis(
        url: &str,
        redis: RedisOptions,
        options: Options,
    ) -> Result<State, StateError> {
        options.check()?;
        let backend = redis_store::RedisStore::connect(url, &redis, options.deadline).await?;
        Ok(State {
            backend: Arc::new(backend),
            options: Arc::new(options),
        })
    }

    /// `embedded` or `redis`.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Whether the store answers within the deadline.
    pub async fn ping(&self) -> Result<(), StateError> {
        self.run("ping", self.backend.ping()).await
    }

    async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, StateError> {
        let start = Instant::now();
        let deadline = self.options.deadline;
        let result = match tokio::time::timeout(deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StateError::Unavailable(e)),
            Err(_) => Err(StateError::Timeout(deadline)),
        };
        if let Some(o) = &self.options.observer {
            o.observe(
                self.backend.name(),
                op,
                start.elapsed(),
                result.as_ref().err().map(StateError::code),
            );
        }
        result
    }

    fn key(&self, tag: &str, key: &str) -> String {
        format!("{}{tag}:{key}", self.options.prefix)
    }

    fn session_keys(&self, id: &str) -> SessionKeys {
        SessionKeys {
            prefix: self.options.prefix.clone(),
            id: id.to_string(),
            session: self.key("se", id),
            nonces: self.key("sn", id),
            counter: self.key("sc", id),
            all: format!("{}sa", self.options.prefix),
        }
    }

    /// Counts one call against `limit` under `key`, if the limit allows it now.
    pub async fn check_rate(
        &self,
        key: &str,
        limit: Limit,
        now: Timestamp,
    ) -> Result<RateOutcome, StateError> {
        ids::validate_text("rate-limit key", key, MAX_KEY_LEN)?;
        let g = gcra::Gcra::new(limit)?;
        let req = RateReq {
            key: self.key("rl", key),
            now: now.as_unix_micros(),
            t: g.t,
            tau: g.tau,
        };
        let raw = self.run("check_rate", self.backend.rate(req)).await?;
        Ok(g.outcome(raw.allowed, raw.ahead))
    }

    fn budget_keys(&self, window_id: &str, key: &str) -> BudgetKeys {
        BudgetKeys {
            bucket: format!("{}bu:{window_id}:{key}", self.options.prefix),
            index: format!("{}bx:{window_id}:{key}", self.options.prefix),
        }
    }

    /// Reserves `want` against `limits` in the `window` containing `now`, or refuses without
    /// reserving anything.
    pub async fn reserve(
        &self,
        key: &str,
        window: Window,
        limits: &Limits,
        want: &Amounts,
        now: Timestamp,
    ) -> Result<ReserveOutcome, StateError> {
        ids::validate_text("budget key", key, MAX_KEY_LEN)?;
        check_amounts(want)?;
        for d in Dimension::ALL {
            if limits.get(d).is_some_and(|l| l > MAX_AMOUNT) {
                return Err(StateError::AmountOutOfRange(d.name()));
            }
        }
        let (window_id, window_end) = window.at(now)?;
        let ttl = duration_micros(self.options.reservation_ttl);
        let expires = now.as_unix_micros().saturating_add(ttl);
        let keep_until = window_end
            .as_unix_micros()
            .max(expires)
            .saturating_add(ttl.saturating_mul(2));
        let keys = self.budget_keys(&window_id, key);
        let id = ids::new_reservation_id()?;
        let req = ReserveReq {
            keys: keys.clone(),
            id: id.clone(),
            now: now.as_unix_micros(),
            expires,
            keep_until,
            tomb_ttl: ttl,
            want: want.to_array(),
            limits: limits.to_array(),
        };
        match self.run("reserve", self.backend.reserve(req)).await? {
            ReserveRaw::Reserved { used } => {
                let used = Amounts::from_array(used);
                Ok(ReserveOutcome::Reserved(Reservation {
                    id,
                    reserved: *want,
                    remaining: limits.remaining_after(&used),
                    expires_at: Timestamp::from_unix_micros(expires),
                    window_end,
                    limits: *limits,
                    bucket: keys.bucket,
                    index: keys.index,
                }))
            }
            ReserveRaw::Exceeded { dim, used } => {
                let dimension = Dimension::ALL
                    .get(dim)
                    .copied()
                    .ok_or_else(|| StateError::Corrupt(format!("dimension {dim}")))?;
                let limit = limits.get(dimension).unwrap_or(MAX_AMOUNT);
                let used = used[dim];
                Ok(ReserveOutcome::Exceeded {
                    dimension,
                    limit,
                    used,
                    remaining: limit.saturating_sub(used),
                })
            }
        }
    }

    /// Replaces a reservation's figures with the `actual` ones. Idempotent: a second settle
    /// of the same reservation answers [`SettleOutcome::Unknown`] and changes nothing.
    pub async fn settle(
        &self,
        reservation: &Reservation,
        actual: &Amounts,
        now: Timestamp,
    ) -> Result<SettleOutcome, StateError> {
        check_amounts(actual)?;
        let req = SettleReq {
            keys: BudgetKeys {
                bucket: reservation.bucket.clone(),
                index: reservation.index.clone(),
            },
            id: reservation.id.clone(),
            now: now.as_unix_micros(),
            tomb_ttl: duration_micros(self.options.reservation_ttl),
            actual: actual.to_array(),
        };
        match self.run("settle", self.backend.settle(req)).await? {
            SettleRaw::Unknown => Ok(SettleOutcome::Unknown),
            SettleRaw::Settled { used, late } => {
                let used = Amounts::from_array(used);
                Ok(SettleOutcome::Settled {
                    remaining: reservation.limits.remaining_after(&used),
                    overrun: reservation.limits.overrun(&used),
                    used,
                    late,
                })
            }
        }
    }

    /// Gives a reservation back whole (the call was not made): a settle with zero figures.
    pub async fn release(
        &self,
        reservation: &Reservation,
        now: Timestamp,
    ) -> Result<SettleOutcome, StateError> {
        self.settle(reservation, &Amounts::ZERO, now).await
    }

    /// Creates a session for `principal` lasting `ttl`, unless the principal already has
    /// `per_agent_cap` live sessions or everyone together `global_cap`.
    pub async fn create_session(
        &self,
        principal: &str,
        ttl: Duration,
        per_agent_cap: u32,
        global_cap: u32,
        now: Timestamp,
    ) -> Result<Session, StateError> {
        ids::validate_text("principal", principal, MAX_PRINCIPAL_LEN)?;
        if ttl < Duration::from_secs(1) || ttl > MAX_SESSION_TTL {
            return Err(StateError::SessionTtlInvalid);
        }
        let id = ids::new_session_id()?;
        let expires_at = now + ttl;
        let req = CreateReq {
            keys: self.session_keys(&id),
            id: id.clone(),
            principal: principal.to_string(),
            now: now.as_unix_micros(),
            expires: expires_at.as_unix_micros(),
            per_agent_cap,
            global_cap,
        };
        match self
            .run("create_session", self.backend.create_session(req))
            .await?
        {
            CreateRaw::Created => Ok(Session {
                id,
                principal: principal.to_string(),
                created_at: now,
                expires_at,
            }),
            CreateRaw::PerAgentCap => Err(StateError::SessionLimit {
                scope: SessionScope::PerAgent,
                cap: per_agent_cap,
            }),
            CreateRaw::GlobalCap => Err(StateError::SessionLimit {
                scope: SessionScope::Global,
                cap: global_cap,
            }),
        }
    }

    /// The live session with this id, if any.
    pub async fn get_session(
        &self,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<Session>, StateError> {
        validate_session_id(id)?;
        let row = self
            .run(
                "get_session",
                self.backend
                    .get_session(self.session_keys(id), now.as_unix_micros()),
            )
            .await?;
        Ok(row.map(|r| Session {
            id: id.to_string(),
            principal: r.principal,
            created_at: Timestamp::from_unix_micros(r.created),
            expires_at: Timestamp::from_unix_micros(r.expires),
        }))
    }

    /// Ends a session now, with its nonces and counter. True if a live session was revoked.
    pub async fn revoke_session(&self, id: &str, now: Timestamp) -> Result<bool, StateError> {
        validate_session_id(id)?;
        self.run(
            "revoke_session",
            self.backend
                .revoke_session(self.session_keys(id), now.as_unix_micros()),
        )
        .await
    }

    /// Records `nonce` in `session`: [`NonceOutcome::Fresh`] the first time, then
    /// [`NonceOutcome::Reused`].
    pub async fn use_nonce(
        &self,
        session: &str,
        nonce: &str,
        now: Timestamp,
    ) -> Result<NonceOutcome, StateError> {
        validate_session_id(session)?;
        validate_nonce(nonce)?;
        let raw = self
            .run(
                "use_nonce",
                self.backend.use_nonce(
                    self.session_keys(session),
                    nonce.to_string(),
                    now.as_unix_micros(),
                ),
            )
            .await?;
        match raw {
            NonceRaw::Fresh => Ok(NonceOutcome::Fresh),
            NonceRaw::Reused => Ok(NonceOutcome::Reused),
            NonceRaw::NoSession => Err(StateError::SessionNotFound),
        }
    }

    /// Records `value` as the session's counter if it is greater than every value before.
    pub async fn advance_counter(
        &self,
        session: &str,
        value: u64,
        now: Timestamp,
    ) -> Result<CounterOutcome, StateError> {
        validate_session_id(session)?;
        if value > MAX_COUNTER {
            return Err(StateError::CounterOutOfRange(value));
        }
        let raw = self
            .run(
                "advance_counter",
                self.backend.advance_counter(
                    self.session_keys(session),
                    value,
                    now.as_unix_micros(),
                ),
            )
            .await?;
        match raw {
            CounterRaw::Advanced => Ok(CounterOutcome::Advanced),
            CounterRaw::NotMonotonic(last) => Ok(CounterOutcome::NotMonotonic { last }),
            CounterRaw::NoSession => Err(StateError::SessionNotFound),
        }
    }
}

fn check_amounts(a: &Amounts) -> Result<(), StateError> {
    for d in Dimension::ALL {
        if a.get(d) > MAX_AMOUNT {
            return Err(StateError::AmountOutOfRange(d.name()));
        }
    }
    Ok(())
}
