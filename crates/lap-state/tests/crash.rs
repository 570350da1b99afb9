//! Crash safety of the embedded store: a child process hammers budget reservations and
//! nonces on one database and is SIGKILLed at a random instant, six times over (its work outlasts the longest run, so each kill lands mid-run); after every
//! kill the database reopens, and in the end no budget is over-spent and no nonce was ever
//! accepted twice.
//!
//! The child is this test binary run again (`crash_child`, a no-op unless the variable
//! `LAP_STATE_CRASH_CHILD` names the database), so there is nothing extra to build. It prints
//! a line (`@ …`) for each answer only after the answer came back (the transaction committed): what
//! the parent read was durable.

// A panic is the failure report of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::options;
use lap_state::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "LAP_STATE_CRASH_CHILD";
const SESSION_ENV: &str = "LAP_STATE_CRASH_SESSION";
const CALLS: u64 = 1500;
const SPEND: u64 = 4000;
const NONCES: usize = 5000;
const ROUNDS: usize = 6;

fn t0() -> Timestamp {
    Timestamp::from_unix_micros(1_764_410_400_000_000)
}

fn limits() -> Limits {
    Limits {
        calls: Some(CALLS),
        spend: Some(SPEND),
        ..Limits::default()
    }
}

fn want(i: u64) -> Amounts {
    Amounts {
        calls: 1,
        spend: 1 + i % 5,
        ..Amounts::ZERO
    }
}

fn opts() -> Options {
    Options {
        // The reservations of a killed child must stay reserved for the whole test.
        reservation_ttl: Duration::from_secs(3600),
        ..options("lapt:")
    }
}

/// The child: eight tasks, each reserving (and settling half of what it reserves) and trying
/// every nonce in turn, for at most 20 s.
#[test]
fn crash_child() {
    let Ok(db) = std::env::var(CHILD_ENV) else {
        return;
    };
    let session = std::env::var(SESSION_ENV).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let s = State::open_embedded(&db, opts()).unwrap();
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let say = |out: &Arc<Mutex<std::io::Stdout>>, line: String| {
            let mut o = out.lock().unwrap();
            writeln!(o, "@ {line}").unwrap();
            o.flush().unwrap();
        };
        say(&out, "ready".into());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let (s, out, session) = (s.clone(), out.clone(), session.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = task;
                let mut next_nonce = task as usize;
                while start.elapsed() < Duration::from_secs(20) && next_nonce < NONCES {
                    match s
                        .reserve("crash", Window::Day, &limits(), &want(i), t0())
                        .await
                    {
                        Ok(ReserveOutcome::Reserved(r)) => {
                            say(&out, format!("R {} {}", r.id, r.reserved.spend));
                            if i % 2 == 0 {
                                s.settle(&r, &r.reserved, t0()).await.unwrap();
                            }
                        }
                        Ok(ReserveOutcome::Exceeded { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    let nonce = format!("n{next_nonce}");
                    if s.use_nonce(&session, &nonce, t0()).await.unwrap() == NonceOutcome::Fresh {
                        say(&out, format!("F {nonce}"));
                    }
                    next_nonce += 8;
                    i += 8;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        say(&out, "done".into());
    });
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_sigkill_under_load_never_overspends_or_reuses_a_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let session = {
        let s = State::open_embedded(&db, opts()).unwrap();
        s.create_session("agent", Duration::from_secs(3600), 5, 50, t0())
            .await
            .unwrap()
            .id
    };
    let exe = std::env::current_exe().unwrap();
    let mut reserved: HashMap<String, u64> = HashMap::new();
    let mut fresh: HashMap<String, usize> = HashMap::new();
    let mut completed = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .env(SESSION_ENV, &session)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child's store to be open, then let it run a random while.
        loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
            if line.ends_with("@ ready") {
                break;
            }
        }
        let run = Duration::from_millis(20 + random_below(400));
        std::thread::sleep(run);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let mut lines = 0;
        // The child's protocol follows "@ " (the test harness may have printed before it on
        // the same line); other lines are the harness's.
        for line in rx.try_iter() {
            let Some((_, line)) = line.split_once("@ ") else {
                continue;
            };
            lines += 1;
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("R"), Some(id), Some(spend)) => {
                    assert!(
                        reserved.insert(id.into(), spend.parse().unwrap()).is_none(),
                        "reservation {id} twice"
                    );
                }
                (Some("F"), Some(nonce), None) => *fresh.entry(nonce.into()).or_default() += 1,
                (Some("done"), None, None) => completed += 1,
                _ => panic!("unexpected line from the child: {line}"),
            }
        }
        eprintln!("round {round}: killed after {run:?}, {lines} answers");
    }
    assert!(
        completed <= 1,
        "the child finished before its kill {completed} times"
    );

    // No nonce was accepted twice across the kills; every one accepted is still known.
    for (nonce, n) in &fresh {
        assert_eq!(*n, 1, "nonce {nonce} fresh {n} times");
    }
    let s = State::open_embedded(&db, opts()).unwrap();
    for nonce in fresh.keys() {
        assert_eq!(
            s.use_nonce(&session, nonce, t0()).await.unwrap(),
            NonceOutcome::Reused
        );
    }
    // The budget: what the children were told they reserved fits the limits, and the store
    // (reopened) agrees: fill what is left, and the totals end within the limits.
    let calls = reserved.len() as u64;
    let spend: u64 = reserved.values().sum();
    assert!(
        calls <= CALLS && spend <= SPEND,
        "{calls} calls, {spend} spend"
    );
    let mut more = 0;
    while let ReserveOutcome::Reserved(r) = s
        .reserve("crash", Window::Day, &limits(), &Amounts::ONE_CALL, t0())
        .await
        .unwrap()
    {
        assert_eq!(r.reserved, Amounts::ONE_CALL);
        more += 1;
        assert!(more <= CALLS);
    }
    // Some reservations were committed but their line was lost with the child; they still
    // count, so the children's total plus what was left is at most the limit.
    assert!(calls + more <= CALLS, "{calls} + {more} calls");
    let ReserveOutcome::Exceeded { used, limit, .. } = s
        .reserve("crash", Window::Day, &limits(), &Amounts::ONE_CALL, t0())
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(used <= limit);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (c, sp): (i64, i64) = conn
        .query_row("SELECT calls, spend FROM budget", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(
        c as u64 <= CALLS && sp as u64 <= SPEND,
        "stored {c} calls, {sp} spend"
    );
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
