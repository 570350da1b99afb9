//! The JSON documents the gateway writes, each defined once as a type.
//!
//! | document | where |
//! |---|---|
//! | [`ErrorBody`] | every refusal, on both planes: `{"error":{"code","message","request_id"?}}` |
//! | [`Ready`] | admin `/readyz` |
//! | [`Alive`] | admin `/healthz` |
//!
//! Field order is the order in which they are written, and what `docs/api.md` shows.

use serde::Serialize;

/// The body of every refusal. `code` is stable (documented in `docs/api.md`); `message` is
/// built only from values the gateway itself produced, never from secrets or request bodies.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
    /// The data plane's request id (the admin plane has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(code: &'a str, message: &'a str, request_id: Option<&'a str>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message,
                request_id,
            },
        }
    }

    /// The body as bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising borrowed strings into a Vec cannot fail.
        serde_json::to_vec(self)
            .unwrap_or_else(|_| b"{\"error\":{\"code\":\"INTERNAL_ERROR\"}}".to_vec())
    }
}

/// Admin `/healthz`: the process serves.
#[derive(Debug, Serialize)]
pub struct Alive {
    pub status: &'static str,
}

/// Admin `/readyz`: the data listener answers for this process, and what is in force.
#[derive(Debug, Serialize)]
pub struct Ready<'a> {
    pub status: &'static str,
    pub gateway_id: &'a str,
    pub api_keys: usize,
    pub policies: usize,
    pub policy_digest: &'a str,
    /// Entries in the receipt log; `null` when evidence is off.
    pub log_size: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_name_the_request_only_when_there_is_one() {
        let body = ErrorBody::new("X_Y", "why", Some("r-1")).to_vec();
        assert_eq!(
            body,
            br#"{"error":{"code":"X_Y","message":"why","request_id":"r-1"}}"#
        );
        let body = ErrorBody::new("X_Y", "why", None).to_vec();
        assert_eq!(body, br#"{"error":{"code":"X_Y","message":"why"}}"#);
    }
}
