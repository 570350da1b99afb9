//! The configuration file as written: structs that mirror the TOML one to one.
//!
//! Every struct refuses unknown keys, so a typo (`listn = …`) is an error with its line and
//! column rather than a setting silently left at its default. Nothing here is checked beyond
//! TOML types; `resolve` applies the environment and checks every value.

use super::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub admin: AdminFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub admission: AdmissionFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub signing: SigningFile,
    #[serde(default)]
    pub policy: PolicyFile,
    #[serde(default)]
    pub log: LogFile,
    #[serde(default)]
    pub evidence: EvidenceFile,
    #[serde(default)]
    pub tools: BTreeMap<String, ToolFile>,
    #[serde(default)]
    pub mcp: McpFile,
}

/// `[mcp]` and its `[mcp.servers.<name>]` tables (each keyed like a `[tools.<name>]` table).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpFile {
    pub session_key_file: Option<PathBuf>,
    pub session_ttl_secs: Option<u64>,
    pub allowed_origins: Option<Vec<String>>,
    #[serde(default)]
    pub servers: BTreeMap<String, ToolFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub dir: Option<PathBuf>,
    pub origin: Option<String>,
    pub checkpoint_every: Option<u64>,
    pub checkpoint_interval_ms: Option<u64>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceFile {
    pub required: Option<bool>,
    /// `batched` (default) or `per_receipt`.
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub gateway_id: Option<String>,
    pub threads: Option<usize>,
    pub proxy_headers: Option<bool>,
    pub forwarded_allow_ips: Option<Vec<String>>,
    pub upstream_keepalive_pool_size: Option<usize>,
    pub reload_interval_ms: Option<u64>,
    pub pid_file: Option<PathBuf>,
    pub upgrade_sock: Option<PathBuf>,
    pub agent_header: Option<String>,
    pub strip_headers: Option<Vec<String>>,
    pub log_format: Option<String>,
    pub header_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub max_header_count: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub body_read_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionFile {
    pub unauthenticated_per_minute: Option<u64>,
    pub unauthenticated_burst: Option<u64>,
    pub max_addresses: Option<u64>,
    pub aggregate_interval_ms: Option<u64>,
    pub max_unauthenticated_receipts: Option<u64>,
    pub max_connections_per_address: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub api_keys_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningFile {
    pub key_file: Option<PathBuf>,
    pub keyset_file: Option<PathBuf>,
    pub key_id: Option<String>,
    pub allow_ephemeral: Option<bool>,
    pub external_protocol: Option<String>,
    pub max_in_flight: Option<u64>,
    pub queue_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub file: Option<PathBuf>,
    pub schema: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolFile {
    pub upstream: String,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub write_timeout_ms: Option<u64>,
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub ca_file: Option<PathBuf>,
    pub sni: Option<String>,
    pub credential: Option<CredentialFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    pub header: String,
    pub value_env: Option<String>,
    pub value_file: Option<PathBuf>,
    #[serde(default)]
    pub prefix: String,
}

/// Parses TOML text; errors carry line and column.
pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let position = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {col}: ")
            })
            .unwrap_or_default();
        ConfigError::Toml {
            path: path.to_path_buf(),
            message: format!("{position}{}", e.message()),
        }
    })
}
