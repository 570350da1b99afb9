//! What only the Redis backend has: authentication and TLS, a server that dies and comes
//! back under load, persistence across its restart.

// A panic is the failure report of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{free_port, options, RedisServer, Tls, PASSWORD, USER};
use lap_state::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn connect(url: &str, opts: Options) -> Result<State, StateError> {
    State::connect_redis(url, RedisOptions::default(), opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_acl_user_in_the_url_and_refused_credentials() {
    let server = RedisServer::start();
    // The URL's user and password (an ACL user; the default user is off).
    let s = connect(&server.url(), options("lapt:")).await.unwrap();
    s.ping().await.unwrap();
    assert_eq!(s.backend_name(), "redis");

    let started = Instant::now();
    for url in [
        server.url_with(USER, "wrong-password"),
        server.url_with("nobody", PASSWORD),
        format!("redis://127.0.0.1:{}/", server.port),
    ] {
        let e = connect(&url, options("lapt:")).await.unwrap_err();
        assert_eq!(e.code(), "STATE_UNAVAILABLE", "{url}: {e}");
        // The error names the cause, never the password.
        assert!(!e.to_string().contains(PASSWORD));
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // The ACL user may touch only keys under `lapt*`: a gateway configured with another prefix
    // is refused by the server, and fails closed.
    let outside = connect(&server.url(), options("other:")).await.unwrap();
    let e = outside
        .check_rate("k", Limit::per_second(1), Timestamp::now())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "STATE_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_connect_is_reported_at_once() {
    let port = free_port();
    let started = Instant::now();
    let e = connect(&format!("redis://127.0.0.1:{port}/"), options("lapt:"))
        .await
        .unwrap_err();
    assert!(e.is_store_failure());
    assert_eq!(e.code(), "STATE_UNAVAILABLE");
    assert!(started.elapsed() < Duration::from_secs(2));
    let e = connect("http://127.0.0.1/", options("lapt:"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "STATE_UNAVAILABLE");
}

/// `rediss://` against a redis-server with TLS and a private CA made by the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let tls = Tls::generate();
    let server = RedisServer::start_tls(&tls);
    let url = server.url();
    assert!(url.starts_with("rediss://"));
    let s = State::connect_redis(
        &url,
        RedisOptions {
            ca_pem: Some(tls.ca_pem.clone().into_bytes()),
        },
        options("lapt:"),
    )
    .await
    .unwrap();
    let now = Timestamp::now();
    let sess = s
        .create_session("agent", Duration::from_secs(30), 5, 50, now)
        .await
        .unwrap();
    assert_eq!(
        s.use_nonce(&sess.id, "over-tls", now).await.unwrap(),
        NonceOutcome::Fresh
    );
    assert_eq!(
        s.use_nonce(&sess.id, "over-tls", now).await.unwrap(),
        NonceOutcome::Reused
    );
    // Without the CA the server's certificate is not trusted.
    let e = connect(&url, options("lapt:")).await.unwrap_err();
    assert_eq!(e.code(), "STATE_UNAVAILABLE");
}

/// A SIGKILLed Redis keeps, after its restart, every nonce, counter, budget and session it
/// acknowledged (AOF with `appendfsync always`), and the same client object carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_what_it_acknowledged() {
    let mut server = RedisServer::start();
    let s = connect(&server.url(), options("lapt:")).await.unwrap();
    let now = Timestamp::now();
    let sess = s
        .create_session("agent", Duration::from_secs(120), 5, 50, now)
        .await
        .unwrap();
    s.use_nonce(&sess.id, "before", now).await.unwrap();
    s.advance_counter(&sess.id, 7, now).await.unwrap();
    let lim = Limits {
        calls: Some(1),
        ..Limits::default()
    };
    assert!(matches!(
        s.reserve("b", Window::Day, &lim, &Amounts::ONE_CALL, now)
            .await
            .unwrap(),
        ReserveOutcome::Reserved(_)
    ));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        match s.use_nonce(&sess.id, "before", now).await {
            Ok(o) => break o,
            Err(e) => {
                assert!(e.is_store_failure(), "{e}");
                assert!(Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(got, NonceOutcome::Reused);
    assert_eq!(
        s.advance_counter(&sess.id, 7, now).await.unwrap(),
        CounterOutcome::NotMonotonic { last: 7 }
    );
    assert!(matches!(
        s.reserve("b", Window::Day, &lim, &Amounts::ONE_CALL, now)
            .await
            .unwrap(),
        ReserveOutcome::Exceeded { .. }
    ));
    assert_eq!(
        s.get_session(&sess.id, now)
            .await
            .unwrap()
            .unwrap()
            .principal,
        "agent"
    );
}

#[derive(Debug)]
struct Op {
    started: Instant,
    elapsed: Duration,
    nonce: Option<(String, NonceOutcome)>,
    error: Option<&'static str>,
}

/// Eight tasks spend nonces and budget; Redis is SIGKILLed under them, left dead for a
/// second, and started again. While it is dead every operation fails with a stable store code
/// within the deadline (plus scheduling slack); once it is back the same `State` serves again
/// without being re-created, and no nonce was ever fresh twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_load_fails_closed_within_the_deadline_then_recovers() {
    let mut server = RedisServer::start();
    let deadline = Duration::from_millis(100);
    let slack = Duration::from_millis(400);
    let s = connect(
        &server.url(),
        Options {
            deadline,
            ..options("lapt:")
        },
    )
    .await
    .unwrap();
    let sess = s
        .create_session("agent", Duration::from_secs(600), 5, 50, Timestamp::now())
        .await
        .unwrap();
    let sid = Arc::new(sess.id);
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(Mutex::new(Vec::<Op>::new()));
    let test_start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (s, sid, stop, ops) = (s.clone(), sid.clone(), stop.clone(), ops.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut n = 0;
            // Bounded: at most 20 s and 20000 operations per task, paced.
            while !stop.load(Ordering::Relaxed)
                && test_start.elapsed() < Duration::from_secs(20)
                && n < 20_000
            {
                n += 1;
                let nonce = format!("t{task}-{i}");
                let started = Instant::now();
                let r = if n % 2 == 0 {
                    s.use_nonce(&sid, &nonce, Timestamp::now())
                        .await
                        .map(|o| Some((nonce.clone(), o)))
                } else {
                    let lim = Limits {
                        calls: Some(1_000_000),
                        ..Limits::default()
                    };
                    match s
                        .reserve(
                            "load",
                            Window::Day,
                            &lim,
                            &Amounts::ONE_CALL,
                            Timestamp::now(),
                        )
                        .await
                    {
                        Ok(ReserveOutcome::Reserved(r)) => s
                            .settle(&r, &Amounts::ONE_CALL, Timestamp::now())
                            .await
                            .map(|_| None),
                        Ok(o) => panic!("{o:?}"),
                        Err(e) => Err(e),
                    }
                };
                let elapsed = started.elapsed();
                let failed = r.is_err();
                let op = match r {
                    Ok(nonce) => Op {
                        started,
                        elapsed,
                        nonce,
                        error: None,
                    },
                    Err(e) => Op {
                        started,
                        elapsed,
                        nonce: None,
                        error: Some(e.code()),
                    },
                };
                // A nonce whose answer was an error is tried again (its fate is unknown);
                // otherwise the next one.
                if !failed && n % 2 == 0 {
                    i += 1;
                }
                ops.lock().unwrap().push(op);
                let pause = if failed { 10 } else { 1 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed = Instant::now();
    server.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restarted = Instant::now();
    server.restart();
    // Until the client has reconnected, then one more second of service.
    let recover_by = Instant::now() + Duration::from_secs(10);
    let recovered = loop {
        if s.ping().await.is_ok() {
            break Instant::now();
        }
        assert!(Instant::now() < recover_by, "no recovery within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let ops = std::mem::take(&mut *ops.lock().unwrap());

    let mut fresh: HashMap<String, usize> = HashMap::new();
    let (mut before, mut dead, mut after) = (0, 0, 0);
    for op in &ops {
        // Each operation answered within its deadline (a settle after a reserve: two).
        assert!(
            op.elapsed <= deadline * 2 + slack,
            "took {:?}: {op:?}",
            op.elapsed
        );
        if let Some(code) = op.error {
            assert!(
                code == "STATE_UNAVAILABLE" || code == "STATE_TIMEOUT",
                "{op:?}"
            );
        }
        if let Some((nonce, NonceOutcome::Fresh)) = &op.nonce {
            *fresh.entry(nonce.clone()).or_default() += 1;
        }
        if op.started + op.elapsed < killed {
            before += usize::from(op.error.is_none());
        } else if op.started > killed + Duration::from_millis(50)
            && op.started + op.elapsed < restarted
        {
            assert!(op.error.is_some(), "served while Redis was dead: {op:?}");
            dead += 1;
        } else if op.started > recovered {
            after += usize::from(op.error.is_none());
        }
    }
    eprintln!("{before} served before the kill, {dead} refused while dead, {after} served after");
    assert!(before > 20, "{before} operations before the kill");
    assert!(dead > 8, "{dead} operations while dead");
    assert!(after > 20, "{after} operations after recovery");
    assert!(fresh.values().all(|&n| n == 1));
    // Every nonce acknowledged as fresh is still known after the restart.
    for nonce in fresh.keys().take(200) {
        assert_eq!(
            s.use_nonce(&sid, nonce, Timestamp::now()).await.unwrap(),
            NonceOutcome::Reused
        );
    }
}
