//! `lap-gateway check-config`: validate everything the gateway would load, report every problem.

use crate::config::{self, CliOverrides, ProcessEnv};
use crate::evidence::SetupError;
use crate::live;
use crate::tools::Tool;
use std::path::Path;
use std::process::ExitCode;

pub fn check(path: Option<&Path>, cli: &CliOverrides) -> ExitCode {
    let config = match config::load(path, &ProcessEnv, cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut errors = Vec::new();
    let mut notes = Vec::new();

    match lap_keys::load(&config.keys) {
        Ok(ks) => notes.push(format!(
            "signing key {:?} from {}{}",
            ks.active_kid(),
            ks.source().as_str(),
            if ks.is_ephemeral() {
                " (EPHEMERAL: development only)"
            } else {
                ""
            }
        )),
        Err(e) => errors.push(format!("signing key: {e}")),
    }
    let upstreams = config
        .tools
        .iter()
        .map(|(n, t)| ("tool", n, t))
        .chain(config.mcp.servers.iter().map(|(n, t)| ("MCP server", n, t)));
    for (kind, name, t) in upstreams {
        match Tool::prepare(t, &ProcessEnv) {
            Ok(tool) => notes.push(format!(
                "{kind} {name:?} → {}://{}:{}{}{}",
                if tool.tls { "https" } else { "http" },
                tool.host,
                tool.port,
                tool.base_path,
                if tool.credential.is_some() {
                    " (credential injected)"
                } else {
                    ""
                }
            )),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !config.mcp.servers.is_empty() {
        check_mcp_session_key(&config, &mut notes, &mut errors);
    }
    check_tls(&config, &mut notes, &mut errors);
    match live::load_keys(&config.api_keys) {
        Ok(store) => notes.push(format!("{} API key(s)", store.len())),
        Err(e) => errors.push(format!("API keys: {e}")),
    }
    match live::load_policy(&config) {
        Ok(engine) => {
            if config.policy_file.is_none() {
                notes.push("no policy file: every call will be denied".into());
            }
            if let Some(why) = engine
                .mcp_unavailable()
                .filter(|_| !config.mcp.servers.is_empty())
            {
                notes.push(format!(
                    "warning: MCP servers are configured, but every MCP request will be refused: {why}"
                ));
            }
            notes.push(format!(
                "{} polic{} (digest {})",
                engine.policy_count(),
                if engine.policy_count() == 1 {
                    "y"
                } else {
                    "ies"
                },
                &engine.digest_hex()[..16]
            ));
        }
        Err(e) => errors.push(format!("policy: {e}")),
    }

    check_admin(&config, &mut notes, &mut errors);
    check_admin_jwt(&config, &mut notes);
    check_state(&config, &mut notes, &mut errors);
    check_jwt(&config, &mut notes, &mut errors);

    if config.evidence_required {
        check_log(&config, &mut notes, &mut errors);
    } else {
        notes.push("EVIDENCE DISABLED: calls would be forwarded without receipts".into());
    }

    if errors.is_empty() {
        println!(
            "ok: {}",
            config
                .source
                .as_deref()
                .map_or("<defaults>".into(), |p| p.display().to_string())
        );
        for n in notes {
            println!("  {n}");
        }
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} error(s)", errors.len());
        ExitCode::FAILURE
    }
}

/// `[admin]`: the authentication the admin plane would start with, and the tokens file.
fn check_admin(config: &config::Config, notes: &mut Vec<String>, errors: &mut Vec<String>) {
    if let Err(e) = config.admin.startup_check(config.admin_listen) {
        errors.push(format!("admin plane: {e}"));
        return;
    }
    match &config.admin.access {
        config::AdminAccess::Tokens(path) => match crate::admin::auth::load_tokens(path) {
            Ok(store) => notes.push(format!(
                "{} admin token(s) from {}{}",
                store.len(),
                path.display(),
                if config.admin.open_probes {
                    " (/healthz and /readyz open)"
                } else {
                    ""
                }
            )),
            Err(e) => errors.push(format!("admin tokens: {e}")),
        },
        config::AdminAccess::Jwt => {}
        _ => notes.push(format!(
            "admin plane on {} WITHOUT authentication (allow_unauthenticated_loopback): development only",
            config.admin_listen
        )),
    }
}

/// `[[admin.jwt]]`: each issuer admins sign in with, its audiences and role mapping.
fn check_admin_jwt(config: &config::Config, notes: &mut Vec<String>) {
    for j in &config.admin.jwt {
        let map: Vec<String> = j
            .role_map
            .iter()
            .map(|(value, role)| format!("{value}={role}"))
            .collect();
        notes.push(format!(
            "admin OIDC issuer {} (audiences {}; admin id from {}; roles from {}: {})",
            j.policy.issuer,
            j.policy.audiences.join(", "),
            j.policy.agent_claim.as_string(),
            j.policy
                .groups_claim
                .as_ref()
                .map_or_else(String::new, lap_jwt::ClaimPath::as_string),
            map.join(", ")
        ));
    }
}

/// `[[auth.jwt]]`: each issuer and where its keys come from; a `jwks_file` is parsed (URLs
/// are not fetched: check-config may run where the issuer is not reachable).
fn check_jwt(config: &config::Config, notes: &mut Vec<String>, errors: &mut Vec<String>) {
    for (i, issuer) in config.jwt.issuers.iter().enumerate() {
        let name = &issuer.policy.issuer;
        match &issuer.keys {
            config::JwksSource::File(path) => {
                let parsed = std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|doc| lap_jwt::KeySet::from_json(&doc).map_err(|e| e.to_string()));
                match parsed {
                    Ok(keys) => notes.push(format!(
                        "JWT issuer {name:?}: {} key(s) from {}",
                        keys.len(),
                        path.display()
                    )),
                    Err(e) => {
                        errors.push(format!("auth.jwt[{i}].jwks_file: {}: {e}", path.display()))
                    }
                }
            }
            config::JwksSource::Url(url) => {
                notes.push(format!("JWT issuer {name:?}: keys from {url}"))
            }
            config::JwksSource::Discovery { url } => {
                notes.push(format!("JWT issuer {name:?}: keys by discovery ({url})"))
            }
        }
    }
}

/// The state store (`[state]`): the Redis URL must be there and well formed (it is not shown,
/// and no connection is made: check-config may run where the store is not reachable); the
/// limits are listed.
fn check_state(config: &config::Config, notes: &mut Vec<String>, errors: &mut Vec<String>) {
    let st = &config.state;
    match &st.backend {
        config::StateBackend::Embedded { path } => notes.push(format!(
            "state: embedded store {} (deadline {} ms)",
            path.display(),
            st.deadline.as_millis()
        )),
        config::StateBackend::Redis { url, ca_file } => {
            match config::RedisUrl::load(url, &ProcessEnv) {
                Ok(u) => notes.push(format!(
                    "state: Redis ({}://…, prefix {:?}, deadline {} ms)",
                    u.scheme(),
                    st.prefix,
                    st.deadline.as_millis()
                )),
                Err(e) => errors.push(format!("state: {e}")),
            }
            if let Some(ca) = ca_file {
                if let Err(e) = std::fs::metadata(ca) {
                    errors.push(format!("state: CA file {}: {e}", ca.display()));
                }
            }
        }
    }
    let rules = &config.limit_rules;
    if !rules.budget.is_empty() {
        // A reservation must outlive the call it is for, or its capacity is lent out meanwhile:
        // the longest call to a tool or MCP server some budget may count.
        let longest = config
            .tools
            .values()
            .chain(config.mcp.servers.values())
            .filter(|t| budgeted(rules, t))
            .map(|t| (t, t.read_timeout + t.connect_timeout * 2 + t.write_timeout))
            .max_by_key(|(_, d)| *d);
        if let Some((t, d)) = longest.filter(|(_, d)| *d >= st.reservation_ttl) {
            notes.push(format!(
                "warning: {} may take {} s, longer than state.reservation_ttl_seconds ({} s): \
                 a budget reservation could expire while its call runs",
                t.key,
                d.as_secs(),
                st.reservation_ttl.as_secs()
            ));
        }
    }
    if !rules.rate.is_empty() || !rules.budget.is_empty() {
        notes.push(format!(
            "{} rate limit(s), {} budget(s)",
            rules.rate.len(),
            rules.budget.len()
        ));
    }
}

/// Whether a budget may count calls to `t`, a tool or an MCP server (whose tools a budget names
/// as `<server>/<tool>`, or all of them as `<server>`): one that names no tools counts them all.
/// Groups are not looked at: any agent may be in them.
fn budgeted(rules: &config::LimitRules, t: &config::ToolConfig) -> bool {
    rules.budget.iter().any(|b| {
        b.select.tools.is_empty()
            || b.select
                .tools
                .iter()
                .any(|n| n.split_once('/').map_or(n.as_str(), |(server, _)| server) == t.name)
    })
}

/// The receipt log: a fresh directory must be creatable; an existing log is read (read-only)
/// and must be intact and extend its own checkpoint, as start-up will require.
fn check_log(config: &config::Config, notes: &mut Vec<String>, errors: &mut Vec<String>) {
    let dir = &config.log.dir;
    if !dir.join("entries").exists() {
        // A relative directory's last ancestor is "": the working directory.
        let parent = dir
            .ancestors()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .find(|p| p.exists());
        match parent.map(std::fs::metadata) {
            Some(Ok(m)) if !m.permissions().readonly() => notes.push(format!(
                "receipt log {} will be created (origin {})",
                dir.display(),
                config.log.origin
            )),
            _ => errors.push(format!("receipt log {}: cannot be created", dir.display())),
        }
        return;
    }
    match lap_tlog::store::read_only(dir) {
        Err(e) => errors.push(format!("receipt log: {e}")),
        Ok(log) => {
            if let Some((index, offset)) = log.corrupt_at {
                errors.push(format!(
                    "receipt log {}: record {index} at byte {offset} is damaged",
                    dir.display()
                ));
            }
            // The rules start-up applies (lap_evidence::durable_checkpoint, SavedCheckpoint,
            // plan_tail), to the log as it is on disk.
            let mut checkpointed = 0;
            if log.checkpoint.is_some() || !log.checkpoints.is_empty() {
                let key = match log_key(config) {
                    Ok(key) => key,
                    Err(e) => {
                        errors.push(format!("receipt log: checkpoint: {e}"));
                        return;
                    }
                };
                let tree = lap_tlog::merkle::Tree::from_entries(&log.entries);
                let origin = &config.log.origin;
                let saved = lap_evidence::durable_checkpoint(
                    log.checkpoint.clone(),
                    &log.checkpoints,
                    &key,
                    origin,
                )
                .and_then(|saved| match saved {
                    Some(s) => s
                        .check_tree(&tree)
                        .map(|()| s.checkpoint.size)
                        .map_err(lap_evidence::CheckpointError::from),
                    None => Ok(0),
                });
                match saved {
                    Ok(size) => checkpointed = size,
                    Err(e) => {
                        errors.push(format!("receipt log: {e}"));
                        return;
                    }
                }
            }
            if let Ok(keyset) = lap_keys::load(&config.keys) {
                let tail = log
                    .entries
                    .iter()
                    .enumerate()
                    .skip(checkpointed as usize)
                    .map(|(i, e)| Ok((i as u64, e)));
                let keys = crate::evidence::tail_keys(&keyset);
                match lap_evidence::plan_tail(tail, &config.log.origin, &keys) {
                    Ok(plan) => {
                        if plan.kept > 0 {
                            notes.push(format!(
                                "receipt log: {} signed receipt(s) after the last checkpoint verify and will be kept",
                                plan.kept
                            ));
                        }
                        if let Some((from, n)) = plan.discard {
                            notes.push(format!(
                                "receipt log: {n} batched entr{} from index {from} were never acknowledged and will be discarded at start",
                                if n == 1 { "y" } else { "ies" }
                            ));
                        }
                    }
                    Err(e) => errors.push(format!(
                        "receipt log: {e}; start-up will refuse (nothing beyond the last durable signed checkpoint may be trusted without verification)"
                    )),
                }
            }
            notes.push(format!(
                "receipt log {}: {} entries{}",
                dir.display(),
                log.entries.len(),
                if log.torn_bytes > 0 {
                    " (a torn tail will be removed at start)"
                } else {
                    ""
                }
            ));
        }
    }
}

/// The log's checkpoint key, as start-up finds it.
fn log_key(config: &config::Config) -> Result<lap_tlog::note::NoteVerifier, SetupError> {
    let log_signer = crate::evidence::offline_log_signer(config)?;
    crate::evidence::log_verifier(config, log_signer.as_ref())
}

/// The MCP session key: a configured file must exist and be readable (replicas share it); the
/// default file is created at start when missing.
fn check_mcp_session_key(
    config: &config::Config,
    notes: &mut Vec<String>,
    errors: &mut Vec<String>,
) {
    use crate::config::SessionKeyFile;
    match &config.mcp.session_key {
        SessionKeyFile::Configured(path) => {
            match crate::mcp::session::SessionKey::load(path, false) {
                Ok(_) => notes.push(format!("MCP session key {}", path.display())),
                Err(e) => errors.push(format!("MCP session key: {e}")),
            }
        }
        SessionKeyFile::Default(path) if path.exists() => {
            match crate::mcp::session::SessionKey::load(path, false) {
                Ok(_) => notes.push(format!("MCP session key {}", path.display())),
                Err(e) => errors.push(format!("MCP session key: {e}")),
            }
        }
        SessionKeyFile::Default(path) => notes.push(format!(
            "MCP session key {} will be created (set [mcp] session_key_file to share one between replicas)",
            path.display()
        )),
    }
}

/// `[tls]` and `[mtls]`: the certificate, key and CA bundles load and pair (as at start-up).
fn check_tls(config: &config::Config, notes: &mut Vec<String>, errors: &mut Vec<String>) {
    let metrics = match crate::tls::TlsMetrics::new() {
        Ok(m) => std::sync::Arc::new(m),
        Err(e) => return errors.push(format!("TLS metrics: {e}")),
    };
    match crate::tls::reload::TlsMaterial::load(&config.tls, metrics) {
        Ok(m) => {
            if let (Some(l), Some(c)) = (&config.tls.listener, m.server_cert()) {
                notes.push(format!(
                    "TLS listener {} with {:?} (client certificates: {:?})",
                    l.listen, c.leaf.subject, config.tls.client_auth
                ));
            }
            if let Some(cas) = m.client_cas() {
                notes.push(format!("{} client CA certificate(s)", cas.certs.len()));
            }
            if let Some(id) = &config.cert_identity {
                notes.push(format!(
                    "client certificates are identities: trust domains {:?}, {} mapping(s), {} trusted prox(ies)",
                    id.trust_domains,
                    id.rules.len(),
                    id.trusted_proxies.len()
                ));
            }
        }
        Err(e) => errors.push(format!("TLS [{}]: {e}", e.code())),
    }
}
