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
pub type KeysetHook = Box<dyn Fn(lap_keys::Keyset) -> Result<(), SetupError> + Send>;

/// Why a reloaded keyset was not taken.
#[derive(Debug, thiserror::Error)]
enum KeysetReloadError {
    #[error(transparent)]
    Load(#[from] lap_keys::KeyError),
    #[error(transparent)]
    Apply(#[from] SetupError),
}

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
    PolicyEngine::load(&text, schema.as_deref(), &tools)
        .map_err(|source| LoadError::Policy { path, source })
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

/// File identity used to notice edits: modification time, length and inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

fn stamp(paths: &[PathBuf]) -> Vec<Stamp> {
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

fn watch(
    config: &Config,
    live: &LiveState,
    metrics: &Metrics,
    sighup: &AtomicBool,
    on_keyset: &KeysetHook,
) {
    // A keyset read from a file (not inline JSON) is hot-reloaded too.
    let keyset_paths: Vec<PathBuf> = match (&config.keys.keyset_json, &config.keys.keyset_file) {
        (None, Some(p)) => vec![p.value.clone()],
        _ => Vec::new(),
    };
    let mut keyset_stamp = stamp(&keyset_paths);
    let key_paths: Vec<PathBuf> = match &config.api_keys {
        ApiKeySource::File(p) => vec![p.clone()],
        ApiKeySource::Inline(_) => Vec::new(),
    };
    let policy_paths: Vec<PathBuf> = config
        .policy_file
        .iter()
        .chain(config.policy_schema.iter())
        .cloned()
        .collect();
    let mut key_stamp = stamp(&key_paths);
    let mut policy_stamp = stamp(&policy_paths);
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

        let now = stamp(&key_paths);
        if !key_paths.is_empty() && (forced || now != key_stamp) {
            key_stamp = now;
            reload_keys(config, live, metrics);
        }
        let now = stamp(&policy_paths);
        if !policy_paths.is_empty() && (forced || now != policy_stamp) {
            policy_stamp = now;
            reload_policy(config, live, metrics);
        }
        let now = stamp(&keyset_paths);
        if !keyset_paths.is_empty() && (forced || now != keyset_stamp) {
            keyset_stamp = now;
            let result = lap_keys::load(&config.keys)
                .map_err(KeysetReloadError::from)
                .and_then(|keyset| Ok(on_keyset(keyset)?));
            match result {
                Ok(()) => {
                    metrics
                        .reloads
                        .with_label_values(&["keyset", "success"])
                        .inc();
                    metrics
                        .config_generation
                        .with_label_values(&["keyset"])
                        .inc();
                }
                Err(e) => {
                    metrics
                        .reloads
                        .with_label_values(&["keyset", "error"])
                        .inc();
                    tracing::error!(error = %e, "keyset rejected; the previous signing key stays in force");
                }
            }
        }
    }
}

fn reload_keys(config: &Config, live: &LiveState, metrics: &Metrics) {
    match load_keys(&config.api_keys) {
        Ok(store) => {
            let n = store.len();
            live.keys.store(Arc::new(store));
            metrics.api_keys_loaded.set(n as i64);
            metrics
                .reloads
                .with_label_values(&["api_keys", "success"])
                .inc();
            metrics
                .config_generation
                .with_label_values(&["api_keys"])
                .inc();
            tracing::info!(keys = n, "API keys reloaded");
        }
        Err(e) => {
            metrics
                .reloads
                .with_label_values(&["api_keys", "error"])
                .inc();
            tracing::error!(error = %e, "API key file rejected; the previous keys stay in force");
        }
    }
}

fn reload_policy(config: &Config, live: &LiveState, metrics: &Metrics) {
    match load_policy(config) {
        Ok(engine) => {
            let n = engine.policy_count();
            let digest = engine.digest_hex().to_string();
            live.policy.store(Arc::new(engine));
            metrics.policies_loaded.set(n as i64);
            metrics
                .reloads
                .with_label_values(&["policy", "success"])
                .inc();
            metrics
                .config_generation
                .with_label_values(&["policy"])
                .inc();
            tracing::info!(policies = n, digest = %digest, "policy reloaded");
        }
        Err(e) => {
            metrics
                .reloads
                .with_label_values(&["policy", "error"])
                .inc();
            tracing::error!(error = %e, "policy rejected; the previous policy stays in force");
        }
    }
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
