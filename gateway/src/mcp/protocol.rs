//! Which MCP generation a request speaks, and the transport rules of each.
//!
//! Both generations arrive on the same endpoint (`/mcp/<server>`); the gateway serves each in
//! the generation the client chose and forwards it unchanged in that generation (it does not
//! translate between them):
//!
//! * **legacy** (2025-03-26, 2025-06-18, 2025-11-25): an `initialize` request opens a session;
//!   every later request carries `Mcp-Session-Id` (the gateway's own, see `session`) and, from
//!   2025-06-18 on, `MCP-Protocol-Version` with the negotiated version; `GET` opens a
//!   server-to-client event stream, `DELETE` ends the session.
//! * **modern** (2026-07-28): no session; every request carries `MCP-Protocol-Version`, its
//!   version in `params._meta`, and mirrors its method and target in `Mcp-Method` / `Mcp-Name`.
//!   The gateway checks that each header says exactly what the body says (`HeaderMismatch`,
//!   -32020): policy decides on the body, and an upstream (or anything between) that routes on
//!   a header must never see a different call from the one that was decided.
//!
//! A version the gateway does not know is refused (`UnsupportedProtocolVersionError`, -32022,
//! with the supported list), whichever generation it claims.

use super::jsonrpc::Message;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pingora::http::RequestHeader;
use serde_json::Value;

/// Legacy (initialize + session) versions, oldest first.
pub const LEGACY_VERSIONS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
/// Modern (stateless, per-request metadata) versions.
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];

pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const SESSION_ID: &str = "mcp-session-id";
pub const MCP_METHOD: &str = "mcp-method";
pub const MCP_NAME: &str = "mcp-name";
/// Where a modern request's `_meta` states its version.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

/// Every version the gateway serves, newest first (the `supported` list of -32022).
pub fn supported_versions() -> Vec<&'static str> {
    MODERN_VERSIONS
        .iter()
        .rev()
        .chain(LEGACY_VERSIONS.iter().rev())
        .copied()
        .collect()
}

/// The generation of a request, with the version it declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Era {
    /// A legacy `initialize`: opens a session.
    Initialize { version: String },
    /// A legacy request inside a session (`Mcp-Session-Id` required).
    Session { version: String },
    /// A modern, self-contained request.
    Modern { version: String },
}

impl Era {
    pub fn version(&self) -> &str {
        match self {
            Era::Initialize { version } | Era::Session { version } | Era::Modern { version } => {
                version
            }
        }
    }

    pub fn is_modern(&self) -> bool {
        matches!(self, Era::Modern { .. })
    }
}

/// Why a request's transport framing is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unsupported MCP protocol version {requested:?}")]
    UnsupportedVersion { requested: String },
    #[error("header mismatch: {0}")]
    HeaderMismatch(String),
    #[error("an Mcp-Session-Id header is required (send initialize first)")]
    SessionRequired,
    #[error("{0} is not part of the 2026-07-28 protocol")]
    NotModern(&'static str),
    #[error("invalid params: {0}")]
    InvalidParams(&'static str),
}

/// The single value of a header, as text.
pub fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Which generation a POST speaks, and whether its headers agree with its body.
pub fn era_of_post(req: &RequestHeader, message: &Message) -> Result<Era, ProtocolError> {
    if let Message::Request { method, params, .. } = message {
        if method == "initialize" {
            let requested = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .ok_or(ProtocolError::InvalidParams(
                    "initialize needs params.protocolVersion",
                ))?;
            if !LEGACY_VERSIONS.contains(&requested) {
                return Err(ProtocolError::UnsupportedVersion {
                    requested: requested.to_string(),
                });
            }
            return Ok(Era::Initialize {
                version: requested.to_string(),
            });
        }
    }
    match header(req, PROTOCOL_VERSION) {
        Some(v) if MODERN_VERSIONS.contains(&v) => {
            check_modern_headers(req, message, v)?;
            Ok(Era::Modern {
                version: v.to_string(),
            })
        }
        Some(v) if LEGACY_VERSIONS.contains(&v) => Ok(Era::Session {
            version: v.to_string(),
        }),
        Some(v) => Err(ProtocolError::UnsupportedVersion {
            requested: v.to_string(),
        }),
        // Before 2025-06-18 the header did not exist: a session id says legacy 2025-03-26.
        None if header(req, SESSION_ID).is_some() => Ok(Era::Session {
            version: LEGACY_VERSIONS[0].to_string(),
        }),
        None => match message {
            Message::Request { params, .. } if meta_version(params).is_some() => Err(
                ProtocolError::HeaderMismatch("the MCP-Protocol-Version header is missing".into()),
            ),
            _ => Err(ProtocolError::SessionRequired),
        },
    }
}

/// Which generation a GET (legacy event stream) or DELETE (legacy session end) speaks: only
/// legacy has them.
pub fn era_of_stream(req: &RequestHeader, what: &'static str) -> Result<Era, ProtocolError> {
    match header(req, PROTOCOL_VERSION) {
        Some(v) if MODERN_VERSIONS.contains(&v) => Err(ProtocolError::NotModern(what)),
        Some(v) if !LEGACY_VERSIONS.contains(&v) => Err(ProtocolError::UnsupportedVersion {
            requested: v.to_string(),
        }),
        _ if header(req, SESSION_ID).is_none() => Err(ProtocolError::SessionRequired),
        Some(v) => Ok(Era::Session {
            version: v.to_string(),
        }),
        None => Ok(Era::Session {
            version: LEGACY_VERSIONS[0].to_string(),
        }),
    }
}

fn meta_version(params: &serde_json::Map<String, Value>) -> Option<&str> {
    params
        .get("_meta")
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str)
}

/// The 2026-07-28 request-metadata rules: `Mcp-Method` is the body's method, `Mcp-Name` its
/// tool, prompt or resource, and `_meta` states the header's version.
fn check_modern_headers(
    req: &RequestHeader,
    message: &Message,
    version: &str,
) -> Result<(), ProtocolError> {
    let mismatch = |m: String| Err(ProtocolError::HeaderMismatch(m));
    let (method, params) = match message {
        Message::Request { method, params, .. } => (method.as_str(), Some(params)),
        Message::Notification { method } => (method.as_str(), None),
        Message::Response { .. } => return Err(ProtocolError::NotModern("a client response")),
    };
    match header(req, MCP_METHOD) {
        None => return mismatch("the Mcp-Method header is missing".into()),
        Some(h) if h != method => {
            return mismatch(format!(
                "Mcp-Method header value {h:?} does not match body value {method:?}"
            ))
        }
        Some(_) => {}
    }
    let Some(params) = params else {
        return Ok(());
    };
    if meta_version(params) != Some(version) {
        return mismatch(format!(
            "params._meta[{META_VERSION:?}] does not state the header's version {version:?}"
        ));
    }
    if let Some(body_name) = named_target(method, params) {
        let body_name = body_name.ok_or(ProtocolError::InvalidParams(
            "the request does not name its tool, prompt or resource",
        ))?;
        match header(req, MCP_NAME).map(decode_header_value) {
            None => return mismatch("the Mcp-Name header is missing".into()),
            Some(None) => return mismatch("the Mcp-Name header is not validly encoded".into()),
            Some(Some(h)) if h != body_name => {
                return mismatch(format!(
                    "Mcp-Name header value {h:?} does not match body value {body_name:?}"
                ))
            }
            Some(Some(_)) => {}
        }
    }
    Ok(())
}

/// For a method that names its target (`tools/call`, `prompts/get`: `params.name`;
/// `resources/*`: `params.uri`), the name if it is a string. `None` for other methods.
pub fn named_target<'a>(
    method: &str,
    params: &'a serde_json::Map<String, Value>,
) -> Option<Option<&'a str>> {
    let field = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        _ => return None,
    };
    Some(params.get(field).and_then(Value::as_str))
}

/// A header value in the spec's encoding: as is, or `=?base64?<base64 of UTF-8>?=`. `None`
/// when the sentinel form does not decode to UTF-8.
pub fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|rest| rest.strip_suffix("?="))
    {
        Some(encoded) => B64
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/mcp/demo", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn msg(v: Value) -> Message {
        Message::parse(&v).unwrap()
    }

    fn call(name: &str, version: &str) -> Message {
        msg(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
            "name": name, "arguments": {"a": 1},
            "_meta": {META_VERSION: version}}}),
        )
    }

    #[test]
    fn initialize_opens_a_legacy_session_with_a_known_version() {
        let init = |v: &str| {
            msg(
                json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":v}}),
            )
        };
        assert_eq!(
            era_of_post(&req("POST", &[]), &init("2025-06-18")).unwrap(),
            Era::Initialize {
                version: "2025-06-18".into()
            }
        );
        assert_eq!(
            era_of_post(&req("POST", &[]), &init("2024-11-05")),
            Err(ProtocolError::UnsupportedVersion {
                requested: "2024-11-05".into()
            })
        );
    }

    #[test]
    fn modern_headers_must_say_what_the_body_says() {
        let ok = req(
            "POST",
            &[
                (PROTOCOL_VERSION, "2026-07-28"),
                (MCP_METHOD, "tools/call"),
                (MCP_NAME, "add"),
            ],
        );
        assert!(era_of_post(&ok, &call("add", "2026-07-28"))
            .unwrap()
            .is_modern());
        // The name header names another tool than the body: the call policy would decide is
        // not the one an upstream routing on the header would run.
        let err = era_of_post(&ok, &call("pay", "2026-07-28")).unwrap_err();
        assert!(matches!(err, ProtocolError::HeaderMismatch(_)), "{err}");
        let other_method = req(
            "POST",
            &[
                (PROTOCOL_VERSION, "2026-07-28"),
                (MCP_METHOD, "tools/list"),
                (MCP_NAME, "add"),
            ],
        );
        assert!(matches!(
            era_of_post(&other_method, &call("add", "2026-07-28")),
            Err(ProtocolError::HeaderMismatch(_))
        ));
        let no_name = req(
            "POST",
            &[(PROTOCOL_VERSION, "2026-07-28"), (MCP_METHOD, "tools/call")],
        );
        assert!(matches!(
            era_of_post(&no_name, &call("add", "2026-07-28")),
            Err(ProtocolError::HeaderMismatch(_))
        ));
        // _meta must state the header's version.
        assert!(matches!(
            era_of_post(&ok, &call("add", "2025-11-25")),
            Err(ProtocolError::HeaderMismatch(_))
        ));
        // A base64-encoded name is decoded before the comparison.
        let encoded = format!("=?base64?{}?=", B64.encode("ünï"));
        let enc = req(
            "POST",
            &[
                (PROTOCOL_VERSION, "2026-07-28"),
                (MCP_METHOD, "tools/call"),
                (MCP_NAME, encoded.as_str()),
            ],
        );
        assert!(era_of_post(&enc, &call("ünï", "2026-07-28")).is_ok());
    }

    #[test]
    fn versions_and_sessions() {
        let list = msg(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}));
        assert_eq!(
            era_of_post(&req("POST", &[(PROTOCOL_VERSION, "2099-01-01")]), &list),
            Err(ProtocolError::UnsupportedVersion {
                requested: "2099-01-01".into()
            })
        );
        assert_eq!(
            era_of_post(&req("POST", &[(PROTOCOL_VERSION, "2025-11-25")]), &list).unwrap(),
            Era::Session {
                version: "2025-11-25".into()
            }
        );
        assert_eq!(
            era_of_post(&req("POST", &[(SESSION_ID, "x")]), &list).unwrap(),
            Era::Session {
                version: "2025-03-26".into()
            }
        );
        assert_eq!(
            era_of_post(&req("POST", &[]), &list),
            Err(ProtocolError::SessionRequired)
        );
        assert!(matches!(
            era_of_post(&req("POST", &[]), &call("add", "2026-07-28")),
            Err(ProtocolError::HeaderMismatch(_))
        ));
        assert_eq!(
            era_of_stream(&req("GET", &[(PROTOCOL_VERSION, "2026-07-28")]), "GET"),
            Err(ProtocolError::NotModern("GET"))
        );
        assert_eq!(
            era_of_stream(&req("GET", &[]), "GET"),
            Err(ProtocolError::SessionRequired)
        );
        assert!(era_of_stream(&req("DELETE", &[(SESSION_ID, "s")]), "DELETE").is_ok());
        assert_eq!(supported_versions()[0], "2026-07-28");
    }

    #[test]
    fn header_value_encoding() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_header_value("=?base64?!!!?="), None);
        assert_eq!(decode_header_value("=?base64?/w==?="), None);
    }
}
