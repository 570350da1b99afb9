//! The LAP gateway as a library: the data plane's stages, the admin plane, start-up and the
//! operator commands. `main.rs` is only the command line over it.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | the TOML file and `LAP_*` variables, resolved and checked |
//! | [`server`] | start-up: load everything, refuse on any doubt, hand over to Pingora |
//! | [`pipeline`] | the agent data plane: Pingora's phases calling named stages |
//! | [`admin`] | the operator plane: health, readiness, metrics, log and audit-pack routes |
//! | [`live`] | hot-reloaded API keys, policy and public documents, and their watcher |
//! | [`documents`] | the JSON documents the gateway writes, each defined once |
//! | [`evidence`] | the receipt log opened with its keys; receipts issued and indexed |
//! | [`export`] | audit packs, from a running gateway or a log directory |
//! | [`state`] | the state store (`[state]`): rate limits, budgets, sessions, replay records |
//! | [`tls`] | the HTTPS data listener: certificates (hot-reloaded), client certificates, SPIFFE IDs, expiry gauges |
//! | [`tools`] | the tool catalog: upstreams and the credentials injected into them |
//! | [`metrics`] | Prometheus metrics |
//! | [`commands`] | `check-config` and `quickstart` |
//!
//! `docs/architecture.md` opens with the map of crates, stages and files.

pub mod admin;
pub mod commands;
pub mod config;
pub mod documents;
pub mod evidence;
pub mod export;
pub mod jwks;
pub mod live;
pub mod mcp;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod state;
pub mod tls;
pub mod tools;
