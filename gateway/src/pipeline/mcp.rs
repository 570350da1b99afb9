//! MCP: the stage that makes a JSON-RPC message on `/mcp/<server>` a decided call, and the
//! rewriting of its answer.
//!
//! Admission (after the route and the agent's identity):
//!
//! 1. `Origin`, when sent, must be an allowed web origin (DNS rebinding) — 403;
//! 2. the server must be configured — 404;
//! 3. `POST`: the body, read under the server's cap, is strict JSON holding one JSON-RPC
//!    message (batches refused); its generation and headers must agree (`mcp::protocol`);
//!    inside a legacy session the gateway's session id must open for this agent and server
//!    (`mcp::session`) — 404 otherwise, as for a session the server ended; `GET` (event stream)
//!    and `DELETE` (end) exist only inside a legacy session;
//! 4. a request is decided by policy on its method, target and arguments (`lap-policy`'s MCP
//!    model); a notification, or the agent's answer to a request the server sent it, is
//!    relayed inside the agent's own session without a decision (it is not a call).
//!
//! Every refusal is a JSON-RPC error echoing the request's id, with the stable code in
//! `error.data.code` (see `respond`).
//!
//! The answer: on `initialize` the upstream's session id is sealed into the gateway's
//! (`Mcp-Session-Id`); a JSON answer is read whole (under the cap), an event stream event by
//! event; the response to the decided request gets its decision receipt in
//! `result._meta["io.github.lap-gateway/receipt"]`, and a list result (`tools/list`,
//! `prompts/list`, `resources/list`) keeps only what the agent could be permitted to use,
//! marked private and not to be cached. Everything else passes byte for byte.

use super::bounds;
use super::decide;
use super::error::ApiError;
use super::evidence::Record;
use super::limits::{Ask, Held};
use super::request::{Admitted, Dialect, Exchange, Grant, Reached};
use super::Gateway;
use crate::mcp::jsonrpc::{Message, RpcId};
use crate::mcp::protocol::{self, Era};
use crate::mcp::session::{Session as McpSession, SessionKey};
use crate::mcp::sse::Splitter;
use crate::tools::{Catalog, Tool};
use bytes::{Bytes, BytesMut};
use http::header;
use lap_auth::Principal;
use lap_evidence::Issued;
use lap_policy::mcp::{McpCandidate, McpGeneration, McpTarget, McpTargetKind};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Where the receipt goes in a result's `_meta`.
pub const META_RECEIPT: &str = "io.github.lap-gateway/receipt";

/// What the MCP routes need, shared by all requests.
pub struct McpRuntime {
    pub servers: Catalog,
    pub sessions: SessionKey,
    pub session_ttl: Duration,
    /// Allowed web origins, lower case.
    pub allowed_origins: Vec<String>,
}

/// A refusal on an MCP route, and how far admission got.
pub(super) struct McpStop {
    pub error: ApiError,
    pub reached: Reached,
    pub dialect: Dialect,
}

/// An MCP exchange with its upstream.
pub struct McpExchange {
    era: Era,
    /// The upstream's session id to send, inside a legacy session that has one.
    upstream_session: Option<String>,
    kind: Kind,
    /// How the answer's body is handled (chosen from its header).
    body: Body,
}

/// What the request was, for the handling of its answer.
enum Kind {
    /// `initialize`: the answer's session id is sealed into the gateway's.
    Initialize { id: RpcId },
    /// A decided request: the answer to `id` gets the receipt, lists are filtered.
    Call {
        id: RpcId,
        listing: Option<Listing>,
        /// `server/discover`: the versions it lists are narrowed to those the gateway serves.
        discover: bool,
        /// `subscriptions/listen`: a stream that stays open (each event capped, not the sum).
        long_lived: bool,
    },
    /// A legacy `GET` event stream: relayed event by event, each capped.
    Stream,
    /// A legacy `DELETE`, a notification, or the agent's answer to the server: relayed.
    Relay,
}

/// A list result that is filtered by policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Tools,
    Prompts,
    Resources,
}

impl Listing {
    fn of(method: &str) -> Option<Self> {
        match method {
            "tools/list" => Some(Listing::Tools),
            "prompts/list" => Some(Listing::Prompts),
            "resources/list" => Some(Listing::Resources),
            _ => None,
        }
    }

    /// The result's array, the field naming each item, and the method that would use it.
    fn fields(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Listing::Tools => ("tools", "name", "tools/call"),
            Listing::Prompts => ("prompts", "name", "prompts/get"),
            Listing::Resources => ("resources", "uri", "resources/read"),
        }
    }
}

enum Body {
    /// Not yet known (before the response header).
    Unknown,
    /// Relayed as it comes.
    Pass,
    /// `application/json` answer to a decided request: read whole, then rewritten.
    Json(BytesMut),
    /// `text/event-stream`: split into events; `rewrite` when an event may hold the answer.
    Events { splitter: Splitter, rewrite: bool },
}

impl McpExchange {
    /// The upstream session id to send (legacy, inside a session the upstream numbered).
    pub fn upstream_session(&self) -> Option<&str> {
        self.upstream_session.as_deref()
    }

    /// The JSON-RPC id of the decided request (refusals echo it).
    pub fn request_id(&self) -> Option<RpcId> {
        match &self.kind {
            Kind::Initialize { id } | Kind::Call { id, .. } => Some(id.clone()),
            Kind::Stream | Kind::Relay => None,
        }
    }

    /// The list this answers, when it is one that policy filters.
    pub fn listing(&self) -> Option<Listing> {
        match &self.kind {
            Kind::Call { listing, .. } => *listing,
            _ => None,
        }
    }
}

/// What discovery asks policy about an item of a list answered in `era`.
fn candidate<'a>(
    era: &'a Era,
    principal: &'a Principal,
    server: &'a str,
    listing: Listing,
    name: &'a str,
) -> McpCandidate<'a> {
    let (_, _, method) = listing.fields();
    McpCandidate {
        agent_id: principal.agent_id.as_str(),
        groups: &principal.groups,
        server,
        method,
        target: match listing {
            Listing::Tools => McpTarget::Tool(name),
            Listing::Prompts => McpTarget::Prompt(name),
            Listing::Resources => McpTarget::Resource(name),
        },
        generation: if era.is_modern() {
            McpGeneration::Modern
        } else {
            McpGeneration::Legacy
        },
        protocol_version: era.version(),
    }
}

impl Gateway {
    /// The MCP stages of admission, after the agent is identified and the server found.
    pub(super) async fn mcp_call(
        &self,
        session: &mut Session,
        request_id: &str,
        record: &mut Record,
        principal: Arc<Principal>,
        tool: Arc<Tool>,
    ) -> Result<Admitted, McpStop> {
        let routed = |id: Option<RpcId>| {
            let (principal, tool) = (principal.clone(), tool.clone());
            move |error: ApiError| McpStop {
                error,
                reached: Reached::Routed { principal, tool },
                dialect: Dialect::Mcp { id },
            }
        };
        let method = session.req_header().method.clone();
        let (era, message, body) = match method {
            http::Method::POST => {
                let body = bounds::read_body(
                    session,
                    tool.max_request_bytes,
                    self.config.limits.body_read_timeout,
                )
                .await
                .map_err(routed(None))?;
                let value = lap_policy::parse_json_args(body.as_deref().unwrap_or_default())
                    .map_err(|e| routed(None)(ApiError::jsonrpc_body(e)))?;
                let message = Message::parse(&value)
                    .map_err(|e| routed(RpcId::in_body(&value))(ApiError::jsonrpc(&e)))?;
                let era = protocol::era_of_post(session.req_header(), &message)
                    .map_err(|e| routed(rpc_id(&message))(ApiError::mcp_protocol(&e)))?;
                (era, Some((message, value)), body)
            }
            http::Method::GET | http::Method::DELETE => {
                let what = if method == http::Method::GET {
                    "GET"
                } else {
                    "DELETE"
                };
                let era = protocol::era_of_stream(session.req_header(), what)
                    .map_err(|e| routed(None)(ApiError::mcp_protocol(&e)))?;
                (era, None, None)
            }
            _ => return Err(routed(None)(ApiError::mcp_method_not_allowed())),
        };
        let id = message.as_ref().and_then(|(m, _)| rpc_id(m));
        let upstream_session = match &era {
            Era::Session { .. } => self
                .open_session(session, &principal, &tool)
                .map_err(routed(id.clone()))?,
            Era::Initialize { .. } | Era::Modern { .. } => None,
        };
        let generation = if era.is_modern() {
            McpGeneration::Modern
        } else {
            McpGeneration::Legacy
        };

        // What is decided: the request's method (or the legacy stream's pseudo-method) and
        // target; notifications and the agent's answers are not calls.
        let (rpc_method, target, args, kind) = match &message {
            Some((Message::Request { id, method, params }, _)) => {
                let target = target(method, params).map_err(routed(Some(id.clone())))?;
                let args = match method.as_str() {
                    "tools/call" | "prompts/get" => {
                        params.get("arguments").filter(|a| a.is_object())
                    }
                    _ => None,
                };
                let kind = if method == "initialize" {
                    Kind::Initialize { id: id.clone() }
                } else {
                    Kind::Call {
                        id: id.clone(),
                        listing: Listing::of(method),
                        discover: method == "server/discover",
                        long_lived: method == "subscriptions/listen",
                    }
                };
                (method.as_str(), target, args, Some(kind))
            }
            Some((Message::Notification { .. } | Message::Response { .. }, _)) => {
                ("", McpTarget::Server, None, None)
            }
            None if method == http::Method::GET => {
                ("mcp:stream", McpTarget::Server, None, Some(Kind::Stream))
            }
            None => ("mcp:end", McpTarget::Server, None, Some(Kind::Relay)),
        };
        let (grant, kind, held) = match kind {
            // Session traffic: only inside a session of this agent (or stateless, modern).
            None => (Grant::SessionTraffic, Kind::Relay, Held::default()),
            Some(kind) => {
                let engine = self.live.policy.load();
                // The arguments' digest keys the decision cache when a policy reads them, and
                // goes into receipts: computed only when one of them needs it.
                let wanted = record.wants_arguments() || engine.uses_args();
                let args_digest = args
                    .filter(|_| wanted)
                    .map(crate::pipeline::evidence::canonical_args_digest);
                record.mcp(
                    &tool.name,
                    rpc_method,
                    target,
                    body.as_ref(),
                    args_digest.map(hex::encode),
                );
                let decision = decide::decide_mcp(
                    &engine,
                    decide::McpQuestion {
                        principal: &principal,
                        server: &tool.name,
                        method: rpc_method,
                        target,
                        generation,
                        protocol_version: era.version(),
                        args,
                        args_digest,
                    },
                    &self.metrics,
                );
                record.decided(engine.digest_hex());
                if !decision.outcome.is_allow() {
                    let error = decide::refusal(&decision, request_id, &tool.name);
                    return Err(McpStop {
                        error,
                        reached: Reached::Decided {
                            principal,
                            tool,
                            decision,
                        },
                        dialect: Dialect::Mcp { id },
                    });
                }
                // Limits count tool calls, each under `<server>/<tool>`; any decided request
                // carries what the server's configuration and the allowing policies require.
                let tool_call = match target {
                    McpTarget::Tool(name) if rpc_method == "tools/call" => {
                        Some(format!("{}/{name}", tool.name))
                    }
                    _ => None,
                };
                // The server's require_* keys are for its tool calls; a policy's `@require`
                // for whatever it allowed.
                let configured = match &tool_call {
                    Some(_) => tool.replay,
                    None => crate::config::Replay::default(),
                };
                let replay = configured.and(engine.requires(&decision.policy_ids));
                let held = if tool_call.is_some() || replay.session {
                    let req = session.req_header();
                    let asked = self
                        .limiter
                        .admit(Ask {
                            principal: &principal,
                            tool: tool_call.as_deref().unwrap_or(&tool.name),
                            replay,
                            counted: tool_call.is_some(),
                            headers: &req.headers,
                            request_bytes: body.as_ref().map_or(0, |b| b.len() as u64),
                            args,
                            max_response_bytes: tool.max_response_bytes,
                        })
                        .await;
                    match asked {
                        Ok(held) => held,
                        Err(error) => {
                            return Err(McpStop {
                                error,
                                reached: Reached::Decided {
                                    principal,
                                    tool,
                                    decision,
                                },
                                dialect: Dialect::Mcp { id },
                            })
                        }
                    }
                } else {
                    Held::default()
                };
                record.session(held.session.clone());
                (Grant::Decided(decision), kind, held)
            }
        };
        let target = match tool.base_path.as_str() {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        Ok(Admitted {
            principal,
            tool,
            grant,
            target,
            body,
            exchange: Exchange::Mcp(Box::new(McpExchange {
                era,
                upstream_session,
                kind,
                body: Body::Unknown,
            })),
            held,
        })
    }

    /// Opens the gateway's session id the agent sent; `None` inside when the upstream gave
    /// none. Any failure is the same 404 (see `mcp::session`).
    fn open_session(
        &self,
        session: &Session,
        principal: &Principal,
        tool: &Tool,
    ) -> Result<Option<String>, ApiError> {
        let id = protocol::header(session.req_header(), protocol::SESSION_ID)
            .ok_or_else(|| ApiError::mcp_protocol(&protocol::ProtocolError::SessionRequired))?;
        self.mcp
            .sessions
            .open(id, principal.agent_id.as_str(), &tool.name, unix_now())
            .map(|s| s.upstream)
            .map_err(|e| {
                tracing::debug!(reason = %e, "MCP session id refused");
                ApiError::session_not_found()
            })
    }

    /// A new gateway session id for `agent` on `server`, sealing the upstream's.
    fn mint_session(
        &self,
        agent: &str,
        server: &str,
        upstream: Option<String>,
    ) -> Result<String, crate::mcp::session::SealError> {
        let now = unix_now();
        self.mcp.sessions.seal(&McpSession {
            agent: agent.to_string(),
            server: server.to_string(),
            upstream,
            iat: now,
            exp: now + self.mcp.session_ttl.as_secs(),
        })
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The id of a request (errors echo it).
fn rpc_id(m: &Message) -> Option<RpcId> {
    match m {
        Message::Request { id, .. } => Some(id.clone()),
        Message::Notification { .. } | Message::Response { .. } => None,
    }
}

/// What a request names, of the kind its method takes.
fn target<'a>(method: &str, params: &'a Map<String, Value>) -> Result<McpTarget<'a>, ApiError> {
    let kind = lap_policy::mcp::mcp_target_kind(method);
    if kind == McpTargetKind::Server {
        return Ok(McpTarget::Server);
    }
    let field = if kind == McpTargetKind::Resource {
        "uri"
    } else {
        "name"
    };
    let name = params.get(field).and_then(Value::as_str).ok_or_else(|| {
        ApiError::mcp_protocol(&protocol::ProtocolError::InvalidParams(
            "the request does not name its tool, prompt or resource",
        ))
    })?;
    Ok(match kind {
        McpTargetKind::Tool => McpTarget::Tool(name),
        McpTargetKind::Prompt => McpTarget::Prompt(name),
        _ => McpTarget::Resource(name),
    })
}

/// What the response rewriting needs from the rest of the request.
pub struct Answer<'a> {
    pub receipt: Option<&'a Issued>,
    pub principal: &'a Principal,
    pub server: &'a str,
    /// Whether policy could permit a candidate (`PolicyEngine::could_permit_mcp`).
    pub could_permit: &'a dyn Fn(McpCandidate<'_>) -> bool,
}

/// Why an answer was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub u64);

impl McpExchange {
    /// `response_filter`: seals the session of an `initialize`, never lets the upstream's
    /// session id through, and chooses how the body is handled.
    pub fn response_header(
        &mut self,
        resp: &mut ResponseHeader,
        gateway: &Gateway,
        agent: &str,
        server: &str,
        max_event: u64,
        http11: bool,
    ) -> pingora::Result<()> {
        let upstream_sid = resp
            .headers
            .get(protocol::SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.remove_header(protocol::SESSION_ID);
        if let Kind::Initialize { .. } = self.kind {
            if resp.status.is_success() {
                let minted = gateway
                    .mint_session(agent, server, upstream_sid)
                    .map_err(|e| {
                        pingora::Error::explain(pingora::ErrorType::InternalError, e.to_string())
                    })?;
                resp.insert_header(protocol::SESSION_ID, minted)?;
            }
        }
        let content_type = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let rewrites = matches!(self.kind, Kind::Initialize { .. } | Kind::Call { .. });
        self.body = match content_type.as_str() {
            "application/json" if rewrites && resp.status.is_success() => {
                Body::Json(BytesMut::new())
            }
            "text/event-stream" => Body::Events {
                splitter: Splitter::new(max_event as usize),
                rewrite: rewrites,
            },
            _ => Body::Pass,
        };
        if matches!(self.body, Body::Json(_) | Body::Events { .. }) {
            // The body is rewritten or relayed event by event: its length is not the upstream's.
            // Chunked framing keeps the agent's connection reusable (without a length and
            // without chunking, an HTTP/1.1 body would end only when the connection closes).
            resp.remove_header(&header::CONTENT_LENGTH);
            if http11 && !resp.headers.contains_key(header::TRANSFER_ENCODING) {
                resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        if matches!(self.body, Body::Events { .. }) {
            resp.insert_header("x-accel-buffering", "no")?;
        }
        if let Kind::Call {
            listing: Some(_), ..
        } = self.kind
        {
            // Filtered per agent: no shared cache may keep it.
            resp.insert_header(header::CACHE_CONTROL, "private, no-store")?;
        }
        Ok(())
    }

    /// Whether the cap applies per event (a stream that stays open) rather than to the sum.
    pub fn capped_per_event(&self) -> bool {
        matches!(
            self.kind,
            Kind::Stream
                | Kind::Call {
                    long_lived: true,
                    ..
                }
        ) && matches!(self.body, Body::Events { .. })
    }

    /// `response_body_filter`: what to send to the agent now for this chunk of the upstream's
    /// answer (`None`: nothing yet).
    pub fn response_body(
        &mut self,
        chunk: Option<Bytes>,
        end: bool,
        cap: u64,
        answer: &Answer<'_>,
    ) -> Result<Option<Bytes>, TooLarge> {
        let id = match &self.kind {
            Kind::Initialize { id } | Kind::Call { id, .. } => Some(id.clone()),
            Kind::Stream | Kind::Relay => None,
        };
        let shape = match &self.kind {
            Kind::Call {
                listing, discover, ..
            } => Shape {
                listing: *listing,
                discover: *discover,
                modern: self.era.is_modern(),
            },
            _ => Shape {
                listing: None,
                discover: false,
                modern: self.era.is_modern(),
            },
        };
        let era = &self.era;
        let listable = |l: Listing, name: &str| {
            (answer.could_permit)(candidate(era, answer.principal, answer.server, l, name))
        };
        let answer = Rewrite {
            receipt: answer.receipt,
            listable: &listable,
        };
        let answer = &answer;
        match &mut self.body {
            Body::Unknown | Body::Pass => Ok(chunk),
            Body::Json(buf) => {
                if let Some(c) = chunk {
                    if buf.len() as u64 + c.len() as u64 > cap {
                        return Err(TooLarge(cap));
                    }
                    buf.extend_from_slice(&c);
                }
                if !end {
                    return Ok(None);
                }
                let raw = std::mem::take(buf).freeze();
                let rewritten = serde_json::from_slice::<Value>(&raw)
                    .ok()
                    .and_then(|mut msg| {
                        let forged = strip_ours(&mut msg);
                        let answered = id
                            .as_ref()
                            .is_some_and(|id| rewrite(&mut msg, id, shape, answer));
                        (forged || answered)
                            .then(|| serde_json::to_vec(&msg).ok())
                            .flatten()
                    });
                Ok(Some(rewritten.map_or(raw, Bytes::from)))
            }
            Body::Events {
                splitter,
                rewrite: may_rewrite,
            } => {
                let mut out = BytesMut::new();
                let events = match chunk {
                    Some(c) => splitter.push(&c).map_err(|e| TooLarge(e.0 as u64))?,
                    None => Vec::new(),
                };
                for event in events {
                    let target = id.as_ref().filter(|_| *may_rewrite);
                    let rewritten = rewrite_event(&event, target, shape, answer);
                    match rewritten {
                        Some(new) => out.extend_from_slice(&new),
                        None => out.extend_from_slice(&event),
                    }
                }
                if end {
                    out.extend_from_slice(&splitter.rest());
                }
                Ok((!out.is_empty()).then(|| out.freeze()))
            }
        }
    }
}

/// What kind of answer is expected, for [`rewrite`].
#[derive(Debug, Clone, Copy)]
struct Shape {
    listing: Option<Listing>,
    discover: bool,
    modern: bool,
}

/// What [`rewrite`] adds and filters.
struct Rewrite<'a> {
    receipt: Option<&'a Issued>,
    listable: &'a dyn Fn(Listing, &str) -> bool,
}

/// The event rewritten when it carries the answer to `id`.
fn rewrite_event(
    event: &[u8],
    id: Option<&RpcId>,
    shape: Shape,
    answer: &Rewrite<'_>,
) -> Option<Vec<u8>> {
    let may_be_forged = event
        .windows(META_RECEIPT.len())
        .any(|w| w == META_RECEIPT.as_bytes());
    if id.is_none() && !may_be_forged {
        return None;
    }
    let data = crate::mcp::sse::data(event)?;
    let mut msg: Value = serde_json::from_str(&data).ok()?;
    let forged = may_be_forged && strip_ours(&mut msg);
    let answered = id.is_some_and(|id| rewrite(&mut msg, id, shape, answer));
    if !forged && !answered {
        return None;
    }
    let json = serde_json::to_string(&msg).ok()?;
    Some(crate::mcp::sse::with_data(event, &json))
}

/// Removes entries in the gateway's `_meta` namespace from a message that came from the
/// upstream: only the gateway speaks there (an upstream must not pass off a receipt of its own
/// making). `true` when something was removed.
fn strip_ours(msg: &mut Value) -> bool {
    let mut removed = false;
    for holder in ["result", "params"] {
        if let Some(meta) = msg
            .get_mut(holder)
            .and_then(|h| h.get_mut("_meta"))
            .and_then(Value::as_object_mut)
        {
            removed |= meta.remove(META_RECEIPT).is_some();
        }
    }
    if let Some(meta) = msg
        .get_mut("error")
        .and_then(|e| e.get_mut("data"))
        .and_then(|d| d.get_mut("_meta"))
        .and_then(Value::as_object_mut)
    {
        removed |= meta.remove(META_RECEIPT).is_some();
    }
    removed
}

/// The receipt as it goes into `_meta`: batched, `{receipt_id, log_index, receipt, proof}`
/// with the log entry as a JSON object (parse it back to its bytes with care: the entry's
/// exact bytes are what the proof covers, so verifiers should take them from the
/// `x-lap-receipt` header or the admin plane) and the `tlog-proof` text; per receipt,
/// `{receipt_id, log_index, envelope}` with the DSSE envelope as a JSON object.
fn receipt_meta(r: &Issued) -> Value {
    let entry = serde_json::from_str::<Value>(&r.entry).unwrap_or(Value::Null);
    match &r.proof {
        Some(proof) => serde_json::json!({
            "receipt_id": r.receipt_id,
            "log_index": r.index,
            "receipt": entry,
            "proof": &**proof,
        }),
        None => serde_json::json!({
            "receipt_id": r.receipt_id,
            "log_index": r.index,
            "envelope": entry,
        }),
    }
}

/// Rewrites the answer to `id` in place: filters a list result, adds the receipt to
/// `result._meta`. `false` when `msg` is not that answer (it is then left alone).
fn rewrite(msg: &mut Value, id: &RpcId, shape: Shape, answer: &Rewrite<'_>) -> bool {
    if !msg.get("id").is_some_and(|v| id.matches(v)) || msg.get("method").is_some() {
        return false;
    }
    let Some(result) = msg.get_mut("result").and_then(Value::as_object_mut) else {
        return false;
    };
    if shape.discover {
        // The agent speaks to the gateway: only versions both the gateway and the upstream
        // serve can be used.
        let served = protocol::supported_versions();
        if let Some(versions) = result
            .get_mut("supportedVersions")
            .and_then(Value::as_array_mut)
        {
            versions.retain(|v| v.as_str().is_some_and(|v| served.contains(&v)));
        }
    }
    if let Some(listing) = shape.listing {
        let (array, field, _) = listing.fields();
        if let Some(items) = result.get_mut(array).and_then(Value::as_array_mut) {
            items.retain(|item| {
                item.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|name| (answer.listable)(listing, name))
            });
        }
        if shape.modern {
            // Filtered per agent: fresh at once, and only for this agent.
            result.insert("ttlMs".into(), 0.into());
            result.insert("cacheScope".into(), "private".into());
        }
    }
    if let Some(r) = answer.receipt {
        let meta = result
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(META_RECEIPT.into(), receipt_meta(r));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issued() -> Issued {
        Issued {
            receipt_id: "rcpt_9".into(),
            index: 41,
            entry: Arc::from(r#"{"payload":"e30=","payloadType":"x","signatures":[]}"#),
            leaf_hash: [0; 32],
            proof: None,
        }
    }

    #[test]
    fn a_batched_receipt_goes_into_meta_with_its_proof() {
        let receipt = Issued {
            receipt_id: "rcpt_9".into(),
            index: 41,
            entry: Arc::from(r#"{"version":2,"kind":"decision"}"#),
            leaf_hash: [0; 32],
            proof: Some(Arc::from("c2sp.org/tlog-proof@v1\nindex 41\n\nnote\n")),
        };
        let answer = Rewrite {
            receipt: Some(&receipt),
            listable: &only_add,
        };
        let mut msg = json!({"jsonrpc":"2.0","id":3,"result":{"content":[]}});
        assert!(rewrite(&mut msg, &RpcId::Number(3), plain(), &answer));
        assert_eq!(
            msg["result"]["_meta"][META_RECEIPT],
            json!({"receipt_id": "rcpt_9", "log_index": 41,
                   "receipt": {"version": 2, "kind": "decision"},
                   "proof": "c2sp.org/tlog-proof@v1\nindex 41\n\nnote\n"})
        );
        // Written back compactly in member order, the object is the entry byte for byte (the
        // bytes the proof covers).
        assert_eq!(
            msg["result"]["_meta"][META_RECEIPT]["receipt"].to_string(),
            &*receipt.entry
        );
    }

    fn only_add(_: Listing, name: &str) -> bool {
        name == "add"
    }

    fn plain() -> Shape {
        Shape {
            listing: None,
            discover: false,
            modern: false,
        }
    }

    fn tools(modern: bool) -> Shape {
        Shape {
            listing: Some(Listing::Tools),
            discover: false,
            modern,
        }
    }

    #[test]
    fn discovery_offers_only_versions_the_gateway_serves() {
        let answer = Rewrite {
            receipt: None,
            listable: &only_add,
        };
        let mut msg = json!({"jsonrpc":"2.0","id":1,"result":{
            "supportedVersions":["2027-01-01","2026-07-28","2025-11-25","2024-11-05"]}});
        let shape = Shape {
            listing: None,
            discover: true,
            modern: true,
        };
        assert!(rewrite(&mut msg, &RpcId::Number(1), shape, &answer));
        assert_eq!(
            msg["result"]["supportedVersions"],
            json!(["2026-07-28", "2025-11-25"])
        );
    }

    #[test]
    fn the_answer_gets_its_receipt_and_nothing_else_changes() {
        let receipt = issued();
        let answer = Rewrite {
            receipt: Some(&receipt),
            listable: &only_add,
        };
        let id = RpcId::Number(3);
        let mut msg = json!({"jsonrpc":"2.0","id":3,"result":{"content":[],"_meta":{"x":1}}});
        assert!(rewrite(&mut msg, &id, plain(), &answer));
        let meta = &msg["result"]["_meta"];
        assert_eq!(meta["x"], 1, "the upstream's own _meta stays");
        assert_eq!(meta[META_RECEIPT]["receipt_id"], "rcpt_9");
        assert_eq!(meta[META_RECEIPT]["log_index"], 41);
        assert_eq!(meta[META_RECEIPT]["envelope"]["payload"], "e30=");
        // Another id, a request from the server, an error: left alone.
        for other in [
            json!({"jsonrpc":"2.0","id":4,"result":{}}),
            json!({"jsonrpc":"2.0","id":3,"method":"elicitation/create","params":{}}),
            json!({"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}),
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}),
        ] {
            let mut m = other.clone();
            assert!(!rewrite(&mut m, &id, plain(), &answer));
            assert_eq!(m, other);
        }
    }

    #[test]
    fn an_upstream_cannot_pass_off_a_receipt_of_its_own() {
        let answer = Rewrite {
            receipt: None,
            listable: &only_add,
        };
        let forged = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"_meta\":{{\"{META_RECEIPT}\":{{\"receipt_id\":\"rcpt_fake\"}},\"x\":1}}}}}}\n\n"
        );
        let cleaned = rewrite_event(forged.as_bytes(), None, plain(), &answer).unwrap();
        let text = String::from_utf8(cleaned).unwrap();
        assert!(
            !text.contains("rcpt_fake") && text.contains("\"x\":1"),
            "{text}"
        );
        let mut msg = json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m",
            "data":{"_meta":{META_RECEIPT: {"receipt_id":"rcpt_fake"}}}}});
        assert!(strip_ours(&mut msg));
        assert_eq!(msg["error"]["data"]["_meta"], json!({}));
        // Nothing to remove: nothing changes, and other events are not even parsed.
        let plain_event = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n";
        assert_eq!(rewrite_event(plain_event, None, plain(), &answer), None);
    }

    #[test]
    fn lists_keep_only_what_the_agent_could_use() {
        let answer = Rewrite {
            receipt: None,
            listable: &only_add,
        };
        let id = RpcId::Text("l".into());
        let mut msg = json!({"jsonrpc":"2.0","id":"l","result":{"tools":[
            {"name":"add"},{"name":"pay"},{"nameless":true}],"ttlMs":60000,"cacheScope":"public"}});
        assert!(rewrite(&mut msg, &id, tools(true), &answer));
        assert_eq!(msg["result"]["tools"], json!([{"name":"add"}]));
        assert_eq!(msg["result"]["ttlMs"], 0);
        assert_eq!(msg["result"]["cacheScope"], "private");
        let mut legacy = json!({"jsonrpc":"2.0","id":"l","result":{"tools":[{"name":"pay"}]}});
        assert!(rewrite(&mut legacy, &id, tools(false), &answer));
        assert_eq!(legacy["result"], json!({"tools": []}));
    }

    #[test]
    fn events_are_rewritten_in_place_and_the_rest_passes() {
        let receipt = issued();
        let answer = Rewrite {
            receipt: Some(&receipt),
            listable: &only_add,
        };
        let id = RpcId::Number(1);
        let progress = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n";
        assert_eq!(rewrite_event(progress, Some(&id), plain(), &answer), None);
        let done =
            b"event: message\nid: e7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        let new = rewrite_event(done, Some(&id), plain(), &answer).unwrap();
        let text = String::from_utf8(new).unwrap();
        assert!(
            text.starts_with("event: message\nid: e7\ndata: {"),
            "{text}"
        );
        assert!(
            text.contains(META_RECEIPT) && text.ends_with("}\n\n"),
            "{text}"
        );
    }
}
