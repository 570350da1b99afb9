//! The gateway's co-process seam (`lap_signing::CoProcess`) against the real
//! `lap-signer serve`, slowed down or hung with its test aids: a slow but healthy signer is
//! waited for, never timed out; a hung one is detected within the timeout, killed and
//! restarted; the signer exits when its stdin closes, hung or not.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lap_signing::{CoProcess, Limits, SignError, Signer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEED: &str = "3131313131313131313131313131313131313131313131313131313131313131";

struct Setup {
    _dir: tempfile::TempDir,
    seed: PathBuf,
    public: ed25519_dalek::VerifyingKey,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("k.seed");
    std::fs::write(&seed, SEED).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let raw: [u8; 32] = hex::decode(SEED).unwrap().try_into().unwrap();
    let public = ed25519_dalek::SigningKey::from_bytes(&raw).verifying_key();
    Setup {
        _dir: dir,
        seed,
        public,
    }
}

fn serve(seed: &Path, aids: &[&str]) -> Vec<String> {
    let mut argv = vec![
        env!("CARGO_BIN_EXE_lap-signer").to_string(),
        "serve".into(),
        "--key-file".into(),
        seed.display().to_string(),
    ];
    argv.extend(aids.iter().map(|s| s.to_string()));
    argv
}

/// Whether `pid` runs (a zombie not yet reaped by whoever inherited it counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

async fn gone_within(pid: u32, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

type Answer = (Result<[u8; 64], SignError>, Duration);

/// Signs `n` messages at once; each answer with how long it took.
async fn burst(signer: &Arc<CoProcess>, n: usize) -> Vec<Answer> {
    let mut calls = Vec::new();
    for i in 0..n {
        let s = signer.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = s.sign(format!("message {i}").as_bytes()).await;
            (answer, started.elapsed())
        }));
    }
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

/// One request at a time, 0.5 s each, timeout 1.5 s: six calls at once all get through (the
/// last waits 2.5 s for its turn, then takes 0.5 s), as the same signer does one-shot.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_but_healthy_coprocess_gets_every_concurrent_call_through() {
    let s = setup();
    let timeout = Duration::from_millis(1500);
    let signer = Arc::new(CoProcess::with_limits(
        "k".into(),
        s.public,
        serve(&s.seed, &["--delay-ms", "500"]),
        timeout,
        Limits {
            queue_timeout: Duration::from_secs(10),
            ..Limits::coprocess(timeout)
        },
    ));
    let started = Instant::now();
    let answers = burst(&signer, 6).await;
    for (answer, took) in &answers {
        assert!(answer.is_ok(), "{answer:?} after {took:?}");
    }
    let all = started.elapsed();
    assert!(
        all >= Duration::from_millis(2900) && all < Duration::from_secs(6),
        "{all:?}"
    );
}

/// With the default queue bound (= the timeout, 1.5 s) the same kind of burst is partly
/// refused — as busy (`SIGNER_QUEUE_TIMEOUT`: those calls never reached the signer), never as
/// timed out; no call waits longer than the queue bound plus the timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_coprocess_makes_calls_wait_their_turn_not_time_out() {
    let s = setup();
    let timeout = Duration::from_millis(1500);
    let signer = Arc::new(CoProcess::spawn(
        "k".into(),
        s.public,
        serve(&s.seed, &["--delay-ms", "500"]),
        timeout,
    ));
    let answers = burst(&signer, 8).await;
    let ok = answers.iter().filter(|(a, _)| a.is_ok()).count();
    for (answer, took) in &answers {
        assert!(
            matches!(answer, Ok(_) | Err(SignError::QueueTimeout(_))),
            "{answer:?} after {took:?}"
        );
        assert!(*took < Duration::from_millis(3000 + 500), "{took:?}");
    }
    assert!((3..=4).contains(&ok), "{ok} of 8 through");
}

/// `--hang-after 1`: the first request is answered, then nothing. The next request fails
/// with SIGNER_TIMEOUT within its timeout, the calls queued behind it fail at the same moment
/// (not one timeout after another), the process is killed and restarted, and signing works
/// again; dropping the signer then kills the new process.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_coprocess_is_detected_within_the_timeout_killed_and_restarted() {
    let s = setup();
    let timeout = Duration::from_millis(500);
    let signer = Arc::new(CoProcess::with_limits(
        "k".into(),
        s.public,
        serve(&s.seed, &["--hang-after", "1"]),
        timeout,
        Limits {
            queue_timeout: Duration::from_secs(10),
            ..Limits::coprocess(timeout)
        },
    ));
    signer.sign(b"first").await.unwrap();
    let first = signer.pid().unwrap();

    let answers = burst(&signer, 6).await;
    let mut codes: Vec<&str> = answers
        .iter()
        .map(|(a, _)| a.as_ref().unwrap_err().code())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "SIGNER_TIMEOUT",
            "SIGNER_UNAVAILABLE",
            "SIGNER_UNAVAILABLE",
            "SIGNER_UNAVAILABLE",
            "SIGNER_UNAVAILABLE",
            "SIGNER_UNAVAILABLE"
        ]
    );
    for (_, took) in &answers {
        assert!(
            *took < timeout * 3,
            "{took:?}: the wait is not bounded by the timeout"
        );
    }
    assert!(
        gone_within(first, Duration::from_secs(2)).await,
        "the hung signer was not killed"
    );

    // Restarted after the back-off: refused meanwhile, then signed again by a new process.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match signer.sign(b"after").await {
            Ok(_) => break,
            Err(SignError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("{other:?}"),
        }
    }
    let second = signer.pid().unwrap();
    assert_ne!(first, second);
    drop(signer);
    assert!(
        gone_within(second, Duration::from_secs(2)).await,
        "a dropped signer's process lingers"
    );
}

/// `lap-signer serve` exits when its stdin closes — while serving, while slow and while hung
/// — which is how it goes when the gateway dies without a chance to kill it (SIGKILL).
#[test]
fn serve_exits_when_stdin_closes_even_when_hung() {
    let s = setup();
    for aids in [&[][..], &["--delay-ms", "200"], &["--hang-after", "0"]] {
        let argv = serve(&s.seed, aids);
        let mut child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"1 bWVzc2FnZQ==\n").unwrap();
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{aids:?}: still running");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{aids:?}: {status}");
    }
}
