//! End-to-end test harness: the real `lap-gateway` binary, real upstream HTTP(S) servers, and a
//! raw HTTP/1.1 client that controls every byte (chunked bodies, spoofed headers).
//!
//! Rules every part keeps: everything listens on 127.0.0.1 only; every wait is bounded (a
//! gateway that does not become ready fails the test with the tail of its logs); each gateway
//! gets its own temporary directory and its own ports, so tests run in parallel; every child
//! process is killed when its owner is dropped.
//!
//! One file per concern, each saying why it exists and the rules it keeps:
//!
//! - [`ports`]: [`PortLease`], [`free_port`]. Parallel tests and parallel test binaries must
//!   never be handed the same port.
//! - [`process`]: the binaries, [`run_command`], [`ChildGuard`], [`wait_for`], [`wait_until`],
//!   [`lap_signer`], [`lap_verify_json`]. Child processes and waits with limits, so a hung
//!   binary fails a test instead of hanging it.
//! - [`upstream`]: [`Upstream`], [`Behavior`], [`Recorded`]. The tools behind the gateway,
//!   recording exactly what they received.
//! - [`mtls`]: [`Pki`], [`tls_exchange`]. Client certificates (SPIFFE and plain) made at test
//!   time, and a TLS client that presents exactly the one a test means.
//! - [`tls`]: [`TestCa`]. A private CA for HTTPS upstreams, trusted only where a test says so.
//! - [`gateway`]: [`GatewayBuilder`], [`Gateway`], [`Spawned`]. The binary under test: its
//!   directory, config, process, readiness and restarts.
//! - [`http`]: [`Request`], [`HttpResponse`], [`send_raw`]. A client that sends exactly the
//!   bytes a test means (an agent may send anything).
//! - [`metrics`]: [`metric_value`], [`Gateway::metric`]. Prometheus samples by name and labels.
//! - [`evidence`]: [`Verdict`], [`KeysetFile`], [`Gateway::settled_checkpoint`],
//!   [`Gateway::audit_pack`], envelope and note decoding. Receipts, keys, checkpoints and packs
//!   as an operator keeps them and an auditor reads them.
//! - [`audit`]: the agents, policy and busy gateway the audit-pack tests share.
//! - [`redis`]: [`RedisServer`]. A real `redis-server` that replicas share, killed and
//!   restarted as an outage is.
//! - [`oidc`]: [`OidcProvider`], [`SigningKey`]. A real OpenID provider (oidc-provider on
//!   Node, `tests/oidc/`) issuing JWT access tokens, and the test's own keys to mint the
//!   tokens a provider never would.
//! - [`mcp`]: [`McpUpstream`], [`mcp_client`], [`Generation`]. Real MCP servers and agents
//!   (the official MCP Python SDK, `tests/mcp/`) in either protocol generation.
//!
//! Tests `use lap_e2e::*;`: everything they need is re-exported here.
//!
//! ```no_run
//! # async fn demo() {
//! use lap_e2e::*;
//! let up = Upstream::start(Behavior::Echo).await;
//! let gw = GatewayBuilder::new()
//!     .tool("echo", &up.url())
//!     .keys_file(r#"{"plain-key": "agent-a"}"#)
//!     .policy("permit(principal, action, resource);")
//!     .start()
//!     .await;
//! let r = gw.get("/tools/echo/x").api_key("plain-key").send().await;
//! assert_eq!(r.status, 200);
//! assert_eq!(up.last().unwrap().target, "/x");
//! # }
//! ```

pub mod audit;
pub mod evidence;
pub mod gateway;
pub mod http;
pub mod mcp;
pub mod metrics;
pub mod mtls;
pub mod oidc;
pub mod ports;
pub mod process;
pub mod redis;
pub mod tls;
pub mod upstream;

pub use evidence::{
    base64_decode, base64_encode, batched_receipt, note_size, receipt_payload, save, verify_pack,
    write_private, KeysetFile, Verdict, EVIDENCE_TIMEOUT,
};
pub use gateway::{
    check_config, key_hash, Gateway, GatewayBuilder, Spawned, NO_POLICY, READY_TIMEOUT, TEST_SEED,
};
pub use http::{chunk_bytes, read_response, send_raw, HttpResponse, Request, RESPONSE_TIMEOUT};
pub use mcp::{
    mcp_client, mcp_ok, Generation, McpUpstream, McpUpstreamOptions, MCP_CLIENT_TIMEOUT,
    MCP_READY_TIMEOUT,
};
pub use metrics::{metric_sum, metric_value};
pub use mtls::{escaped_pem, tls_exchange, Issued, Pki, TlsExchange};
pub use oidc::{hs256_token, jwks_json, unix_now, OidcProvider, SigningKey, OIDC_READY_TIMEOUT};
pub use ports::{free_port, free_ports, loopback, PortLease};
pub use process::{
    assert_success, gateway_bin, lap_signer, lap_verify_json, repo_root, run_command, signer_bin,
    verify_bin, wait_for, wait_until, ChildGuard, POLL_INTERVAL,
};
pub use redis::{RedisServer, REDIS_PASSWORD};
pub use tls::TestCa;
pub use upstream::{sha256_hex, Behavior, Recorded, Upstream};
