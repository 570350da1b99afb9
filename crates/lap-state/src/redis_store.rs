//! The shared backend: Redis, every check-and-update one Lua script.
//!
//! Why Redis scripts: a script runs atomically on the server (no other command interleaves),
//! so a check and its update cannot be split by another replica, and it costs one round trip.
//! Scripts are sent by `EVALSHA`, falling back to `EVAL` when the server does not know them
//! (first use, or after a restart) — the `redis` crate's [`redis::Script`] does this.
//!
//! Why the `redis` crate: the maintained Rust client, with a tokio multiplexed connection (many
//! concurrent requests over one socket) and [`redis::aio::ConnectionManager`], which replaces
//! a lost connection by itself — the gateway recovers when Redis returns without being
//! restarted. TLS (`rediss://`) is rustls, as in the rest of the gateway.
//!
//! Every key a script touches is passed in `KEYS` and begins with the configured prefix, so an
//! ACL user restricted to `~<prefix>*` suffices. Redis Cluster is not supported: the scripts
//! of sessions and budgets touch several keys that would live in different slots.
//!
//! Durability is Redis': nonces, counters and budgets survive a Redis restart only with
//! persistence on (`appendonly yes`; `appendfsync always` loses nothing, `everysec` up to a
//! second of writes on a power loss).

use crate::backend::*;
use crate::error::{BackendError, StateError};
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use std::time::Duration;

/// At most this many due reservations are released or forgotten per budget operation.
const RELEASE_PER_CALL: u32 = 64;

struct Scripts {
    rate: Script,
    reserve: Script,
    settle: Script,
    create: Script,
    revoke: Script,
    nonce: Script,
    counter: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let budget = include_str!("lua/budget_common.lua");
        Scripts {
            rate: Script::new(include_str!("lua/rate.lua")),
            reserve: Script::new(&format!("{budget}\n{}", include_str!("lua/reserve.lua"))),
            settle: Script::new(&format!("{budget}\n{}", include_str!("lua/settle.lua"))),
            create: Script::new(include_str!("lua/session_create.lua")),
            revoke: Script::new(include_str!("lua/session_revoke.lua")),
            nonce: Script::new(include_str!("lua/nonce.lua")),
            counter: Script::new(include_str!("lua/counter.lua")),
        }
    }
}

pub(crate) struct RedisStore {
    conn: ConnectionManager,
    scripts: Scripts,
}

/// Connection settings of the Redis backend.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// PEM certificates to trust for `rediss://` instead of the system's roots (a private CA).
    pub ca_pem: Option<Vec<u8>>,
}

impl RedisStore {
    /// Connects once (so a wrong address or password is reported now), then hands the client
    /// to a connection manager that reconnects on its own whenever the connection is lost.
    pub async fn connect(
        url: &str,
        options: &RedisOptions,
        deadline: Duration,
    ) -> Result<RedisStore, StateError> {
        if url.starts_with("rediss://") {
            // Several crates may race to install it; any provider installed first will do.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match &options.ca_pem {
            Some(pem) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => Client::open(url),
        }
        .map_err(|e| StateError::Unavailable(e.into()))?;

        // Connecting takes a handshake (and TLS) more than an operation: allow a few deadlines.
        let connect = (deadline * 4).max(Duration::from_millis(200));
        let probe = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        match tokio::time::timeout(connect * 2, probe).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(StateError::Unavailable(e.into())),
            Err(_) => return Err(StateError::Timeout(connect * 2)),
        }

        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(deadline.max(Duration::from_millis(10)) * 2))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StateError::Unavailable(e.into()))?;
        Ok(RedisStore {
            conn,
            scripts: Scripts::new(),
        })
    }
}

fn bad(what: &str) -> BackendError {
    BackendError::Other(format!("unexpected answer from a script: {what}"))
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn used5(v: &[i64]) -> Result<[u64; 5], BackendError> {
    if v.len() != 5 {
        return Err(bad("usage"));
    }
    Ok([u(v[0]), u(v[1]), u(v[2]), u(v[3]), u(v[4])])
}

#[async_trait]
impl Backend for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut c = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut c).await?;
        Ok(())
    }

    async fn rate(&self, req: RateReq) -> Result<RateRaw, BackendError> {
        let mut c = self.conn.clone();
        let r: Vec<i64> = self
            .scripts
            .rate
            .key(&req.key)
            .arg(req.now)
            .arg(req.t)
            .arg(req.tau)
            .invoke_async(&mut c)
            .await?;
        match r.as_slice() {
            [a, ahead] => Ok(RateRaw {
                allowed: *a == 1,
                ahead: u(*ahead),
            }),
            _ => Err(bad("rate")),
        }
    }

    async fn reserve(&self, req: ReserveReq) -> Result<ReserveRaw, BackendError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.reserve.prepare_invoke();
        inv.key(&req.keys.bucket)
            .key(&req.keys.index)
            .arg(&req.id)
            .arg(req.now)
            .arg(req.expires)
            .arg(req.keep_until)
            .arg(req.tomb_ttl);
        for w in req.want {
            inv.arg(w);
        }
        for l in req.limits {
            inv.arg(l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)));
        }
        inv.arg(RELEASE_PER_CALL);
        let r: Vec<i64> = inv.invoke_async(&mut c).await?;
        match r.split_first() {
            Some((1, rest)) => Ok(ReserveRaw::Reserved { used: used5(rest)? }),
            Some((0, [dim, rest @ ..])) if (1..=5).contains(dim) => Ok(ReserveRaw::Exceeded {
                dim: usize::try_from(*dim - 1).map_err(|_| bad("dimension"))?,
                used: used5(rest)?,
            }),
            _ => Err(bad("reserve")),
        }
    }

    async fn settle(&self, req: SettleReq) -> Result<SettleRaw, BackendError> {
        let mut c = self.conn.clone();
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(&req.keys.bucket)
            .key(&req.keys.index)
            .arg(&req.id)
            .arg(req.now)
            .arg(req.tomb_ttl);
        for a in req.actual {
            inv.arg(a);
        }
        inv.arg(RELEASE_PER_CALL);
        let r: Vec<i64> = inv.invoke_async(&mut c).await?;
        match r.as_slice() {
            [0] => Ok(SettleRaw::Unknown),
            [1, late, rest @ ..] => Ok(SettleRaw::Settled {
                used: used5(rest)?,
                late: *late == 1,
            }),
            _ => Err(bad("settle")),
        }
    }

    async fn create_session(&self, req: CreateReq) -> Result<CreateRaw, BackendError> {
        let mut c = self.conn.clone();
        let r: i64 = self
            .scripts
            .create
            .key(&req.keys.session)
            .key(req.keys.by_principal(&req.principal))
            .key(&req.keys.all)
            .arg(&req.id)
            .arg(&req.principal)
            .arg(req.now)
            .arg(req.expires)
            .arg(req.per_agent_cap)
            .arg(req.global_cap)
            .invoke_async(&mut c)
            .await?;
        match r {
            0 => Ok(CreateRaw::Created),
            1 => Ok(CreateRaw::PerAgentCap),
            2 => Ok(CreateRaw::GlobalCap),
            _ => Err(bad("create session")),
        }
    }

    async fn get_session(
        &self,
        keys: SessionKeys,
        now: u64,
    ) -> Result<Option<SessionRow>, BackendError> {
        let mut c = self.conn.clone();
        let (principal, created, expires): (Option<String>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(&keys.session)
                .arg("principal")
                .arg("created")
                .arg("expires")
                .query_async(&mut c)
                .await?;
        match (principal, created, expires) {
            (Some(principal), Some(created), Some(expires)) if expires > now => {
                Ok(Some(SessionRow {
                    principal,
                    created,
                    expires,
                }))
            }
            (Some(_), Some(_), Some(_)) | (None, None, None) => Ok(None),
            _ => Err(bad("session record")),
        }
    }

    async fn revoke_session(&self, keys: SessionKeys, now: u64) -> Result<bool, BackendError> {
        let mut c = self.conn.clone();
        // The principal names the per-agent index, a key the script must be given; it never
        // changes for an id, and the script checks it again.
        let principal: Option<String> = redis::cmd("HGET")
            .arg(&keys.session)
            .arg("principal")
            .query_async(&mut c)
            .await?;
        let Some(principal) = principal else {
            return Ok(false);
        };
        let r: i64 = self
            .scripts
            .revoke
            .key(&keys.session)
            .key(&keys.nonces)
            .key(&keys.counter)
            .key(&keys.all)
            .key(keys.by_principal(&principal))
            .arg(&keys.id)
            .arg(&principal)
            .arg(now)
            .invoke_async(&mut c)
            .await?;
        match r {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(bad("revoke")),
        }
    }

    async fn use_nonce(
        &self,
        keys: SessionKeys,
        nonce: String,
        now: u64,
    ) -> Result<NonceRaw, BackendError> {
        let mut c = self.conn.clone();
        let r: i64 = self
            .scripts
            .nonce
            .key(&keys.session)
            .key(&keys.nonces)
            .arg(nonce)
            .arg(now)
            .invoke_async(&mut c)
            .await?;
        match r {
            1 => Ok(NonceRaw::Fresh),
            0 => Ok(NonceRaw::Reused),
            -1 => Ok(NonceRaw::NoSession),
            _ => Err(bad("nonce")),
        }
    }

    async fn advance_counter(
        &self,
        keys: SessionKeys,
        value: u64,
        now: u64,
    ) -> Result<CounterRaw, BackendError> {
        let mut c = self.conn.clone();
        let r: Vec<i64> = self
            .scripts
            .counter
            .key(&keys.session)
            .key(&keys.counter)
            .arg(value)
            .arg(now)
            .invoke_async(&mut c)
            .await?;
        match r.as_slice() {
            [1, _] => Ok(CounterRaw::Advanced),
            [0, last] => Ok(CounterRaw::NotMonotonic(u(*last))),
            [-1, _] => Ok(CounterRaw::NoSession),
            _ => Err(bad("counter")),
        }
    }
}
