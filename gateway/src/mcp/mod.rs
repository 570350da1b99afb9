//! MCP (Model Context Protocol, streamable HTTP) through the gateway: agents reach configured
//! MCP servers at `/mcp/<server>`, and every request is authenticated, decided by policy on
//! its method, target and arguments, evidenced, and forwarded with the server's credential.
//!
//! | file | what |
//! |---|---|
//! | `jsonrpc.rs` | one POST body as one JSON-RPC message; the gateway's error responses |
//! | `protocol.rs` | which generation a request speaks; header/body agreement; versions |
//! | `session.rs` | the gateway's sealed legacy session ids (any replica opens them) |
//! | `sse.rs` | server-sent events split one at a time, and rewritten in place |
//!
//! The pipeline stage that uses them is `pipeline::mcp`; `docs/mcp.md` is the guide.

pub mod jsonrpc;
pub mod protocol;
pub mod session;
pub mod sse;
