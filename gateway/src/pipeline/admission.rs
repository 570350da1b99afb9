//! Admission: the stages `request_filter` runs before anything is forwarded, in order, and
//! how it ends.
//!
//! ```text
//! bounds (headers) → route (own documents; /tools/<tool>, method) → identity
//!   → route (tool, path) → bounds (body) → decide (arguments, policy) → limits
//!   → evidence (receipt)
//! bounds (headers) → route (/mcp/<server>) → Origin → identity → server
//!   → mcp (message, generation, session) → decide → limits (tools/call) → evidence (receipt)
//! bounds (headers) → POST /v1/session/new → identity → sessions (a new session, 201)
//! ```
//!
//! On a tool route `decide` is followed by `limits` (session, rate limits, budgets, nonce,
//! counter: `limits.rs`), whose refusals are denial receipts like policy's.
//!
//! Each stage returns what it established or refuses; a refusal carries how far admission got
//! ([`Reached`]). The end is one of three states: the gateway answered itself, it refused
//! (denial receipt + JSON error), or it admitted the call — and then only once the decision
//! receipt is signed and durable (*no receipt, no call*: otherwise 503 and the tool is never
//! contacted).

use super::bounds;
use super::client_ip;
use super::decide::{self, Arguments, Question};
use super::error::ApiError;
use super::evidence::{self, Record};
use super::identity;
use super::identity::jwt::{Refusal, Target};
use super::limits::Ask;
use super::mcp::McpStop;
use super::request::{
    Admitted, Dialect, Exchange, Forwarded, Grant, Next, Reached, Refused, RequestCtx, RequestState,
};
use super::respond;
use super::route;
use super::sessions::SESSION_NEW_PATH;
use super::Gateway;
use bytes::Bytes;
use pingora::proxy::Session;
use std::time::Instant;

/// How admission ended, before the gateway acts on it.
enum Admission {
    /// One of the gateway's own documents (or a new session), with its status.
    Local(u16, Bytes),
    Refused(Stop, Record),
    Admitted(Admitted, Record),
}

/// A refusal, how far admission got, and how the agent expects to be told.
struct Stop {
    error: ApiError,
    reached: Reached,
    dialect: Dialect,
}

impl Stop {
    /// A refusal on a REST route.
    fn at(reached: Reached) -> impl FnOnce(ApiError) -> Stop {
        move |error| Stop {
            error,
            reached,
            dialect: Dialect::Rest,
        }
    }

    /// A refusal on an MCP route, before the request's id is known.
    fn mcp(reached: Reached) -> impl FnOnce(ApiError) -> Stop {
        move |error| Stop {
            error,
            reached,
            dialect: Dialect::Mcp { id: None },
        }
    }
}

impl From<McpStop> for Stop {
    fn from(s: McpStop) -> Self {
        Stop {
            error: s.error,
            reached: s.reached,
            dialect: s.dialect,
        }
    }
}

impl Gateway {
    /// `request_filter`: admit, then answer or hand over to the upstream phases.
    pub(super) async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Next {
        match self.stages(session, &ctx.id).await {
            Admission::Local(status, doc) => {
                respond::json(session, &ctx.id, status, doc).await;
                ctx.state = RequestState::Local;
                Next::Answered
            }
            Admission::Refused(stop, record) => {
                self.refuse(session, ctx, stop, record).await;
                Next::Answered
            }
            Admission::Admitted(call, record) => self.forward(session, ctx, call, record).await,
        }
    }

    async fn stages(&self, session: &mut Session, request_id: &str) -> Admission {
        let evidence_on = self.evidence.is_some();
        let req = session.req_header();
        if let Err(error) = bounds::check_headers(req, &self.config.limits) {
            // Nothing of an oversized request is read into its receipt.
            let stop = Stop {
                error,
                reached: Reached::Arrival,
                dialect: Dialect::Rest,
            };
            return Admission::Refused(stop, Record::unread(evidence_on));
        }
        if let Some(doc) = self.jwt.as_ref().and_then(|j| {
            matches!(req.method.as_str(), "GET" | "HEAD")
                .then(|| j.metadata(req.uri.path(), &self.config))
                .flatten()
        }) {
            return Admission::Local(200, Bytes::from(doc));
        }
        let store = self.limiter.state.status();
        if let Some(doc) = route::local_document(req, &self.live.published.load(), store) {
            return Admission::Local(200, doc);
        }
        let mut record = Record::begin(evidence_on, req);
        if req.uri.path() == SESSION_NEW_PATH {
            return match self.session_new(session).await {
                Ok(doc) => Admission::Local(201, doc),
                Err((error, reached)) => Admission::Refused(
                    Stop {
                        error,
                        reached,
                        dialect: Dialect::Rest,
                    },
                    record,
                ),
            };
        }
        let call = match route::mcp_server(req.uri.path()) {
            Some(_) => self.mcp_route(session, request_id, &mut record).await,
            None => self.tool_call(session, request_id, &mut record).await,
        };
        match call {
            Ok(call) => Admission::Admitted(call, record),
            Err(stop) => Admission::Refused(stop, record),
        }
    }

    /// The stages of a tool call, from its route to the policy decision.
    async fn tool_call(
        &self,
        session: &mut Session,
        request_id: &str,
        record: &mut Record,
    ) -> Result<Admitted, Stop> {
        let req = session.req_header();
        let route = route::tool_route(req).map_err(Stop::at(Reached::Arrival))?;
        let principal = self
            .identify(session, Target::Tool(route.tool))
            .await
            .map_err(|r| Stop::at(r.reached())(r.error))?;
        let resolved = route::resolve(&self.tools, route, req.uri.query()).map_err(Stop::at(
            Reached::Identified {
                principal: principal.clone(),
            },
        ))?;
        let tool = resolved.tool;
        record.routed(&tool.name, &resolved.rest);
        let routed = || Reached::Routed {
            principal: principal.clone(),
            tool: tool.clone(),
        };

        let body = bounds::read_body(
            session,
            tool.max_request_bytes,
            self.config.limits.body_read_timeout,
        )
        .await
        .map_err(|e| Stop::at(routed())(e))?;
        let req = session.req_header();
        let engine = self.live.policy.load();
        let wanted = record.wants_arguments()
            || engine.uses_args()
            || self.limiter.needs_args(&tool.name, &principal);
        let args = Arguments::read(req, body.as_deref(), wanted)
            .map_err(|e| Stop::at(routed())(e.into()))?;
        record.body(body.as_ref(), &args);

        let decision = decide::decide(
            &engine,
            Question {
                principal: &principal,
                method: req.method.as_str(),
                tool: &tool,
                path: &resolved.rest,
                query: req.uri.query().unwrap_or(""),
                body_size: body.as_ref().map_or(0, |b| b.len() as u64),
                args: &args,
            },
            &self.metrics,
            self.tool_metrics.get(&tool.name),
        );
        record.decided(engine.digest_hex());
        if !decision.outcome.is_allow() {
            let error = decide::refusal(&decision, request_id, &tool.name);
            return Err(Stop {
                error,
                reached: Reached::Decided {
                    principal,
                    tool,
                    decision,
                },
                dialect: Dialect::Rest,
            });
        }
        let held = self
            .limiter
            .admit(Ask {
                principal: &principal,
                tool: &tool.name,
                replay: tool.replay.and(engine.requires(&decision.policy_ids)),
                counted: true,
                headers: &req.headers,
                request_bytes: body.as_ref().map_or(0, |b| b.len() as u64),
                args: args.value.as_ref(),
                max_response_bytes: tool.max_response_bytes,
            })
            .await;
        let held = match held {
            Ok(held) => held,
            Err(error) => {
                return Err(Stop {
                    error,
                    reached: Reached::Decided {
                        principal,
                        tool,
                        decision,
                    },
                    dialect: Dialect::Rest,
                })
            }
        };
        record.session(held.session.clone());
        Ok(Admitted {
            principal,
            tool,
            grant: Grant::Decided(decision),
            target: resolved.target,
            body,
            exchange: Exchange::Rest,
            held,
        })
    }

    /// `/mcp/<server>`: Origin, identity, the server, then the MCP stage (`mcp`).
    async fn mcp_route(
        &self,
        session: &mut Session,
        request_id: &str,
        record: &mut Record,
    ) -> Result<Admitted, Stop> {
        let req = session.req_header();
        // DNS rebinding: a page of another web origin is refused before anything else.
        if let Some(origin) = req.headers.get(http::header::ORIGIN) {
            let allowed = origin.to_str().ok().is_some_and(|o| {
                let o = o.to_ascii_lowercase();
                self.mcp.allowed_origins.contains(&o)
            });
            if !allowed {
                return Err(Stop::mcp(Reached::Arrival)(ApiError::origin_not_allowed()));
            }
        }
        let server = route::mcp_server(req.uri.path()).unwrap_or_default();
        let principal = self
            .identify(session, Target::Mcp(server))
            .await
            .map_err(|r| Stop::mcp(r.reached())(r.error))?;
        let tool = self.mcp.servers.get(server).cloned().ok_or_else(|| {
            Stop::mcp(Reached::Identified {
                principal: principal.clone(),
            })(ApiError::mcp_server_not_found(server))
        })?;
        record.routed(&tool.name, req.uri.path());
        self.mcp_call(session, request_id, record, principal, tool)
            .await
            .map_err(Stop::from)
    }

    /// The agent's verified identity for `target` (failures counted by code): a client
    /// certificate when `[mtls] identity` is on and the request has one, else a bearer JWT when
    /// issuers are configured and the bearer is shaped like one, else an API key.
    pub(super) async fn identify(
        &self,
        session: &Session,
        target: Target<'_>,
    ) -> Result<std::sync::Arc<lap_auth::Principal>, Refusal> {
        let result = match self.cert_principal(session) {
            Ok(Some(principal)) => Ok(principal),
            // A refused certificate was a credential presented.
            Err(e) => Err(self.challenged(e, target, true)),
            Ok(None) => self.bearer_or_key(session.req_header(), target).await,
        };
        if let Err(r) = &result {
            self.metrics
                .auth_failures
                .with_label_values(&[r.error.code])
                .inc();
        }
        result
    }

    /// A bearer JWT when issuers are configured and the bearer is shaped like one, else an
    /// API key.
    async fn bearer_or_key(
        &self,
        req: &pingora::http::RequestHeader,
        target: Target<'_>,
    ) -> Result<std::sync::Arc<lap_auth::Principal>, Refusal> {
        if let Some(jwt) = &self.jwt {
            if let Some(principal) = jwt.authenticate(req, target).await? {
                return Ok(principal);
            }
        }
        let keys = self.live.keys.load();
        identity::authenticate(req, &keys, time::OffsetDateTime::now_utc()).map_err(|e| {
            let presented = e != lap_auth::AuthError::Missing;
            self.challenged(ApiError::from(e), target, presented)
        })
    }

    /// An authentication refusal, whatever the credential: with JWT issuers configured, a 401
    /// names the protected resource metadata in its `WWW-Authenticate` (RFC 9728), so a client
    /// refused on any path learns where to get a token.
    fn challenged(&self, error: ApiError, target: Target<'_>, presented: bool) -> Refusal {
        match &self.jwt {
            Some(jwt) => jwt.unauthorized(error, target, presented).into(),
            None => error.into(),
        }
    }

    /// The digest of the policy set in force, for receipts drafted before a decision.
    pub(super) fn policy_digest(&self) -> String {
        self.live.policy.load().digest_hex().to_string()
    }

    /// Answers a refusal: its denial receipt, then the JSON error. A refusal that reached no
    /// verified identity is first admitted per client address (`flood`): beyond the address's
    /// allowance it becomes a 429, and either way it may be counted into an aggregate receipt
    /// instead of getting its own.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut stop: Stop,
        record: Record,
    ) {
        // Held until the receipt is issued: a place in the queue of unauthenticated receipts.
        let mut slot = None;
        let own_receipt = match stop.reached.principal() {
            // Authenticated: never counted against an address.
            Some(_) => true,
            None => {
                let client = client_ip::client_ip(session, &self.config);
                slot = self
                    .flood
                    .admit_refusal(client, &mut stop.error, self.evidence.is_some());
                slot.is_some()
            }
        };
        let receipt = match &self.evidence {
            Some(ev) if own_receipt => {
                evidence::issue_denial(ev, &ctx.id, record, &stop.reached, stop.error.code, || {
                    self.policy_digest()
                })
                .await
            }
            _ => None,
        };
        drop(slot);
        respond::error(
            session,
            &ctx.id,
            &stop.error,
            receipt.as_ref(),
            &stop.dialect,
        )
        .await;
        ctx.state = RequestState::Refused(Box::new(Refused {
            error: stop.error,
            reached: stop.reached,
            dialect: stop.dialect,
            receipt,
        }));
    }

    /// Forwards an admitted call once its decision receipt is durable; without one, 503.
    async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut call: Admitted,
        record: Record,
    ) -> Next {
        let evidence = match (&self.evidence, &call.grant) {
            // Evidence off, or session traffic (not a decided call): nothing to issue.
            (None, _) | (_, Grant::SessionTraffic) => None,
            (Some(ev), Grant::Decided(decision)) => {
                let issued = evidence::issue_decision(ev, &ctx.id, record, &call, decision, || {
                    self.policy_digest()
                })
                .await;
                match issued {
                    Ok(issued) => issued,
                    Err(e) => {
                        // Not forwarded: what its budgets reserved goes back.
                        self.limiter.release(&mut call.held).await;
                        let error = ApiError::no_receipt(e.code());
                        let dialect = match &call.exchange {
                            Exchange::Rest => Dialect::Rest,
                            Exchange::Mcp(x) => Dialect::Mcp { id: x.request_id() },
                        };
                        respond::error(session, &ctx.id, &error, None, &dialect).await;
                        ctx.state = RequestState::Refused(Box::new(Refused {
                            error,
                            reached: Reached::Decided {
                                principal: call.principal,
                                tool: call.tool,
                                decision: decision.clone(),
                            },
                            dialect,
                            receipt: None,
                        }));
                        return Next::Answered;
                    }
                }
            }
        };
        ctx.state = RequestState::Forwarded(Box::new(Forwarded {
            call,
            evidence,
            upstream_started: Instant::now(),
            response_bytes: 0,
            failure: None,
        }));
        Next::Forward
    }
}
