//! The state layer as the gateway runs it: the store opened from `[state]`, a runtime of its
//! own, and the store's health.
//!
//! Why a runtime of its own: the Redis client keeps a background task per connection (it reads
//! replies and reconnects when the server comes back). Spawned on whichever runtime happened to
//! make the first call, that task would live or die with it; on this runtime, which lives as
//! long as the process, it outlives any one request and keeps reconnecting. Every operation is
//! run here and awaited from the request's runtime (one hop between threads, microseconds).
//!
//! Health: the last operation's outcome and a ping every second set [`StoreStatus`], which
//! `/v1/health` reports (with the backend's name, never its address or credentials).
//!
//! The Redis URL carries the password: it goes to the client and nowhere else. Errors from the
//! client are shown by code, and their text has the password cut out before it is logged.

use crate::config::{RedisUrl, RedisUrlError, StateBackend, StateConfig};
use lap_state::{BackendError, Options, RedisOptions, State, StateError};
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How often the store is pinged for `/v1/health`.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Why the state store could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StateSetupError {
    #[error("state store: {0}")]
    Url(#[from] RedisUrlError),
    #[error("state store: cannot read the CA file {path}: {source}")]
    Ca {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store: cannot create {path}: {source}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message has the Redis password cut out.
    #[error("state store ({backend}) could not be opened: {code}: {message}")]
    Open {
        backend: &'static str,
        code: &'static str,
        message: String,
    },
    #[error("state store: cannot start its runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Whether the store answered last time it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreStatus {
    Ok,
    /// `STATE_UNAVAILABLE` (or an unreadable record, `STATE_CORRUPT`).
    Unavailable,
    /// `STATE_TIMEOUT`.
    Timeout,
}

impl StoreStatus {
    pub const ALL: [StoreStatus; 3] = [
        StoreStatus::Ok,
        StoreStatus::Unavailable,
        StoreStatus::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StoreStatus::Ok => "ok",
            StoreStatus::Unavailable => "unavailable",
            StoreStatus::Timeout => "timeout",
        }
    }

    fn of(result: &Result<(), &StateError>) -> StoreStatus {
        match result {
            Ok(()) => StoreStatus::Ok,
            Err(StateError::Timeout(_)) => StoreStatus::Timeout,
            Err(_) => StoreStatus::Unavailable,
        }
    }
}

/// The opened store, shared by the data plane (limits, sessions) and the admin plane
/// (revocation).
pub struct StateService {
    state: State,
    runtime: &'static tokio::runtime::Runtime,
    status: Arc<AtomicU8>,
}

impl std::fmt::Debug for StateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateService")
            .field("backend", &self.state.backend_name())
            .finish()
    }
}

/// The runtime state operations run on (see the module docs).
fn state_runtime() -> Result<&'static tokio::runtime::Runtime, StateSetupError> {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("lap-state-io")
        .enable_all()
        .build()
        .map_err(StateSetupError::Runtime)?;
    Ok(RT.get_or_init(|| rt))
}

impl StateService {
    /// Opens the configured store (connecting to Redis once, so that a wrong address or
    /// password refuses start-up) and starts its health pings.
    pub fn open(
        config: &StateConfig,
        env: &dyn crate::config::Env,
        observer: Option<Arc<dyn lap_state::Observer>>,
    ) -> Result<StateService, StateSetupError> {
        let runtime = state_runtime()?;
        let options = Options {
            prefix: config.prefix.clone(),
            deadline: config.deadline,
            reservation_ttl: config.reservation_ttl,
            observer,
        };
        let backend = config.backend.name();
        let state = match &config.backend {
            StateBackend::Embedded { path } => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| StateSetupError::Dir {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                State::open_embedded(path, options).map_err(|e| StateSetupError::Open {
                    backend,
                    code: e.code(),
                    message: e.to_string(),
                })?
            }
            StateBackend::Redis { url, ca_file } => {
                let url = RedisUrl::load(url, env)?;
                let ca_pem = match ca_file {
                    Some(path) => {
                        Some(std::fs::read(path).map_err(|source| StateSetupError::Ca {
                            path: path.clone(),
                            source,
                        })?)
                    }
                    None => None,
                };
                // The first connection may take longer than one operation's deadline.
                let connect = State::connect_redis(url.expose(), RedisOptions { ca_pem }, options);
                runtime
                    .block_on(async {
                        tokio::time::timeout(Duration::from_secs(10), connect).await
                    })
                    .map_err(|_| StateSetupError::Open {
                        backend,
                        code: "STATE_TIMEOUT",
                        message: "no answer within 10 s".into(),
                    })?
                    .map_err(|e| StateSetupError::Open {
                        backend,
                        code: e.code(),
                        message: redact(&e.to_string(), &url),
                    })?
            }
        };
        let service = StateService {
            state,
            runtime,
            status: Arc::new(AtomicU8::new(0)),
        };
        service.spawn_pings();
        Ok(service)
    }

    pub fn backend_name(&self) -> &'static str {
        self.state.backend_name()
    }

    /// The store's status as last seen.
    pub fn status(&self) -> StoreStatus {
        match self.status.load(Ordering::Relaxed) {
            0 => StoreStatus::Ok,
            2 => StoreStatus::Timeout,
            _ => StoreStatus::Unavailable,
        }
    }

    fn record(status: &AtomicU8, s: StoreStatus) {
        let v = match s {
            StoreStatus::Ok => 0,
            StoreStatus::Unavailable => 1,
            StoreStatus::Timeout => 2,
        };
        status.store(v, Ordering::Relaxed);
    }

    fn spawn_pings(&self) {
        let (state, status) = (self.state.clone(), self.status.clone());
        self.runtime.spawn(async move {
            loop {
                let result = state.ping().await;
                Self::record(&status, StoreStatus::of(&result.as_ref().map(drop)));
                tokio::time::sleep(PING_INTERVAL).await;
            }
        });
    }

    /// Runs one operation of the state layer on the state runtime. Store failures (not the
    /// answers about the input) mark the store's status.
    pub async fn run<T, F>(&self, op: impl FnOnce(State) -> F) -> Result<T, StateError>
    where
        F: Future<Output = Result<T, StateError>> + Send + 'static,
        T: Send + 'static,
    {
        let result = match self.runtime.spawn(op(self.state.clone())).await {
            Ok(r) => r,
            Err(_) => Err(StateError::Unavailable(BackendError::Other(
                "the state operation was lost".into(),
            ))),
        };
        match &result {
            Ok(_) => Self::record(&self.status, StoreStatus::Ok),
            Err(e) if e.is_store_failure() => {
                Self::record(&self.status, StoreStatus::of(&Err(e)));
            }
            Err(_) => {}
        }
        result
    }
}

/// `text` with the URL's password (and the URL itself) cut out.
fn redact(text: &str, url: &RedisUrl) -> String {
    let mut out = text.replace(url.expose(), "<redis url>");
    let userinfo = url
        .expose()
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo);
    if let Some(password) = userinfo.and_then(|u| u.split_once(':')).map(|(_, p)| p) {
        if !password.is_empty() {
            out = out.replace(password, "<password>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisUrlSource;
    use std::collections::BTreeMap;

    #[test]
    fn passwords_are_cut_out_of_messages() {
        let mut env = BTreeMap::new();
        env.insert(
            "LAP_STATE_REDIS_URL".to_string(),
            "redis://lapgw:hunter2@10.0.0.1:6379/".to_string(),
        );
        let url = RedisUrl::load(&RedisUrlSource::Env, &env).unwrap();
        let m = redact(
            "failed for redis://lapgw:hunter2@10.0.0.1:6379/: auth hunter2 refused",
            &url,
        );
        assert!(!m.contains("hunter2"), "{m}");
        assert!(m.contains("<redis url>") && m.contains("<password>"), "{m}");
    }

    #[test]
    fn an_embedded_store_opens_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let config = StateConfig {
            backend: StateBackend::Embedded {
                path: dir.path().join("sub/state.db"),
            },
            deadline: Duration::from_secs(2),
            prefix: "t:".into(),
            reservation_ttl: Duration::from_secs(60),
        };
        let s = StateService::open(&config, &BTreeMap::new(), None).unwrap();
        assert_eq!(s.backend_name(), "embedded");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            s.run(|st| async move { st.ping().await }).await.unwrap();
        });
        assert_eq!(s.status(), StoreStatus::Ok);
    }
}
