//! Configuration: one TOML file plus `LAP_*` environment overrides.
//!
//! The file is parsed into the `*File` structs (which mirror the TOML one to one and reject
//! unknown keys), then resolved into [`Config`]: paths made absolute relative to the config
//! file, environment variables applied, every value checked. `docs/configuration.md` is the
//! reference for every key and variable.

use ipnet::IpNet;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default request-body cap, as in the seed (`LAP_MAX_REQUEST_BYTES`).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1024 * 1024;

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

/// The resolved configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub gateway_id: String,
    pub threads: usize,
    pub proxy_headers: bool,
    pub forwarded_allow_ips: Vec<IpNet>,
    pub upstream_keepalive_pool_size: usize,
    pub reload_interval: Duration,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    /// Header carrying the verified agent id to tools (empty = not sent).
    pub agent_header: Option<String>,
    /// Agent-sent headers removed before forwarding (lower case), beyond the built-in ones.
    pub strip_headers: Vec<String>,
    pub log_json: bool,
    pub limits: Limits,
    pub api_keys: ApiKeySource,
    pub keys: lap_keys::KeySettings,
    pub policy_file: Option<PathBuf>,
    pub policy_schema: Option<PathBuf>,
    pub log: LogConfig,
    /// False only for benchmarking: no receipts and no log (a loud warning at start-up).
    pub evidence_required: bool,
    /// External signers: one process per signature (`oneshot`) or a persistent co-process.
    pub external_coprocess: bool,
    pub tools: BTreeMap<String, ToolConfig>,
}

/// The transparency log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub origin: String,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    /// Seed file of the checkpoint key; `None` = `log.key` in `dir` (see `evidence::log_signer`).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub max_header_count: usize,
    pub max_header_bytes: usize,
    pub body_read_timeout: Duration,
}

/// Where the API keys come from.
#[derive(Debug, Clone)]
pub enum ApiKeySource {
    /// `LAP_API_KEYS_JSON`: fixed for the process lifetime.
    Inline(String),
    /// `LAP_API_KEYS_FILE` / `[auth] api_keys_file`: hot-reloaded.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ToolConfig {
    pub name: String,
    pub upstream: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub ca_file: Option<PathBuf>,
    pub sni: Option<String>,
    pub credential: Option<CredentialConfig>,
}

#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub header: String,
    pub source: SecretSource,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// A configuration problem, with the file position when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Read-only view of the process environment (a map in tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Command-line overrides (the seed's `--proxy-headers` / `--forwarded-allow-ips`).
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub proxy_headers: bool,
    pub forwarded_allow_ips: Option<String>,
}

/// Reads and resolves a configuration file.
pub fn load(path: Option<&Path>, env: &dyn Env, cli: &CliOverrides) -> Result<Config, ConfigError> {
    let (file, base) = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.to_path_buf(),
                source,
            })?;
            (parse(&text, p)?, p.parent().map(Path::to_path_buf))
        }
        None => (ConfigFile::default(), None),
    };
    resolve(file, path, base.as_deref(), env, cli)
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

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

fn resolve(
    f: ConfigFile,
    source: Option<&Path>,
    base: Option<&Path>,
    env: &dyn Env,
    cli: &CliOverrides,
) -> Result<Config, ConfigError> {
    let rel = |p: PathBuf| match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p,
    };
    let addr = |what: &str, v: String| -> Result<SocketAddr, ConfigError> {
        v.parse()
            .map_err(|_| invalid(format!("{what} {v:?} is not an IP:port address")))
    };

    let listen = addr(
        "server.listen / LAP_LISTEN",
        env.var("LAP_LISTEN")
            .or(f.server.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
    )?;
    let admin_listen = addr(
        "admin.listen / LAP_ADMIN_LISTEN",
        env.var("LAP_ADMIN_LISTEN")
            .or(f.admin.listen)
            .unwrap_or_else(|| "127.0.0.1:9090".into()),
    )?;
    if listen == admin_listen {
        return Err(invalid("server.listen and admin.listen must differ"));
    }
    let gateway_id = env
        .var("LAP_GATEWAY_ID")
        .or(f.server.gateway_id)
        .unwrap_or_else(|| "lap-gateway".into());
    if lap_auth::AgentId::parse(&gateway_id).is_none() {
        return Err(invalid(format!(
            "server.gateway_id {gateway_id:?} must be 1-128 characters from [A-Za-z0-9._:@/-]"
        )));
    }
    let threads = match env.var("LAP_THREADS") {
        Some(t) => t
            .parse()
            .map_err(|_| invalid(format!("LAP_THREADS {t:?} is not a number")))?,
        None => f.server.threads.unwrap_or(2),
    };
    if threads == 0 || threads > 256 {
        return Err(invalid("server.threads must be 1..=256"));
    }

    let proxy_headers = cli.proxy_headers
        || env_bool(env, "LAP_PROXY_HEADERS")?.unwrap_or(f.server.proxy_headers.unwrap_or(false));
    let allow_list: Vec<String> = match cli
        .forwarded_allow_ips
        .clone()
        .or_else(|| env.var("LAP_FORWARDED_ALLOW_IPS"))
    {
        Some(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
        None => f
            .server
            .forwarded_allow_ips
            .unwrap_or_else(|| vec!["127.0.0.1".into(), "::1".into()]),
    };
    let forwarded_allow_ips = allow_list
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| parse_net(s))
        .collect::<Result<Vec<_>, _>>()?;

    let reload_ms = f.server.reload_interval_ms.unwrap_or(1000);
    if !(50..=3_600_000).contains(&reload_ms) {
        return Err(invalid("server.reload_interval_ms must be 50..=3600000"));
    }
    let run_dir = std::env::temp_dir();
    let pid_file = f
        .server
        .pid_file
        .map(rel)
        .unwrap_or_else(|| run_dir.join(format!("lap-gateway-{}.pid", listen.port())));
    let upgrade_sock = f
        .server
        .upgrade_sock
        .map(rel)
        .unwrap_or_else(|| run_dir.join(format!("lap-gateway-{}.upgrade.sock", listen.port())));

    let agent_header = match f.server.agent_header {
        None => Some("x-lap-agent-id".to_string()),
        Some(h) if h.is_empty() => None,
        Some(h) => Some(header_name(&h, "server.agent_header")?),
    };
    let strip_headers = f
        .server
        .strip_headers
        .unwrap_or_default()
        .iter()
        .map(|h| header_name(h, "server.strip_headers"))
        .collect::<Result<Vec<_>, _>>()?;
    let log_json = match env.var("LAP_LOG_FORMAT").or(f.server.log_format).as_deref() {
        None | Some("json") => true,
        Some("text") => false,
        Some(other) => {
            return Err(invalid(format!(
                "log format {other:?} must be \"json\" or \"text\""
            )))
        }
    };

    let max_request_bytes = match env.var("LAP_MAX_REQUEST_BYTES") {
        Some(v) => v
            .parse()
            .map_err(|_| invalid(format!("LAP_MAX_REQUEST_BYTES {v:?} is not a number")))?,
        None => f
            .limits
            .max_request_bytes
            .unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
    };
    let limits = Limits {
        max_request_bytes,
        max_response_bytes: f.limits.max_response_bytes.unwrap_or(10 * 1024 * 1024),
        max_header_count: f.limits.max_header_count.unwrap_or(100),
        max_header_bytes: f.limits.max_header_bytes.unwrap_or(16 * 1024),
        body_read_timeout: Duration::from_millis(f.limits.body_read_timeout_ms.unwrap_or(30_000)),
    };
    if limits.max_request_bytes == 0 || limits.max_response_bytes == 0 {
        return Err(invalid("byte limits must be positive"));
    }
    if limits.max_header_count == 0 || limits.max_header_count > 256 {
        return Err(invalid("limits.max_header_count must be 1..=256"));
    }

    let api_keys = match (env.var("LAP_API_KEYS_JSON"), env.var("LAP_API_KEYS_FILE")) {
        (Some(json), _) => ApiKeySource::Inline(json),
        (None, Some(p)) => ApiKeySource::File(PathBuf::from(p)),
        (None, None) => match f.auth.api_keys_file {
            Some(p) => ApiKeySource::File(rel(p)),
            None => {
                return Err(invalid(
                    "no API keys configured: set LAP_API_KEYS_FILE, LAP_API_KEYS_JSON or [auth] api_keys_file",
                ))
            }
        },
    };

    // Each key setting remembers whether it came from the environment or this file, so that
    // key errors name what the operator wrote.
    use lap_keys::Setting;
    let var = |name: &'static str| env.var(name).map(|v| Setting::env(name, v));
    let path_var = |name: &'static str| env.var(name).map(|v| Setting::env(name, PathBuf::from(v)));
    let number_var = |name: &'static str| -> Result<_, ConfigError> {
        Ok(env_f64(env, name)?.map(|v| Setting::env(name, v)))
    };
    let keys = lap_keys::KeySettings {
        keyset_json: var("LAP_GATEWAY_KEYSET_JSON"),
        keyset_file: path_var("LAP_GATEWAY_KEYSET_FILE").or(f
            .signing
            .keyset_file
            .map(|p| Setting::file("signing.keyset_file", rel(p)))),
        signing_key_hex: var("LAP_GATEWAY_SIGNING_KEY"),
        signing_key_file: path_var("LAP_GATEWAY_SIGNING_KEY_FILE").or(f
            .signing
            .key_file
            .map(|p| Setting::file("signing.key_file", rel(p)))),
        signing_key_id: var("LAP_GATEWAY_SIGNING_KEY_ID").or(f
            .signing
            .key_id
            .map(|id| Setting::file("signing.key_id", id))),
        allow_ephemeral: env_bool(env, "LAP_ALLOW_EPHEMERAL_SIGNING_KEYS")?
            .unwrap_or(f.signing.allow_ephemeral.unwrap_or(false)),
        signing_cmd: var("LAP_GATEWAY_SIGNING_CMD"),
        public_key_hex: var("LAP_GATEWAY_PUBLIC_KEY_HEX"),
        signing_cmd_timeout: number_var("LAP_GATEWAY_SIGNING_CMD_TIMEOUT_SECONDS")?,
        signer_mode: var("SIGNER_MODE"),
        signer_cmd: var("SIGNER_CMD"),
        signer_timeout: number_var("SIGNER_TIMEOUT_SECONDS")?,
    };

    let log = LogConfig {
        dir: env
            .var("LAP_LOG_DIR")
            .map(PathBuf::from)
            .or(f.log.dir.map(&rel))
            .unwrap_or_else(|| rel(PathBuf::from("lap-data/log"))),
        origin: env
            .var("LAP_LOG_ORIGIN")
            .or(f.log.origin)
            .unwrap_or_else(|| format!("lap-gateway/{gateway_id}")),
        checkpoint_every: f.log.checkpoint_every.unwrap_or(1000),
        checkpoint_interval: Duration::from_millis(f.log.checkpoint_interval_ms.unwrap_or(1000)),
        key_file: env
            .var("LAP_LOG_SIGNING_KEY_FILE")
            .map(PathBuf::from)
            .or(f.log.key_file.map(&rel)),
    };
    if !lap_tlog::note::valid_key_name(&log.origin) {
        return Err(invalid(format!(
            "log.origin {:?} must be non-empty without spaces or '+' (it names the checkpoint key)",
            log.origin
        )));
    }
    if log.checkpoint_every == 0 || log.checkpoint_interval.is_zero() {
        return Err(invalid(
            "log.checkpoint_every and log.checkpoint_interval_ms must be positive",
        ));
    }
    let evidence_required =
        env_bool(env, "LAP_EVIDENCE_REQUIRED")?.unwrap_or(f.evidence.required.unwrap_or(true));
    let external_coprocess = match env
        .var("LAP_SIGNER_PROTOCOL")
        .or(f.signing.external_protocol)
        .as_deref()
    {
        None | Some("oneshot") => false,
        Some("coprocess") => true,
        Some(other) => {
            return Err(invalid(format!(
                "signing.external_protocol {other:?} must be \"oneshot\" or \"coprocess\""
            )))
        }
    };

    let policy_file = env
        .var("LAP_POLICY_FILE")
        .map(PathBuf::from)
        .or(f.policy.file.map(rel));
    let policy_schema = env
        .var("LAP_POLICY_SCHEMA_FILE")
        .map(PathBuf::from)
        .or(f.policy.schema.map(rel));

    let mut tools = BTreeMap::new();
    for (name, t) in f.tools {
        let tool = resolve_tool(&name, t, &limits, &rel)?;
        tools.insert(name, tool);
    }

    Ok(Config {
        source: source.map(Path::to_path_buf),
        listen,
        admin_listen,
        gateway_id,
        threads,
        proxy_headers,
        forwarded_allow_ips,
        upstream_keepalive_pool_size: f.server.upstream_keepalive_pool_size.unwrap_or(1024),
        reload_interval: Duration::from_millis(reload_ms),
        pid_file,
        upgrade_sock,
        agent_header,
        strip_headers,
        log_json,
        limits,
        api_keys,
        keys,
        policy_file,
        policy_schema,
        log,
        evidence_required,
        external_coprocess,
        tools,
    })
}

/// Tool names are path segments and Cedar ids: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn valid_tool_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

fn resolve_tool(
    name: &str,
    t: ToolFile,
    limits: &Limits,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<ToolConfig, ConfigError> {
    let at = |m: String| invalid(format!("tools.{name}: {m}"));
    if !valid_tool_name(name) {
        return Err(at("tool names must match [a-z0-9][a-z0-9_-]{0,63}".into()));
    }
    let ms = |v: Option<u64>, default: u64, what: &str| -> Result<Duration, ConfigError> {
        let v = v.unwrap_or(default);
        if v == 0 || v > 3_600_000 {
            return Err(at(format!("{what} must be 1..=3600000")));
        }
        Ok(Duration::from_millis(v))
    };
    let credential = match t.credential {
        None => None,
        Some(c) => {
            let header = header_name(&c.header, &format!("tools.{name}.credential.header"))?;
            let source = match (c.value_env, c.value_file) {
                (Some(e), None) => SecretSource::Env(e),
                (None, Some(p)) => SecretSource::File(rel(p)),
                _ => {
                    return Err(at(
                        "credential needs exactly one of value_env or value_file".into(),
                    ))
                }
            };
            Some(CredentialConfig {
                header,
                source,
                prefix: c.prefix,
            })
        }
    };
    Ok(ToolConfig {
        name: name.to_string(),
        upstream: t.upstream,
        connect_timeout: ms(t.connect_timeout_ms, 2_000, "connect_timeout_ms")?,
        read_timeout: ms(t.read_timeout_ms, 30_000, "read_timeout_ms")?,
        write_timeout: ms(t.write_timeout_ms, 30_000, "write_timeout_ms")?,
        max_request_bytes: t
            .max_request_bytes
            .unwrap_or(limits.max_request_bytes)
            .min(limits.max_request_bytes),
        max_response_bytes: t.max_response_bytes.unwrap_or(limits.max_response_bytes),
        ca_file: t.ca_file.map(rel),
        sni: t.sni,
        credential,
    })
}

fn header_name(h: &str, what: &str) -> Result<String, ConfigError> {
    http::HeaderName::from_bytes(h.as_bytes())
        .map(|n| n.as_str().to_string())
        .map_err(|_| invalid(format!("{what}: {h:?} is not a valid header name")))
}

fn parse_net(s: &str) -> Result<IpNet, ConfigError> {
    if s == "*" {
        return Err(invalid(
            "forwarded_allow_ips \"*\" would trust every client's X-Forwarded-For; list the proxies (e.g. 127.0.0.1 or 10.0.0.0/8)",
        ));
    }
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| invalid(format!("forwarded_allow_ips: {s:?} is not an IP or CIDR")))
}

fn env_f64(env: &dyn Env, name: &str) -> Result<Option<f64>, ConfigError> {
    env.var(name)
        .map(|v| {
            v.parse()
                .map_err(|_| invalid(format!("{name}={v:?} is not a number")))
        })
        .transpose()
}

fn env_bool(env: &dyn Env, name: &str) -> Result<Option<bool>, ConfigError> {
    match env.var(name).as_deref() {
        None => Ok(None),
        Some("1" | "true" | "yes" | "on") => Ok(Some(true)),
        Some("0" | "false" | "no" | "off") => Ok(Some(false)),
        Some(v) => Err(invalid(format!("{name}={v:?} must be 1/0/true/false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn toml_errors_have_line_and_column() {
        let err = parse("[server]\nlisten = 5\n", Path::new("gw.toml")).unwrap_err();
        assert!(
            err.to_string().contains("gw.toml: line 2, column 10"),
            "{err}"
        );
        let err = parse("[server]\nlistn = \"x\"\n", Path::new("gw.toml")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(err.to_string().contains("listn"), "{err}");
    }

    /// Key errors name the setting as the operator wrote it: the TOML key, or the variable.
    #[test]
    fn key_errors_name_the_toml_key_or_the_variable() {
        let f = parse(
            "[auth]\napi_keys_file = \"keys.json\"\n[signing]\nkey_file = \"no-such.seed\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let c = resolve(
            f,
            None,
            Some(Path::new("/nonexistent-lap")),
            &env(&[]),
            &CliOverrides::default(),
        )
        .unwrap();
        let err = lap_keys::load(&c.keys).unwrap_err().to_string();
        assert!(
            err.starts_with("signing.key_file: cannot read /nonexistent-lap/no-such.seed"),
            "{err}"
        );
        let f = parse(
            "[auth]\napi_keys_file = \"keys.json\"\n[signing]\nkey_file = \"a\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let e = env(&[("LAP_GATEWAY_SIGNING_KEY_FILE", "/nonexistent-lap/b")]);
        let c = resolve(f, None, None, &e, &CliOverrides::default()).unwrap();
        let err = lap_keys::load(&c.keys).unwrap_err().to_string();
        assert!(
            err.starts_with("LAP_GATEWAY_SIGNING_KEY_FILE: cannot read /nonexistent-lap/b"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_and_defaults() {
        let f = parse(
            r#"
            [server]
            listen = "127.0.0.1:7000"
            [auth]
            api_keys_file = "keys.json"
            [tools.weather]
            upstream = "http://127.0.0.1:9000/v1"
            max_request_bytes = 99999999
            [tools.weather.credential]
            header = "Authorization"
            value_env = "WEATHER_TOKEN"
            prefix = "Bearer "
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        let e = env(&[
            ("LAP_MAX_REQUEST_BYTES", "2048"),
            ("LAP_LISTEN", "127.0.0.1:7001"),
        ]);
        let c = resolve(
            f,
            None,
            Some(Path::new("/etc/lap")),
            &e,
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.limits.max_request_bytes, 2048);
        // A tool may lower the global cap but never raise it.
        assert_eq!(c.tools["weather"].max_request_bytes, 2048);
        assert!(
            matches!(&c.api_keys, ApiKeySource::File(p) if p == Path::new("/etc/lap/keys.json"))
        );
        assert_eq!(
            c.tools["weather"].credential.as_ref().unwrap().header,
            "authorization"
        );
    }

    #[test]
    fn rejects_bad_values() {
        let base = env(&[("LAP_API_KEYS_JSON", "{}")]);
        let cases = [
            ("[tools.Bad]\nupstream = \"http://x\"", "tool names"),
            ("[server]\nforwarded_allow_ips = [\"*\"]", "would trust"),
            (
                "[tools.t]\nupstream = \"http://x\"\n[tools.t.credential]\nheader = \"a\"",
                "exactly one",
            ),
            ("[server]\nlisten = \"nope\"", "not an IP:port"),
            ("[admin]\nlisten = \"127.0.0.1:8080\"", "must differ"),
        ];
        for (text, needle) in cases {
            let f = parse(text, Path::new("x.toml")).unwrap();
            let err = resolve(f, None, None, &base, &CliOverrides::default()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} / {needle}");
        }
        let err = resolve(
            ConfigFile::default(),
            None,
            None,
            &env(&[]),
            &CliOverrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no API keys"), "{err}");
    }

    #[test]
    fn cli_proxy_headers() {
        let c = resolve(
            ConfigFile::default(),
            None,
            None,
            &env(&[("LAP_API_KEYS_JSON", "{}")]),
            &CliOverrides {
                proxy_headers: true,
                forwarded_allow_ips: Some("10.0.0.0/8, 127.0.0.1".into()),
            },
        )
        .unwrap();
        assert!(c.proxy_headers);
        assert_eq!(c.forwarded_allow_ips.len(), 2);
    }
}
