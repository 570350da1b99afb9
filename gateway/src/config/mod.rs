//! Configuration: one TOML file plus `LAP_*` environment overrides.
//!
//! | file | what |
//! |---|---|
//! | `file.rs` | the TOML as written: structs that mirror it one to one and refuse unknown keys |
//! | `sources.rs` | where each value comes from: variable, file key or default, and its origin |
//! | `resolve.rs` | every value taken from its source and checked, section by section |
//! | `jwt.rs` | `[auth] public_url`, `[[auth.jwt]]`: the issuers whose bearer JWTs identify agents |
//! | `tls.rs` | `[tls]`, `[mtls]`: the HTTPS data listener, client certificates and the identity they carry |
//! | `state.rs` | `[state]`, `[sessions]`, `[[limits.rate]]`, `[[limits.budget]]`: the state store (its Redis URL a secret) and the limits counted there |
//! | `admin.rs` | `[admin]` authentication: a tokens file, or explicitly none on loopback |
//! | `admin_jwt.rs` | `[[admin.jwt]]`: OIDC tokens for the admin plane, roles from a claim |
//! | `mod.rs` | the resolved [`Config`] the gateway runs with, and [`ConfigError`] |
//!
//! Every refusal names where the value came from — the `LAP_*` variable, the TOML key
//! (`server.listen`, `tools.weather.read_timeout_ms`) or the command-line flag — because that
//! is what the operator has to fix. `docs/configuration.md` is the reference for every key
//! and variable.

mod admin;
mod admin_jwt;
mod file;
mod jwt;
mod resolve;
mod sources;
mod state;
mod tls;

pub use admin::{AdminAccess, AdminConfig, AdminConfigError};
pub use admin_jwt::{AdminJwt, ADMIN_AUDIENCE_PATH};
pub use file::{parse, ConfigFile};
use ipnet::IpNet;
pub use jwt::{secure_url, JwksSource, JwtConfig, JwtIssuer};
pub use state::{
    period, BudgetRule, BudgetWindow, LimitRules, RateRule, RedisUrl, RedisUrlError,
    RedisUrlSource, Scope, Selector, SessionsConfig, StateBackend, StateConfig,
};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use tls::{
    CertIdentity, CertMatch, ClientAuth, IdentityRule, TlsListener, TlsSettings, Unmapped,
};

/// Default request-body cap, as in the seed (`LAP_MAX_REQUEST_BYTES`).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// The resolved configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `[admin]` authentication (tokens file and/or OIDC issuers, or explicitly none on loopback).
    pub admin: AdminConfig,
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
    /// How long a client has to send a complete request header (`[server] header_timeout_ms`).
    pub header_timeout: Duration,
    pub limits: Limits,
    pub admission: Admission,
    pub api_keys: ApiKeySource,
    /// `[auth] public_url` and `[[auth.jwt]]`: bearer JWTs from trusted issuers.
    pub jwt: JwtConfig,
    pub keys: lap_keys::KeySettings,
    pub policy_file: Option<PathBuf>,
    pub policy_schema: Option<PathBuf>,
    pub log: LogConfig,
    /// False only for benchmarking: no receipts and no log (a loud warning at start-up).
    pub evidence_required: bool,
    /// How receipts are made authentic: one signed checkpoint per batch (default) or one
    /// DSSE signature per receipt (`[evidence] mode`, `LAP_EVIDENCE_MODE`).
    pub evidence_mode: lap_evidence::Mode,
    /// External signers: one process per signature (`oneshot`) or a persistent co-process.
    pub external_coprocess: bool,
    /// External signers: requests worked on at once, and how long one waits for its turn
    /// (unset: the defaults of `lap_signing::Limits`).
    pub signer_limits: lap_signing::LimitOverrides,
    pub tools: BTreeMap<String, ToolConfig>,
    pub mcp: McpConfig,
    /// `[state]`: where rate limits, budgets, sessions and replay records are kept.
    pub state: StateConfig,
    /// `[sessions]`.
    pub sessions: SessionsConfig,
    /// `[[limits.rate]]` and `[[limits.budget]]`.
    pub limit_rules: LimitRules,
    /// `[tls]` and `[mtls]` as a transport: the HTTPS listener and client certificates.
    pub tls: TlsSettings,
    /// `[mtls] identity = true`: how a verified client certificate becomes a principal.
    pub cert_identity: Option<CertIdentity>,
}

/// MCP: the servers agents reach at `/mcp/<name>`, and their sessions.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// The key that seals legacy session ids (see `mcp::session`).
    pub session_key: SessionKeyFile,
    /// How long a legacy session id stays valid after `initialize`.
    pub session_ttl: Duration,
    /// Web origins (`scheme://host[:port]`, lower case) whose browsers may call; a request
    /// with any other `Origin` header is refused (DNS rebinding).
    pub allowed_origins: Vec<String>,
    pub servers: BTreeMap<String, ToolConfig>,
}

/// Where the MCP session key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKeyFile {
    /// `[mcp] session_key_file` / `LAP_MCP_SESSION_KEY_FILE`: must exist (replicas share it).
    Configured(PathBuf),
    /// `mcp-session.key` in the log directory, created on first start (one replica).
    Default(PathBuf),
}

/// The transparency log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub origin: String,
    /// Per-receipt mode only (batched mode checkpoints every batch).
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

/// Per-address admission of traffic without a verified identity (`[admission]`, see
/// `pipeline::flood`).
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Refusals without a verified identity one address may cause with a receipt each:
    /// a sustained rate…
    pub unauthenticated_per_minute: u32,
    /// …and a burst.
    pub unauthenticated_burst: u32,
    /// Addresses tracked at once (rate state, and tallies for aggregate receipts); the rest share
    /// one entry (`other`).
    pub max_addresses: usize,
    /// How often the tallies become aggregate denial receipts.
    pub aggregate_interval: Duration,
    /// Unauthenticated denial receipts waiting for the log at once; beyond, refusals are counted
    /// into the aggregate.
    pub max_unauthenticated_receipts: usize,
    /// Open connections per peer address (trusted proxies exempt); 0 = no cap.
    pub max_connections_per_address: usize,
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
    /// Where it is configured (`tools.<name>` or `mcp.servers.<name>`): names it in errors, and
    /// keeps its upstream connection pool its own.
    pub key: String,
    pub upstream: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub ca_file: Option<PathBuf>,
    pub sni: Option<String>,
    pub credential: Option<CredentialConfig>,
    /// What calls must carry against replay (`require_session`, `require_nonce`,
    /// `require_counter`).
    pub replay: Replay,
    /// Scopes a bearer JWT must grant (`required_scopes`); other credentials are not scoped.
    pub required_scopes: Vec<String>,
}

/// What a tool's calls must carry: a session, and in it a fresh nonce and/or a counter above
/// every one before. A nonce or a counter implies a session (they are kept per session).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replay {
    pub session: bool,
    pub nonce: bool,
    pub counter: bool,
}

impl Replay {
    /// These requirements and those of the policies that allowed a call (`@require`).
    pub fn and(self, r: lap_policy::Requires) -> Replay {
        Replay {
            session: self.session || r.session,
            nonce: self.nonce || r.nonce,
            counter: self.counter || r.counter,
        }
    }
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

/// A configuration problem. Messages start with the file and position, or with where the
/// refused value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type errors, with line and column.
    #[error("{path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{origin}: {problem}")]
    Invalid { origin: Origin, problem: Problem },
    #[error("server.listen and admin.listen must differ (both are {0})")]
    SameListener(SocketAddr),
    #[error(
        "no API keys configured: set LAP_API_KEYS_FILE, LAP_API_KEYS_JSON or [auth] api_keys_file"
    )]
    NoApiKeys,
    #[error(transparent)]
    Admin(#[from] AdminConfigError),
}

/// Where a configuration value came from, as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// An environment variable, e.g. `LAP_LISTEN`.
    Env(&'static str),
    /// A configuration-file key, written `section.key`, e.g. `server.listen`.
    Key(String),
    /// A command-line flag, e.g. `--forwarded-allow-ips`.
    Flag(&'static str),
}

impl Origin {
    fn key(key: &str) -> Self {
        Origin::Key(key.to_string())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(name) | Origin::Flag(name) => f.write_str(name),
            Origin::Key(key) => f.write_str(key),
        }
    }
}

/// What is wrong with a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{0:?} is not an IP:port address")]
    NotAnAddress(String),
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0:?} must be 1/0/true/false")]
    NotABool(String),
    #[error("must be {min}..={max}")]
    OutOfRange { min: u64, max: u64 },
    #[error("must be positive")]
    NotPositive,
    #[error("{value:?} must be one of {choices:?}")]
    NotAChoice {
        value: String,
        choices: &'static [&'static str],
    },
    #[error("{0:?} is not a valid header name")]
    HeaderName(String),
    #[error("{0:?} is not an IP or CIDR")]
    NotANetwork(String),
    #[error("\"*\" would trust every client's X-Forwarded-For; list the proxies (e.g. 127.0.0.1 or 10.0.0.0/8)")]
    TrustsEveryone,
    #[error("{0:?} must be 1-128 characters from [A-Za-z0-9._:@/-]")]
    GatewayId(String),
    #[error("{0:?} must be non-empty without spaces or '+' (it names the checkpoint key)")]
    LogOrigin(String),
    #[error("tool names must match [a-z0-9][a-z0-9_-]{{0,63}}")]
    ToolName,
    #[error("credential needs exactly one of value_env or value_file")]
    CredentialSource,
    #[error("{0:?} is not a web origin (scheme://host[:port], nothing else)")]
    WebOrigin(String),
    #[error("{0:?} is already the name of a tool (names label metrics, logs and receipts)")]
    NameTaken(String),
    #[error(
        "backend \"redis\" needs LAP_STATE_REDIS_URL, LAP_STATE_REDIS_URL_FILE or state.url_file"
    )]
    RedisUrlRequired,
    #[error("must be at most 64 characters without white space or control characters")]
    StatePrefix,
    #[error("{0:?} is not a period (a whole number and ms, s, m, h or d: \"1s\", \"5m\")")]
    Period(String),
    #[error("count and burst must be positive and the period at most 366 days")]
    RateLimit,
    #[error(
        "a budget needs at least one of calls, request_bytes, response_bytes, duration_ms, spend"
    )]
    BudgetWithoutLimit,
    #[error("{0:?} is not a JSON pointer (it starts with '/', e.g. \"/amount_cents\")")]
    JsonPointer(String),
    #[error("spend and spend_field go together")]
    SpendField,
    #[error("{0:?} is not a configured tool, MCP server or <server>/<tool>")]
    UnknownTool(String),
    /// `[auth]`/`[[auth.jwt]]` (see `jwt.rs`).
    #[error("{0}")]
    Auth(String),
    #[error("{0} is already another listener's address")]
    ListenerTaken(SocketAddr),
    #[error("listen, cert_file and key_file go together")]
    TlsIncomplete,
    #[error("without the plain listener there must be a TLS listener ([tls] listen)")]
    NoDataListener,
    #[error("client certificates need a TLS listener ([tls] listen)")]
    ClientAuthWithoutListener,
    #[error("client certificates need CA bundles to verify them (mtls.client_ca_files)")]
    ClientAuthWithoutCa,
    #[error("only with mtls.identity = true")]
    IdentityOff,
    #[error("identity from certificates needs mtls.client_ca_files")]
    IdentityWithoutCa,
    #[error("identity from certificates needs client_auth = \"optional\" or \"required\", or mtls.trusted_proxies")]
    IdentityWithoutSource,
    #[error("a forwarded client certificate would be believed from every address; list the proxies (e.g. 127.0.0.1 or 10.0.0.5)")]
    CertHeaderFromEveryone,
    #[error("{0:?} is not a SPIFFE trust domain: {1}")]
    TrustDomain(String, String),
    #[error("trust domain {0:?} is not in mtls.trust_domains")]
    TrustDomainNotListed(String),
    #[error("{0:?} is not a SPIFFE ID: {1}")]
    SpiffeId(String, String),
    #[error("exactly one of spiffe_id, spiffe_prefix or subject (not empty)")]
    OneMatcher,
    #[error("{0:?} already has a meaning (credentials, framing, forwarding or x-lap-*)")]
    ReservedHeader(String),
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
    resolve::resolve(file, path, base.as_deref(), env, cli)
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

#[cfg(test)]
mod tests {
    use super::resolve::resolve;
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
        assert_eq!(c.evidence_mode, lap_evidence::Mode::Batched, "the default");
        let per = env(&[
            ("LAP_API_KEYS_JSON", "{}"),
            ("LAP_EVIDENCE_MODE", "per_receipt"),
        ]);
        let c2 = resolve(
            ConfigFile::default(),
            None,
            None,
            &per,
            &CliOverrides::default(),
        )
        .unwrap();
        assert_eq!(c2.evidence_mode, lap_evidence::Mode::PerReceipt);
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
    fn admission_defaults_file_and_environment() {
        let base = env(&[("LAP_API_KEYS_JSON", "{}")]);
        let none = CliOverrides::default();
        let c = resolve(ConfigFile::default(), None, None, &base, &none).unwrap();
        let a = c.admission;
        assert_eq!(
            (a.unauthenticated_per_minute, a.unauthenticated_burst),
            (60, 100)
        );
        assert_eq!(
            (a.max_addresses, a.max_unauthenticated_receipts),
            (10_000, 64)
        );
        assert_eq!(a.aggregate_interval, Duration::from_secs(10));
        assert_eq!(a.max_connections_per_address, 256);
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        let f = parse(
            "[server]\nheader_timeout_ms = 1500\n[admission]\nunauthenticated_burst = 5\n\
             max_connections_per_address = 0\naggregate_interval_ms = 500\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let e = env(&[
            ("LAP_API_KEYS_JSON", "{}"),
            ("LAP_ADMISSION_UNAUTHENTICATED_BURST", "7"),
            ("LAP_ADMISSION_MAX_ADDRESSES", "3"),
            ("LAP_HEADER_TIMEOUT_MS", "1000"),
        ]);
        let c = resolve(f, None, None, &e, &none).unwrap();
        let a = c.admission;
        assert_eq!((a.unauthenticated_burst, a.max_addresses), (7, 3));
        assert_eq!(a.max_connections_per_address, 0, "0 turns the cap off");
        assert_eq!(a.aggregate_interval, Duration::from_millis(500));
        assert_eq!(c.header_timeout, Duration::from_secs(1));
        for (text, needle) in [
            (
                "[admission]\nunauthenticated_per_minute = 0",
                "admission.unauthenticated_per_minute: must be 1..=1000000",
            ),
            (
                "[admission]\naggregate_interval_ms = 10",
                "admission.aggregate_interval_ms: must be 100..=3600000",
            ),
            (
                "[server]\nheader_timeout_ms = 0",
                "server.header_timeout_ms",
            ),
            ("[admission]\nburst = 1", "unknown field"),
        ] {
            let f = parse(text, Path::new("x.toml"));
            let err = match f {
                Ok(f) => resolve(f, None, None, &base, &none).unwrap_err(),
                Err(e) => e,
            };
            assert!(err.to_string().contains(needle), "{err} / {needle}");
        }
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
            (
                "[evidence]\nmode = \"sometimes\"",
                "evidence.mode: \"sometimes\" must be one of",
            ),
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
    fn refusals_name_what_the_operator_wrote() {
        let base = env(&[("LAP_API_KEYS_JSON", "{}")]);
        let cases = [
            ("[server]\nlisten = \"nope\"", "server.listen: \"nope\" is not an IP:port"),
            ("[server]\nthreads = 0", "server.threads: must be 1..=256"),
            (
                "[tools.t]\nupstream = \"http://x\"\nread_timeout_ms = 0",
                "tools.t.read_timeout_ms: must be 1..=3600000",
            ),
            (
                "[tools.t]\nupstream = \"http://x\"\n[tools.t.credential]\nheader = \"a b\"\nvalue_env = \"X\"",
                "tools.t.credential.header: \"a b\" is not a valid header name",
            ),
            ("[log]\ncheckpoint_every = 0", "log.checkpoint_every: must be positive"),
            (
                "[server]\nlog_format = \"xml\"",
                "server.log_format: \"xml\" must be one of [\"json\", \"text\"]",
            ),
        ];
        for (text, expected) in cases {
            let f = parse(text, Path::new("x.toml")).unwrap();
            let err = resolve(f, None, None, &base, &CliOverrides::default()).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} / {expected}");
        }
        let from_env = |k: &str, v: &str| {
            let mut e = base.clone();
            e.insert(k.to_string(), v.to_string());
            resolve(
                ConfigFile::default(),
                None,
                None,
                &e,
                &CliOverrides::default(),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(from_env("LAP_LISTEN", "nope").starts_with("LAP_LISTEN: "));
        assert!(from_env("LAP_THREADS", "x").starts_with("LAP_THREADS: \"x\" is not a number"));
        assert!(from_env("LAP_PROXY_HEADERS", "maybe").starts_with("LAP_PROXY_HEADERS: "));
        let err = resolve(
            ConfigFile::default(),
            None,
            None,
            &base,
            &CliOverrides {
                proxy_headers: true,
                forwarded_allow_ips: Some("10.0.0.0/8,*".into()),
            },
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--forwarded-allow-ips: \"*\" would trust"),
            "{err}"
        );
    }

    #[test]
    fn state_and_limits() {
        let f = parse(
            r#"
            [state]
            backend = "redis"
            url_file = "redis.url"
            deadline_ms = 80
            [sessions]
            max_per_agent = 4
            [tools.pay]
            upstream = "http://127.0.0.1:9000"
            require_nonce = true
            [[limits.rate]]
            scope = "principal_tool"
            count = 5
            per = "1s"
            tools = ["pay"]
            [[limits.budget]]
            scope = "principal"
            window = "session"
            spend = 1000
            spend_field = "/amount_cents"
            groups = ["finance"]
            "#,
            Path::new("x.toml"),
        )
        .unwrap();
        let e = env(&[
            ("LAP_API_KEYS_JSON", "{}"),
            ("LAP_STATE_PREFIX", "gw1:"),
            ("LAP_STATE_RESERVATION_TTL_SECONDS", "60"),
        ]);
        let c = resolve(
            f,
            None,
            Some(Path::new("/etc/lap")),
            &e,
            &CliOverrides::default(),
        )
        .unwrap();
        assert!(matches!(
            &c.state.backend,
            StateBackend::Redis { url: RedisUrlSource::File(p), .. } if p == Path::new("/etc/lap/redis.url")
        ));
        assert_eq!(c.state.deadline, Duration::from_millis(80));
        assert_eq!(c.state.prefix, "gw1:");
        assert_eq!(c.state.reservation_ttl, Duration::from_secs(60));
        assert_eq!(c.sessions.max_per_agent, 4);
        assert_eq!(c.sessions.default_ttl, Duration::from_secs(3600));
        let pay = &c.tools["pay"].replay;
        assert!(
            pay.nonce && pay.session && !pay.counter,
            "a nonce implies a session"
        );
        assert_eq!(c.limit_rules.rate[0].limit.count, 5);
        assert_eq!(
            c.limit_rules.rate[0].limit.burst, 5,
            "burst defaults to count"
        );
        assert_eq!(c.limit_rules.budget[0].window, BudgetWindow::Session);
        assert_ne!(c.limit_rules.rate[0].id, c.limit_rules.budget[0].id);
        // The embedded default: state.db in the log directory; the URL from the environment
        // wins over the file.
        let c = resolve(
            ConfigFile::default(),
            None,
            None,
            &e,
            &CliOverrides::default(),
        )
        .unwrap();
        assert!(
            matches!(&c.state.backend, StateBackend::Embedded { path } if path.ends_with("lap-data/log/state.db"))
        );
        assert_eq!(c.state.deadline, Duration::from_millis(50));
        let mut r = e.clone();
        r.insert("LAP_STATE_BACKEND".into(), "redis".into());
        r.insert("LAP_STATE_REDIS_URL".into(), "redis://:pw@h:6379/".into());
        let c = resolve(
            ConfigFile::default(),
            None,
            None,
            &r,
            &CliOverrides::default(),
        )
        .unwrap();
        assert!(matches!(
            &c.state.backend,
            StateBackend::Redis {
                url: RedisUrlSource::Env,
                ..
            }
        ));
    }

    #[test]
    fn sessions_defaults_file_and_environment() {
        let base = env(&[("LAP_API_KEYS_JSON", "{}")]);
        let none = CliOverrides::default();
        let c = resolve(ConfigFile::default(), None, None, &base, &none).unwrap();
        let s = c.sessions;
        assert_eq!(
            (s.default_ttl, s.min_ttl, s.max_ttl),
            (
                Duration::from_secs(3600),
                Duration::from_secs(60),
                Duration::from_secs(86_400)
            )
        );
        assert_eq!((s.max_per_agent, s.max_total), (100, 100_000));
        let f = || {
            parse(
                "[sessions]\ndefault_ttl_seconds = 600\nmin_ttl_seconds = 30\n\
                 max_ttl_seconds = 7200\nmax_per_agent = 4\nmax_total = 50\n",
                Path::new("x.toml"),
            )
            .unwrap()
        };
        let c = resolve(f(), None, None, &base, &none).unwrap();
        let s = c.sessions;
        assert_eq!(
            (s.default_ttl, s.min_ttl, s.max_ttl),
            (
                Duration::from_secs(600),
                Duration::from_secs(30),
                Duration::from_secs(7200)
            )
        );
        assert_eq!((s.max_per_agent, s.max_total), (4, 50));
        // Every key has its variable, which wins over the file.
        let e = env(&[
            ("LAP_API_KEYS_JSON", "{}"),
            ("LAP_SESSIONS_DEFAULT_TTL_SECONDS", "900"),
            ("LAP_SESSIONS_MIN_TTL_SECONDS", "10"),
            ("LAP_SESSIONS_MAX_TTL_SECONDS", "1800"),
            ("LAP_SESSIONS_MAX_PER_AGENT", "7"),
            ("LAP_SESSIONS_MAX_TOTAL", "70"),
        ]);
        let c = resolve(f(), None, None, &e, &none).unwrap();
        let s = c.sessions;
        assert_eq!(
            (s.default_ttl, s.min_ttl, s.max_ttl),
            (
                Duration::from_secs(900),
                Duration::from_secs(10),
                Duration::from_secs(1800)
            )
        );
        assert_eq!((s.max_per_agent, s.max_total), (7, 70));
        // Refusals name the variable when the value came from one.
        for (pairs, expected) in [
            (
                vec![("LAP_SESSIONS_MAX_PER_AGENT", "0")],
                "LAP_SESSIONS_MAX_PER_AGENT: must be positive",
            ),
            (
                vec![("LAP_SESSIONS_MAX_TOTAL", "many")],
                "LAP_SESSIONS_MAX_TOTAL: \"many\" is not a number",
            ),
            (
                vec![("LAP_SESSIONS_DEFAULT_TTL_SECONDS", "0")],
                "LAP_SESSIONS_DEFAULT_TTL_SECONDS: must be 1..=31622400",
            ),
            (
                vec![("LAP_SESSIONS_DEFAULT_TTL_SECONDS", "20")],
                "LAP_SESSIONS_DEFAULT_TTL_SECONDS: must be 30..=7200",
            ),
            (
                vec![("LAP_SESSIONS_MIN_TTL_SECONDS", "9000")],
                "LAP_SESSIONS_MIN_TTL_SECONDS: must be 1..=7200",
            ),
            (
                // Both set: the minimum, from the file, is named.
                vec![("LAP_SESSIONS_MAX_TTL_SECONDS", "20")],
                "sessions.min_ttl_seconds: must be 1..=20",
            ),
        ] {
            let mut e = base.clone();
            e.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let err = resolve(f(), None, None, &e, &none).unwrap_err().to_string();
            assert_eq!(err, expected);
        }
        // A maximum set below the default minimum is the value to fix; a default that no
        // longer fits names its key.
        let only = |k: &str, v: &str| {
            let mut e = base.clone();
            e.insert(k.to_string(), v.to_string());
            resolve(ConfigFile::default(), None, None, &e, &none)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            only("LAP_SESSIONS_MAX_TTL_SECONDS", "30"),
            "LAP_SESSIONS_MAX_TTL_SECONDS: must be 60..=31622400"
        );
        assert_eq!(
            only("LAP_SESSIONS_MAX_TTL_SECONDS", "600"),
            "sessions.default_ttl_seconds: must be 60..=600"
        );
    }

    #[test]
    fn refuses_bad_state_and_limits() {
        let base = env(&[("LAP_API_KEYS_JSON", "{}")]);
        let tool = "[tools.pay]\nupstream = \"http://x\"\n";
        let cases = [
            ("[state]\nbackend = \"memcached\"".to_string(), "state.backend: \"memcached\" must be one of"),
            ("[state]\nbackend = \"redis\"".into(), "state.backend: backend \"redis\" needs"),
            ("[state]\ndeadline_ms = 0".into(), "state.deadline_ms: must be 1..=60000"),
            ("[state]\nprefix = \"a b\"".into(), "state.prefix: must be at most 64"),
            ("[sessions]\nmin_ttl_seconds = 600\ndefault_ttl_seconds = 60".into(), "sessions.default_ttl_seconds"),
            ("[[limits.rate]]\nscope = \"everyone\"\ncount = 1\nper = \"1s\"".into(), "limits.rate[0].scope"),
            ("[[limits.rate]]\nscope = \"tool\"\ncount = 1\nper = \"1 sec\"".into(), "limits.rate[0].per: \"1 sec\" is not a period"),
            ("[[limits.rate]]\nscope = \"tool\"\ncount = 0\nper = \"1s\"".into(), "limits.rate[0].count"),
            (format!("{tool}[[limits.rate]]\nscope = \"tool\"\ncount = 1\nper = \"1s\"\ntools = [\"nope\"]"), "limits.rate[0].tools: \"nope\" is not a configured tool"),
            ("[[limits.budget]]\nscope = \"global\"\nwindow = \"day\"\ncalls = 1".into(), "limits.budget[0].scope"),
            ("[[limits.budget]]\nscope = \"tool\"\nwindow = \"week\"\ncalls = 1".into(), "limits.budget[0].window"),
            ("[[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"".into(), "needs at least one"),
            ("[[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\nspend = 5".into(), "limits.budget[0].spend: spend and spend_field"),
            ("[[limits.budget]]\nscope = \"tool\"\nwindow = \"day\"\nspend = 5\nspend_field = \"amount\"".into(), "is not a JSON pointer"),
        ];
        for (text, needle) in cases {
            let f = parse(&text, Path::new("x.toml")).unwrap();
            let err = resolve(f, None, None, &base, &CliOverrides::default()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} / {needle}");
        }
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
