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
use bytes::BytesMut;
use lap_auth::Principal;
use lap_policy::mcp::{McpCandidate, McpGeneration, McpTarget, McpTargetKind};
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
        auth: crate::pipeline::decide::auth_context(principal),
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

/// The answer: sessions sealed, receipts added, lists filtered, events relayed.
mod answer;

pub use answer::{Answer, TooLarge};
