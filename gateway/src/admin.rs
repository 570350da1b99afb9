//! The admin plane: a separate listener (loopback by default) for operators and scrapers.
//!
//! `/healthz` says the process serves; `/readyz` says keys and policy are loaded (they always are
//! once the listener is up, since start-up fails otherwise) and reports what is in force;
//! `/metrics` is the Prometheus exposition.

use crate::metrics::Metrics;
use crate::state::LiveState;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
    pub gateway_id: String,
    pub key_id: String,
    pub key_source: &'static str,
}

fn json(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    let body = v.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET {
            return json(
                405,
                serde_json::json!({"error": {"code": "METHOD_NOT_ALLOWED", "message": "admin endpoints are GET only"}}),
            );
        }
        match req.uri.path() {
            "/healthz" => json(200, serde_json::json!({"status": "ok"})),
            "/readyz" => {
                let keys = self.live.keys.load();
                let policy = self.live.policy.load();
                json(
                    200,
                    serde_json::json!({
                        "status": "ready",
                        "gateway_id": self.gateway_id,
                        "api_keys": keys.len(),
                        "policies": policy.policy_count(),
                        "policy_digest": policy.digest_hex(),
                        "signing": {"key_id": self.key_id, "source": self.key_source},
                    }),
                )
            }
            "/metrics" => {
                let body = self.metrics.render();
                Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; version=0.0.4")
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            _ => json(
                404,
                serde_json::json!({"error": {"code": "ROUTE_NOT_FOUND", "message": "admin routes: /healthz, /readyz, /metrics"}}),
            ),
        }
    }
}
