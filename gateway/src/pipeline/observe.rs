//! Observe: every request, once finished, is counted in the metrics and written as one access
//! log line (`target: "access"`), with the request id, agent, key id, tool, status, decision,
//! the deciding policies and the error code (method and path are `-` for a request Pingora
//! refused before it was read, `malformed`). Requests the gateway answered itself (health,
//! keys) are counted but not logged. Nothing here reads a credential or a body.

use super::request::{RequestCtx, RequestState, Verdict};
use crate::metrics::{Metrics, ToolMetrics};
use lap_auth::Principal;
use pingora::http::RequestHeader;
use pingora::Error;
use std::collections::HashMap;

/// What is known about a finished request, for metrics and the log.
struct Facts<'a> {
    tool: &'a str,
    principal: Option<&'a Principal>,
    policies: &'a str,
}

impl<'a> Facts<'a> {
    fn of(state: &'a RequestState) -> Self {
        match state {
            RequestState::Arriving | RequestState::Local => Facts {
                tool: "-",
                principal: None,
                policies: "",
            },
            RequestState::Refused(r) => Facts {
                tool: r.reached.tool().map_or("-", |t| t.name.as_str()),
                principal: r.reached.principal().map(|p| &**p),
                policies: r.reached.decision().map_or("", |d| d.policy_list.as_str()),
            },
            RequestState::Forwarded(f) => Facts {
                tool: &f.call.tool.name,
                principal: Some(&f.call.principal),
                policies: f
                    .call
                    .grant
                    .decision()
                    .map_or("", |d| d.policy_list.as_str()),
            },
        }
    }
}

/// Counts the request and writes its access line.
pub fn finished(
    metrics: &Metrics,
    tool_metrics: &HashMap<String, ToolMetrics>,
    ctx: &RequestCtx,
    req: Option<&RequestHeader>,
    status: u16,
    failure: Option<&Error>,
) {
    let facts = Facts::of(&ctx.state);
    let verdict = Verdict::of(&ctx.state, failure.is_some());
    let elapsed = ctx.started.elapsed();
    let upstream = match &ctx.state {
        RequestState::Forwarded(f) => Some(f.upstream_started.elapsed()),
        _ => None,
    };
    match tool_metrics.get(facts.tool) {
        // The common case, on pre-resolved handles (no label look-up).
        Some(m) if verdict == Verdict::Allow && status == 200 => {
            m.allowed_ok.inc();
            m.allowed_duration.observe(elapsed.as_secs_f64());
            if let Some(up) = upstream {
                m.upstream_duration.observe(up.as_secs_f64());
            }
        }
        _ => {
            let status_label = status.to_string();
            metrics
                .requests
                .with_label_values(&[facts.tool, verdict.label(), &status_label])
                .inc();
            metrics
                .request_duration
                .with_label_values(&[facts.tool, verdict.label()])
                .observe(elapsed.as_secs_f64());
            if let Some(up) = upstream {
                metrics
                    .upstream_duration
                    .with_label_values(&[facts.tool])
                    .observe(up.as_secs_f64());
            }
        }
    }
    if verdict == Verdict::Local {
        return;
    }
    // `None`: Pingora refused the request header, nothing of it is logged.
    let (method, path) = req.map_or(("-", "-"), |r| (r.method.as_str(), r.uri.path()));
    tracing::info!(
        target: "access",
        request_id = %ctx.id,
        agent = facts.principal.map_or("-", |p| p.agent_id.as_str()),
        auth = facts.principal.map_or("-", |p| p.credential.method()),
        credential = %facts.principal.map_or_else(|| "-".to_string(), |p| p.credential.label()),
        tool = facts.tool,
        method = %method,
        path = %path,
        status = status,
        decision = verdict.label(),
        policies = facts.policies,
        code = ctx.error().map_or("", |e| e.code),
        upstream_error = ?failure.map(|e| e.etype()),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
}
