//! Respond: what the agent receives from the gateway itself, and what the gateway adds to a
//! tool's response.
//!
//! * The gateway's own answers are complete JSON responses, `Cache-Control: no-store`, with
//!   the request id; refusals are `{"error":{"code":…,"message":…,"request_id":…}}` with a
//!   stable code (`error::ApiError`), plus `WWW-Authenticate` on 401 and `Allow` on 405. On an
//!   MCP route the same refusal is a JSON-RPC error response (`{"jsonrpc":"2.0","id":…,
//!   "error":{"code":-32010,"message":…,"data":{"code":…,"request_id":…}}}`, or the protocol's
//!   own code such as -32020), with the same HTTP status, so MCP clients surface it as the
//!   error of the call they made.
//! * A receipt travels with the response it belongs to: `x-lap-receipt-id`,
//!   `x-lap-log-index`, and the receipt itself — the denial receipt on a refusal, the decision
//!   receipt on a forwarded call. Batched mode: `x-lap-receipt` is the base64 of the log entry
//!   and `x-lap-receipt-proof` the base64 of its C2SP `tlog-proof` (about 1.1 KB and 0.5 KB on
//!   a new log; the proof grows by 60 bytes each time the log doubles: 2.8 KB together at a
//!   million entries); per receipt: `x-lap-receipt` is the DSSE envelope, compact JSON.
//! * A tool's response loses its hop-by-hop headers and gains the request id, the decision
//!   receipt and the ids of the policies that allowed it.
//! * Pingora's failures on the upstream leg become errors with stable codes ([`classify`]).
//! * A request Pingora refused before the gateway saw it is answered on the bare connection
//!   ([`unread_error`], codes from `malformed`), then the connection closes.

use super::error::ApiError;
use super::forward::HOP_BY_HOP;
use super::request::Dialect;
use crate::mcp::jsonrpc::{self, ErrorResponse, RpcId};
use bytes::Bytes;
use http::header::{self, HeaderName};
use lap_evidence::Issued;
use lap_policy::Decision;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType, Result};

/// Writes a complete JSON response. A failure means the client went away; nothing to do.
pub async fn json(session: &mut Session, request_id: &str, status: u16, body: Bytes) {
    if let Err(err) = write(session, request_id, status, body, None, None).await {
        tracing::debug!(error = %err, "could not write a response");
    }
}

/// Writes a refusal, with its receipt when there is one.
pub async fn error(
    session: &mut Session,
    request_id: &str,
    e: &ApiError,
    receipt: Option<&Issued>,
    dialect: &Dialect,
) {
    let body = match dialect {
        Dialect::Rest => Bytes::from(e.body(request_id)),
        Dialect::Mcp { id } => Bytes::from(rpc_error_body(e, id.as_ref(), request_id, receipt)),
    };
    if let Err(err) = write(session, request_id, e.status, body, Some(e), receipt).await {
        tracing::debug!(error = %err, "could not write error response");
    }
}

/// Writes a refusal on a connection whose request the gateway never read (`malformed`): the
/// REST error with its receipt, then the connection closes (`Connection: close`). Nothing of
/// the request is consulted, not even its method: there may be no request header at all.
pub async fn unread_error(
    session: &mut ServerSession,
    request_id: &str,
    e: &ApiError,
    receipt: Option<&Issued>,
) {
    session.set_keepalive(None);
    let body = Bytes::from(e.body(request_id));
    let written = async {
        let mut resp = response_header(e.status, body.len(), request_id, Some(e), receipt)?;
        // Pingora's writer sets it too, from the keep-alive switched off above.
        resp.insert_header(header::CONNECTION, "close")?;
        session.write_response_header(Box::new(resp)).await?;
        session.write_response_body(body, true).await
    };
    if let Err(err) = written.await {
        tracing::debug!(error = %err, "could not write error response");
    }
}

/// A refusal as a JSON-RPC error response: the protocol's code when it has one, otherwise the
/// gateway's (-32010); `data` carries the stable code, the request id and the receipt.
fn rpc_error_body(
    e: &ApiError,
    id: Option<&RpcId>,
    request_id: &str,
    receipt: Option<&Issued>,
) -> Vec<u8> {
    let mut data = serde_json::Map::new();
    data.insert("code".into(), e.code.into());
    data.insert("request_id".into(), request_id.into());
    if let Some(r) = receipt {
        data.insert("receipt_id".into(), r.receipt_id.as_str().into());
        data.insert("log_index".into(), r.index.into());
    }
    let code = match &e.rpc {
        Some(form) => {
            data.extend(form.data.clone());
            form.code
        }
        None => jsonrpc::code::REFUSED,
    };
    ErrorResponse::new(id, code, &e.message, serde_json::Value::Object(data)).to_vec()
}

async fn write(
    session: &mut Session,
    request_id: &str,
    status: u16,
    body: Bytes,
    err: Option<&ApiError>,
    receipt: Option<&Issued>,
) -> Result<()> {
    let resp = response_header(status, body.len(), request_id, err, receipt)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// The header of one of the gateway's own JSON responses.
fn response_header(
    status: u16,
    len: usize,
    request_id: &str,
    err: Option<&ApiError>,
    receipt: Option<&Issued>,
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, len.to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("x-request-id", request_id)?;
    if let Some(e) = err {
        match &e.www_authenticate {
            Some(challenge) => resp.insert_header(header::WWW_AUTHENTICATE, challenge.as_str())?,
            None if e.status == 401 => resp.insert_header(header::WWW_AUTHENTICATE, "Bearer")?,
            None => {}
        }
        if let Some(allow) = e.allow {
            resp.insert_header(header::ALLOW, allow)?;
        }
        if let Some(seconds) = e.retry_after {
            resp.insert_header(header::RETRY_AFTER, seconds.to_string())?;
        }
    }
    if let Some(r) = receipt {
        receipt_headers(&mut resp, r)?;
    }
    Ok(resp)
}

/// `x-lap-receipt-id`, `x-lap-log-index` and the receipt itself on a response: batched, the
/// entry and its `tlog-proof`, each base64 (a header value is visible ASCII; the entry's JSON
/// may hold UTF-8); per receipt, the DSSE envelope (compact JSON, already ASCII).
fn receipt_headers(resp: &mut ResponseHeader, r: &Issued) -> Result<()> {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    resp.insert_header("x-lap-receipt-id", r.receipt_id.as_str())?;
    resp.insert_header("x-lap-log-index", r.index.to_string())?;
    match &r.proof {
        Some(proof) => {
            resp.insert_header("x-lap-receipt", STANDARD.encode(r.entry.as_bytes()))?;
            resp.insert_header("x-lap-receipt-proof", STANDARD.encode(proof.as_bytes()))?;
        }
        None => resp.insert_header("x-lap-receipt", &*r.entry)?,
    }
    Ok(())
}

/// Hop-by-hop response headers, parsed once.
pub struct ToolResponse {
    hop_by_hop: Vec<HeaderName>,
}

impl Default for ToolResponse {
    fn default() -> Self {
        Self {
            hop_by_hop: HOP_BY_HOP
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
        }
    }
}

impl ToolResponse {
    /// What the gateway removes from and adds to a tool's response header.
    pub fn rewrite(
        &self,
        resp: &mut ResponseHeader,
        request_id: &str,
        receipt: Option<&Issued>,
        decision: Option<&Decision>,
    ) -> Result<()> {
        // One pass over the few response headers instead of a removal per hop-by-hop name.
        // `Connection` on a final response is left for Pingora, whose HTTP/1 writer always
        // overwrites it (keep-alive or close): replacing a header costs less than removing it
        // and adding it back.
        let final_response = !resp.status.is_informational();
        let doomed: Vec<HeaderName> = resp
            .headers
            .keys()
            .filter(|k| {
                (self.hop_by_hop.contains(k) && !(final_response && *k == header::CONNECTION))
                    // The gateway's own namespace: an upstream cannot speak for the gateway
                    // (a forged receipt header on an answer the gateway did not evidence).
                    || k.as_str().starts_with("x-lap-")
            })
            .cloned()
            .collect();
        for h in &doomed {
            resp.remove_header(h);
        }
        resp.insert_header("x-request-id", request_id)?;
        if let Some(r) = receipt {
            receipt_headers(resp, r)?;
        }
        if let Some(d) = decision.filter(|d| !d.policy_list.is_empty()) {
            resp.insert_header("x-lap-decision-policies", d.policy_list.as_str())?;
        }
        Ok(())
    }
}

/// The `Content-Length` a response declares, when it is a number.
pub fn declared_length(resp: &ResponseHeader) -> Option<u64> {
    resp.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
}

/// Maps a Pingora failure to the error the agent sees. `None` = the client is gone.
pub fn classify(e: &Error) -> Option<ApiError> {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => Some(ApiError::upstream_timeout()),
        TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | TLSWantX509Lookup => {
            Some(ApiError::upstream_tls())
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
        | SocketError => Some(ApiError::upstream_unavailable()),
        HTTPStatus(code) if *code >= 400 => Some(ApiError::new(
            *code,
            "REQUEST_REJECTED",
            "the request could not be processed",
        )),
        _ => match e.esource() {
            ErrorSource::Upstream => Some(ApiError::upstream_error()),
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => None,
                _ => Some(ApiError::bad_request("BAD_REQUEST", "malformed request")),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(ApiError::internal()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn issued() -> Issued {
        Issued {
            receipt_id: "rcpt_1".into(),
            index: 7,
            entry: Arc::from("{\"payload\":\"e30=\"}"),
            leaf_hash: [0; 32],
            proof: None,
        }
    }

    #[test]
    fn a_batched_receipt_travels_base64_with_its_proof() {
        use base64::Engine;
        let mut r = issued();
        r.entry = Arc::from(r#"{"version":2,"call":{"path":"/caf\u00e9"}}"#);
        r.proof = Some(Arc::from("c2sp.org/tlog-proof@v1\nindex 7\n\nnote\n"));
        let h = response_header(403, 0, "r", None, Some(&r)).unwrap();
        let decode = |v: &str| base64::engine::general_purpose::STANDARD.decode(v).unwrap();
        assert_eq!(
            decode(header(&h, "x-lap-receipt").unwrap()),
            r.entry.as_bytes()
        );
        assert_eq!(
            decode(header(&h, "x-lap-receipt-proof").unwrap()),
            r.proof.as_deref().unwrap().as_bytes()
        );
        assert_eq!(header(&h, "x-lap-log-index"), Some("7"));
        let per_receipt = response_header(403, 0, "r", None, Some(&issued())).unwrap();
        assert_eq!(
            header(&per_receipt, "x-lap-receipt"),
            Some("{\"payload\":\"e30=\"}")
        );
        assert!(header(&per_receipt, "x-lap-receipt-proof").is_none());
    }

    fn header<'a>(r: &'a ResponseHeader, n: &str) -> Option<&'a str> {
        r.headers.get(n).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn refusals_carry_their_receipt_and_protocol_headers() {
        let e = ApiError::from(lap_auth::AuthError::Missing);
        let r = response_header(401, 10, "req-1", Some(&e), Some(&issued())).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer"));
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        assert_eq!(header(&r, "x-request-id"), Some("req-1"));
        assert_eq!(header(&r, "x-lap-receipt-id"), Some("rcpt_1"));
        assert_eq!(header(&r, "x-lap-log-index"), Some("7"));
        assert_eq!(header(&r, "content-length"), Some("10"));
        let e = ApiError::method_not_allowed();
        let r = response_header(405, 0, "r", Some(&e), None).unwrap();
        assert_eq!(
            header(&r, "allow"),
            Some("GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE")
        );
        let e = ApiError::mcp_method_not_allowed();
        let r = response_header(405, 0, "r", Some(&e), None).unwrap();
        assert_eq!(header(&r, "allow"), Some("GET, POST, DELETE"));
        let e = ApiError::mcp_protocol(&crate::mcp::protocol::ProtocolError::NotModern("GET"));
        let r = response_header(405, 0, "r", Some(&e), None).unwrap();
        assert_eq!(
            header(&r, "allow"),
            Some("POST"),
            "a modern endpoint takes POST only"
        );
        assert!(header(&r, "x-lap-receipt").is_none());
    }

    #[test]
    fn tool_responses_lose_hop_by_hop_headers() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("keep-alive", "5"),
            ("upgrade", "h2c"),
            ("connection", "close"),
            ("x-tool", "1"),
            ("x-lap-receipt-id", "forged"),
        ] {
            r.append_header(k, v).unwrap();
        }
        let decision = Decision {
            outcome: lap_policy::Outcome::Allow,
            policy_ids: vec!["p1".into(), "p2".into()],
            policy_list: "p1,p2".into(),
            errors: vec![],
        };
        let mut forged = r.clone();
        ToolResponse::default()
            .rewrite(&mut r, "req-9", Some(&issued()), Some(&decision))
            .unwrap();
        // Without a receipt of its own, the gateway still never relays the upstream's.
        ToolResponse::default()
            .rewrite(&mut forged, "req-9", None, None)
            .unwrap();
        assert!(header(&forged, "x-lap-receipt-id").is_none());
        assert!(header(&r, "keep-alive").is_none() && header(&r, "upgrade").is_none());
        // Left for Pingora's writer, which replaces it on a final response.
        assert_eq!(header(&r, "connection"), Some("close"));
        assert_eq!(header(&r, "x-tool"), Some("1"));
        assert_eq!(header(&r, "x-lap-decision-policies"), Some("p1,p2"));
        assert_eq!(header(&r, "x-lap-receipt-id"), Some("rcpt_1"));
        assert_eq!(header(&r, "x-request-id"), Some("req-9"));
    }

    #[test]
    fn mcp_refusals_are_json_rpc_errors_with_the_stable_code() {
        let id = RpcId::Number(4);
        let body = rpc_error_body(
            &ApiError::from(lap_auth::AuthError::Missing),
            Some(&id),
            "r-1",
            Some(&issued()),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 4);
        assert_eq!(v["error"]["code"], -32010);
        assert_eq!(v["error"]["data"]["code"], "API_KEY_REQUIRED");
        assert_eq!(v["error"]["data"]["request_id"], "r-1");
        assert_eq!(v["error"]["data"]["receipt_id"], "rcpt_1");
        assert_eq!(v["error"]["data"]["log_index"], 7);
        let e = ApiError::mcp_protocol(&crate::mcp::protocol::ProtocolError::UnsupportedVersion {
            requested: "1999-01-01".into(),
        });
        let v: serde_json::Value =
            serde_json::from_slice(&rpc_error_body(&e, None, "r", None)).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
        assert_eq!(v["error"]["code"], -32022);
        assert_eq!(v["error"]["data"]["requested"], "1999-01-01");
        assert_eq!(v["error"]["data"]["supported"][0], "2026-07-28");
        assert_eq!(e.status, 400);
    }

    #[test]
    fn upstream_failures_have_stable_codes() {
        let code = |t: ErrorType, s: ErrorSource| {
            let mut e = Error::new(t);
            e.esource = s;
            classify(&e).map(|a| (a.status, a.code))
        };
        use ErrorSource::*;
        assert_eq!(
            code(ErrorType::ConnectTimedout, Upstream),
            Some((504, "UPSTREAM_TIMEOUT"))
        );
        assert_eq!(
            code(ErrorType::ConnectRefused, Upstream),
            Some((502, "UPSTREAM_UNAVAILABLE"))
        );
        assert_eq!(
            code(ErrorType::InvalidCert, Upstream),
            Some((502, "UPSTREAM_TLS_ERROR"))
        );
        assert_eq!(
            code(ErrorType::InvalidHTTPHeader, Upstream),
            Some((502, "UPSTREAM_ERROR"))
        );
        assert_eq!(code(ErrorType::ConnectionClosed, Downstream), None);
        assert_eq!(
            code(ErrorType::InvalidHTTPHeader, Downstream),
            Some((400, "BAD_REQUEST"))
        );
        assert_eq!(
            code(ErrorType::InternalError, Internal),
            Some((500, "INTERNAL_ERROR"))
        );
    }
}
