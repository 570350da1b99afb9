//! The agent data plane: Pingora's `ProxyHttp` phases, top to bottom in request order, each
//! calling the stages named for what they do.
//!
//! | phase | stages |
//! |---|---|
//! | `request_filter` | [`admission`]: [`bounds`] → [`route`] → [`identity`] → [`bounds`] (body) → [`decide`] → [`limits`] → [`evidence`] (decision receipt), or a refusal ([`respond`], denial receipt); `POST /v1/session/new` ([`sessions`]) |
//! | `upstream_peer` | [`forward`]: the tool's peer (timeouts, TLS, pool) |
//! | `upstream_request_filter` | [`forward`]: target, stripped agent headers, injected credential |
//! | `request_body_filter` | [`forward`]: the body read during admission |
//! | `response_filter`, `response_body_filter` | response caps, [`respond`] headers, the response digest for [`evidence`] |
//! | `fail_to_proxy` | [`respond`]: upstream failures as JSON errors with stable codes |
//! | `logging` | [`limits`] (budgets settled), [`evidence`] (completion receipt), [`observe`] (metrics, access log) |
//! | `early_request_error` (vendored patch) | [`malformed`]: a request Pingora's parser refused (or CONNECT), a header past its deadline, a connection over its address's cap — [`flood`], [`respond`], denial receipt, [`observe`]; no other phase runs |
//! | `admit_downstream`, `request_header_deadline` (vendored patch 3) | [`flood`]: a connection's slot under its address's cap, and how long its request header may take |
//!
//! Every refusal that reaches no verified identity is admitted per client address by
//! [`flood`] before its receipt is drafted.
//!
//! What a request has become is in its [`request::RequestState`]: a denied request is answered
//! in `request_filter`, never reaches `upstream_peer`, and the tool is never contacted.

mod admission;
mod bounds;
pub mod client_ip;
mod decide;
pub mod error;
mod evidence;
pub mod flood;
mod forward;
mod identity;
pub mod limits;
mod malformed;
pub mod mcp;
mod observe;
pub mod request;
mod respond;
pub mod route;
mod sessions;

use crate::config::Config;
use crate::evidence::Evidence;
use crate::live::LiveState;
use crate::metrics::{Metrics, ToolMetrics};
use crate::tools::Catalog;
use async_trait::async_trait;
use bytes::Bytes;
use error::ApiError;
use evidence::CallEnd;
use flood::{Connections, Flood};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};
use request::{
    Dialect, Exchange, Forwarded, Reached, Refused, RequestCtx, RequestIds, RequestState,
};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The data plane: everything a request needs, shared by all requests.
pub struct Gateway {
    config: Arc<Config>,
    tools: Catalog,
    live: Arc<LiveState>,
    metrics: Arc<Metrics>,
    /// Pre-resolved metric handles per tool (the common label sets).
    tool_metrics: HashMap<String, ToolMetrics>,
    /// `None` only when evidence is switched off for benchmarking.
    evidence: Option<Arc<Evidence>>,
    ids: RequestIds,
    rewriter: forward::Rewriter,
    tool_response: respond::ToolResponse,
    mcp: mcp::McpRuntime,
    /// Per-address admission of refusals without a verified identity.
    flood: Arc<Flood>,
    /// Open connections per peer address.
    connections: Arc<Connections>,
    limiter: Arc<limits::Limiter>,
    /// Bearer JWTs (`[[auth.jwt]]`), when issuers are configured.
    jwt: Option<identity::jwt::JwtGate>,
    /// The TLS material in force (client CAs verify forwarded certificates); `None` until
    /// [`Gateway::with_tls`].
    tls: Option<Arc<crate::tls::reload::TlsMaterial>>,
}

/// How long Pingora keeps an idle keep-alive connection waiting for its next request (its
/// HTTP/1 default, set for every new connection): a reused connection's header deadline
/// starts with that wait.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// What a request leaves on its connection for the next (`persist_connection_context`): only
/// that there was one, so the next request's header deadline allows the keep-alive wait.
struct KeptAlive;

impl Gateway {
    pub fn new(
        config: Arc<Config>,
        tools: Catalog,
        live: Arc<LiveState>,
        metrics: Arc<Metrics>,
        evidence: Option<Arc<Evidence>>,
        mcp: mcp::McpRuntime,
        limiter: Arc<limits::Limiter>,
    ) -> Self {
        let tool_metrics = tools
            .keys()
            .map(|name| (name.clone(), metrics.for_tool(name)))
            .collect();
        let flood = Arc::new(Flood::new(&config.admission, metrics.clone()));
        let connections = Connections::new(
            config.admission.max_connections_per_address,
            metrics.clone(),
        );
        Self {
            rewriter: forward::Rewriter::new(&config),
            config,
            tools,
            live,
            metrics,
            tool_metrics,
            evidence,
            ids: RequestIds::new(),
            tool_response: respond::ToolResponse::default(),
            mcp,
            flood,
            connections,
            limiter,
            jwt: None,
            tls: None,
        }
    }

    /// Accepts bearer JWTs verified by `runtime` (see `identity::jwt`).
    pub fn with_jwt(mut self, runtime: Option<Arc<crate::jwks::JwtRuntime>>) -> Self {
        self.jwt = runtime.map(|r| identity::jwt::JwtGate::new(r, &self.config));
        self
    }

    /// The TLS material whose client CAs verify forwarded client certificates.
    pub fn with_tls(mut self, material: Arc<crate::tls::reload::TlsMaterial>) -> Self {
        self.tls = Some(material);
        self
    }

    /// The per-address admission, shared with the service that issues its aggregate receipts.
    pub fn flood(&self) -> Arc<Flood> {
        self.flood.clone()
    }
}

/// The state of a call in the upstream phases. Pingora runs them only after `request_filter`
/// returned "forward", which only an admitted call does; any other state there is an internal
/// error (answered as one), never a panic.
fn forwarded(state: &mut RequestState) -> Result<&mut Forwarded> {
    match state {
        RequestState::Forwarded(f) => Ok(f),
        _ => Err(Error::explain(
            ErrorType::InternalError,
            "upstream phase for a request that was not admitted",
        )),
    }
}

/// Cuts a response that outgrew its cap (its header may be out already).
fn too_large(f: &mut Forwarded, cap: u64) -> Box<Error> {
    f.failure = Some(ApiError::upstream_response_too_large(cap));
    Error::explain(
        ErrorType::InternalError,
        "upstream response exceeds max_response_bytes; stream aborted",
    )
}

/// Cuts a response that outgrew what its budgets left it (its header may be out already).
fn over_budget(f: &mut Forwarded, cap: u64) -> Box<Error> {
    f.failure = Some(ApiError::budget_response_cut(cap));
    Error::explain(
        ErrorType::InternalError,
        "upstream response exceeds the response bytes left in its budget; stream aborted",
    )
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.ids.next_id())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        Ok(self.admit(session, ctx).await.answered())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let f = forwarded(&mut ctx.state)?;
        let addr = f.call.tool.resolve().await.ok_or_else(|| {
            Error::explain(ErrorType::ConnectNoRoute, "upstream host did not resolve")
        })?;
        f.upstream_started = Instant::now();
        Ok(Box::new(forward::peer(&f.call.tool, addr)))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = client_ip::client_ip(session, &self.config);
        let f = forwarded(&mut ctx.state)?;
        self.rewriter.rewrite(up, &f.call, &ctx.id, client)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The body was consumed during admission; Pingora (patched) calls this once with
        // `None` per upstream attempt, and we emit the buffered bytes.
        if body.is_none() {
            *body = forwarded(&mut ctx.state)?.call.body.clone();
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let f = forwarded(&mut ctx.state)?;
        let cap = f.call.tool.max_response_bytes;
        if respond::declared_length(resp).is_some_and(|n| n > cap) {
            f.failure = Some(ApiError::upstream_response_too_large(cap));
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "upstream response exceeds max_response_bytes",
            ));
        }
        if let Some(budget) = f.call.held.response_cap() {
            if respond::declared_length(resp).is_some_and(|n| n > budget) {
                f.failure = Some(ApiError::budget_response_cut(budget));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    "upstream response exceeds the response bytes left in its budget",
                ));
            }
        }
        if let Exchange::Mcp(x) = &mut f.call.exchange {
            let agent = f.call.principal.agent_id.as_str();
            let http11 = session.req_header().version == http::Version::HTTP_11;
            x.response_header(resp, self, agent, &f.call.tool.name, cap, http11)?;
        }
        let receipt = f.evidence.as_ref().map(|e| &e.decision_receipt);
        self.tool_response.rewrite(
            resp,
            &ctx.id,
            receipt,
            f.call.grant.decision().map(|d| &**d),
        )
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let f = forwarded(&mut ctx.state)?;
        let cap = f.call.tool.max_response_bytes;
        if let Some(b) = body.as_ref() {
            f.response_bytes += b.len() as u64;
            if let Some(budget) = f.call.held.response_cap() {
                if f.response_bytes > budget {
                    // Not relayed: what was relayed stays within the budget.
                    f.response_bytes -= b.len() as u64;
                    return Err(over_budget(f, budget));
                }
            }
            if let Some(ev) = f.evidence.as_mut() {
                ev.response_bytes(b);
            }
        }
        let per_event = matches!(&f.call.exchange, Exchange::Mcp(x) if x.capped_per_event());
        if f.response_bytes > cap && !per_event {
            // Headers are already out; all we can do is cut the stream.
            return Err(too_large(f, cap));
        }
        if let Exchange::Mcp(x) = &mut f.call.exchange {
            let engine = self.live.policy.load();
            let could_permit = |c: lap_policy::mcp::McpCandidate<'_>| engine.could_permit_mcp(c);
            let answer = mcp::Answer {
                receipt: f.evidence.as_ref().map(|e| &e.decision_receipt),
                principal: &f.call.principal,
                server: &f.call.tool.name,
                could_permit: &could_permit,
            };
            match x.response_body(body.take(), end_of_stream, cap, &answer) {
                Ok(out) => *body = out,
                Err(mcp::TooLarge(_)) => return Err(too_large(f, cap)),
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let api = ctx.error().cloned().or_else(|| respond::classify(e));
        let (receipt, dialect) = match &ctx.state {
            RequestState::Forwarded(f) => (
                f.evidence.as_ref().map(|e| &e.decision_receipt),
                match &f.call.exchange {
                    Exchange::Rest => Dialect::Rest,
                    Exchange::Mcp(x) => Dialect::Mcp { id: x.request_id() },
                },
            ),
            _ => (None, Dialect::Rest),
        };
        let code = match (&api, session.response_written()) {
            (Some(api), None) => {
                respond::error(session, &ctx.id, api, receipt, &dialect).await;
                api.status
            }
            // Already streaming a response, or the client is gone: nothing can be written.
            _ => 0,
        };
        match &mut ctx.state {
            RequestState::Forwarded(f) => {
                if f.failure.is_none() {
                    f.failure = api;
                }
            }
            RequestState::Arriving => {
                if let Some(error) = api {
                    ctx.state = RequestState::Refused(Box::new(Refused {
                        error,
                        reached: Reached::Arrival,
                        dialect: Dialect::Rest,
                        receipt: None,
                    }));
                }
            }
            RequestState::Local | RequestState::Refused(_) => {}
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, _error: &Error) -> bool {
        // Errors we classified are logged once, by `logging`, with the request id.
        ctx.error().is_some()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let RequestState::Forwarded(f) = &mut ctx.state {
            let duration = ctx.started.elapsed();
            let held = std::mem::take(&mut f.call.held);
            let budgets = if held.budgets.is_empty() {
                Vec::new()
            } else {
                let actual = limits::Actual {
                    request_bytes: f.call.body.as_ref().map_or(0, |b| b.len() as u64),
                    response_bytes: f.response_bytes,
                    duration,
                };
                self.limiter.settle(held, &actual).await
            };
            if let (Some(ledger), Some(call_evidence)) = (&self.evidence, f.evidence.take()) {
                let end = CallEnd {
                    status,
                    bytes_out: f.response_bytes,
                    duration,
                    error_code: f.failure.as_ref().map(|e| e.code),
                };
                evidence::issue_completion(ledger, &ctx.id, &f.call, call_evidence, end, budgets);
            }
        }
        observe::finished(
            &self.metrics,
            &self.tool_metrics,
            ctx,
            Some(session.req_header()),
            status,
            e,
        );
    }

    async fn early_request_error(&self, session: &mut ServerSession, status: u16, e: &Error) {
        self.refuse_unread(session, status, e).await;
    }

    fn admit_downstream(
        &self,
        session: &ServerSession,
        reused: bool,
    ) -> Result<Option<Box<dyn Any + Send + Sync>>> {
        let peer = client_ip::capped_peer(session, &self.config);
        match self.connections.open(peer, reused) {
            Some(slot) => Ok(Some(Box::new(slot))),
            // Answered by `early_request_error` (429 TOO_MANY_CONNECTIONS), then closed.
            None => Err(Error::explain(
                ErrorType::HTTPStatus(429),
                "too many connections from this address",
            )),
        }
    }

    fn request_header_deadline(&self, reused: bool) -> Option<Duration> {
        let header = self.config.header_timeout;
        Some(if reused {
            KEEPALIVE_IDLE + header
        } else {
            header
        })
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
    ) -> Option<Box<dyn Any + Send + Sync>> {
        Some(Box::new(KeptAlive))
    }
}
