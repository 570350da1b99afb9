//! Every way an operation can fail, each with a stable code.
//!
//! Two families. **Store failures** (`STATE_UNAVAILABLE`, `STATE_TIMEOUT`, `STATE_CORRUPT`):
//! the store could not answer, or not in time; the gateway refuses the call (fail closed,
//! 503). Whether the operation took effect is then unknown — every operation is designed so
//! that an effect nobody learnt about is harmless (see the crate docs, "Failure model").
//! **Refusals of the input** (`*_MALFORMED`, `*_OUT_OF_RANGE`, `*_INVALID`): found before the
//! store is touched, so nothing was consumed. `SESSION_LIMIT` and `SESSION_NOT_FOUND` are
//! answers of the store about sessions.

use std::time::Duration;

/// Why an operation of the state layer failed. [`StateError::code`] is stable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    /// The store failed or could not be reached (connection refused or lost, I/O error,
    /// authentication refused, queue of the embedded store full).
    #[error("the state store is unavailable: {0}")]
    Unavailable(#[source] BackendError),
    /// The store did not answer within the deadline.
    #[error("the state store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store holds a record this version cannot read.
    #[error("the state store holds an unreadable record: {0}")]
    Corrupt(String),
    /// A session id is not `sess_` followed by 32 URL-safe base64 characters.
    #[error("malformed session id")]
    SessionIdMalformed,
    /// A nonce is empty, longer than [`crate::MAX_NONCE_LEN`] or outside `[A-Za-z0-9._~-]`.
    #[error(
        "malformed nonce (1 to {} characters of A-Z a-z 0-9 . _ ~ -)",
        crate::MAX_NONCE_LEN
    )]
    NonceMalformed,
    /// A counter value above [`crate::MAX_COUNTER`].
    #[error("counter {0} is out of range (0 to {max})", max = crate::MAX_COUNTER)]
    CounterOutOfRange(u64),
    /// A budget amount or limit above [`crate::MAX_AMOUNT`].
    #[error("{0} amount is out of range (0 to {max})", max = crate::MAX_AMOUNT)]
    AmountOutOfRange(&'static str),
    /// A rate limit that means nothing (zero count, burst or period, or beyond the bounds).
    #[error("invalid rate limit: {0}")]
    LimitInvalid(&'static str),
    /// A rate-limit or budget key, principal or prefix that is empty, too long or holds
    /// control characters.
    #[error("invalid {0}")]
    KeyInvalid(&'static str),
    /// A session time-to-live outside 1 s ..= [`crate::MAX_SESSION_TTL`].
    #[error("session time-to-live out of range")]
    SessionTtlInvalid,
    /// A budget window that has already ended.
    #[error("the budget window has ended")]
    WindowClosed,
    /// Creating the session would pass a cap on active sessions.
    #[error("too many active sessions ({scope}: {cap})")]
    SessionLimit { scope: SessionScope, cap: u32 },
    /// No live session has this id (never created, expired or revoked).
    #[error("no such session")]
    SessionNotFound,
}

/// Which session cap refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionScope {
    PerAgent,
    Global,
}

impl std::fmt::Display for SessionScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionScope::PerAgent => "per agent",
            SessionScope::Global => "global",
        })
    }
}

impl StateError {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            StateError::Unavailable(_) => "STATE_UNAVAILABLE",
            StateError::Timeout(_) => "STATE_TIMEOUT",
            StateError::Corrupt(_) => "STATE_CORRUPT",
            StateError::SessionIdMalformed => "SESSION_ID_MALFORMED",
            StateError::NonceMalformed => "NONCE_MALFORMED",
            StateError::CounterOutOfRange(_) => "COUNTER_OUT_OF_RANGE",
            StateError::AmountOutOfRange(_) => "AMOUNT_OUT_OF_RANGE",
            StateError::LimitInvalid(_) => "RATE_LIMIT_INVALID",
            StateError::KeyInvalid(_) => "STATE_KEY_INVALID",
            StateError::SessionTtlInvalid => "SESSION_TTL_INVALID",
            StateError::WindowClosed => "BUDGET_WINDOW_CLOSED",
            StateError::SessionLimit { .. } => "SESSION_LIMIT",
            StateError::SessionNotFound => "SESSION_NOT_FOUND",
        }
    }

    /// True for the store failures the gateway answers with 503 (the store, not the caller,
    /// is at fault).
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            StateError::Unavailable(_) | StateError::Timeout(_) | StateError::Corrupt(_)
        )
    }
}

/// What went wrong inside a backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("sqlite: {0}")]
    Sqlite(#[source] std::sync::Arc<rusqlite::Error>),
    #[error("redis: {0}")]
    Redis(#[source] std::sync::Arc<redis::RedisError>),
    /// The embedded store's queue is full (the disk is slower than the offered load).
    #[error("the embedded store is overloaded ({0} operations waiting)")]
    Overloaded(usize),
    /// The embedded store's worker thread is gone.
    #[error("the embedded store has stopped")]
    Stopped,
    #[error("{0}")]
    Other(String),
}

impl From<rusqlite::Error> for BackendError {
    fn from(e: rusqlite::Error) -> Self {
        BackendError::Sqlite(std::sync::Arc::new(e))
    }
}

impl From<redis::RedisError> for BackendError {
    fn from(e: redis::RedisError) -> Self {
        BackendError::Redis(std::sync::Arc::new(e))
    }
}

impl From<BackendError> for StateError {
    fn from(e: BackendError) -> Self {
        StateError::Unavailable(e)
    }
}
