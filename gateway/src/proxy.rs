//! The agent data plane: Pingora's `ProxyHttp` phases, top to bottom in request order.
//!
//! 1. `request_filter`: bound the headers, route, authenticate, read the body (bounded),
//!    parse JSON arguments, decide with Cedar. Every refusal is answered here, so a denied
//!    request never reaches `upstream_peer` and the tool is never contacted.
//! 2. `upstream_peer`: the tool's upstream with its timeouts and TLS settings.
//! 3. `upstream_request_filter`: rewrite the target, strip agent credentials and identity
//!    headers, inject the tool credential and the verified agent id.
//! 4. `request_body_filter`: emit the body buffered in step 1 (see the pingora-proxy patch).
//! 5. `response_filter` / `response_body_filter`: response caps, hop-by-hop clean-up.
//! 6. `fail_to_proxy`: upstream failures as JSON errors with stable codes.
//! 7. `logging`: metrics and the access log.

use crate::client_ip;
use crate::config::Config;
use crate::errors::ApiError;
use crate::evidence::{self, Evidence};
use crate::metrics::{Metrics, ToolMetrics};
use crate::routes::{self, HEALTH_PATH, KEYS_PATH};
use crate::state::LiveState;
use crate::tools::{Catalog, Tool};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use lap_auth::{AuthError, Principal};
use lap_evidence::Issued;
use lap_policy::{parse_json_args, validate_json_args, DecisionRequest, METHODS};
use lap_receipt::{sha256_hex, Call, Completion, Kind};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones; never forwarded in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Agent credentials and identity claims; removed before forwarding. Identity reaches the tool
/// only through the gateway's own agent header, derived from the verified key.
const AGENT_HEADERS: &[&str] = &[
    "x-api-key",
    "authorization",
    "cookie",
    "x-agent-id",
    "x-forwarded-user",
    "x-auth-principal",
    "x-remote-user",
    "x-authenticated-user",
    "x-user-id",
    "x-principal",
    "x-request-id",
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
];

// Header names looked up or added on every request, parsed once.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_AGENT_ID: HeaderName = HeaderName::from_static("x-agent-id");

/// What the request became, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Answered by the gateway itself (health).
    Local,
    Allow,
    Deny,
    Error,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Local => "local",
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Error => "error",
        }
    }
}

/// Per-request state.
pub struct Ctx {
    request_id: String,
    started: Instant,
    tool: Option<Arc<Tool>>,
    principal: Option<Arc<Principal>>,
    /// Upstream request target (path and query).
    target: String,
    /// The request body read before the decision, emitted upstream by `request_body_filter`.
    body: Option<Bytes>,
    /// The decision (its ids go into the response header and the access log).
    policy: Option<Arc<lap_policy::Decision>>,
    verdict: Verdict,
    /// Set when the gateway itself refused or failed the request.
    error: Option<ApiError>,
    upstream_started: Option<Instant>,
    response_bytes: u64,
    /// What receipts say about the call, filled in as the request is understood.
    call: Option<Call>,
    /// Digest of the policy set that decided (receipts only).
    policy_digest: Option<String>,
    /// The decision receipt of an allowed call (issued before forwarding).
    decision_receipt: Option<Issued>,
    response_hash: Option<Sha256>,
}

pub struct Gateway {
    config: Arc<Config>,
    tools: Catalog,
    live: Arc<LiveState>,
    metrics: Arc<Metrics>,
    request_seq: AtomicU64,
    request_prefix: String,
    /// Header names removed from agent requests: credentials, identity claims, hop-by-hop
    /// headers and the configured extras.
    strip: Vec<HeaderName>,
    agent_header: Option<HeaderName>,
    hop_by_hop: Vec<HeaderName>,
    /// `None` only when evidence is switched off for benchmarking.
    evidence: Option<Arc<Evidence>>,
    tool_metrics: HashMap<String, ToolMetrics>,
}

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        tools: Catalog,
        live: Arc<LiveState>,
        metrics: Arc<Metrics>,
        evidence: Option<Arc<Evidence>>,
    ) -> Self {
        let tool_metrics = tools
            .keys()
            .map(|name| (name.clone(), metrics.for_tool(name)))
            .collect();
        let mut prefix = [0u8; 6];
        // Only uniqueness matters here; fall back to the pid if randomness is unavailable.
        if getrandom::getrandom(&mut prefix).is_err() {
            prefix[..4].copy_from_slice(&std::process::id().to_be_bytes());
        }
        let strip = AGENT_HEADERS
            .iter()
            .map(|h| h.to_string())
            .chain(config.strip_headers.iter().cloned())
            .chain(config.agent_header.iter().cloned())
            .chain(HOP_BY_HOP.iter().map(|h| h.to_string()))
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let agent_header = config
            .agent_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        Self {
            config,
            tools,
            live,
            metrics,
            request_seq: AtomicU64::new(0),
            request_prefix: hex::encode(prefix),
            strip,
            agent_header,
            hop_by_hop: HOP_BY_HOP
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            evidence,
            tool_metrics,
        }
    }

    /// Runs every check before forwarding. `Ok(true)` = forward, `Ok(false)` = already answered.
    async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool, ApiError> {
        let limits = &self.config.limits;
        let req = session.req_header();
        let header_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if req.headers.len() > limits.max_header_count || header_bytes > limits.max_header_bytes {
            return Err(ApiError::headers_too_large());
        }

        let path = req.uri.path();
        if matches!(req.method.as_str(), "GET" | "HEAD") {
            let local = match path {
                HEALTH_PATH => Some(self.live.published.load().health.clone()),
                KEYS_PATH => Some(self.live.published.load().keys.clone()),
                _ => None,
            };
            if let Some(body) = local {
                ctx.verdict = Verdict::Local;
                write_json(session, ctx, 200, body).await;
                return Ok(false);
            }
        }
        // What receipts say about the call (only gathered when receipts are issued).
        ctx.call = self.evidence.is_some().then(|| Call {
            tool: None,
            method: req.method.as_str().to_string(),
            path: path.to_string(),
            query_sha256: req.uri.query().map(|q| sha256_hex(q.as_bytes())),
            body_sha256: None,
            body_bytes: 0,
            args_sha256: None,
        });
        let (tool_name, raw_rest) =
            routes::split_tool_path(path).ok_or_else(ApiError::route_not_found)?;
        let method = req.method.as_str();
        if !METHODS.contains(&method) {
            return Err(ApiError::method_not_allowed());
        }

        let principal = self.authenticate(req).inspect_err(|e| {
            self.metrics
                .auth_failures
                .with_label_values(&[e.code()])
                .inc();
        })?;
        ctx.principal = Some(principal);

        let tool = self
            .tools
            .get(tool_name)
            .cloned()
            .ok_or_else(|| ApiError::tool_not_found(tool_name))?;
        let rest = routes::normalize_rest(raw_rest)?;
        let query = req.uri.query().map(str::to_string);
        ctx.target = tool.target(&rest, query.as_deref());
        ctx.tool = Some(tool.clone());
        if let Some(call) = ctx.call.as_mut() {
            call.tool = Some(tool.name.clone());
            call.path = rest.clone();
        }

        let body = self.read_body(session, &tool).await?;
        let engine = self.live.policy.load();
        // JSON bodies are always checked strictly: a body the tool could read differently from
        // the policy is refused, whether or not a policy looks at the arguments. The value is
        // only built when something reads it (receipts, or a policy on `args`); otherwise the
        // same checks run without it.
        let needs_value = ctx.call.is_some() || engine.uses_args();
        let parsed = match &body {
            Some(b) if is_json(session.req_header()) => Some(if needs_value {
                Some(parse_json_args(b)?)
            } else {
                validate_json_args(b)?;
                None
            }),
            _ => None,
        };
        let parsed = parsed.flatten();
        let args = parsed.as_ref().filter(|v| v.is_object());
        // The body digest goes into receipts, and identifies the arguments in the decision
        // cache when a policy reads them; computed once, only when one of them needs it.
        let body_digest: Option<[u8; 32]> =
            needs_value.then(|| Sha256::digest(body.as_deref().unwrap_or_default()).into());
        if let Some(call) = ctx.call.as_mut() {
            call.body_sha256 = body_digest.map(hex::encode);
            call.body_bytes = body.as_ref().map_or(0, |b| b.len() as u64);
            call.args_sha256 = parsed.as_ref().map(crate::evidence::args_sha256);
        }
        let args_digest = if engine.uses_args() && args.is_some() {
            body_digest
        } else {
            None
        };

        let principal = ctx.principal.as_ref().ok_or_else(ApiError::internal)?;
        let decision = engine.decide(DecisionRequest {
            agent_id: principal.agent_id.as_str(),
            groups: &principal.groups,
            method: session.req_header().method.as_str(),
            tool: &tool.name,
            path: &rest,
            query: query.as_deref().unwrap_or(""),
            body_size: body.as_ref().map_or(0, |b| b.len() as u64),
            args,
            args_digest,
        });
        match self.tool_metrics.get(&tool.name) {
            Some(m) if decision.outcome.is_allow() => m.policy_allowed.inc(),
            _ => self
                .metrics
                .policy_decisions
                .with_label_values(&[&tool.name, decision.outcome.code()])
                .inc(),
        }
        if self.evidence.is_some() {
            ctx.policy_digest = Some(engine.digest_hex().to_string());
        }
        if !decision.outcome.is_allow() {
            if !decision.errors.is_empty() {
                tracing::warn!(
                    request_id = %ctx.request_id,
                    tool = %tool.name,
                    errors = ?decision.errors,
                    "policy evaluation error; denied"
                );
            }
            ctx.verdict = Verdict::Deny;
            let err = ApiError::policy(&decision.outcome, &decision.policy_ids);
            ctx.policy = Some(decision);
            return Err(err);
        }
        ctx.verdict = Verdict::Allow;
        ctx.policy = Some(decision);
        ctx.body = body;
        Ok(true)
    }

    /// Verifies the agent's API key and any identity claim it sent.
    fn authenticate(&self, req: &RequestHeader) -> Result<Arc<Principal>, AuthError> {
        let x_api_key = single_header(req, &X_API_KEY)?;
        let bearer = match single_header(req, &header::AUTHORIZATION)? {
            None => None,
            Some(v) => {
                let (scheme, token) = v.split_once(' ').ok_or(AuthError::Invalid)?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(AuthError::Invalid);
                }
                Some(token.trim())
            }
        };
        let key = match (x_api_key, bearer) {
            (Some(a), Some(b)) if a != b => return Err(AuthError::Invalid),
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => return Err(AuthError::Missing),
        };
        let principal = self
            .live
            .keys
            .load()
            .authenticate(key, time::OffsetDateTime::now_utc())?;
        if let Some(claimed) = single_header(req, &X_AGENT_ID)? {
            if claimed != principal.agent_id.as_str() {
                return Err(AuthError::AgentIdMismatch);
            }
        }
        Ok(principal)
    }

    /// Reads the whole request body, never more than the tool's cap.
    async fn read_body(
        &self,
        session: &mut Session,
        tool: &Tool,
    ) -> Result<Option<Bytes>, ApiError> {
        let cap = tool.max_request_bytes;
        let declared = match session.req_header().headers.get(header::CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or_else(|| {
                        ApiError::bad_request("BAD_CONTENT_LENGTH", "invalid Content-Length")
                    })?,
            ),
        };
        if declared.is_some_and(|n| n > cap) {
            session.set_keepalive(None);
            return Err(ApiError::too_large(cap));
        }
        if session.is_body_empty() {
            return Ok(None);
        }
        // Usually the whole body arrives in one read; keep that chunk as is (no copy).
        let mut chunks: Vec<Bytes> = Vec::with_capacity(1);
        let mut total: u64 = 0;
        // Inactivity timeout between body reads (as nginx's client_body_timeout).
        session.set_read_timeout(Some(self.config.limits.body_read_timeout));
        loop {
            let chunk = match session.read_request_body().await {
                Ok(None) => break,
                Ok(Some(c)) => c,
                Err(e) => {
                    session.set_keepalive(None);
                    if matches!(e.etype(), ErrorType::ReadTimedout) {
                        return Err(ApiError::body_timeout());
                    }
                    tracing::debug!(error = %e, "request body read failed");
                    return Err(ApiError::bad_request(
                        "BAD_REQUEST_BODY",
                        "the request body could not be read",
                    ));
                }
            };
            total += chunk.len() as u64;
            if total > cap {
                // The rest of the body is unread: the connection cannot be reused.
                session.set_keepalive(None);
                return Err(ApiError::too_large(cap));
            }
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
        }
        Ok(match chunks.len() {
            0 => None,
            1 => chunks.pop(),
            _ => {
                let mut buf = BytesMut::with_capacity(total as usize);
                for c in &chunks {
                    buf.extend_from_slice(c);
                }
                Some(buf.freeze())
            }
        })
    }

    fn draft(
        &self,
        ev: &Evidence,
        ctx: &Ctx,
        kind: Kind,
        allow: bool,
        code: &str,
    ) -> lap_receipt::Receipt {
        let call = ctx.call.clone().unwrap_or_else(|| Call {
            tool: None,
            method: String::new(),
            path: String::new(),
            query_sha256: None,
            body_sha256: None,
            body_bytes: 0,
            args_sha256: None,
        });
        let ids = ctx
            .policy
            .as_ref()
            .map_or(&[][..], |d| d.policy_ids.as_slice());
        let digest = match &ctx.policy_digest {
            Some(d) => d.clone(),
            None => self.live.policy.load().digest_hex().to_string(),
        };
        ev.draft(
            kind,
            &ctx.request_id,
            ctx.principal.as_deref(),
            call,
            evidence::decision(allow, code, ids, &digest),
        )
    }

    /// The completion receipt of a forwarded call. The response has been sent, so it is
    /// issued in the background (the connection is free for the next request at once); a
    /// failure can only be logged and counted — the decision receipt is already in the log.
    async fn complete(&self, status: u16, ctx: &mut Ctx) {
        let (Some(ev), Some(decision)) = (&self.evidence, ctx.decision_receipt.as_ref()) else {
            return;
        };
        let mut draft = self.draft(ev, ctx, Kind::Completion, true, "ALLOWED");
        draft.completion = Some(Completion {
            decision_receipt_id: decision.receipt_id.clone(),
            decision_log_index: decision.index,
            status,
            response_sha256: ctx
                .response_hash
                .take()
                .map(|h| hex::encode(h.finalize()))
                .unwrap_or_default(),
            bytes_in: ctx.call.as_ref().map_or(0, |c| c.body_bytes),
            bytes_out: ctx.response_bytes,
            duration_ms: ctx.started.elapsed().as_millis() as u64,
            error_code: ctx.error.as_ref().map(|e| e.code.to_string()),
        });
        let ev = ev.clone();
        let request_id = ctx.request_id.clone();
        tokio::spawn(async move {
            if let Err(e) = ev.issue(draft).await {
                tracing::error!(code = e.code(), error = %e, request_id = %request_id,
                    "completion receipt could not be issued");
            }
        });
    }

    fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        request_id(&self.request_prefix, n)
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

/// An IP address as text into `buf` (IPv4, the usual case, without the formatting machinery).
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if o >= 100 {
                    buf[len] = b'0' + o / 100;
                    len += 1;
                }
                if o >= 10 {
                    buf[len] = b'0' + o / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + o % 10;
                len += 1;
            }
        }
        IpAddr::V6(_) => {
            let mut w = &mut buf[..];
            // At most 45 characters; the buffer holds 48.
            if write!(w, "{ip}").is_ok() {
                len = 48 - w.len();
            }
        }
    }
    &buf[..len]
}

/// `n` in decimal into `buf`.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The only value of a header that must not repeat; repeated → invalid credential.
fn single_header<'a>(
    req: &'a RequestHeader,
    name: &HeaderName,
) -> Result<Option<&'a str>, AuthError> {
    let mut values = req.headers.get_all(name).iter();
    let first = match values.next() {
        None => return Ok(None),
        Some(v) => v,
    };
    if values.next().is_some() {
        return Err(AuthError::Invalid);
    }
    let s = first.to_str().map_err(|_| AuthError::Invalid)?;
    Ok(Some(s.trim()))
}

fn is_json(req: &RequestHeader) -> bool {
    let Some(ct) = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Writes a complete JSON response. Failures mean the client went away; nothing to do.
async fn write_json(session: &mut Session, ctx: &Ctx, status: u16, body: Bytes) {
    let _ = write_json_inner(session, ctx, status, body, None, None).await;
}

async fn write_json_inner(
    session: &mut Session,
    ctx: &Ctx,
    status: u16,
    body: Bytes,
    err: Option<&ApiError>,
    receipt: Option<&Issued>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    if let Some(e) = err {
        if e.status == 401 {
            resp.insert_header(header::WWW_AUTHENTICATE, "Bearer")?;
        }
        if e.status == 405 {
            resp.insert_header(header::ALLOW, METHODS.join(", "))?;
        }
    }
    if let Some(r) = receipt {
        receipt_headers(&mut resp, r)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

async fn write_error(session: &mut Session, ctx: &Ctx, e: &ApiError, receipt: Option<&Issued>) {
    let body = Bytes::from(e.body(&ctx.request_id));
    if let Err(err) = write_json_inner(session, ctx, e.status, body, Some(e), receipt).await {
        tracing::debug!(error = %err, "could not write error response");
    }
}

/// `x-lap-receipt-id`, `x-lap-log-index` and the signed receipt itself (its DSSE envelope,
/// compact JSON) on a response.
fn receipt_headers(resp: &mut ResponseHeader, r: &Issued) -> Result<()> {
    resp.insert_header("x-lap-receipt-id", r.receipt_id.as_str())?;
    resp.insert_header("x-lap-log-index", r.index.to_string())?;
    resp.insert_header("x-lap-receipt", &*r.envelope)?;
    Ok(())
}

/// Maps a Pingora failure to the error the agent sees. `None` = the client is gone.
fn classify(e: &Error) -> Option<ApiError> {
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

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: self.next_request_id(),
            started: Instant::now(),
            tool: None,
            principal: None,
            target: String::new(),
            body: None,
            policy: None,
            verdict: Verdict::Error,
            error: None,
            upstream_started: None,
            response_bytes: 0,
            call: None,
            policy_digest: None,
            decision_receipt: None,
            response_hash: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(false) => Ok(true),
            Ok(true) => {
                // No receipt, no call: the decision receipt is signed and durable before the
                // tool is contacted.
                let Some(ev) = &self.evidence else {
                    return Ok(false);
                };
                let draft = self.draft(ev, ctx, Kind::Decision, true, "ALLOWED");
                match ev.issue(draft).await {
                    Ok(issued) => {
                        ctx.decision_receipt = Some(issued);
                        ctx.response_hash = Some(Sha256::new());
                        Ok(false)
                    }
                    Err(e) => {
                        ctx.verdict = Verdict::Error;
                        let api = ApiError::no_receipt(e.code());
                        write_error(session, ctx, &api, None).await;
                        ctx.error = Some(api);
                        Ok(true)
                    }
                }
            }
            Err(e) => {
                if ctx.verdict != Verdict::Deny {
                    ctx.verdict = if e.status < 500 {
                        Verdict::Deny
                    } else {
                        Verdict::Error
                    };
                }
                let receipt = match &self.evidence {
                    Some(ev) => {
                        let draft = self.draft(ev, ctx, Kind::Denial, false, e.code);
                        match ev.issue(draft).await {
                            Ok(i) => Some(i),
                            Err(err) => {
                                // The refusal stands; only its evidence is missing.
                                tracing::error!(code = err.code(), error = %err,
                                    request_id = %ctx.request_id, "denial receipt could not be issued");
                                None
                            }
                        }
                    }
                    None => None,
                };
                write_error(session, ctx, &e, receipt.as_ref()).await;
                ctx.error = Some(e);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let tool = ctx
            .tool
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no tool selected"))?;
        let addr = tool.resolve().await.ok_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, "upstream host did not resolve")
        })?;
        let mut peer = HttpPeer::new(addr, tool.tls, tool.sni.clone());
        peer.group_key = tool.pool_key;
        let o = &mut peer.options;
        o.connection_timeout = Some(tool.connect_timeout);
        o.total_connection_timeout = Some(tool.connect_timeout * 2);
        o.read_timeout = Some(tool.read_timeout);
        o.write_timeout = Some(tool.write_timeout);
        o.idle_timeout = Some(std::time::Duration::from_secs(60));
        o.verify_cert = true;
        o.verify_hostname = true;
        o.ca = tool.ca.clone();
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let tool = ctx
            .tool
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no tool selected"))?;
        let uri: http::Uri = ctx
            .target
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "bad upstream target"))?;
        up.set_uri(uri);

        // One pass over the (few) headers present instead of a lookup per name we strip:
        // agent credentials and identity claims, hop-by-hop headers (including those named in
        // `Connection`), and the gateway's own `x-lap-*` namespace.
        let listed: Vec<String> = up
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let doomed: Vec<HeaderName> = up
            .headers
            .keys()
            .filter(|k| {
                self.strip.contains(k)
                    || k.as_str().starts_with("x-lap-")
                    || listed.iter().any(|l| l == k.as_str())
            })
            .cloned()
            .collect();
        for h in &doomed {
            up.remove_header(h);
        }

        up.insert_header(header::HOST, tool.host_header.clone())?;
        // The body was buffered whole, so its length is known; re-frame it.
        up.remove_header(&header::TRANSFER_ENCODING);
        match &ctx.body {
            Some(b) => {
                let mut buf = [0u8; 20];
                let len = decimal(b.len(), &mut buf);
                // Usually the agent's Content-Length already is exactly this.
                let mut present = up.headers.get_all(header::CONTENT_LENGTH).iter();
                let same =
                    present.next().is_some_and(|v| v.as_bytes() == len) && present.next().is_none();
                if !same {
                    let value = HeaderValue::from_bytes(len)
                        .map_err(|_| Error::explain(ErrorType::InternalError, "content length"))?;
                    up.insert_header(header::CONTENT_LENGTH, value)?;
                }
            }
            None => {
                up.remove_header(&header::CONTENT_LENGTH);
            }
        }
        if let Some((name, value)) = &tool.credential {
            up.insert_header(name.clone(), value.clone())?;
        }
        if let (Some(h), Some(p)) = (&self.agent_header, &ctx.principal) {
            up.insert_header(h.clone(), p.agent_id.as_str())?;
        }
        up.insert_header("x-request-id", ctx.request_id.as_str())?;
        let client = client_ip::client_ip(session, &self.config);
        if let Some(ip) = client {
            let mut buf = [0u8; 48];
            up.insert_header("x-forwarded-for", ip_text(ip, &mut buf))?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The body was consumed in `request_filter`; Pingora (patched) calls this once with
        // `None` per upstream attempt, and we emit the buffered bytes.
        if body.is_none() {
            if let Some(b) = &ctx.body {
                *body = Some(b.clone());
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(tool) = &ctx.tool {
            let declared = resp
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<u64>().ok());
            if declared.is_some_and(|n| n > tool.max_response_bytes) {
                ctx.error = Some(ApiError::upstream_response_too_large(
                    tool.max_response_bytes,
                ));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    "upstream response exceeds max_response_bytes",
                ));
            }
        }
        // One pass over the few response headers instead of a removal per hop-by-hop name.
        // `Connection` on a final response is left for Pingora, whose HTTP/1 writer always
        // overwrites it (keep-alive or close): replacing a header costs less than removing it
        // and adding it back.
        let final_response = !resp.status.is_informational();
        let doomed: Vec<HeaderName> = resp
            .headers
            .keys()
            .filter(|k| {
                self.hop_by_hop.contains(k) && !(final_response && *k == header::CONNECTION)
            })
            .cloned()
            .collect();
        for h in &doomed {
            resp.remove_header(h);
        }
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(r) = &ctx.decision_receipt {
            receipt_headers(resp, r)?;
        }
        if let Some(d) = ctx.policy.as_ref().filter(|d| !d.policy_list.is_empty()) {
            resp.insert_header("x-lap-decision-policies", d.policy_list.as_str())?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(b), Some(tool)) = (body.as_ref(), &ctx.tool) {
            ctx.response_bytes += b.len() as u64;
            if let Some(h) = ctx.response_hash.as_mut() {
                h.update(b);
            }
            if ctx.response_bytes > tool.max_response_bytes {
                // Headers are already out; all we can do is cut the stream.
                ctx.error = Some(ApiError::upstream_response_too_large(
                    tool.max_response_bytes,
                ));
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "upstream response exceeds max_response_bytes; stream aborted",
                ));
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let api = match ctx.error.clone() {
            Some(known) => Some(known),
            None => classify(e),
        };
        ctx.verdict = Verdict::Error;
        let code = match (&api, session.response_written()) {
            (Some(api), None) => {
                write_error(session, ctx, api, ctx.decision_receipt.as_ref()).await;
                api.status
            }
            // Already streaming a response, or the client is gone: nothing can be written.
            _ => 0,
        };
        if ctx.error.is_none() {
            ctx.error = api;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, _error: &Error) -> bool {
        // Errors we classified are logged once, by `logging`, with the request id.
        ctx.error.is_some()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.complete(status, ctx).await;
        let tool = ctx.tool.as_ref().map_or("-", |t| t.name.as_str());
        let verdict = if ctx.verdict == Verdict::Allow && (e.is_some() || ctx.error.is_some()) {
            Verdict::Error
        } else {
            ctx.verdict
        };
        let elapsed = ctx.started.elapsed();
        match self.tool_metrics.get(tool) {
            Some(m) if verdict == Verdict::Allow && status == 200 => {
                m.allowed_ok.inc();
                m.allowed_duration.observe(elapsed.as_secs_f64());
                if let Some(up) = ctx.upstream_started {
                    m.upstream_duration.observe(up.elapsed().as_secs_f64());
                }
            }
            _ => {
                let status_label = status.to_string();
                self.metrics
                    .requests
                    .with_label_values(&[tool, verdict.label(), &status_label])
                    .inc();
                self.metrics
                    .request_duration
                    .with_label_values(&[tool, verdict.label()])
                    .observe(elapsed.as_secs_f64());
                if let Some(up) = ctx.upstream_started {
                    self.metrics
                        .upstream_duration
                        .with_label_values(&[tool])
                        .observe(up.elapsed().as_secs_f64());
                }
            }
        }
        if verdict == Verdict::Local {
            return;
        }
        let req = session.req_header();
        let agent = ctx.principal.as_ref().map_or("-", |p| p.agent_id.as_str());
        let key_id = ctx.principal.as_ref().map_or("-", |p| p.key_id.as_str());
        let code = ctx.error.as_ref().map_or("", |e| e.code);
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            agent = agent,
            key_id = key_id,
            tool = tool,
            method = %req.method,
            path = %req.uri.path(),
            status = status,
            decision = verdict.label(),
            policies = ctx.policy.as_ref().map_or("", |d| d.policy_list.as_str()),
            code = code,
            upstream_error = ?e.map(|e| e.etype()),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_as_format_would_write_them() {
        for n in [0u64, 1, 9, 15, 16, 255, 4096, 0xdead_beef, u64::MAX] {
            assert_eq!(request_id("a1b2", n), format!("a1b2-{n:x}"));
        }
    }

    #[test]
    fn ip_and_decimal_text() {
        let mut buf = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
        let mut buf = [0u8; 20];
        for n in [0usize, 7, 10, 958, 1 << 20, usize::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
