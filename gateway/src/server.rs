//! Start-up: load everything, fail fast on any problem, then hand over to Pingora.
//!
//! Order: configuration → listeners bindable → signing keys, tools, metrics → the receipt log
//! (evidence) → the state store (`[state]`; Redis must answer) → the public documents → API keys and policy → the reload watcher → the data and
//! admin services. Any failure refuses start-up with exit code 2 and one line saying why; the
//! gateway never serves on half a configuration.

use crate::admin::auth::AdminAuth;
use crate::admin::{AdminApp, Readiness};
use crate::config::{self, CliOverrides, Config, ConfigError, ProcessEnv, SessionKeyFile};
use crate::documents::Publisher;
use crate::evidence::{self, Evidence, SetupError};
use crate::live::{self, LiveState, LoadError};
use crate::mcp::session::SessionKey;
use crate::metrics::Metrics;
use crate::pipeline::flood::AggregateService;
use crate::pipeline::limits::Limiter;
use crate::pipeline::mcp::McpRuntime;
use crate::pipeline::Gateway;
use crate::state::StateService;
use crate::tools::{Catalog, Tool, ToolError};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// An extra service run next to the gateway (the quickstart's example tool and MCP server).
pub type ExtraService = Box<dyn pingora::services::ServiceWithDependents>;

/// Why the gateway refused to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Keys(#[from] lap_keys::KeyError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Live(#[from] LoadError),
    #[error(transparent)]
    Evidence(#[from] SetupError),
    #[error("no system randomness: {0}")]
    Random(getrandom::Error),
    #[error("MCP session key: {0}")]
    McpSessionKey(#[from] crate::mcp::session::SessionKeyError),
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error("cannot start the reload thread: {0}")]
    Watcher(#[source] std::io::Error),
    #[error(transparent)]
    State(#[from] crate::state::StateSetupError),
    #[error(transparent)]
    Jwt(#[from] crate::jwks::SetupError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::material::MaterialError),
    #[error("TLS listener: {0}")]
    TlsListener(String),
    #[error(transparent)]
    Admin(#[from] crate::config::AdminConfigError),
    #[error("admin tokens: {0}")]
    AdminTokens(#[from] crate::admin::auth::TokensLoadError),
}

/// Loads the configuration and runs until shutdown. Exit code 2 = refused to start.
pub fn run(path: Option<&Path>, cli: &CliOverrides, extra: Vec<ExtraService>) -> ExitCode {
    let config = match config::load(path, &ProcessEnv, cli) {
        Ok(c) => c,
        Err(e) => return refuse(&e.into()),
    };
    let _log_guard = init_logging(config.log_json);
    match start(config, extra) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => refuse(&e),
    }
}

fn refuse(e: &StartError) -> ExitCode {
    eprintln!("lap-gateway: refusing to start: {e}");
    ExitCode::from(2)
}

fn init_logging(json: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Log lines are written by a background thread so request threads never wait on a write
    // to stderr; when it falls behind, callers wait rather than lines being dropped.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let installed = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A second initialisation (quickstart) keeps the first subscriber.
    installed.ok().map(|()| guard)
}

/// Fails fast, with the address and the reason, when a listener address cannot be bound.
/// Pingora would otherwise retry a taken port for a long while and then stop only the service
/// thread, leaving a process that looks alive but serves nothing on that port.
fn check_bindable(what: &'static str, addr: SocketAddr) -> Result<(), StartError> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// A random id for this process (see `documents::Publisher`).
fn instance_id() -> Result<String, StartError> {
    let mut raw = [0u8; 12];
    getrandom::getrandom(&mut raw).map_err(StartError::Random)?;
    Ok(hex::encode(raw))
}

/// A catalog of upstreams: every configured tool (or MCP server) prepared (URL, credential,
/// CA).
fn catalog(
    upstreams: &std::collections::BTreeMap<String, config::ToolConfig>,
) -> Result<Catalog, StartError> {
    let mut tools = Catalog::new();
    for (name, t) in upstreams {
        tools.insert(name.clone(), Arc::new(Tool::prepare(t, &ProcessEnv)?));
    }
    Ok(tools)
}

/// The MCP servers, and the key of their sessions: the configured file (which must exist:
/// replicas share it), or `mcp-session.key` in the log directory, created on first start.
/// Without MCP servers no key file is touched.
fn mcp_runtime(config: &Config) -> Result<McpRuntime, StartError> {
    let mcp = &config.mcp;
    let sessions = if mcp.servers.is_empty() {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).map_err(StartError::Random)?;
        SessionKey::from_bytes(&key)
            .map_err(|_| StartError::Random(getrandom::Error::UNSUPPORTED))?
    } else {
        match &mcp.session_key {
            SessionKeyFile::Configured(path) => SessionKey::load(path, false)?,
            SessionKeyFile::Default(path) => SessionKey::load(path, true)?,
        }
    };
    Ok(McpRuntime {
        servers: catalog(&mcp.servers)?,
        sessions,
        session_ttl: mcp.session_ttl,
        allowed_origins: mcp.allowed_origins.clone(),
    })
}

fn start(config: Config, extra: Vec<ExtraService>) -> Result<(), StartError> {
    config.admin.startup_check(config.admin_listen)?;
    check_bindable("server.listen", config.listen)?;
    check_bindable("admin.listen", config.admin_listen)?;
    if let Some(l) = &config.tls.listener {
        check_bindable("tls.listen", l.listen)?;
    }
    let config = Arc::new(config);
    let keyset = lap_keys::load(&config.keys)?;
    let tools = catalog(&config.tools)?;
    let mcp = mcp_runtime(&config)?;
    let metrics = Arc::new(Metrics::new()?);
    let tls_metrics = Arc::new(crate::tls::TlsMetrics::new()?);
    metrics.register(tls_metrics.collectors())?;
    let tls = Arc::new(crate::tls::reload::TlsMaterial::load(
        &config.tls,
        tls_metrics.clone(),
    )?);
    let api_keys = live::load_keys(&config.api_keys)?;
    let policy = live::load_policy(&config)?;

    let active = keyset.active();
    if keyset.is_ephemeral() {
        tracing::warn!(
            key_id = %active.kid,
            "EPHEMERAL signing key (LAP_ALLOW_EPHEMERAL_SIGNING_KEYS=1): for development only; \
             evidence signed with it cannot be verified after this process exits"
        );
    }
    let evidence = if config.evidence_required {
        Some(Arc::new(Evidence::open(&config, &keyset, metrics.clone())?))
    } else {
        tracing::warn!(
            "EVIDENCE DISABLED ([evidence] required = false): calls are forwarded without \
             receipts or log entries. For benchmarking only; never in production."
        );
        None
    };
    let state = Arc::new(StateService::open(
        &config.state,
        &ProcessEnv,
        Some(metrics.state_observer()),
    )?);
    let limiter = Arc::new(Limiter::new(
        state.clone(),
        config.limit_rules.clone(),
        config.sessions,
        metrics.clone(),
    ));
    tracing::info!(
        backend = state.backend_name(),
        rate_limits = config.limit_rules.rate.len(),
        budgets = config.limit_rules.budget.len(),
        "state store open"
    );
    let publisher = Publisher::new(
        config.clone(),
        instance_id()?,
        evidence.as_ref().map(|e| lap_keys::LogKey {
            origin: e.ledger().origin().to_string(),
            vkey: e.ledger().log_vkey(),
        }),
    );
    let readiness = Readiness::new(config.listen, publisher.instance().to_string());
    let readiness = match &config.tls.listener {
        Some(l) if !config.tls.plain_listener => readiness.over_tls(
            l.listen,
            tls.clone(),
            config.tls.client_auth == config::ClientAuth::Required,
        ),
        _ => readiness,
    };
    let live = Arc::new(LiveState::new(
        api_keys,
        policy,
        publisher.publish(&keyset),
        &metrics,
    ));

    let on_keyset: live::KeysetHook = {
        let (config, live, evidence) = (config.clone(), live.clone(), evidence.clone());
        Arc::new(move |keyset: lap_keys::Keyset| {
            let active = keyset.active();
            if let Some(ev) = &evidence {
                // The signer replaced here is dropped once the receipts in flight with it are
                // done; a co-process then goes with it (see `lap_signing::coprocess`).
                let signer =
                    evidence::signer_for(active, config.external_coprocess, config.signer_limits)?;
                ev.ledger().set_signer(lap_evidence::SignerSlot {
                    signer,
                    ephemeral: keyset.is_ephemeral(),
                });
            }
            live.published.store(Arc::new(publisher.publish(&keyset)));
            tracing::info!(active_kid = %active.kid, keys = keyset.keys().count(), "keyset reloaded");
            Ok(())
        })
    };
    let sighup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, sighup.clone())
        .map_err(StartError::Signal)?;
    live::spawn_watcher(
        config.clone(),
        live.clone(),
        metrics.clone(),
        sighup,
        on_keyset.clone(),
    )
    .map_err(StartError::Watcher)?;
    tls_metrics.expiry.watch_keys(live.clone());
    crate::tls::reload::spawn_watcher(tls.clone(), config.reload_interval)
        .map_err(StartError::Watcher)?;
    let jwt = crate::jwks::JwtRuntime::new(&config.jwt, &config.admin.jwt, &metrics)?;
    let admin_auth = Arc::new(AdminAuth::new(
        config.admin.clone(),
        jwt.clone(),
        metrics.clone(),
    )?);
    let admin_sighup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, admin_sighup.clone())
        .map_err(StartError::Signal)?;
    crate::admin::watch::spawn(admin_auth.clone(), config.reload_interval, admin_sighup)
        .map_err(StartError::Watcher)?;

    let mut conf = ServerConf {
        threads: config.threads,
        upstream_keepalive_pool_size: config.upstream_keepalive_pool_size,
        pid_file: config.pid_file.display().to_string(),
        upgrade_sock: config.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    conf.grace_period_seconds = Some(1);
    conf.graceful_shutdown_timeout_seconds = Some(5);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let gateway = Gateway::new(
        config.clone(),
        tools,
        live.clone(),
        metrics.clone(),
        evidence.clone(),
        mcp,
        limiter,
    )
    .with_jwt(jwt.clone())
    .with_tls(tls.clone());
    let aggregates = pingora::services::background::background_service(
        "lap-aggregate-receipts",
        AggregateService {
            flood: gateway.flood(),
            evidence: evidence.clone(),
            live: live.clone(),
        },
    );
    let mut data = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "lap-data-plane",
    );
    if config.tls.plain_listener {
        data.add_tcp(&config.listen.to_string());
    }
    if let Some(l) = &config.tls.listener {
        let settings = crate::tls::listener_settings(&config.tls, &tls)
            .map_err(|e| StartError::TlsListener(e.to_string()))?;
        data.add_tls_with_settings(&l.listen.to_string(), None, settings);
    }

    let mut admin = Service::new(
        "lap-admin-plane".to_string(),
        AdminApp {
            metrics,
            live,
            gateway_id: config.gateway_id.clone(),
            evidence,
            readiness,
            state,
            auth: admin_auth,
            config: config.clone(),
            on_keyset,
            tls: tls.clone(),
        },
    );
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);

    tracing::info!(
        listen = %config.listen,
        plain = config.tls.plain_listener,
        tls = ?config.tls.listener.as_ref().map(|l| l.listen),
        client_auth = ?config.tls.client_auth,
        cert_identity = config.cert_identity.is_some(),
        admin = %config.admin_listen,
        tools = config.tools.len(),
        key_id = %active.kid,
        "lap-gateway starting"
    );
    server.add_service(data);
    server.add_service(admin);
    server.add_service(aggregates);
    if let Some(jwt) = jwt {
        server.add_service(pingora::services::background::background_service(
            "lap-jwks",
            crate::jwks::JwksService(jwt),
        ));
    }
    for svc in extra {
        server.add_boxed_service(svc);
    }
    server.run(pingora::server::RunArgs::default());
    // Pingora has drained and stopped every service (SIGTERM, SIGINT or SIGQUIT): nothing signs
    // any more. Signer processes run in their own process groups, out of reach of terminal
    // signals, so that they serve the calls still draining; now they go, with everything they
    // started, instead of outliving the gateway.
    let killed = lap_signing::shutdown();
    tracing::info!(signer_processes = killed, "lap-gateway stopped");
    std::process::exit(0)
}
