//! What only the embedded backend has: a file (its mode, its schema version), another process
//! holding its lock past the deadline, and the sweep that keeps it bounded.

// A panic is the failure report of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::options;
use lap_state::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records what the observer hook is told.
#[derive(Default)]
struct Seen(Mutex<Vec<(&'static str, &'static str, Option<&'static str>)>>);

impl Observer for Seen {
    fn observe(
        &self,
        backend: &'static str,
        op: &'static str,
        _elapsed: Duration,
        error: Option<&'static str>,
    ) {
        self.0.lock().unwrap().push((backend, op, error));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_deadline_when_another_process_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let deadline = Duration::from_millis(50);
    let seen = Arc::new(Seen::default());
    let s = State::open_embedded(
        &path,
        Options {
            deadline,
            observer: Some(seen.clone()),
            ..options("lapt:")
        },
    )
    .unwrap();
    let now = Timestamp::now();
    let sess = s
        .create_session("agent", Duration::from_secs(60), 5, 50, now)
        .await
        .unwrap();

    // Another writer (as another process would) takes the write lock and keeps it.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let e = s.use_nonce(&sess.id, "blocked", now).await.unwrap_err();
    assert_eq!(e.code(), "STATE_TIMEOUT");
    assert!(started.elapsed() < deadline + Duration::from_millis(250));
    other.execute_batch("COMMIT").unwrap();
    // The metrics hook saw the session created and the timeout.
    assert_eq!(
        seen.0.lock().unwrap().as_slice(),
        [
            ("embedded", "create_session", None),
            ("embedded", "use_nonce", Some("STATE_TIMEOUT"))
        ]
    );

    // The lock gone, service resumes; the operation that timed out never took effect.
    let by = Instant::now() + Duration::from_secs(5);
    loop {
        match s.use_nonce(&sess.id, "blocked", now).await {
            Ok(o) => {
                assert_eq!(o, NonceOutcome::Fresh);
                break;
            }
            Err(e) => {
                assert!(e.is_store_failure());
                assert!(Instant::now() < by);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn embedded_file_is_private_and_in_wal_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s = State::open_embedded(&path, options("lapt:")).unwrap();
    s.ping().await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let c = rusqlite::Connection::open(&path).unwrap();
    let jm: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
}

#[tokio::test]
async fn embedded_refuses_a_newer_schema_and_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(State::open_embedded(&path, options("lapt:")).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let e = State::open_embedded(&path, options("lapt:")).unwrap_err();
    assert_eq!(e.code(), "STATE_CORRUPT");
    let e = State::open_embedded(dir.path().join("no/such/dir/state.db"), options("lapt:"))
        .unwrap_err();
    assert_eq!(e.code(), "STATE_UNAVAILABLE");
    let e = State::open_embedded(
        dir.path().join("x.db"),
        Options {
            prefix: "has space".into(),
            ..options("lapt:")
        },
    )
    .unwrap_err();
    assert_eq!(e.code(), "STATE_KEY_INVALID");
}

/// Expired records are deleted (storage stays bounded), by the latest `now` operations carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sweeps_expired_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let s = State::open_embedded(&path, options("lapt:")).unwrap();
    let t0 = Timestamp::from_unix_micros(1_764_410_400_000_000);
    let sess = s
        .create_session("agent", Duration::from_secs(1), 5, 50, t0)
        .await
        .unwrap();
    for i in 0..50 {
        s.use_nonce(&sess.id, &format!("n{i}"), t0).await.unwrap();
    }
    s.advance_counter(&sess.id, 1, t0).await.unwrap();
    s.check_rate("r", Limit::per_second(1), t0).await.unwrap();
    let lim = Limits::default();
    let ReserveOutcome::Reserved(r) = s
        .reserve("b", Window::Hour, &lim, &Amounts::ONE_CALL, t0)
        .await
        .unwrap()
    else {
        panic!()
    };
    s.settle(&r, &Amounts::ONE_CALL, t0).await.unwrap();
    let count = |table: &str| -> i64 {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count("nonce"), 50);
    // Much later (the budget window, its grace, and the sweep's margin all past).
    let later = t0 + Duration::from_secs(3 * 3600);
    s.check_rate("other", Limit::per_second(1), later)
        .await
        .unwrap();
    let by = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = ["nonce", "session", "counter", "budget", "reservation"]
            .iter()
            .map(|t| count(t))
            .sum::<i64>()
            + count("rate")
            - 1;
        if left == 0 {
            break;
        }
        assert!(Instant::now() < by, "{left} expired rows left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
