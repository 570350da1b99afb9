//! The quickstart's example MCP server (`/mcp/demo` through the gateway): a small streamable
//! HTTP server speaking both generations, so the quickstart needs nothing installed.
//!
//! Tools: `echo(text)`, `pay(amount, to)` (the quickstart policy allows small amounts only)
//! and `delete_everything()` (never permitted, so never listed to an agent). Legacy clients
//! `initialize` and get a session id; modern (2026-07-28) clients send their version with each
//! request. Answers are JSON; the server reports whether the gateway injected its credential.

use super::DEMO_TOOL_TOKEN;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

const MODERN: &str = "2026-07-28";
const LEGACY: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

pub struct DemoMcp;

#[async_trait]
impl ServeHttp for DemoMcp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        match req.method.as_str() {
            "POST" => {}
            "DELETE" => return reply(200, None, Vec::new()),
            _ => return reply(405, None, Vec::new()),
        }
        let modern = req
            .headers
            .get("mcp-protocol-version")
            .is_some_and(|v| v.as_bytes() == MODERN.as_bytes());
        let injected = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(format!("Bearer {DEMO_TOOL_TOKEN}").as_str());
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > 1024 * 1024 {
                return reply(413, None, Vec::new());
            }
            body.extend_from_slice(&chunk);
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
            return reply(400, None, Vec::new());
        };
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let Some(id) = msg.get("id").cloned() else {
            // A notification (or an answer): accepted, nothing to say.
            return reply(202, None, Vec::new());
        };
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let (result, session_id) = match method {
            "initialize" => {
                let asked = params["protocolVersion"].as_str().unwrap_or("");
                let version = LEGACY.iter().find(|v| **v == asked).unwrap_or(&LEGACY[0]);
                let mut raw = [0u8; 16];
                let sid = getrandom::getrandom(&mut raw)
                    .ok()
                    .map(|()| hex::encode(raw));
                (
                    Ok(json!({
                        "protocolVersion": version,
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "lap-demo-mcp", "version": "1"},
                    })),
                    sid,
                )
            }
            "server/discover" => (
                Ok(json!({
                    "supportedVersions": [MODERN, LEGACY[0], LEGACY[1], LEGACY[2]],
                    "capabilities": {"tools": {}},
                    "_meta": {"io.modelcontextprotocol/serverInfo":
                        {"name": "lap-demo-mcp", "version": "1"}},
                    "ttlMs": 60000,
                    "cacheScope": "public",
                })),
                None,
            ),
            "ping" => (Ok(json!({})), None),
            "tools/list" => (
                Ok(json!({"tools": tools(), "ttlMs": 60000, "cacheScope": "public"})),
                None,
            ),
            "tools/call" => (Ok(call(&params, injected)), None),
            _ => (
                Err(json!({"code": -32601, "message": "method not found"})),
                None,
            ),
        };
        let mut answer = json!({"jsonrpc": "2.0", "id": id});
        match result {
            Ok(mut r) => {
                if modern {
                    r["resultType"] = "complete".into();
                }
                answer["result"] = r;
            }
            Err(e) => answer["error"] = e,
        }
        reply(
            200,
            session_id,
            serde_json::to_vec(&answer).unwrap_or_default(),
        )
    }
}

fn tools() -> Value {
    json!([
        {"name": "echo", "description": "Says back what it is given.",
         "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}},
                         "required": ["text"]}},
        {"name": "pay", "description": "Pays an amount to someone (a demo: nothing is paid).",
         "inputSchema": {"type": "object", "properties": {
             "amount": {"type": "integer"}, "to": {"type": "string"}},
             "required": ["amount", "to"]}},
        {"name": "delete_everything", "description": "A tool no policy should ever allow.",
         "inputSchema": {"type": "object", "properties": {}}},
    ])
}

fn call(params: &Value, injected: bool) -> Value {
    let args = &params["arguments"];
    let text = match params["name"].as_str().unwrap_or("") {
        "echo" => args["text"].as_str().unwrap_or("").to_string(),
        "pay" => format!(
            "paid {} to {}",
            args["amount"].as_i64().unwrap_or(0),
            args["to"].as_str().unwrap_or("nobody")
        ),
        "delete_everything" => "everything deleted (it is a demo: nothing was)".to_string(),
        other => {
            return json!({"content": [{"type": "text", "text": format!("unknown tool {other:?}")}],
                          "isError": true})
        }
    };
    json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": {"text": text, "tool_credential_injected": injected},
        "isError": false,
    })
}

fn reply(status: u16, session_id: Option<String>, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::builder()
        .status(status)
        .header("content-length", body.len());
    if !body.is_empty() {
        r = r.header("content-type", "application/json");
    }
    if let Some(sid) = session_id {
        r = r.header("mcp-session-id", sid);
    }
    r.body(body).unwrap_or_default()
}
