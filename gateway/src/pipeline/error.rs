//! Every refusal the gateway can produce, with its HTTP status and stable code.
//!
//! On REST routes bodies are `{"error":{"code":…,"message":…,"request_id":…}}`; on MCP routes
//! the same refusal is a JSON-RPC error response whose `error.data.code` is the stable code
//! (see `respond`). Messages are fixed strings or built from values the gateway itself
//! produced (ids, limits), never from secrets or request bodies.

use crate::documents::ErrorBody;
use lap_auth::AuthError;
use lap_policy::{ArgsError, Outcome};

/// A refusal, ready to be written to the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// How an MCP client is told: the JSON-RPC error code and extra `data` fields, when they
    /// are not the gateway's generic refusal (-32010).
    pub rpc: Option<Box<RpcForm>>,
    /// The `Allow` header of a 405: the methods the route takes.
    pub allow: Option<&'static str>,
    /// The `Retry-After` header of a 429 (an address's or a limit's allowance), in whole seconds.
    pub retry_after: Option<u64>,
    /// The `WWW-Authenticate` header of a 401 or 403 (`identity::jwt`); a 401 without one says
    /// `Bearer`.
    pub www_authenticate: Option<String>,
}

/// The JSON-RPC form of a refusal on an MCP route.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcForm {
    pub code: i64,
    /// Fields added to `error.data` (e.g. the supported protocol versions).
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            rpc: None,
            allow: None,
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// A 405 naming the methods the route does take.
    fn allowing(mut self, methods: &'static str) -> Self {
        self.allow = Some(methods);
        self
    }

    /// The same refusal, told to MCP clients with JSON-RPC code `rpc_code`.
    pub fn with_rpc(
        mut self,
        rpc_code: i64,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Self {
        self.rpc = Some(Box::new(RpcForm {
            code: rpc_code,
            data,
        }));
        self
    }

    // --- Limits (`docs/limits.md`) -----------------------------------------------------------

    /// A rate limit refused the call; `retry_after` is in whole seconds (rounded up).
    pub fn rate_limited(retry_after: u64) -> Self {
        let mut data = serde_json::Map::new();
        data.insert("retry_after_seconds".into(), retry_after.into());
        let mut e = Self::new(
            429,
            "RATE_LIMITED",
            format!("rate limit reached; retry after {retry_after} s"),
        )
        .with_rpc(crate::mcp::jsonrpc::code::REFUSED, data);
        e.retry_after = Some(retry_after);
        e
    }

    /// A budget has not enough left for the call (`dimension`: `calls`, `spend`, …).
    pub fn budget_exceeded(dimension: &'static str, limit: u64, remaining: u64) -> Self {
        let mut data = serde_json::Map::new();
        data.insert("dimension".into(), dimension.into());
        data.insert("limit".into(), limit.into());
        data.insert("remaining".into(), remaining.into());
        Self::new(
            429,
            "BUDGET_EXCEEDED",
            format!("budget exhausted: {dimension} limit {limit}, {remaining} left"),
        )
        .with_rpc(crate::mcp::jsonrpc::code::REFUSED, data)
    }

    /// The response outgrew what its budget had left: cut off.
    pub fn budget_response_cut(cap: u64) -> Self {
        Self::new(
            502,
            "BUDGET_RESPONSE_CUT",
            format!("the response exceeds the {cap} response bytes left in its budget; cut off"),
        )
    }

    /// The spend the budget reads from the arguments is missing or not a whole number.
    pub fn spend_invalid(why: &'static str) -> Self {
        Self::new(400, "SPEND_INVALID", why)
    }

    /// The tool (or a session budget) needs `X-Session-Id`.
    pub fn session_id_required() -> Self {
        Self::new(
            400,
            "SESSION_ID_REQUIRED",
            "this call needs an X-Session-Id header (POST /v1/session/new)",
        )
    }

    /// No live session of this agent has the id: never issued, expired, revoked, or another
    /// agent's — not told apart, so an id cannot be probed.
    pub fn session_invalid() -> Self {
        Self::new(
            403,
            "SESSION_INVALID",
            "no live session of this agent has this id (expired, revoked or unknown)",
        )
    }

    pub fn nonce_required() -> Self {
        Self::new(400, "NONCE_REQUIRED", "this call needs an X-Nonce header")
    }

    pub fn nonce_reused() -> Self {
        Self::new(
            409,
            "NONCE_REUSED",
            "this nonce was used before in this session",
        )
    }

    pub fn counter_required() -> Self {
        Self::new(
            400,
            "COUNTER_REQUIRED",
            "this call needs an X-Counter header",
        )
    }

    pub fn counter_malformed() -> Self {
        Self::new(
            400,
            "COUNTER_MALFORMED",
            "X-Counter must be a decimal whole number",
        )
    }

    /// Not above the highest counter accepted in the session (`last`).
    pub fn counter_not_monotonic(last: u64) -> Self {
        Self::new(
            409,
            "COUNTER_NOT_MONOTONIC",
            format!("X-Counter must be greater than {last}, the highest accepted in this session"),
        )
    }

    /// `POST /v1/session/new` with a body that is not `{"ttl_seconds": N}`.
    pub fn session_request_invalid(why: &'static str) -> Self {
        Self::new(400, "SESSION_REQUEST_INVALID", why)
    }

    pub fn session_ttl_invalid(min: u64, max: u64) -> Self {
        Self::new(
            400,
            "SESSION_TTL_INVALID",
            format!("ttl_seconds must be {min}..={max}"),
        )
    }

    /// A refusal of the state layer: store failures are 503 (the store, not the caller, is at
    /// fault: nothing was forwarded), refused input 400, a session cap 429. The message never
    /// carries the store's own error text (it may name its address).
    pub fn state(e: &lap_state::StateError) -> Self {
        use lap_state::StateError as S;
        match e {
            S::Unavailable(_) | S::Corrupt(_) => Self::new(
                503,
                e.code(),
                "the state store is unavailable; the call was not forwarded",
            ),
            S::Timeout(_) => Self::new(
                503,
                e.code(),
                "the state store did not answer in time; the call was not forwarded",
            ),
            S::SessionLimit { .. } => Self::new(429, e.code(), e.to_string()),
            S::SessionNotFound => Self::session_invalid(),
            _ => Self::new(400, e.code(), e.to_string()),
        }
    }

    pub fn route_not_found() -> Self {
        Self::new(
            404,
            "ROUTE_NOT_FOUND",
            "no such route; tools are called at /tools/<tool>/…",
        )
    }

    pub fn tool_not_found(tool: &str) -> Self {
        // The tool name was validated as [a-z0-9_-] before it reaches here, or is replaced.
        let shown = if crate::config::valid_tool_name(tool) {
            tool
        } else {
            "<invalid>"
        };
        Self::new(404, "TOOL_NOT_FOUND", format!("unknown tool {shown:?}"))
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "METHOD_NOT_ALLOWED",
            "method not allowed; use GET, HEAD, OPTIONS, POST, PUT, PATCH or DELETE",
        )
        .allowing("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE")
    }

    // --- MCP routes -------------------------------------------------------------------------

    pub fn mcp_server_not_found(server: &str) -> Self {
        let shown = if crate::config::valid_tool_name(server) {
            server
        } else {
            "<invalid>"
        };
        Self::new(
            404,
            "MCP_SERVER_NOT_FOUND",
            format!("unknown MCP server {shown:?}"),
        )
    }

    pub fn mcp_method_not_allowed() -> Self {
        Self::new(
            405,
            "METHOD_NOT_ALLOWED",
            "method not allowed; MCP endpoints take POST (and GET, DELETE in a legacy session)",
        )
        .allowing("GET, POST, DELETE")
    }

    pub fn origin_not_allowed() -> Self {
        Self::new(
            403,
            "ORIGIN_NOT_ALLOWED",
            "requests from this Origin are not accepted (see [mcp] allowed_origins)",
        )
    }

    /// The body is not a JSON-RPC message the gateway forwards.
    pub fn jsonrpc(e: &crate::mcp::jsonrpc::MessageError) -> Self {
        use crate::mcp::jsonrpc::{code, MessageError};
        let code = match e {
            MessageError::Batch => "JSONRPC_BATCH_REFUSED",
            MessageError::Invalid(_) => "JSONRPC_INVALID",
            MessageError::Reserved => "JSONRPC_RESERVED_METHOD",
        };
        Self::new(400, code, e.to_string()).with_rpc(code::INVALID_REQUEST, Default::default())
    }

    /// The body is not strict JSON.
    pub fn jsonrpc_body(e: ArgsError) -> Self {
        let rpc = match e {
            ArgsError::Syntax(_) => crate::mcp::jsonrpc::code::PARSE_ERROR,
            _ => crate::mcp::jsonrpc::code::INVALID_REQUEST,
        };
        Self::from(e).with_rpc(rpc, Default::default())
    }

    /// The transport framing of an MCP request is refused.
    pub fn mcp_protocol(e: &crate::mcp::protocol::ProtocolError) -> Self {
        use crate::mcp::jsonrpc::code;
        use crate::mcp::protocol::{supported_versions, ProtocolError};
        match e {
            ProtocolError::UnsupportedVersion { requested } => {
                let mut data = serde_json::Map::new();
                data.insert("supported".into(), supported_versions().into());
                data.insert("requested".into(), requested.clone().into());
                Self::new(400, "UNSUPPORTED_PROTOCOL_VERSION", e.to_string())
                    .with_rpc(code::UNSUPPORTED_VERSION, data)
            }
            ProtocolError::HeaderMismatch(_) => Self::new(400, "HEADER_MISMATCH", e.to_string())
                .with_rpc(code::HEADER_MISMATCH, Default::default()),
            ProtocolError::SessionRequired => Self::new(400, "SESSION_REQUIRED", e.to_string())
                .with_rpc(code::INVALID_REQUEST, Default::default()),
            ProtocolError::NotModern(_) => Self::new(405, "METHOD_NOT_ALLOWED", e.to_string())
                .with_rpc(code::INVALID_REQUEST, Default::default())
                .allowing("POST"),
            ProtocolError::InvalidParams(_) => Self::new(400, "INVALID_PARAMS", e.to_string())
                .with_rpc(code::INVALID_PARAMS, Default::default()),
        }
    }

    /// A legacy session id that does not open for this agent and server (or has expired).
    pub fn session_not_found() -> Self {
        Self::new(
            404,
            "SESSION_NOT_FOUND",
            "no such MCP session for this agent and server; initialize a new one",
        )
        .with_rpc(
            crate::mcp::jsonrpc::code::INVALID_REQUEST,
            Default::default(),
        )
    }

    pub fn path_invalid(why: &'static str) -> Self {
        Self::new(400, "PATH_INVALID", why)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(
            413,
            "REQUEST_TOO_LARGE",
            format!("request body exceeds the limit of {limit} bytes"),
        )
    }

    pub fn headers_too_large() -> Self {
        Self::new(
            431,
            "HEADERS_TOO_LARGE",
            "too many request headers or header bytes",
        )
    }

    /// A request target longer than the HTTP library holds (65,534 bytes), refused by
    /// Pingora's parser: counted with the header block, as the gateway's own cap does.
    pub fn target_too_long() -> Self {
        Self::new(431, "HEADERS_TOO_LARGE", "request target too long")
    }

    /// `Content-Length` that is not a decimal number, or several that differ.
    pub fn bad_content_length() -> Self {
        Self::bad_request(
            "BAD_CONTENT_LENGTH",
            "invalid Content-Length: not a decimal number, or values that differ",
        )
    }

    /// `Transfer-Encoding` whose last coding is not `chunked`, or on an HTTP/1.0 request.
    pub fn bad_transfer_encoding() -> Self {
        Self::bad_request(
            "BAD_TRANSFER_ENCODING",
            "invalid Transfer-Encoding: the last coding must be chunked (HTTP/1.1 only)",
        )
    }

    /// More than one `Host`, userinfo in `Host` or the target, or a `Host` that differs from
    /// the target's authority.
    pub fn bad_host() -> Self {
        Self::bad_request(
            "BAD_HOST",
            "ambiguous Host: repeated, with userinfo, or different from the request target",
        )
    }

    /// A request header that is not HTTP/1.x; `why` is a fixed description of the fault,
    /// never request bytes.
    pub fn malformed(why: &'static str) -> Self {
        Self::bad_request("MALFORMED_REQUEST", format!("malformed request: {why}"))
    }

    /// A refusal without a verified identity from an address over its allowance
    /// (`[admission]`): the refusal it would have been is counted in an aggregate receipt.
    pub fn unauthenticated_rate_limited(retry_after: std::time::Duration) -> Self {
        let mut e = Self::new(
            429,
            "UNAUTHENTICATED_RATE_LIMITED",
            "too many refused requests from this address; send a valid API key, or retry later",
        );
        e.retry_after = Some(whole_seconds(retry_after));
        e
    }

    /// A new connection from an address that already has its share open
    /// (`[admission] max_connections_per_address`).
    pub fn too_many_connections() -> Self {
        let mut e = Self::new(
            429,
            "TOO_MANY_CONNECTIONS",
            "too many open connections from this address",
        );
        e.retry_after = Some(1);
        e
    }

    /// The request header did not arrive in full within `[server] header_timeout_ms`.
    pub fn header_timeout() -> Self {
        Self::new(
            408,
            "REQUEST_HEADER_TIMEOUT",
            "the request header did not arrive in time",
        )
    }

    pub fn body_timeout() -> Self {
        Self::new(
            408,
            "REQUEST_BODY_TIMEOUT",
            "the request body did not arrive in time",
        )
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn internal() -> Self {
        Self::new(500, "INTERNAL_ERROR", "internal error; see the gateway log")
    }

    pub fn upstream_unavailable() -> Self {
        Self::new(
            502,
            "UPSTREAM_UNAVAILABLE",
            "the tool's upstream could not be reached",
        )
    }

    pub fn upstream_timeout() -> Self {
        Self::new(
            504,
            "UPSTREAM_TIMEOUT",
            "the tool's upstream did not answer in time",
        )
    }

    pub fn upstream_tls() -> Self {
        Self::new(
            502,
            "UPSTREAM_TLS_ERROR",
            "TLS with the tool's upstream failed (certificate or handshake)",
        )
    }

    pub fn upstream_error() -> Self {
        Self::new(
            502,
            "UPSTREAM_ERROR",
            "the tool's upstream sent an invalid response",
        )
    }

    pub fn upstream_response_too_large(limit: u64) -> Self {
        Self::new(
            502,
            "UPSTREAM_RESPONSE_TOO_LARGE",
            format!("the tool's response exceeds the limit of {limit} bytes"),
        )
    }

    /// The decision receipt could not be signed or logged, so the call was not made.
    pub fn no_receipt(code: &'static str) -> Self {
        Self::new(
            503,
            code,
            "no receipt could be issued, so the call was not made (no receipt, no call)",
        )
    }

    pub fn policy(outcome: &Outcome, policy_ids: &[String]) -> Self {
        let message = match outcome {
            Outcome::NoPermit => "denied: no policy permits this call".to_string(),
            Outcome::Forbidden => format!("denied by policy {}", policy_ids.join(", ")),
            Outcome::EvaluationError => {
                "denied: a policy could not be evaluated for this call".to_string()
            }
            Outcome::Allow => "allowed".to_string(),
        };
        Self::new(403, outcome.code(), message)
    }

    pub fn body(&self, request_id: &str) -> Vec<u8> {
        ErrorBody::new(self.code, &self.message, Some(request_id)).to_vec()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        Self::new(401, e.code(), e.to_string())
    }
}

impl From<ArgsError> for ApiError {
    fn from(e: ArgsError) -> Self {
        // Syntax messages from serde_json quote at most a position, not body content.
        Self::new(400, e.code(), e.to_string())
    }
}

/// A wait as `Retry-After` seconds: rounded up, at least 1.
fn whole_seconds(d: std::time::Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let e = ApiError::tool_not_found("weather");
        let v: serde_json::Value = serde_json::from_slice(&e.body("r1")).unwrap();
        assert_eq!(v["error"]["code"], "TOOL_NOT_FOUND");
        assert_eq!(v["error"]["request_id"], "r1");
        assert!(ApiError::tool_not_found("<script>")
            .message
            .contains("<invalid>"));
        assert_eq!(ApiError::from(AuthError::Expired).status, 401);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        use std::time::Duration;
        let wait = |ms| ApiError::unauthenticated_rate_limited(Duration::from_millis(ms));
        assert_eq!(wait(0).retry_after, Some(1));
        assert_eq!(wait(1000).retry_after, Some(1));
        assert_eq!(wait(1001).retry_after, Some(2));
        assert_eq!(wait(59_500).retry_after, Some(60));
        let e = wait(10);
        assert_eq!((e.status, e.code), (429, "UNAUTHENTICATED_RATE_LIMITED"));
        assert_eq!(ApiError::too_many_connections().retry_after, Some(1));
        assert_eq!(ApiError::header_timeout().status, 408);
    }
}
