//! The quickstart's example REST tool: it reports what it received, so the gateway's work is
//! visible (the injected credential, the agent header, the stripped API key).

use super::DEMO_TOOL_TOKEN;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

/// The example tool: reports what it received, so the gateway's work is visible.
pub struct EchoTool;

#[async_trait]
impl ServeHttp for EchoTool {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > 1024 * 1024 {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        let req = session.req_header();
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let expected = format!("Bearer {DEMO_TOOL_TOKEN}");
        let json_body: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let out = serde_json::json!({
            "tool": "echo",
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "query": req.uri.query().unwrap_or(""),
            "agent": header("x-lap-agent-id"),
            "request_id": header("x-request-id"),
            "tool_credential_injected": header("authorization") == Some(expected.as_str()),
            "agent_api_key_seen": header("x-api-key").is_some(),
            "body_bytes": body.len(),
            "json": json_body,
        });
        let bytes = serde_json::to_vec_pretty(&out).unwrap_or_default();
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", bytes.len())
            .body(bytes)
            .unwrap_or_default()
    }
}
