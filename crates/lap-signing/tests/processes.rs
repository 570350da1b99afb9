//! External signers as real child processes (shell scripts): hung ones are killed at their
//! timeout with everything they started, parallelism is bounded, and dropping a signer leaves
//! no process behind. (Valid signatures, slow and hung `lap-signer serve`: see the signer-cli
//! tests.)

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use lap_signing::{CoProcess, Limits, OneShot, SignError, Signer};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A one-shot signer that hangs (after starting a grandchild) is killed at its timeout, and
/// so is the grandchild: the process group goes, not only the process the gateway started.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_oneshot_signer_and_its_children_are_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 1000 & echo $! > {p}.child; echo $$ > {p}; wait",
        p = pids.display()
    );
    let timeout = Duration::from_millis(500);
    let signer = OneShot::new("k".into(), some_key(), sh(&script), timeout);
    let started = Instant::now();
    let answer = signer.sign(b"m").await;
    let took = started.elapsed();
    assert_eq!(answer, Err(SignError::Timeout(timeout)));
    assert!(took >= timeout && took < timeout * 3, "{took:?}");
    let (shell, child) = (
        pid_in(&pids).await,
        pid_in(&pids.with_extension("child")).await,
    );
    assert!(
        eventually(Duration::from_secs(2), || !alive(shell) && !alive(child)).await,
        "the hung signer or its child survived its timeout"
    );
}

/// At most `max_in_flight` one-shot processes run at once; the rest wait their turn, at most
/// `queue_timeout`, and the time they wait is not held against the signer's timeout.
#[tokio::test(flavor = "multi_thread")]
async fn oneshot_parallelism_is_bounded_and_waiting_is_not_signing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("running");
    // Records how many copies run at once, takes 0.3 s, then answers garbage.
    let script = format!(
        "echo start >> {l}; n=$(grep -c start {l}); e=$(grep -c end {l}); \
         echo $((n - e)) >> {l}.peak; sleep 0.3; echo end >> {l}; echo not-a-signature",
        l = log.display()
    );
    let limits = Limits {
        max_in_flight: 2,
        queue_timeout: Duration::from_secs(10),
        max_queued: 16,
    };
    // Each process takes 0.3 s of its 0.6 s timeout; six of them, two at a time, take 0.9 s:
    // the later ones wait longer than the timeout in all, and are still not timed out.
    let signer = Arc::new(OneShot::with_limits(
        "k".into(),
        some_key(),
        sh(&script),
        Duration::from_millis(600),
        limits,
    ));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let s = signer.clone();
        calls.spawn(async move { s.sign(b"m").await });
    }
    while let Some(answer) = calls.join_next().await {
        assert_eq!(answer.unwrap(), Err(SignError::Malformed));
    }
    assert!(started.elapsed() >= Duration::from_millis(850));
    let peak = std::fs::read_to_string(log.with_extension("peak")).unwrap();
    let peak = peak.lines().filter_map(|l| l.parse::<u32>().ok()).max();
    assert!(peak.is_some_and(|p| p <= 2), "{peak:?} ran at once");

    // With a short queue bound the ones that wait too long are refused as busy, never as
    // timed out, and never started.
    let limits = Limits {
        queue_timeout: Duration::from_millis(100),
        ..limits
    };
    let signer = Arc::new(OneShot::with_limits(
        "k".into(),
        some_key(),
        sh(&script),
        Duration::from_millis(600),
        limits,
    ));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let s = signer.clone();
        calls.spawn(async move { s.sign(b"m").await });
    }
    let mut codes = Vec::new();
    while let Some(answer) = calls.join_next().await {
        codes.push(answer.unwrap().unwrap_err().code());
    }
    codes.sort();
    assert_eq!(
        codes,
        [
            "SIGNER_MALFORMED_OUTPUT",
            "SIGNER_MALFORMED_OUTPUT",
            "SIGNER_QUEUE_TIMEOUT",
            "SIGNER_QUEUE_TIMEOUT",
            "SIGNER_QUEUE_TIMEOUT",
            "SIGNER_QUEUE_TIMEOUT"
        ]
    );
}

/// A co-process that reads but never answers is found wedged within its timeout: the
/// request fails with SIGNER_TIMEOUT, the process group is killed (grandchild included) and
/// a new process is started.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_coprocess_is_killed_with_its_children_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 1000 & echo $! >> {p}.child; echo $$ >> {p}; exec cat >/dev/null",
        p = pids.display()
    );
    let timeout = Duration::from_millis(400);
    let signer = CoProcess::spawn("k".into(), some_key(), sh(&script), timeout);
    let started = Instant::now();
    assert_eq!(
        signer.sign(b"m").await,
        Err(SignError::Timeout(timeout)),
        "a silent signer times out"
    );
    assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());
    let first = pid_in(&pids).await;
    let first_child = pid_in(&pids.with_extension("child")).await;
    assert!(
        eventually(Duration::from_secs(2), || !alive(first)
            && !alive(first_child))
        .await,
        "the wedged signer or its child survived"
    );
    // Restarted after the back-off.
    assert!(
        eventually(Duration::from_secs(3), || signer
            .pid()
            .is_some_and(|p| p != first && alive(p)))
        .await,
        "no new signer process"
    );
}

/// Dropping a co-process signer (a keyset reload replaces it, the gateway exits) kills its
/// process and everything it started.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_coprocess_signer_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 1000 & echo $! > {p}.child; echo $$ > {p}; exec cat >/dev/null",
        p = pids.display()
    );
    let signer = CoProcess::spawn("k".into(), some_key(), sh(&script), Duration::from_secs(5));
    let (shell, child) = (
        pid_in(&pids).await,
        pid_in(&pids.with_extension("child")).await,
    );
    assert!(alive(shell) && alive(child));
    assert_eq!(signer.pid(), Some(shell));
    drop(signer);
    assert!(
        eventually(Duration::from_secs(2), || !alive(shell) && !alive(child)).await,
        "a dropped signer's processes linger"
    );
}

/// A one-shot signer whose caller stops waiting does not leave its process running past
/// the timeout.
#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_oneshot_signature_still_ends_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pid.display());
    let signer = OneShot::new(
        "k".into(),
        some_key(),
        sh(&script),
        Duration::from_millis(500),
    );
    let _ = tokio::time::timeout(Duration::from_millis(100), signer.sign(b"m")).await;
    let pid = pid_in(&pid).await;
    assert!(
        eventually(Duration::from_secs(2), || !alive(pid)).await,
        "an abandoned signer process outlived its timeout"
    );
}
