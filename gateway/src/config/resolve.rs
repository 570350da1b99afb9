//! From the file as written to the configuration the gateway runs with: every value taken
//! from where it was set (`sources`) and checked, section by section.

use super::file::{ConfigFile, LogFile, ToolFile};
use super::sources::{Sourced, Sources};
use super::{
    Admission, ApiKeySource, CliOverrides, Config, ConfigError, CredentialConfig, Env, Limits,
    LogConfig, McpConfig, Origin, Problem, SecretSource, SessionKeyFile, ToolConfig,
    DEFAULT_MAX_REQUEST_BYTES,
};
use ipnet::IpNet;
use lap_keys::Setting;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Resolves a parsed file (at `source`, relative paths from `base`) with the environment and
/// the command line.
pub(super) fn resolve(
    f: ConfigFile,
    source: Option<&Path>,
    base: Option<&Path>,
    env: &dyn Env,
    cli: &CliOverrides,
) -> Result<Config, ConfigError> {
    let s = Sources { env, base };
    let server = f.server;
    let listen = address(&s, "LAP_LISTEN", "server.listen", server.listen)?
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080)));
    let admin_listen = address(&s, "LAP_ADMIN_LISTEN", "admin.listen", f.admin.listen)?
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090)));
    let admin = super::admin::admin(
        &s,
        f.admin.tokens_file,
        f.admin.allow_unauthenticated_loopback,
        f.admin.open_probes,
    )?;
    if listen == admin_listen {
        return Err(ConfigError::SameListener(listen));
    }
    let gateway_id = gateway_id(&s, server.gateway_id)?;
    let threads = in_range(
        &s,
        Some("LAP_THREADS"),
        "server.threads",
        server.threads.map(|t| t as u64),
        (2, 1, 256),
    )? as usize;
    let reload_ms = in_range(
        &s,
        None,
        "server.reload_interval_ms",
        server.reload_interval_ms,
        (1000, 50, 3_600_000),
    )?;
    let proxy_headers = cli.proxy_headers
        || s.flag("LAP_PROXY_HEADERS", server.proxy_headers)?
            .unwrap_or(false);
    let forwarded_allow_ips = forwarded_allow_ips(&s, cli, server.forwarded_allow_ips)?;
    // Pingora's pid file and upgrade socket, one per data port (not used by the gateway).
    let run_dir = std::env::temp_dir();
    let pid_file = server
        .pid_file
        .map(|p| s.rel(p))
        .unwrap_or_else(|| run_dir.join(format!("lap-gateway-{}.pid", listen.port())));
    let upgrade_sock = server
        .upgrade_sock
        .map(|p| s.rel(p))
        .unwrap_or_else(|| run_dir.join(format!("lap-gateway-{}.upgrade.sock", listen.port())));
    let agent_header = match server.agent_header {
        None => Some("x-lap-agent-id".to_string()),
        Some(h) if h.is_empty() => None,
        Some(h) => Some(header_name(h, Origin::key("server.agent_header"))?),
    };
    let mut strip_headers = server
        .strip_headers
        .unwrap_or_default()
        .into_iter()
        .map(|h| header_name(h, Origin::key("server.strip_headers")))
        .collect::<Result<Vec<_>, _>>()?;
    let log_json = choice(
        s.text("LAP_LOG_FORMAT", "server.log_format", server.log_format),
        &["json", "text"],
    )?
    .is_none_or(|f| f == "json");
    let header_timeout_ms = in_range(
        &s,
        Some("LAP_HEADER_TIMEOUT_MS"),
        "server.header_timeout_ms",
        server.header_timeout_ms,
        (10_000, 100, 600_000),
    )?;
    let limits = limits(&s, &f.limits)?;
    let admission = admission(&s, &f.admission)?;
    let log = log(&s, f.log, &gateway_id)?;
    let tools = f
        .tools
        .into_iter()
        .map(|(name, t)| Ok((name.clone(), tool(&s, name, t, &limits, TOOL)?)))
        .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
    let mcp = mcp(&s, f.mcp, &limits, &log.dir)?;
    // Names label metrics, logs and receipts: one name, one upstream.
    if let Some(name) = mcp.servers.keys().find(|n| tools.contains_key(*n)) {
        return Err(ConfigError::Invalid {
            origin: Origin::Key(format!("mcp.servers.{name}")),
            problem: Problem::NameTaken(name.clone()),
        });
    }
    let evidence_required = s
        .flag("LAP_EVIDENCE_REQUIRED", f.evidence.required)?
        .unwrap_or(true);
    let evidence_mode = match choice(
        s.text(
            "LAP_EVIDENCE_MODE",
            "evidence.mode",
            f.evidence.mode.clone(),
        ),
        &["batched", "per_receipt"],
    )?
    .as_deref()
    {
        Some("per_receipt") => lap_evidence::Mode::PerReceipt,
        _ => lap_evidence::Mode::Batched,
    };
    let external_coprocess = choice(
        s.text(
            "LAP_SIGNER_PROTOCOL",
            "signing.external_protocol",
            f.signing.external_protocol.clone(),
        ),
        &["oneshot", "coprocess"],
    )?
    .is_some_and(|p| p == "coprocess");
    let signer_limits = signer_limits(&s, &f.signing)?;
    let state = super::state::state(&s, f.state, &log.dir)?;
    let sessions = super::state::sessions(&s, f.sessions)?;
    let limit_rules = super::state::rules(f.limits.rate, f.limits.budget, &tools, &mcp.servers)?;
    let servers: Vec<&str> = mcp.servers.keys().map(String::as_str).collect();
    let jwt = super::jwt::resolve(
        &s,
        f.auth.public_url,
        f.auth.jwt_cache_entries,
        f.auth.jwt,
        &servers,
    )?;
    // With JWT issuers, API keys are optional: none configured means an empty key set.
    let api_keys = match api_keys(&s, f.auth.api_keys_file) {
        Err(ConfigError::NoApiKeys) if jwt.enabled() => {
            ApiKeySource::Inline(r#"{"keys": []}"#.to_string())
        }
        other => other?,
    };
    let admin = super::admin_jwt::resolve(admin, f.admin.jwt, &jwt)?;
    let (tls, cert_identity) = super::tls::resolve(&s, f.tls, f.mtls, &[listen, admin_listen])?;
    // A forwarded client certificate never reaches a tool, whoever sent it.
    strip_headers.push(
        cert_identity
            .as_ref()
            .map_or(super::tls::DEFAULT_CERT_HEADER, |i| &i.cert_header)
            .to_string(),
    );

    Ok(Config {
        source: source.map(Path::to_path_buf),
        listen,
        admin_listen,
        admin,
        threads,
        proxy_headers,
        forwarded_allow_ips,
        upstream_keepalive_pool_size: server.upstream_keepalive_pool_size.unwrap_or(1024),
        reload_interval: Duration::from_millis(reload_ms),
        pid_file,
        upgrade_sock,
        agent_header,
        strip_headers,
        log_json,
        header_timeout: Duration::from_millis(header_timeout_ms),
        limits,
        admission,
        api_keys,
        jwt,
        keys: key_settings(&s, f.signing)?,
        policy_file: s.path("LAP_POLICY_FILE", f.policy.file),
        policy_schema: s.path("LAP_POLICY_SCHEMA_FILE", f.policy.schema),
        log,
        gateway_id,
        evidence_required,
        evidence_mode,
        external_coprocess,
        signer_limits,
        tools,
        mcp,
        state,
        sessions,
        limit_rules,
        tls,
        cert_identity,
    })
}

/// An `IP:port` listen address, if one is set.
fn address(
    s: &Sources<'_>,
    var: &'static str,
    key: &'static str,
    file: Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    s.text(var, key, file)
        .map(|v| {
            v.value
                .parse()
                .map_err(|_| v.refuse(Problem::NotAnAddress(v.value.clone())))
        })
        .transpose()
}

fn gateway_id(s: &Sources<'_>, file: Option<String>) -> Result<String, ConfigError> {
    match s.text("LAP_GATEWAY_ID", "server.gateway_id", file) {
        None => Ok("lap-gateway".into()),
        Some(id) if lap_auth::AgentId::parse(&id.value).is_some() => Ok(id.value),
        Some(id) => Err(id.refuse(Problem::GatewayId(id.value.clone()))),
    }
}

/// A whole number within `min..=max`, `default` when not set.
fn in_range(
    s: &Sources<'_>,
    var: Option<&'static str>,
    key: &'static str,
    file: Option<u64>,
    (default, min, max): (u64, u64, u64),
) -> Result<u64, ConfigError> {
    match s.number(var, key, file)? {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n.value) => Ok(n.value),
        Some(n) => Err(n.refuse(Problem::OutOfRange { min, max })),
    }
}

/// `[signing] max_in_flight` and `queue_timeout_ms` (see `docs/signers.md`).
fn signer_limits(
    s: &Sources<'_>,
    f: &super::file::SigningFile,
) -> Result<lap_signing::LimitOverrides, ConfigError> {
    let ranged = |var, key, file: Option<u64>, (min, max): (u64, u64)| match s.number(
        Some(var),
        key,
        file,
    )? {
        None => Ok(None),
        Some(n) if (min..=max).contains(&n.value) => Ok(Some(n.value)),
        Some(n) => Err(n.refuse(Problem::OutOfRange { min, max })),
    };
    let max_in_flight = ranged(
        "LAP_SIGNER_MAX_IN_FLIGHT",
        "signing.max_in_flight",
        f.max_in_flight,
        (1, 4096),
    )?;
    let queue_timeout = ranged(
        "LAP_SIGNER_QUEUE_TIMEOUT_MS",
        "signing.queue_timeout_ms",
        f.queue_timeout_ms,
        (1, 600_000),
    )?;
    Ok(lap_signing::LimitOverrides {
        max_in_flight: max_in_flight.and_then(|n| usize::try_from(n).ok()),
        queue_timeout: queue_timeout.map(Duration::from_millis),
    })
}

/// One of `choices`, or not set.
fn choice(
    v: Option<Sourced<String>>,
    choices: &'static [&'static str],
) -> Result<Option<String>, ConfigError> {
    match v {
        None => Ok(None),
        Some(v) if choices.contains(&v.value.as_str()) => Ok(Some(v.value)),
        Some(v) => Err(v.refuse(Problem::NotAChoice {
            value: v.value.clone(),
            choices,
        })),
    }
}

fn header_name(h: String, origin: Origin) -> Result<String, ConfigError> {
    http::HeaderName::from_bytes(h.as_bytes())
        .map(|n| n.as_str().to_string())
        .map_err(|_| ConfigError::Invalid {
            origin,
            problem: Problem::HeaderName(h),
        })
}

/// The proxies whose `X-Forwarded-For` is believed: the flag, else the variable, else the file.
fn forwarded_allow_ips(
    s: &Sources<'_>,
    cli: &CliOverrides,
    file: Option<Vec<String>>,
) -> Result<Vec<IpNet>, ConfigError> {
    let (list, origin) = match (
        &cli.forwarded_allow_ips,
        s.env.var("LAP_FORWARDED_ALLOW_IPS"),
    ) {
        (Some(flag), _) => (split_list(flag), Origin::Flag("--forwarded-allow-ips")),
        (None, Some(var)) => (split_list(&var), Origin::Env("LAP_FORWARDED_ALLOW_IPS")),
        (None, None) => (
            file.unwrap_or_else(|| vec!["127.0.0.1".into(), "::1".into()]),
            Origin::key("server.forwarded_allow_ips"),
        ),
    };
    list.into_iter()
        .filter(|s| !s.is_empty())
        .map(|net| {
            let refuse = |problem| ConfigError::Invalid {
                origin: origin.clone(),
                problem,
            };
            if net == "*" {
                return Err(refuse(Problem::TrustsEveryone));
            }
            net.parse::<IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| refuse(Problem::NotANetwork(net)))
        })
        .collect()
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).collect()
}

fn limits(s: &Sources<'_>, f: &super::file::LimitsFile) -> Result<Limits, ConfigError> {
    let positive = |v: Option<Sourced<u64>>, default: u64| match v {
        None => Ok(default),
        Some(n) if n.value > 0 => Ok(n.value),
        Some(n) => Err(n.refuse(Problem::NotPositive)),
    };
    let max_request_bytes = positive(
        s.number(
            Some("LAP_MAX_REQUEST_BYTES"),
            "limits.max_request_bytes",
            f.max_request_bytes,
        )?,
        DEFAULT_MAX_REQUEST_BYTES,
    )?;
    let file_only = |key: &'static str, v: Option<u64>| {
        v.map(|value| Sourced {
            value,
            origin: Origin::key(key),
        })
    };
    let max_response_bytes = positive(
        file_only("limits.max_response_bytes", f.max_response_bytes),
        10 * 1024 * 1024,
    )?;
    let max_header_count = match f.max_header_count {
        None => 100,
        Some(n) if (1..=256).contains(&n) => n,
        Some(_) => {
            return Err(ConfigError::Invalid {
                origin: Origin::key("limits.max_header_count"),
                problem: Problem::OutOfRange { min: 1, max: 256 },
            })
        }
    };
    Ok(Limits {
        max_request_bytes,
        max_response_bytes,
        max_header_count,
        max_header_bytes: f.max_header_bytes.unwrap_or(16 * 1024),
        body_read_timeout: Duration::from_millis(f.body_read_timeout_ms.unwrap_or(30_000)),
    })
}

/// `[admission]` (see `docs/configuration.md` and `pipeline::flood`).
fn admission(s: &Sources<'_>, f: &super::file::AdmissionFile) -> Result<Admission, ConfigError> {
    let ranged = |var, key, file, range| in_range(s, Some(var), key, file, range);
    let per_minute = ranged(
        "LAP_ADMISSION_UNAUTHENTICATED_PER_MINUTE",
        "admission.unauthenticated_per_minute",
        f.unauthenticated_per_minute,
        (60, 1, 1_000_000),
    )?;
    let burst = ranged(
        "LAP_ADMISSION_UNAUTHENTICATED_BURST",
        "admission.unauthenticated_burst",
        f.unauthenticated_burst,
        (100, 1, 1_000_000),
    )?;
    let max_addresses = ranged(
        "LAP_ADMISSION_MAX_ADDRESSES",
        "admission.max_addresses",
        f.max_addresses,
        (10_000, 1, 10_000_000),
    )?;
    let interval_ms = ranged(
        "LAP_ADMISSION_AGGREGATE_INTERVAL_MS",
        "admission.aggregate_interval_ms",
        f.aggregate_interval_ms,
        (10_000, 100, 3_600_000),
    )?;
    let receipts = ranged(
        "LAP_ADMISSION_MAX_UNAUTHENTICATED_RECEIPTS",
        "admission.max_unauthenticated_receipts",
        f.max_unauthenticated_receipts,
        (64, 1, 65_536),
    )?;
    let connections = ranged(
        "LAP_ADMISSION_MAX_CONNECTIONS_PER_ADDRESS",
        "admission.max_connections_per_address",
        f.max_connections_per_address,
        (256, 0, 1_000_000),
    )?;
    // Every bound above fits the narrower types.
    let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(Admission {
        unauthenticated_per_minute: small(per_minute),
        unauthenticated_burst: small(burst),
        max_addresses: size(max_addresses),
        aggregate_interval: Duration::from_millis(interval_ms),
        max_unauthenticated_receipts: size(receipts),
        max_connections_per_address: size(connections),
    })
}

fn api_keys(s: &Sources<'_>, file: Option<PathBuf>) -> Result<ApiKeySource, ConfigError> {
    match (
        s.env.var("LAP_API_KEYS_JSON"),
        s.env.var("LAP_API_KEYS_FILE"),
    ) {
        (Some(json), _) => Ok(ApiKeySource::Inline(json)),
        (None, Some(p)) => Ok(ApiKeySource::File(PathBuf::from(p))),
        (None, None) => file
            .map(|p| ApiKeySource::File(s.rel(p)))
            .ok_or(ConfigError::NoApiKeys),
    }
}

/// The signing-key settings, each remembering whether it came from the environment or the
/// file, so that key errors name what the operator wrote.
fn key_settings(
    s: &Sources<'_>,
    f: super::file::SigningFile,
) -> Result<lap_keys::KeySettings, ConfigError> {
    let var = |name: &'static str| s.env.var(name).map(|v| Setting::env(name, v));
    let path = |name: &'static str, key: &'static str, file: Option<PathBuf>| match s.env.var(name)
    {
        Some(v) => Some(Setting::env(name, PathBuf::from(v))),
        None => file.map(|p| Setting::file(key, s.rel(p))),
    };
    Ok(lap_keys::KeySettings {
        keyset_json: var("LAP_GATEWAY_KEYSET_JSON"),
        keyset_file: path(
            "LAP_GATEWAY_KEYSET_FILE",
            "signing.keyset_file",
            f.keyset_file,
        ),
        signing_key_hex: var("LAP_GATEWAY_SIGNING_KEY"),
        signing_key_file: path(
            "LAP_GATEWAY_SIGNING_KEY_FILE",
            "signing.key_file",
            f.key_file,
        ),
        signing_key_id: var("LAP_GATEWAY_SIGNING_KEY_ID")
            .or(f.key_id.map(|id| Setting::file("signing.key_id", id))),
        allow_ephemeral: s
            .flag("LAP_ALLOW_EPHEMERAL_SIGNING_KEYS", f.allow_ephemeral)?
            .unwrap_or(false),
        signing_cmd: var("LAP_GATEWAY_SIGNING_CMD"),
        public_key_hex: var("LAP_GATEWAY_PUBLIC_KEY_HEX"),
        signing_cmd_timeout: s.seconds("LAP_GATEWAY_SIGNING_CMD_TIMEOUT_SECONDS")?,
        signer_mode: var("SIGNER_MODE"),
        signer_cmd: var("SIGNER_CMD"),
        signer_timeout: s.seconds("SIGNER_TIMEOUT_SECONDS")?,
    })
}

fn log(s: &Sources<'_>, f: LogFile, gateway_id: &str) -> Result<LogConfig, ConfigError> {
    let origin = s
        .text("LAP_LOG_ORIGIN", "log.origin", f.origin)
        .unwrap_or_else(|| Sourced {
            value: format!("lap-gateway/{gateway_id}"),
            origin: Origin::key("server.gateway_id"),
        });
    if !lap_tlog::note::valid_key_name(&origin.value) {
        return Err(origin.refuse(Problem::LogOrigin(origin.value.clone())));
    }
    let positive = |key: &'static str, v: Option<u64>, default: u64| match v {
        None => Ok(default),
        Some(0) => Err(ConfigError::Invalid {
            origin: Origin::key(key),
            problem: Problem::NotPositive,
        }),
        Some(n) => Ok(n),
    };
    Ok(LogConfig {
        dir: s
            .path("LAP_LOG_DIR", f.dir)
            .unwrap_or_else(|| s.rel(PathBuf::from("lap-data/log"))),
        origin: origin.value,
        checkpoint_every: positive("log.checkpoint_every", f.checkpoint_every, 1000)?,
        checkpoint_interval: Duration::from_millis(positive(
            "log.checkpoint_interval_ms",
            f.checkpoint_interval_ms,
            1000,
        )?),
        key_file: s.path("LAP_LOG_SIGNING_KEY_FILE", f.key_file),
    })
}

/// How an upstream section (`[tools.*]`, `[mcp.servers.*]`) is resolved.
#[derive(Clone, Copy)]
struct UpstreamKind {
    /// The TOML table it sits in.
    section: &'static str,
    /// Default read timeout: an MCP response may be an event stream quiet for a while.
    read_timeout_ms: u64,
}

const TOOL: UpstreamKind = UpstreamKind {
    section: "tools",
    read_timeout_ms: 30_000,
};
const MCP_SERVER: UpstreamKind = UpstreamKind {
    section: "mcp.servers",
    read_timeout_ms: 300_000,
};

fn tool(
    s: &Sources<'_>,
    name: String,
    t: ToolFile,
    limits: &Limits,
    kind: UpstreamKind,
) -> Result<ToolConfig, ConfigError> {
    let section = kind.section;
    let at = |key: &str, problem| ConfigError::Invalid {
        origin: Origin::Key(format!("{section}.{name}{key}")),
        problem,
    };
    if !super::valid_tool_name(&name) {
        return Err(at("", Problem::ToolName));
    }
    let ms = |v: Option<u64>, default: u64, key: &str| -> Result<Duration, ConfigError> {
        match v.unwrap_or(default) {
            v @ 1..=3_600_000 => Ok(Duration::from_millis(v)),
            _ => Err(at(
                key,
                Problem::OutOfRange {
                    min: 1,
                    max: 3_600_000,
                },
            )),
        }
    };
    let credential = match t.credential {
        None => None,
        Some(c) => {
            let header = header_name(
                c.header,
                Origin::Key(format!("{section}.{name}.credential.header")),
            )?;
            let source = match (c.value_env, c.value_file) {
                (Some(e), None) => SecretSource::Env(e),
                (None, Some(p)) => SecretSource::File(s.rel(p)),
                _ => return Err(at(".credential", Problem::CredentialSource)),
            };
            Some(CredentialConfig {
                header,
                source,
                prefix: c.prefix,
            })
        }
    };
    let nonce = t.require_nonce.unwrap_or(false);
    let counter = t.require_counter.unwrap_or(false);
    let replay = super::Replay {
        session: t.require_session.unwrap_or(false) || nonce || counter,
        nonce,
        counter,
    };
    let required_scopes = t.required_scopes.unwrap_or_default();
    if let Some(bad) = required_scopes.iter().find(|sc| {
        sc.is_empty()
            || !sc
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    }) {
        return Err(at(
            ".required_scopes",
            Problem::Auth(format!("{bad:?} is not a scope (RFC 6749 scope-token)")),
        ));
    }
    Ok(ToolConfig {
        replay,
        required_scopes,
        connect_timeout: ms(t.connect_timeout_ms, 2_000, ".connect_timeout_ms")?,
        read_timeout: ms(t.read_timeout_ms, kind.read_timeout_ms, ".read_timeout_ms")?,
        write_timeout: ms(t.write_timeout_ms, 30_000, ".write_timeout_ms")?,
        // A tool may lower the global request cap, never raise it.
        max_request_bytes: t
            .max_request_bytes
            .unwrap_or(limits.max_request_bytes)
            .min(limits.max_request_bytes),
        max_response_bytes: t.max_response_bytes.unwrap_or(limits.max_response_bytes),
        ca_file: t.ca_file.map(|p| s.rel(p)),
        sni: t.sni,
        credential,
        upstream: t.upstream,
        key: format!("{section}.{name}"),
        name,
    })
}

/// `[mcp]`: the MCP servers and how agents reach them.
fn mcp(
    s: &Sources<'_>,
    f: super::file::McpFile,
    limits: &Limits,
    log_dir: &Path,
) -> Result<McpConfig, ConfigError> {
    let servers = f
        .servers
        .into_iter()
        .map(|(name, t)| Ok((name.clone(), tool(s, name, t, limits, MCP_SERVER)?)))
        .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
    let session_key_file = s.path("LAP_MCP_SESSION_KEY_FILE", f.session_key_file);
    let ttl = match f.session_ttl_secs {
        None => 12 * 3600,
        Some(n @ 60..=2_592_000) => n,
        Some(_) => {
            return Err(ConfigError::Invalid {
                origin: Origin::key("mcp.session_ttl_secs"),
                problem: Problem::OutOfRange {
                    min: 60,
                    max: 2_592_000,
                },
            })
        }
    };
    let allowed_origins = f
        .allowed_origins
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            web_origin(&o).ok_or(ConfigError::Invalid {
                origin: Origin::key("mcp.allowed_origins"),
                problem: Problem::WebOrigin(o),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(McpConfig {
        session_key: match session_key_file {
            Some(path) => SessionKeyFile::Configured(path),
            None => SessionKeyFile::Default(log_dir.join("mcp-session.key")),
        },
        session_ttl: Duration::from_secs(ttl),
        allowed_origins,
        servers,
    })
}

/// A web origin as browsers send it (`scheme://host[:port]`, lower case), or `None`.
pub fn web_origin(text: &str) -> Option<String> {
    let uri: http::Uri = text.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?;
    let bare = uri
        .path_and_query()
        .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/");
    (bare
        && text.len() == scheme.len() + 3 + authority.as_str().len()
        && !authority.as_str().contains('@'))
    .then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
}
