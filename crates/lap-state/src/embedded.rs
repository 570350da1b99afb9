//! The embedded backend: one SQLite database file, every check-and-update one transaction.
//!
//! Why SQLite (through `rusqlite` with the `bundled` feature): a crash-safe transactional
//! store in a library, compiled into the binary, so the default gateway needs nothing
//! installed and nothing running; its file survives restarts, and several processes on one
//! host may share it (`BEGIN IMMEDIATE` takes the write lock across processes).
//!
//! **Atomicity.** Each operation runs as `BEGIN IMMEDIATE … COMMIT`: the write lock is taken
//! before the first read, so the check and the update see no other writer in between. One
//! thread owns the connection and runs the operations in arrival order; operations waiting
//! together run in one transaction (group commit, one `fsync` for all of them), each inside its
//! own `SAVEPOINT`, so an operation that fails is rolled back alone. No answer leaves before the
//! transaction's `COMMIT` returned.
//!
//! **Durability.** WAL journal mode (readers never block the writer; a commit is one append).
//! `synchronous=FULL` for batches holding a budget, session, nonce or counter change: the WAL
//! is `fsync`ed at each commit, so an accepted nonce or a reservation survives not only a
//! killed process (that much holds with any setting, the data is in the OS's cache) but a power
//! loss or kernel crash — otherwise a nonce could be accepted again, or a budget spent twice,
//! after a reboot. Batches of rate-limit checks alone commit with `synchronous=NORMAL` (no
//! `fsync`; the WAL is synced at checkpoints, or by the next `FULL` commit): losing the last
//! instants of rate accounting in a power loss is harmless, and an `fsync` per call would cap
//! the gateway's call rate at the disk's. SQLite's WAL stays consistent either way.
//!
//! **Bounded.** Every row has an expiry instant; a sweep every second deletes (at most 1000
//! rows per table) those past it, measured by the latest `now` any operation carried (not the
//! machine's clock, so the two backends expire alike), less a margin of one minute.
//!
//! **Deadline.** Callers wait at most their deadline; an operation whose caller stopped
//! waiting before it ran is skipped. The queue is bounded: a full queue answers at once
//! (`STATE_UNAVAILABLE`) rather than growing.

use crate::backend::*;
use crate::error::{BackendError, StateError};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Operations waiting at most; beyond, callers are refused at once.
const QUEUE: usize = 8192;
/// Operations in one transaction at most.
const MAX_BATCH: usize = 256;
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_ROWS: u32 = 1000;
/// Rows are deleted one minute after their expiry (by the latest `now` seen): operations in
/// flight with a slightly older `now` still find them.
const SWEEP_MARGIN_US: u64 = 60_000_000;
/// Due reservations released or forgotten per budget operation at most.
const RELEASE_PER_CALL: u32 = 64;
/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;
/// Usage saturates here (amounts are at most 2^53 − 1 each; only overruns add up past that).
const USED_MAX: u64 = 1 << 62;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rate (
    k TEXT PRIMARY KEY, tat INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rate_expires ON rate(expires);
CREATE TABLE IF NOT EXISTS budget (
    k TEXT PRIMARY KEY,
    calls INTEGER NOT NULL, request_bytes INTEGER NOT NULL, response_bytes INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL, spend INTEGER NOT NULL,
    expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS budget_expires ON budget(expires);
CREATE TABLE IF NOT EXISTS reservation (
    bucket TEXT NOT NULL, id TEXT NOT NULL,
    released INTEGER NOT NULL, due INTEGER NOT NULL, keep INTEGER NOT NULL,
    calls INTEGER NOT NULL, request_bytes INTEGER NOT NULL, response_bytes INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL, spend INTEGER NOT NULL,
    PRIMARY KEY (bucket, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservation_due ON reservation(bucket, due);
CREATE INDEX IF NOT EXISTS reservation_keep ON reservation(keep);
CREATE TABLE IF NOT EXISTS session (
    k TEXT PRIMARY KEY, pk TEXT NOT NULL, ak TEXT NOT NULL, principal TEXT NOT NULL,
    created INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_principal ON session(pk, expires);
CREATE INDEX IF NOT EXISTS session_all ON session(ak, expires);
CREATE INDEX IF NOT EXISTS session_expires ON session(expires);
CREATE TABLE IF NOT EXISTS nonce (
    k TEXT NOT NULL, nonce TEXT NOT NULL, expires INTEGER NOT NULL,
    PRIMARY KEY (k, nonce)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonce_expires ON nonce(expires);
CREATE TABLE IF NOT EXISTS counter (
    k TEXT PRIMARY KEY, last INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counter_expires ON counter(expires);
";

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn n(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// One operation handed to the worker.
trait Work: Send {
    fn abandoned(&self) -> bool;
    fn durable(&self) -> bool;
    fn now(&self) -> u64;
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Done>;
    /// Answers without running (the transaction could not be started or was lost).
    fn fail(self: Box<Self>, e: BackendError);
}

/// An operation that ran, waiting for its transaction's commit before answering.
trait Done: Send {
    fn failed(&self) -> bool;
    fn finish(self: Box<Self>, commit: Result<(), BackendError>);
}

struct Task<F, R> {
    f: F,
    now: u64,
    durable: bool,
    tx: oneshot::Sender<Result<R, BackendError>>,
}

struct Pending<R> {
    result: Result<R, BackendError>,
    tx: oneshot::Sender<Result<R, BackendError>>,
}

impl<F, R> Work for Task<F, R>
where
    F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    R: Send + 'static,
{
    fn abandoned(&self) -> bool {
        self.tx.is_closed()
    }
    fn durable(&self) -> bool {
        self.durable
    }
    fn now(&self) -> u64 {
        self.now
    }
    fn run(self: Box<Self>, conn: &Connection) -> Box<dyn Done> {
        let Task { f, tx, .. } = *self;
        Box::new(Pending {
            result: f(conn).map_err(BackendError::from),
            tx,
        })
    }
    fn fail(self: Box<Self>, e: BackendError) {
        let _ = self.tx.send(Err(e));
    }
}

impl<R: Send + 'static> Done for Pending<R> {
    fn failed(&self) -> bool {
        self.result.is_err()
    }
    fn finish(self: Box<Self>, commit: Result<(), BackendError>) {
        let out = match commit {
            Ok(()) => self.result,
            Err(e) => Err(e),
        };
        // The caller may have stopped waiting (deadline): nothing to do then.
        let _ = self.tx.send(out);
    }
}

pub(crate) struct Embedded {
    tx: Mutex<Option<mpsc::SyncSender<Box<dyn Work>>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Embedded, StateError> {
        #[cfg(unix)]
        if !path.exists() {
            // Session ids are in this file: readable by the gateway's user only.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    StateError::Unavailable(BackendError::Other(format!(
                        "cannot create {}: {e}",
                        path.display()
                    )))
                })?;
        }
        let conn = Connection::open(path).map_err(|e| StateError::Unavailable(e.into()))?;
        prepare(&conn)?;
        let (tx, rx) = mpsc::sync_channel::<Box<dyn Work>>(QUEUE);
        let worker = std::thread::Builder::new()
            .name("lap-state-sqlite".into())
            .spawn(move || Worker::new(conn).run(rx))
            .map_err(|e| {
                StateError::Unavailable(BackendError::Other(format!(
                    "cannot start the state thread: {e}"
                )))
            })?;
        Ok(Embedded {
            tx: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(worker)),
        })
    }

    async fn submit<F, R>(&self, now: u64, durable: bool, f: F) -> Result<R, BackendError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task: Box<dyn Work> = Box::new(Task {
            f,
            now,
            durable,
            tx,
        });
        let sender = self
            .tx
            .lock()
            .map_err(|_| BackendError::Stopped)?
            .clone()
            .ok_or(BackendError::Stopped)?;
        sender.try_send(task).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => BackendError::Overloaded(QUEUE),
            mpsc::TrySendError::Disconnected(_) => BackendError::Stopped,
        })?;
        rx.await.map_err(|_| BackendError::Stopped)?
    }
}

impl Drop for Embedded {
    /// Closes the queue and waits for the worker to finish what it holds and close the
    /// database, so the file can be reopened at once.
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.worker.lock() {
            if let Some(w) = w.take() {
                let _ = w.join();
            }
        }
    }
}

fn prepare(conn: &Connection) -> Result<(), StateError> {
    let sql = |e: rusqlite::Error| StateError::Unavailable(e.into());
    conn.busy_timeout(Duration::from_secs(1)).map_err(sql)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StateError::Unavailable(BackendError::Other(format!(
            "the state database cannot use WAL mode (journal_mode={mode})"
        ))));
    }
    conn.execute_batch("PRAGMA synchronous=FULL;")
        .map_err(sql)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version > SCHEMA_VERSION {
        return Err(StateError::Corrupt(format!(
            "the state database has schema version {version}, newer than this gateway's {SCHEMA_VERSION}"
        )));
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
    ))
    .map_err(sql)?;
    Ok(())
}

struct Worker {
    conn: Connection,
    /// The latest `now` of any operation: the sweep's clock.
    high_water: u64,
    durable: bool,
}

impl Worker {
    fn new(conn: Connection) -> Worker {
        Worker {
            conn,
            high_water: 0,
            durable: true,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Box<dyn Work>>) {
        let mut last_sweep = Instant::now();
        loop {
            let first = match rx.recv_timeout(SWEEP_EVERY) {
                Ok(job) => Some(job),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                // Callers who stopped waiting (deadline) are not served: their operation
                // never happens, rather than happening unseen.
                batch.retain(|job| !job.abandoned());
                if !batch.is_empty() {
                    self.run_batch(batch);
                }
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                if let Err(e) = self.sweep() {
                    tracing::warn!(error = %e, "state: sweeping expired records failed");
                }
            }
        }
    }

    fn set_durable(&mut self, durable: bool) -> rusqlite::Result<()> {
        if durable != self.durable {
            self.conn.execute_batch(if durable {
                "PRAGMA synchronous=FULL"
            } else {
                "PRAGMA synchronous=NORMAL"
            })?;
            self.durable = durable;
        }
        Ok(())
    }

    fn run_batch(&mut self, batch: Vec<Box<dyn Work>>) {
        for job in &batch {
            self.high_water = self.high_water.max(job.now());
        }
        let durable = batch.iter().any(|j| j.durable());
        let begin = self
            .set_durable(durable)
            .and_then(|()| self.conn.execute_batch("BEGIN IMMEDIATE"));
        if let Err(e) = begin {
            let e = BackendError::from(e);
            for job in batch {
                job.fail(e.clone());
            }
            return;
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut broken = None;
        let mut jobs = batch.into_iter();
        for job in jobs.by_ref() {
            // Checked again inside the transaction: `BEGIN IMMEDIATE` may have waited for
            // another process's lock past the caller's deadline.
            if job.abandoned() {
                continue;
            }
            if let Err(e) = self.conn.execute_batch("SAVEPOINT op") {
                let e = BackendError::from(e);
                job.fail(e.clone());
                broken = Some(e);
                break;
            }
            let d = job.run(&self.conn);
            let end = if d.failed() {
                self.conn.execute_batch("ROLLBACK TO op; RELEASE op")
            } else {
                self.conn.execute_batch("RELEASE op")
            };
            done.push(d);
            if let Err(e) = end {
                broken = Some(BackendError::from(e));
                break;
            }
        }
        let commit = match broken {
            Some(e) => Err(e),
            None => self
                .conn
                .execute_batch("COMMIT")
                .map_err(BackendError::from),
        };
        if commit.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        // Operations after a failure in the batch did not run: they fail with it.
        if let Err(e) = &commit {
            for job in jobs {
                job.fail(e.clone());
            }
        }
        for d in done {
            d.finish(commit.clone());
        }
    }

    fn sweep(&mut self) -> rusqlite::Result<()> {
        let Some(before) = self.high_water.checked_sub(SWEEP_MARGIN_US) else {
            return Ok(());
        };
        self.set_durable(false)?;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let r = (|| {
            for (table, key, col) in [
                ("rate", "k", "expires"),
                ("budget", "k", "expires"),
                ("reservation", "bucket, id", "keep"),
                ("session", "k", "expires"),
                ("nonce", "k, nonce", "expires"),
                ("counter", "k", "expires"),
            ] {
                self.conn
                    .prepare_cached(&format!(
                        "DELETE FROM {table} WHERE ({key}) IN \
                         (SELECT {key} FROM {table} WHERE {col} <= ?1 LIMIT {SWEEP_ROWS})"
                    ))?
                    .execute([i(before)])?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => self.conn.execute_batch("COMMIT"),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

const DIMS: &str = "calls, request_bytes, response_bytes, duration_ms, spend";

fn read5(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<[u64; 5]> {
    Ok([
        n(r.get(from)?),
        n(r.get(from + 1)?),
        n(r.get(from + 2)?),
        n(r.get(from + 3)?),
        n(r.get(from + 4)?),
    ])
}

fn used(conn: &Connection, bucket: &str) -> rusqlite::Result<[u64; 5]> {
    Ok(conn
        .prepare_cached(&format!("SELECT {DIMS} FROM budget WHERE k = ?1"))?
        .query_row([bucket], |r| read5(r, 0))
        .optional()?
        .unwrap_or([0; 5]))
}

fn write_used(
    conn: &Connection,
    bucket: &str,
    used: [u64; 5],
    keep_until: Option<u64>,
) -> rusqlite::Result<()> {
    let u = used.map(|v| i(v.min(USED_MAX)));
    match keep_until {
        Some(keep) => conn
            .prepare_cached(&format!(
                "INSERT INTO budget (k, {DIMS}, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(k) DO UPDATE SET calls = ?2, request_bytes = ?3,
                 response_bytes = ?4, duration_ms = ?5, spend = ?6, expires = ?7"
            ))?
            .execute(rusqlite::params![
                bucket,
                u[0],
                u[1],
                u[2],
                u[3],
                u[4],
                i(keep)
            ])?,
        None => conn
            .prepare_cached(
                "UPDATE budget SET calls = ?2, request_bytes = ?3, response_bytes = ?4,
                 duration_ms = ?5, spend = ?6 WHERE k = ?1",
            )?
            .execute(rusqlite::params![bucket, u[0], u[1], u[2], u[3], u[4]])?,
    };
    Ok(())
}

/// The same step as `release_due` in `lua/budget_common.lua`.
fn release_due(conn: &Connection, bucket: &str, now: u64, tomb_ttl: u64) -> rusqlite::Result<()> {
    let due: Vec<(String, bool, [u64; 5])> = conn
        .prepare_cached(&format!(
            "SELECT id, released, {DIMS} FROM reservation WHERE bucket = ?1 AND due <= ?2
             ORDER BY due LIMIT {RELEASE_PER_CALL}"
        ))?
        .query_map(rusqlite::params![bucket, i(now)], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, read5(r, 2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if due.is_empty() {
        return Ok(());
    }
    let mut u = used(conn, bucket)?;
    for (id, released, amounts) in due {
        if released {
            conn.prepare_cached("DELETE FROM reservation WHERE bucket = ?1 AND id = ?2")?
                .execute(rusqlite::params![bucket, id])?;
        } else {
            for (v, a) in u.iter_mut().zip(amounts) {
                *v = v.saturating_sub(a);
            }
            conn.prepare_cached(
                "UPDATE reservation SET released = 1, due = ?3 WHERE bucket = ?1 AND id = ?2",
            )?
            .execute(rusqlite::params![
                bucket,
                id,
                i(now.saturating_add(tomb_ttl))
            ])?;
        }
    }
    write_used(conn, bucket, u, None)
}

fn session_expires(conn: &Connection, key: &str, now: u64) -> rusqlite::Result<Option<u64>> {
    Ok(conn
        .prepare_cached("SELECT expires FROM session WHERE k = ?1 AND expires > ?2")?
        .query_row(rusqlite::params![key, i(now)], |r| r.get::<_, i64>(0))
        .optional()?
        .map(n))
}

#[async_trait]
impl Backend for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.submit(0, false, |conn| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
        })
        .await
        .map(|_| ())
    }

    async fn rate(&self, req: RateReq) -> Result<RateRaw, BackendError> {
        self.submit(req.now, false, move |conn| {
            let tat: Option<i64> = conn
                .prepare_cached("SELECT tat FROM rate WHERE k = ?1")?
                .query_row([&req.key], |r| r.get(0))
                .optional()?;
            let base = tat.map(n).unwrap_or(req.now).max(req.now);
            if base - req.now > req.tau {
                return Ok(RateRaw {
                    allowed: false,
                    ahead: base - req.now,
                });
            }
            let new = base + req.t;
            conn.prepare_cached(
                "INSERT INTO rate (k, tat, expires) VALUES (?1, ?2, ?2)
                 ON CONFLICT(k) DO UPDATE SET tat = ?2, expires = ?2",
            )?
            .execute(rusqlite::params![req.key, i(new)])?;
            Ok(RateRaw {
                allowed: true,
                ahead: new - req.now,
            })
        })
        .await
    }

    async fn reserve(&self, req: ReserveReq) -> Result<ReserveRaw, BackendError> {
        self.submit(req.now, true, move |conn| {
            let bucket = &req.keys.bucket;
            release_due(conn, bucket, req.now, req.tomb_ttl)?;
            let mut u = used(conn, bucket)?;
            for d in 0..5 {
                if let Some(limit) = req.limits[d] {
                    if req.want[d] > limit.saturating_sub(u[d]) || u[d] > limit {
                        return Ok(ReserveRaw::Exceeded { dim: d, used: u });
                    }
                }
            }
            for (v, w) in u.iter_mut().zip(req.want) {
                *v = v.saturating_add(w);
            }
            write_used(conn, bucket, u, Some(req.keep_until))?;
            let w = req.want.map(i);
            conn.prepare_cached(&format!(
                "INSERT INTO reservation (bucket, id, released, due, keep, {DIMS})
                 VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(rusqlite::params![
                bucket,
                req.id,
                i(req.expires),
                i(req.keep_until),
                w[0],
                w[1],
                w[2],
                w[3],
                w[4]
            ])?;
            Ok(ReserveRaw::Reserved { used: u })
        })
        .await
    }

    async fn settle(&self, req: SettleReq) -> Result<SettleRaw, BackendError> {
        self.submit(req.now, true, move |conn| {
            let bucket = &req.keys.bucket;
            release_due(conn, bucket, req.now, req.tomb_ttl)?;
            let rec: Option<(bool, [u64; 5])> = conn
                .prepare_cached(&format!(
                    "SELECT released, {DIMS} FROM reservation WHERE bucket = ?1 AND id = ?2"
                ))?
                .query_row(rusqlite::params![bucket, req.id], |r| {
                    Ok((r.get::<_, i64>(0)? != 0, read5(r, 1)?))
                })
                .optional()?;
            let Some((late, reserved)) = rec else {
                return Ok(SettleRaw::Unknown);
            };
            let mut u = used(conn, bucket)?;
            for d in 0..5 {
                let back = if late { 0 } else { reserved[d] };
                u[d] = u[d].saturating_sub(back).saturating_add(req.actual[d]);
            }
            write_used(conn, bucket, u, None)?;
            conn.prepare_cached("DELETE FROM reservation WHERE bucket = ?1 AND id = ?2")?
                .execute(rusqlite::params![bucket, req.id])?;
            Ok(SettleRaw::Settled { used: u, late })
        })
        .await
    }

    async fn create_session(&self, req: CreateReq) -> Result<CreateRaw, BackendError> {
        self.submit(req.now, true, move |conn| {
            let pk = req.keys.by_principal(&req.principal);
            let count = |col: &str, key: &str| -> rusqlite::Result<u64> {
                conn.prepare_cached(&format!(
                    "SELECT count(*) FROM session WHERE {col} = ?1 AND expires > ?2"
                ))?
                .query_row(rusqlite::params![key, i(req.now)], |r| r.get::<_, i64>(0))
                .map(n)
            };
            if count("pk", &pk)? >= u64::from(req.per_agent_cap) {
                return Ok(CreateRaw::PerAgentCap);
            }
            if count("ak", &req.keys.all)? >= u64::from(req.global_cap) {
                return Ok(CreateRaw::GlobalCap);
            }
            conn.prepare_cached(
                "INSERT INTO session (k, pk, ak, principal, created, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(rusqlite::params![
                req.keys.session,
                pk,
                req.keys.all,
                req.principal,
                i(req.now),
                i(req.expires)
            ])?;
            Ok(CreateRaw::Created)
        })
        .await
    }

    async fn get_session(
        &self,
        keys: SessionKeys,
        now: u64,
    ) -> Result<Option<SessionRow>, BackendError> {
        self.submit(now, false, move |conn| {
            conn.prepare_cached(
                "SELECT principal, created, expires FROM session WHERE k = ?1 AND expires > ?2",
            )?
            .query_row(rusqlite::params![keys.session, i(now)], |r| {
                Ok(SessionRow {
                    principal: r.get(0)?,
                    created: n(r.get(1)?),
                    expires: n(r.get(2)?),
                })
            })
            .optional()
        })
        .await
    }

    async fn revoke_session(&self, keys: SessionKeys, now: u64) -> Result<bool, BackendError> {
        self.submit(now, true, move |conn| {
            let live = session_expires(conn, &keys.session, now)?.is_some();
            conn.prepare_cached("DELETE FROM session WHERE k = ?1")?
                .execute([&keys.session])?;
            conn.prepare_cached("DELETE FROM nonce WHERE k = ?1")?
                .execute([&keys.nonces])?;
            conn.prepare_cached("DELETE FROM counter WHERE k = ?1")?
                .execute([&keys.counter])?;
            Ok(live)
        })
        .await
    }

    async fn use_nonce(
        &self,
        keys: SessionKeys,
        nonce: String,
        now: u64,
    ) -> Result<NonceRaw, BackendError> {
        self.submit(now, true, move |conn| {
            let Some(expires) = session_expires(conn, &keys.session, now)? else {
                return Ok(NonceRaw::NoSession);
            };
            let added = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO nonce (k, nonce, expires) VALUES (?1, ?2, ?3)",
                )?
                .execute(rusqlite::params![keys.nonces, nonce, i(expires)])?;
            Ok(if added == 1 {
                NonceRaw::Fresh
            } else {
                NonceRaw::Reused
            })
        })
        .await
    }

    async fn advance_counter(
        &self,
        keys: SessionKeys,
        value: u64,
        now: u64,
    ) -> Result<CounterRaw, BackendError> {
        self.submit(now, true, move |conn| {
            let Some(expires) = session_expires(conn, &keys.session, now)? else {
                return Ok(CounterRaw::NoSession);
            };
            let last: Option<i64> = conn
                .prepare_cached("SELECT last FROM counter WHERE k = ?1")?
                .query_row([&keys.counter], |r| r.get(0))
                .optional()?;
            if let Some(last) = last.map(n) {
                if value <= last {
                    return Ok(CounterRaw::NotMonotonic(last));
                }
            }
            conn.prepare_cached(
                "INSERT INTO counter (k, last, expires) VALUES (?1, ?2, ?3)
                 ON CONFLICT(k) DO UPDATE SET last = ?2",
            )?
            .execute(rusqlite::params![keys.counter, i(value), i(expires)])?;
            Ok(CounterRaw::Advanced)
        })
        .await
    }
}
