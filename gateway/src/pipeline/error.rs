//! Every refusal the gateway can produce, with its HTTP status and stable code.
//!
//! Bodies are always `{"error":{"code":…,"message":…,"request_id":…}}`. Messages are fixed
//! strings or built from values the gateway itself produced (ids, limits), never from secrets
//! or request bodies.

use crate::documents::ErrorBody;
use lap_auth::AuthError;
use lap_policy::{ArgsError, Outcome};

/// A refusal, ready to be written to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
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
}
