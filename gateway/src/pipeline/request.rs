//! Request state, in types: what the gateway knows about a request at each phase.
//!
//! Pingora hands every request one context value (`ProxyHttp::CTX`), created before the first
//! phase and passed to each. Ours is a [`RequestCtx`]: the request id, the start time, and a
//! [`RequestState`] saying what became of the request. Admission ends in exactly one of three
//! ways — answered locally, refused, or admitted and forwarded — and each state carries only
//! what is true of it: a forwarded call always has its principal, tool and decision (and, with
//! evidence on, its decision receipt); a refusal says how far admission got ([`Reached`]).
//! Later phases match on the state; nothing is unwrapped on the hope that an earlier phase
//! filled it in.

use super::error::ApiError;
use super::evidence::CallEvidence;
use super::limits::Held;
use super::mcp::McpExchange;
use crate::mcp::jsonrpc::RpcId;
use crate::tools::Tool;
use bytes::Bytes;
use lap_auth::Principal;
use lap_evidence::Issued;
use lap_policy::Decision;
use std::sync::Arc;
use std::time::Instant;

/// The per-request context Pingora carries from phase to phase.
pub struct RequestCtx {
    /// `<process prefix>-<counter in hex>`: unique per process, sent upstream and back.
    pub id: String,
    pub started: Instant,
    pub state: RequestState,
}

impl RequestCtx {
    pub fn new(id: String) -> Self {
        Self {
            id,
            started: Instant::now(),
            state: RequestState::Arriving,
        }
    }

    /// The error the gateway itself answered or failed this request with, if any.
    pub fn error(&self) -> Option<&ApiError> {
        match &self.state {
            RequestState::Refused(r) => Some(&r.error),
            RequestState::Forwarded(f) => f.failure.as_ref(),
            RequestState::Arriving | RequestState::Local => None,
        }
    }
}

/// What became of a request.
pub enum RequestState {
    /// Admission has not finished: the client went away, or Pingora failed before
    /// `request_filter` completed.
    Arriving,
    /// Answered by the gateway itself (`/v1/health`, `/v1/keys`).
    Local,
    /// Refused, or failed, before the tool was contacted. The agent got an error body.
    Refused(Box<Refused>),
    /// Admitted and forwarded to the tool.
    Forwarded(Box<Forwarded>),
}

/// How far admission got before it refused: each step adds what it established. Receipts and
/// the access log report exactly this much about the caller and the call.
pub enum Reached {
    /// Refused on the request's shape or on its credential: nobody is identified.
    Arrival,
    /// The agent is identified; the tool is not (unknown tool, or a path that cannot be
    /// forwarded unambiguously).
    Identified { principal: Arc<Principal> },
    /// Agent and tool are known; refused on the body or its arguments.
    Routed {
        principal: Arc<Principal>,
        tool: Arc<Tool>,
    },
    /// Refused by policy.
    Decided {
        principal: Arc<Principal>,
        tool: Arc<Tool>,
        decision: Arc<Decision>,
    },
}

impl Reached {
    pub fn principal(&self) -> Option<&Arc<Principal>> {
        match self {
            Reached::Arrival => None,
            Reached::Identified { principal }
            | Reached::Routed { principal, .. }
            | Reached::Decided { principal, .. } => Some(principal),
        }
    }

    pub fn tool(&self) -> Option<&Arc<Tool>> {
        match self {
            Reached::Arrival | Reached::Identified { .. } => None,
            Reached::Routed { tool, .. } | Reached::Decided { tool, .. } => Some(tool),
        }
    }

    pub fn decision(&self) -> Option<&Arc<Decision>> {
        match self {
            Reached::Decided { decision, .. } => Some(decision),
            _ => None,
        }
    }
}

/// How the agent expects a refusal: the REST routes' JSON error body, or a JSON-RPC error
/// response on an MCP route (echoing the request's id once it is known).
#[derive(Debug, Clone, PartialEq)]
pub enum Dialect {
    Rest,
    Mcp { id: Option<RpcId> },
}

/// A request the gateway answered with an error instead of forwarding it.
pub struct Refused {
    pub error: ApiError,
    pub reached: Reached,
    pub dialect: Dialect,
    /// The denial receipt. Absent when evidence is off, or when it could not be issued (the
    /// refusal stands; the failure is logged and counted).
    pub receipt: Option<Issued>,
}

/// What admission establishes for a call it lets through.
pub struct Admitted {
    pub principal: Arc<Principal>,
    /// The upstream: a REST tool, or an MCP server.
    pub tool: Arc<Tool>,
    pub grant: Grant,
    /// The upstream request target: the tool's base path, the normalised path, the raw query.
    pub target: String,
    /// The request body, read whole before the decision and forwarded exactly as read;
    /// `None` when the request had none.
    pub body: Option<Bytes>,
    pub exchange: Exchange,
    /// What the call holds of its limits (session, budget reservations) until it ends.
    pub held: Held,
}

/// Why a request may go to its upstream.
pub enum Grant {
    /// Policy allowed it.
    Decided(Arc<Decision>),
    /// An MCP message inside the agent's own session that is not a call — a notification, or
    /// the agent's answer to a request the server sent it: relayed, not decided, no receipt.
    SessionTraffic,
}

impl Grant {
    pub fn decision(&self) -> Option<&Arc<Decision>> {
        match self {
            Grant::Decided(d) => Some(d),
            Grant::SessionTraffic => None,
        }
    }
}

/// What kind of exchange with the upstream it is.
pub enum Exchange {
    /// `/tools/<tool>/…`: the response is relayed as it comes.
    Rest,
    /// `/mcp/<server>`: JSON-RPC, with sessions and responses the gateway reads.
    Mcp(Box<McpExchange>),
}

/// A call on its way to the tool, or back.
pub struct Forwarded {
    pub call: Admitted,
    /// The decision receipt and what the completion receipt needs; `None` when evidence is
    /// switched off for benchmarking, or for session traffic (never decided).
    pub evidence: Option<CallEvidence>,
    /// When the gateway handed the call to the upstream connector.
    pub upstream_started: Instant,
    /// Response body bytes relayed so far.
    pub response_bytes: u64,
    /// Why the upstream leg failed, when the gateway knows better than Pingora's error (a
    /// response over its cap).
    pub failure: Option<ApiError>,
}

/// What `request_filter` decided, named (Pingora's `bool` means "already answered").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Continue to the upstream phases.
    Forward,
    /// A response has been written; Pingora stops here.
    Answered,
}

impl Next {
    /// The value Pingora's `request_filter` expects.
    pub fn answered(self) -> bool {
        self == Next::Answered
    }
}

/// The outcome label of a request, for metrics and the access log. Derived from the state, so
/// it can never disagree with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answered by the gateway itself.
    Local,
    Allow,
    Deny,
    Error,
}

impl Verdict {
    /// `failed`: Pingora reported an error for the request (upstream or client side).
    pub fn of(state: &RequestState, failed: bool) -> Self {
        match state {
            RequestState::Local => Verdict::Local,
            RequestState::Forwarded(f) if !failed && f.failure.is_none() => Verdict::Allow,
            RequestState::Refused(r) if r.error.status < 500 => Verdict::Deny,
            RequestState::Arriving | RequestState::Forwarded(_) | RequestState::Refused(_) => {
                Verdict::Error
            }
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Local => "local",
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Error => "error",
        }
    }
}

/// Request ids: a random per-process prefix and a counter.
pub struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut prefix = [0u8; 6];
        // Only uniqueness matters here; fall back to the pid if randomness is unavailable.
        if getrandom::getrandom(&mut prefix).is_err() {
            prefix[..4].copy_from_slice(&std::process::id().to_be_bytes());
        }
        Self {
            prefix: hex::encode(prefix),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn next_id(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        request_id(&self.prefix, n)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// `<prefix>-<n in hex>`, formatted by hand: `format!` cost more than the rest of the id.
fn request_id(prefix: &str, n: u64) -> String {
    let digits = ((64 - n.leading_zeros() as usize).div_ceil(4)).max(1);
    let mut id = String::with_capacity(prefix.len() + 1 + digits);
    id.push_str(prefix);
    id.push('-');
    for i in (0..digits).rev() {
        let nibble = ((n >> (4 * i)) & 0xf) as u8;
        id.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_as_format_would_write_them() {
        for n in [0u64, 1, 9, 15, 16, 255, 4096, 0xdead_beef, u64::MAX] {
            assert_eq!(request_id("a1b2", n), format!("a1b2-{n:x}"));
        }
        let ids = RequestIds::new();
        let (a, b) = (ids.next_id(), ids.next_id());
        assert_ne!(a, b);
        assert!(a.ends_with("-0") && b.ends_with("-1"), "{a} {b}");
    }

    fn refused(status: u16) -> RequestState {
        RequestState::Refused(Box::new(Refused {
            error: ApiError::new(status, "X", "x"),
            reached: Reached::Arrival,
            dialect: Dialect::Rest,
            receipt: None,
        }))
    }

    #[test]
    fn verdicts_follow_the_state() {
        assert_eq!(Verdict::of(&RequestState::Local, false), Verdict::Local);
        assert_eq!(Verdict::of(&RequestState::Arriving, false), Verdict::Error);
        assert_eq!(Verdict::of(&refused(403), false), Verdict::Deny);
        assert_eq!(Verdict::of(&refused(401), true), Verdict::Deny);
        assert_eq!(Verdict::of(&refused(503), false), Verdict::Error);
        assert!(Next::Answered.answered() && !Next::Forward.answered());
    }
}
