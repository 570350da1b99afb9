//! Start-up: load everything, fail fast on any problem, then hand over to Pingora.

use crate::admin::AdminApp;
use crate::config::{self, CliOverrides, Config, ProcessEnv};
use crate::evidence::Evidence;
use crate::metrics::Metrics;
use crate::pipeline::Gateway;
use crate::state::{self, LiveState, Published};
use crate::tools::{Catalog, Tool};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// An extra service run next to the gateway (the quickstart's example tool).
pub type ExtraService = Box<dyn pingora::services::ServiceWithDependents>;

/// Loads the configuration and runs until shutdown. Exit code 2 = refused to start.
pub fn run(path: Option<&Path>, cli: &CliOverrides, extra: Option<ExtraService>) -> ExitCode {
    let config = match config::load(path, &ProcessEnv, cli) {
        Ok(c) => c,
        Err(e) => return refuse(&e.to_string()),
    };
    let _log_guard = init_logging(config.log_json);
    match start(config, extra) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => refuse(&msg),
    }
}

/// A random id for this process, published in `/v1/health`. The admin plane's `/readyz` asks
/// the data port for it, so "ready" means the data listener is this process's, not merely that
/// something answers on the port.
#[allow(
    clippy::expect_used,
    reason = "first called at start-up; without randomness nothing else (request ids, receipts) works either"
)]
pub fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let mut raw = [0u8; 12];
        // Start-up only: without randomness nothing else (request ids, receipts) works either.
        getrandom::getrandom(&mut raw).expect("the OS random source is available");
        hex::encode(raw)
    })
}

/// Fails fast, with the address and the reason, when a listener address cannot be bound.
/// Pingora would otherwise retry a taken port for a long while and then stop only the service
/// thread, leaving a process that looks alive but serves nothing on that port.
fn check_bindable(what: &str, addr: std::net::SocketAddr) -> Result<(), String> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))
}

/// How the active key signs, as receipts name it.
fn signer_mode(key: &lap_keys::KeyEntry, coprocess: bool) -> &'static str {
    match key.material {
        lap_keys::KeyMaterial::Seed(_) => "in_process",
        lap_keys::KeyMaterial::External { .. } if coprocess => "coprocess",
        lap_keys::KeyMaterial::External { .. } => "external",
        lap_keys::KeyMaterial::VerifyOnly => "none",
    }
}

/// The bodies of `/v1/health` and `/v1/keys` (public keys with their lifecycle, and the log's
/// checkpoint key) for a keyset.
pub fn publish(
    config: &Config,
    keyset: &lap_keys::Keyset,
    evidence: Option<&Evidence>,
) -> Published {
    let log = evidence.map(|e| (e.ledger().origin().to_string(), e.ledger().log_vkey()));
    publish_with_log(config, keyset, log)
}

/// [`publish`] with the log's origin and verifier key given directly (the offline exporter
/// has no running ledger).
pub fn publish_with_log(
    config: &Config,
    keyset: &lap_keys::Keyset,
    log: Option<(String, String)>,
) -> Published {
    let active = keyset.active();
    let health = serde_json::json!({
        "status": "healthy",
        "gateway_id": config.gateway_id,
        "instance": instance_id(),
        "crypto_available": true,
        "signing": {
            "key_id": active.kid,
            "source": keyset.source().as_str(),
            "ephemeral": keyset.is_ephemeral(),
            "mode": signer_mode(active, config.external_coprocess),
        },
        "evidence": {
            "required": config.evidence_required,
            "log_origin": log.as_ref().map(|(origin, _)| origin),
        },
    });
    let log = log.map(|(origin, vkey)| lap_keys::LogKey { origin, vkey });
    let keys = lap_keys::TrustDocument::new(keyset, log);
    Published {
        health: health.to_string().into(),
        keys: keys.to_json().into(),
    }
}

fn refuse(msg: &str) -> ExitCode {
    eprintln!("lap-gateway: refusing to start: {msg}");
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

/// Everything loaded and validated before any listener opens.
pub struct Loaded {
    pub config: Arc<Config>,
    pub keyset: lap_keys::Keyset,
    pub tools: Catalog,
    pub metrics: Arc<Metrics>,
    pub live: Arc<LiveState>,
}

/// Loads signing keys, tools, API keys and policy. Any error refuses start-up.
pub fn load(config: Config) -> Result<Loaded, String> {
    let keyset = lap_keys::load(&config.keys).map_err(|e| e.to_string())?;
    let mut tools = Catalog::new();
    for (name, t) in &config.tools {
        let tool = Tool::prepare(t, &ProcessEnv).map_err(|e| e.to_string())?;
        tools.insert(name.clone(), Arc::new(tool));
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    let live = Arc::new(LiveState::load(&config, &metrics).map_err(|e| e.to_string())?);
    Ok(Loaded {
        config: Arc::new(config),
        keyset,
        tools,
        metrics,
        live,
    })
}

fn start(config: Config, extra: Option<ExtraService>) -> Result<(), String> {
    check_bindable("server.listen", config.listen)?;
    check_bindable("admin.listen", config.admin_listen)?;
    let Loaded {
        config,
        keyset,
        tools,
        metrics,
        live,
    } = load(config)?;

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
    live.published
        .store(Arc::new(publish(&config, &keyset, evidence.as_deref())));
    let on_keyset: state::KeysetHook = {
        let (config, live, evidence) = (config.clone(), live.clone(), evidence.clone());
        Box::new(move |keyset: lap_keys::Keyset| {
            let active = keyset.active();
            if let Some(ev) = &evidence {
                let signer = lap_signing::for_key(active, config.external_coprocess)
                    .ok_or_else(|| format!("active key {:?} cannot sign", active.kid))?;
                ev.ledger().set_signer(lap_evidence::SignerSlot {
                    signer,
                    ephemeral: keyset.is_ephemeral(),
                });
            }
            live.published
                .store(Arc::new(publish(&config, &keyset, evidence.as_deref())));
            tracing::info!(active_kid = %active.kid, keys = keyset.keys().count(), "keyset reloaded");
            Ok(())
        })
    };

    let sighup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, sighup.clone())
        .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    state::spawn_watcher(
        config.clone(),
        live.clone(),
        metrics.clone(),
        sighup,
        on_keyset,
    )
    .map_err(|e| format!("cannot start the reload thread: {e}"))?;

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
    );
    let mut data = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "lap-data-plane",
    );
    data.add_tcp(&config.listen.to_string());

    let mut admin = Service::new(
        "lap-admin-plane".to_string(),
        AdminApp {
            metrics,
            live,
            gateway_id: config.gateway_id.clone(),
            evidence,
            readiness: crate::admin::Readiness::new(config.listen, instance_id()),
        },
    );
    admin.add_tcp(&config.admin_listen.to_string());
    admin.threads = Some(1);

    tracing::info!(
        listen = %config.listen,
        admin = %config.admin_listen,
        tools = config.tools.len(),
        key_id = %active.kid,
        "lap-gateway starting"
    );
    server.add_service(data);
    server.add_service(admin);
    if let Some(svc) = extra {
        server.add_boxed_service(svc);
    }
    server.run_forever()
}
