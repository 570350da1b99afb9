//! The seam between the facade and the two stores.
//!
//! The facade ([`crate::State`]) checks every input, computes everything both stores must
//! agree on (storage keys, GCRA parameters, window ids and ends, expiry instants, random ids)
//! and applies the deadline; a backend only runs the one atomic check-and-update. So the two
//! backends cannot drift apart on anything but the atomic step itself, which the shared test
//! suite runs against both.
//!
//! All instants are microseconds since the Unix epoch; amounts are in [`crate::Dimension`]
//! order.

use crate::error::BackendError;
use async_trait::async_trait;

/// One GCRA check: key, now, emission interval `t`, tolerance `tau`.
#[derive(Debug, Clone)]
pub(crate) struct RateReq {
    pub key: String,
    pub now: u64,
    pub t: u64,
    pub tau: u64,
}

/// Allowed or not, and the TAT minus now (after the update when allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateRaw {
    pub allowed: bool,
    pub ahead: u64,
}

/// Where a budget window's records live: the window's usage (`bucket`) and its
/// reservations ordered by due time (`index`).
#[derive(Debug, Clone)]
pub(crate) struct BudgetKeys {
    pub bucket: String,
    pub index: String,
}

#[derive(Debug, Clone)]
pub(crate) struct ReserveReq {
    pub keys: BudgetKeys,
    pub id: String,
    pub now: u64,
    /// The reservation is released if not settled by then.
    pub expires: u64,
    /// The window's records are kept until then (window end + 2 × reservation TTL).
    pub keep_until: u64,
    /// How long a released reservation is remembered, so a late settle is still counted.
    pub tomb_ttl: u64,
    pub want: [u64; 5],
    pub limits: [Option<u64>; 5],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReserveRaw {
    /// Reserved; the window's usage with it.
    Reserved { used: [u64; 5] },
    /// Refused at dimension `dim`; the window's usage (unchanged).
    Exceeded { dim: usize, used: [u64; 5] },
}

#[derive(Debug, Clone)]
pub(crate) struct SettleReq {
    pub keys: BudgetKeys,
    pub id: String,
    pub now: u64,
    pub tomb_ttl: u64,
    pub actual: [u64; 5],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SettleRaw {
    Settled { used: [u64; 5], late: bool },
    Unknown,
}

/// Where one session's records live.
#[derive(Debug, Clone)]
pub(crate) struct SessionKeys {
    pub prefix: String,
    pub id: String,
    pub session: String,
    pub nonces: String,
    pub counter: String,
    /// Every live session of the namespace, by expiry (the global cap).
    pub all: String,
}

impl SessionKeys {
    /// The live sessions of one principal, by expiry (the per-agent cap).
    pub fn by_principal(&self, principal: &str) -> String {
        format!("{}sp:{principal}", self.prefix)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CreateReq {
    pub keys: SessionKeys,
    pub id: String,
    pub principal: String,
    pub now: u64,
    pub expires: u64,
    pub per_agent_cap: u32,
    pub global_cap: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreateRaw {
    Created,
    PerAgentCap,
    GlobalCap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionRow {
    pub principal: String,
    pub created: u64,
    pub expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceRaw {
    Fresh,
    Reused,
    NoSession,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CounterRaw {
    Advanced,
    NotMonotonic(u64),
    NoSession,
}

/// One atomic operation each. Implementations never read-modify-write across round trips.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    async fn ping(&self) -> Result<(), BackendError>;
    async fn rate(&self, req: RateReq) -> Result<RateRaw, BackendError>;
    async fn reserve(&self, req: ReserveReq) -> Result<ReserveRaw, BackendError>;
    async fn settle(&self, req: SettleReq) -> Result<SettleRaw, BackendError>;
    async fn create_session(&self, req: CreateReq) -> Result<CreateRaw, BackendError>;
    async fn get_session(
        &self,
        keys: SessionKeys,
        now: u64,
    ) -> Result<Option<SessionRow>, BackendError>;
    async fn revoke_session(&self, keys: SessionKeys, now: u64) -> Result<bool, BackendError>;
    async fn use_nonce(
        &self,
        keys: SessionKeys,
        nonce: String,
        now: u64,
    ) -> Result<NonceRaw, BackendError>;
    async fn advance_counter(
        &self,
        keys: SessionKeys,
        value: u64,
        now: u64,
    ) -> Result<CounterRaw, BackendError>;
}
