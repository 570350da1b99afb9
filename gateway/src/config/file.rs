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
    #[serde(default)]
    pub state: StateFile,
    #[serde(default)]
    pub sessions: SessionsFile,
    #[serde(default)]
    pub tls: super::tls::TlsFile,
    #[serde(default)]
    pub mtls: super::tls::MtlsFile,
}

/// `[state]`: where rate limits, budgets, sessions and replay records are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// `embedded` (default) or `redis`.
    pub backend: Option<String>,
    /// The embedded store's file.
    pub path: Option<PathBuf>,
    /// A file holding the Redis URL (it carries the password; never written in this file).
    pub url_file: Option<PathBuf>,
    /// A file of PEM certificates to trust for `rediss://`.
    pub ca_file: Option<PathBuf>,
    pub deadline_ms: Option<u64>,
    pub prefix: Option<String>,
    pub reservation_ttl_seconds: Option<u64>,
}

/// `[sessions]`: `POST /v1/session/new`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsFile {
    pub default_ttl_seconds: Option<u64>,
    pub min_ttl_seconds: Option<u64>,
    pub max_ttl_seconds: Option<u64>,
    pub max_per_agent: Option<u32>,
    pub max_total: Option<u32>,
}

/// One `[[limits.rate]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub scope: String,
    pub count: u32,
    pub per: String,
    pub burst: Option<u32>,
    pub tools: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
}

/// One `[[limits.budget]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    pub scope: String,
    pub window: String,
    pub calls: Option<u64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    pub duration_ms: Option<u64>,
    pub spend: Option<u64>,
    pub spend_field: Option<String>,
    pub tools: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
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
    pub tokens_file: Option<PathBuf>,
    pub allow_unauthenticated_loopback: Option<bool>,
    pub open_probes: Option<bool>,
    #[serde(default)]
    pub jwt: Vec<super::admin_jwt::AdminJwtFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub max_header_count: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub body_read_timeout_ms: Option<u64>,
    #[serde(default)]
    pub rate: Vec<RateFile>,
    #[serde(default)]
    pub budget: Vec<BudgetFile>,
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
    pub public_url: Option<String>,
    pub jwt_cache_entries: Option<u64>,
    #[serde(default)]
    pub jwt: Vec<super::jwt::JwtIssuerFile>,
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
    /// Calls must carry a live `X-Session-Id` of their agent.
    pub require_session: Option<bool>,
    /// Calls must carry an `X-Nonce` never used before in their session (implies a session).
    pub require_nonce: Option<bool>,
    /// Calls must carry an `X-Counter` above every one before in their session (implies a
    /// session).
    pub require_counter: Option<bool>,
    /// Scopes a bearer JWT must grant for calls to this tool (`INSUFFICIENT_SCOPE`).
    pub required_scopes: Option<Vec<String>>,
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
