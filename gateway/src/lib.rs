//! The LAP gateway as a library: the data plane's stages, the admin plane, start-up and the
//! operator commands. `main.rs` is only the command line over it.
//!
//! `docs/architecture.md` opens with the map of crates, stages and files.

pub mod admin;
pub mod auditpack;
pub mod check;
pub mod config;
pub mod documents;
pub mod evidence;
pub mod metrics;
pub mod pipeline;
pub mod quickstart;
pub mod server;
pub mod state;
pub mod tools;
