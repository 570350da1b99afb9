//! Latency of each operation on each backend, one caller at a time (and one concurrent
//! figure): `cargo test -p lap-state --test latency -- --ignored --nocapture`. Not a benchmark
//! harness — a quick measurement on whatever machine runs it, printed as a table. Debug builds
//! unless run with `--release`.

// A panic is the failure report of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, Kind};
use lap_state::*;
use std::time::{Duration, Instant};

const N: usize = 400;

fn row(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let p = |q: f64| d[((d.len() as f64 * q) as usize).min(d.len() - 1)];
    let mean = d.iter().sum::<Duration>() / d.len() as u32;
    println!(
        "  {name:<16} p50 {:>8.1} µs   p99 {:>8.1} µs   mean {:>8.1} µs",
        p(0.5).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
}

async fn measure(kind: Kind, appendfsync: &str) {
    let env = Env::new(kind).await;
    if let Some(server) = &env.redis {
        // The suite's server fsyncs every write (`always`); production setups often choose
        // `everysec`.
        let admin = format!(
            "redis://default:{}@127.0.0.1:{}/",
            common::ADMIN_PASSWORD,
            server.port
        );
        let mut c = redis::Client::open(admin.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg(appendfsync)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let s = &env.state;
    let now = Timestamp::now();
    let lim = Limits {
        calls: Some(u64::MAX >> 12),
        ..Limits::default()
    };
    match kind {
        Kind::Embedded => println!("embedded (SQLite, WAL, synchronous FULL/NORMAL):"),
        Kind::Redis => println!("redis on loopback (appendfsync {appendfsync}):"),
    }
    let mut t = Vec::new();
    for i in 0..N {
        let start = Instant::now();
        s.check_rate(&format!("k{}", i % 10), Limit::per_second(1_000_000), now)
            .await
            .unwrap();
        t.push(start.elapsed());
    }
    row("check_rate", t);
    let (mut tr, mut ts) = (Vec::new(), Vec::new());
    for _ in 0..N {
        let start = Instant::now();
        let ReserveOutcome::Reserved(r) = s
            .reserve("b", Window::Day, &lim, &Amounts::ONE_CALL, now)
            .await
            .unwrap()
        else {
            panic!()
        };
        tr.push(start.elapsed());
        let start = Instant::now();
        s.settle(&r, &Amounts::ONE_CALL, now).await.unwrap();
        ts.push(start.elapsed());
    }
    row("reserve", tr);
    row("settle", ts);
    let (mut tc, mut tg) = (Vec::new(), Vec::new());
    let mut ids = Vec::new();
    for i in 0..N {
        let start = Instant::now();
        let sess = s
            .create_session(&format!("a{i}"), Duration::from_secs(600), 10, 100_000, now)
            .await
            .unwrap();
        tc.push(start.elapsed());
        let start = Instant::now();
        s.get_session(&sess.id, now).await.unwrap().unwrap();
        tg.push(start.elapsed());
        ids.push(sess.id);
    }
    row("create_session", tc);
    row("get_session", tg);
    let (mut tn, mut tk) = (Vec::new(), Vec::new());
    for (i, id) in ids.iter().enumerate() {
        let start = Instant::now();
        s.use_nonce(&ids[0], &format!("n{i}"), now).await.unwrap();
        tn.push(start.elapsed());
        let start = Instant::now();
        s.advance_counter(id, 1, now).await.unwrap();
        tk.push(start.elapsed());
    }
    row("use_nonce", tn);
    row("advance_counter", tk);
    // 32 callers at once: reservations per second.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let ReserveOutcome::Reserved(r) = s
                    .reserve("c", Window::Day, &lim, &Amounts::ONE_CALL, now)
                    .await
                    .unwrap()
                else {
                    panic!()
                };
                s.settle(&r, &Amounts::ONE_CALL, now).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let el = start.elapsed();
    println!(
        "  32 callers: {:.0} reserve+settle pairs/s",
        1600.0 / el.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn latency_per_operation() {
    measure(Kind::Embedded, "").await;
    measure(Kind::Redis, "always").await;
    measure(Kind::Redis, "everysec").await;
}
