//! Hot-reloaded state: API keys, policy, and the public documents of the keyset.
//!
//! Each is held in an [`ArcSwap`], so a request reads a consistent snapshot without locking and
//! a reload replaces the whole set at once. A watcher thread polls the files' metadata (and
//! reloads at once on SIGHUP). Polling rather than inotify because it also sees atomic renames
//! and Kubernetes ConfigMap symlink swaps, which inotify-based watchers often miss.
//!
//! A file that fails to load is logged and counted, and the last good version stays in force:
//! a broken edit never takes the gateway down or opens it up.

use crate::config::{ApiKeySource, Config};
use crate::documents::Published;
use crate::evidence::SetupError;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use lap_auth::ApiKeyStore;
use lap_policy::PolicyEngine;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A policy used when no policy file is configured: no permits, so every call is denied.
const EMPTY_POLICY: &str = "";

/// Everything a request needs that can change while the gateway runs.
pub struct LiveState {
    pub keys: ArcSwap<ApiKeyStore>,
    pub policy: ArcSwap<PolicyEngine>,
    /// The bodies of `/v1/health` and `/v1/keys`, rebuilt when the keyset changes.
    pub published: ArcSwap<Published>,
}

/// Applies a reloaded keyset (new signer, new published keys); `Err` keeps the old one.
/// Shared by the watcher and the admin plane's `POST /v1/reload`.
pub type KeysetHook = Arc<dyn Fn(lap_keys::Keyset) -> Result<(), SetupError> + Send + Sync>;

/// Why a hot-reloadable file could not be loaded. Messages name the file (or the variable)
/// and never quote key material.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is empty; an empty file is refused as a write caught half-way (to deny every call, write a policy file holding only a comment; to have no API keys, {{\"keys\": []}})")]
    Empty { path: PathBuf },
    #[error("{path}: {source}")]
    Keys {
        path: PathBuf,
        #[source]
        source: lap_auth::KeyFileError,
    },
    #[error("LAP_API_KEYS_JSON: {source}")]
    InlineKeys {
        #[source]
        source: lap_auth::KeyFileError,
    },
    #[error("{path}: {source}")]
    Policy {
        path: PathBuf,
        #[source]
        source: lap_policy::PolicyError,
    },
}

/// Loads the API keys from their configured source.
pub fn load_keys(source: &ApiKeySource) -> Result<ApiKeyStore, LoadError> {
    match source {
        ApiKeySource::Inline(json) => lap_auth::parse_key_file(json)
            .and_then(ApiKeyStore::new)
            .map_err(|source| LoadError::InlineKeys { source }),
        ApiKeySource::File(path) => {
            let text = read(path)?;
            lap_auth::parse_key_file(&text)
                .and_then(ApiKeyStore::new)
                .map_err(|source| LoadError::Keys {
                    path: path.clone(),
                    source,
                })
        }
    }
}

/// Loads the policy (and schema) from the configured files. Without a policy file there are
/// no policies, so every call is denied.
pub fn load_policy(config: &Config) -> Result<PolicyEngine, LoadError> {
    let tools: Vec<String> = config.tools.keys().cloned().collect();
    let schema = match &config.policy_schema {
        Some(p) => Some(read(p)?),
        None => None,
    };
    let (text, path) = match &config.policy_file {
        Some(p) => (read(p)?, p.clone()),
        None => (
            EMPTY_POLICY.to_string(),
            PathBuf::from("<no policy file: deny all>"),
        ),
    };
    let engine = PolicyEngine::load(&text, schema.as_deref(), &tools)
        .map_err(|source| LoadError::Policy { path, source })?;
    if let Some(why) = engine
        .mcp_unavailable()
        .filter(|_| !config.mcp.servers.is_empty())
    {
        tracing::warn!(code = why.code(), error = %why,
            "MCP servers are configured, but the policy in force refuses every MCP request");
    }
    Ok(engine)
}

/// Reads a configuration file. Every kind of file is judged alike: one that is empty (or only
/// white space) is refused, because far more often than an intent it is a write caught
/// half-way (an editor truncating before writing, a shell redirect), and taking it would
/// silently change what is in force — lock out every agent, or deny every call.
fn read(path: &Path) -> Result<String, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(LoadError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

impl LiveState {
    /// The state at start-up, from files loaded with [`load_keys`] and [`load_policy`] (any
    /// failure there stops start-up) and the documents published for the keyset.
    pub fn new(
        keys: ApiKeyStore,
        policy: PolicyEngine,
        published: Published,
        metrics: &Metrics,
    ) -> Self {
        metrics.api_keys_loaded.set(keys.len() as i64);
        metrics.policies_loaded.set(policy.policy_count() as i64);
        for file in ["api_keys", "policy"] {
            metrics.config_generation.with_label_values(&[file]).inc();
        }
        Self {
            keys: ArcSwap::from_pointee(keys),
            policy: ArcSwap::from_pointee(policy),
            published: ArcSwap::from_pointee(published),
        }
    }
}

/// File identity used to notice edits: modification time, length and inode (also the TLS
/// material's watcher's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp(Option<(SystemTime, u64, u64)>);

/// The stamps of `paths`, in order (a missing file has its own stamp).
pub(crate) fn stamp(paths: &[PathBuf]) -> Vec<Stamp> {
    paths
        .iter()
        .map(|p| {
            Stamp(std::fs::metadata(p).ok().map(|m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), ino)
            }))
        })
        .collect()
}

/// Starts the watcher thread. `sighup` is set by the signal handler.
pub fn spawn_watcher(
    config: Arc<Config>,
    live: Arc<LiveState>,
    metrics: Arc<Metrics>,
    sighup: Arc<AtomicBool>,
    on_keyset: KeysetHook,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lap-reload".into())
        .spawn(move || watch(&config, &live, &metrics, &sighup, &on_keyset))
        .map(|_| ())
}

/// The hot-reloaded kinds of file.
#[derive(Debug, Clone, Copy)]
enum Kind {
    ApiKeys,
    Policy,
    Keyset,
}

impl Kind {
    /// The `file` label of the reload metrics.
    fn label(self) -> &'static str {
        match self {
            Kind::ApiKeys => "api_keys",
            Kind::Policy => "policy",
            Kind::Keyset => "keyset",
        }
    }
}

/// Files of one kind and what they looked like when last loaded.
struct Watched {
    kind: Kind,
    paths: Vec<PathBuf>,
    stamp: Vec<Stamp>,
}

impl Watched {
    fn new(kind: Kind, paths: Vec<PathBuf>) -> Self {
        let stamp = stamp(&paths);
        Self { kind, paths, stamp }
    }

    /// Whether the files must be reloaded now (forced, or changed since the last look).
    fn due(&mut self, forced: bool) -> bool {
        if self.paths.is_empty() {
            return false;
        }
        let now = stamp(&self.paths);
        let changed = now != self.stamp;
        self.stamp = now;
        forced || changed
    }
}

/// The hot-reloaded files of each kind the configuration names.
fn watched(config: &Config) -> [Watched; 3] {
    [
        Watched::new(
            Kind::ApiKeys,
            match &config.api_keys {
                ApiKeySource::File(p) => vec![p.clone()],
                ApiKeySource::Inline(_) => Vec::new(),
            },
        ),
        Watched::new(
            Kind::Policy,
            config
                .policy_file
                .iter()
                .chain(config.policy_schema.iter())
                .cloned()
                .collect(),
        ),
        // A keyset read from a file (not inline JSON) is hot-reloaded too.
        Watched::new(
            Kind::Keyset,
            match (&config.keys.keyset_json, &config.keys.keyset_file) {
                (None, Some(p)) => vec![p.value.clone()],
                _ => Vec::new(),
            },
        ),
    ]
}

/// Reloads every hot-reloaded file now (the admin plane's `POST /v1/reload`): each kind
/// configured from a file, with its outcome (`Err` keeps the previous version in force, as
/// with the watcher).
pub fn reload_now(
    config: &Config,
    live: &LiveState,
    metrics: &Metrics,
    on_keyset: &KeysetHook,
) -> Vec<(&'static str, Result<(), String>)> {
    watched(config)
        .iter()
        .filter(|w| !w.paths.is_empty())
        .map(|w| {
            let result = reload(w.kind, config, live, metrics, on_keyset);
            let outcome = result.as_ref().map(|_| ()).map_err(ToString::to_string);
            account(w.kind, result, metrics);
            (w.kind.label(), outcome)
        })
        .collect()
}

/// Counts a reload's outcome, and says when the previous version stays in force.
fn account(kind: Kind, result: Result<(), ReloadError>, metrics: &Metrics) {
    match result {
        Ok(()) => {
            metrics
                .reloads
                .with_label_values(&[kind.label(), "success"])
                .inc();
            metrics
                .config_generation
                .with_label_values(&[kind.label()])
                .inc();
        }
        Err(e) => {
            metrics
                .reloads
                .with_label_values(&[kind.label(), "error"])
                .inc();
            let kept = match kind {
                Kind::ApiKeys => "API key file rejected; the previous keys stay in force",
                Kind::Policy => "policy rejected; the previous policy stays in force",
                Kind::Keyset => "keyset rejected; the previous signing key stays in force",
            };
            tracing::error!(error = %e, "{kept}");
        }
    }
}

fn watch(
    config: &Config,
    live: &LiveState,
    metrics: &Metrics,
    sighup: &AtomicBool,
    on_keyset: &KeysetHook,
) {
    let mut watched = watched(config);
    let tick = Duration::from_millis(50).min(config.reload_interval);
    let mut since_poll = Duration::ZERO;
    loop {
        std::thread::sleep(tick);
        since_poll += tick;
        let forced = sighup.swap(false, Ordering::AcqRel);
        if !forced && since_poll < config.reload_interval {
            continue;
        }
        since_poll = Duration::ZERO;
        if forced {
            tracing::info!("SIGHUP: reloading API keys and policy");
        }
        for w in watched.iter_mut() {
            if !w.due(forced) {
                continue;
            }
            let kind = w.kind;
            account(
                kind,
                reload(kind, config, live, metrics, on_keyset),
                metrics,
            );
        }
    }
}

/// Why a reload was not taken.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    File(#[from] LoadError),
    #[error(transparent)]
    Keys(#[from] lap_keys::KeyError),
    #[error(transparent)]
    Apply(#[from] SetupError),
}

/// Loads files of one kind and puts them in force.
fn reload(
    kind: Kind,
    config: &Config,
    live: &LiveState,
    metrics: &Metrics,
    on_keyset: &KeysetHook,
) -> Result<(), ReloadError> {
    match kind {
        Kind::ApiKeys => {
            let store = load_keys(&config.api_keys)?;
            let n = store.len();
            live.keys.store(Arc::new(store));
            metrics.api_keys_loaded.set(n as i64);
            tracing::info!(keys = n, "API keys reloaded");
        }
        Kind::Policy => {
            let engine = load_policy(config)?;
            let n = engine.policy_count();
            let digest = engine.digest_hex().to_string();
            live.policy.store(Arc::new(engine));
            metrics.policies_loaded.set(n as i64);
            tracing::info!(policies = n, digest = %digest, "policy reloaded");
        }
        Kind::Keyset => on_keyset(lap_keys::load(&config.keys)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, policy: &str) -> Config {
        let file = dir.join("policy.cedar");
        std::fs::write(&file, policy).unwrap();
        let env: std::collections::BTreeMap<String, String> = [
            ("LAP_API_KEYS_JSON".to_string(), "{}".to_string()),
            ("LAP_POLICY_FILE".to_string(), file.display().to_string()),
        ]
        .into();
        crate::config::load(None, &env, &crate::config::CliOverrides::default()).unwrap()
    }

    #[test]
    fn empty_files_are_refused_whatever_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["", " \n\t\n"] {
            let e = load_policy(&config(dir.path(), text)).err().unwrap();
            assert!(matches!(e, LoadError::Empty { .. }), "{e}");
            let keys = dir.path().join("keys.json");
            std::fs::write(&keys, text).unwrap();
            let e = load_keys(&ApiKeySource::File(keys)).err().unwrap();
            assert!(matches!(e, LoadError::Empty { .. }), "{e}");
            assert!(e.to_string().contains("keys.json is empty"), "{e}");
        }
    }

    #[test]
    fn no_policies_and_no_keys_are_said_explicitly() {
        let dir = tempfile::tempdir().unwrap();
        let engine = load_policy(&config(dir.path(), "// no policies: deny every call\n")).unwrap();
        assert_eq!(engine.policy_count(), 0);
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, r#"{"keys": []}"#).unwrap();
        assert_eq!(load_keys(&ApiKeySource::File(keys)).unwrap().len(), 0);
    }
}
