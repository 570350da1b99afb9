//! `lap_signing::shutdown()` (the gateway's last act): every signer process group is killed,
//! none starts afterwards, and signing fails closed. Its own test binary: shutdown is for good.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use lap_signing::{CoProcess, OneShot, SignError, Signer};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_kills_every_signer_process_and_none_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let co_pid = dir.path().join("co");
    let one_pid = dir.path().join("one");
    let co = CoProcess::spawn(
        "k".into(),
        some_key(),
        sh(&format!(
            "sleep 1000 & echo $! > {p}.child; echo $$ > {p}; exec cat >/dev/null",
            p = co_pid.display()
        )),
        Duration::from_secs(30),
    );
    let one = Arc::new(OneShot::new(
        "k".into(),
        some_key(),
        sh(&format!("echo $$ > {}; exec sleep 1000", one_pid.display())),
        Duration::from_secs(30),
    ));
    // A one-shot signature in progress, a co-process request in flight.
    let pending_one = tokio::spawn({
        let one = one.clone();
        async move { one.sign(b"m").await }
    });
    let co = Arc::new(co);
    let pending_co = tokio::spawn({
        let co = co.clone();
        async move { co.sign(b"m").await }
    });
    let pids = [
        pid_in(&co_pid).await,
        pid_in(&co_pid.with_extension("child")).await,
        pid_in(&one_pid).await,
    ];
    assert!(pids.iter().all(|p| alive(*p)));
    assert_eq!(lap_signing::live_groups(), 2);

    assert_eq!(lap_signing::shutdown(), 2);
    assert!(lap_signing::is_shut_down());
    assert!(
        eventually(Duration::from_secs(2), || pids.iter().all(|p| !alive(*p))).await,
        "a signer process survived shutdown"
    );
    // What was waiting fails closed, at once rather than at its timeout.
    let answers = tokio::time::timeout(Duration::from_secs(5), async {
        (pending_one.await.unwrap(), pending_co.await.unwrap())
    })
    .await
    .expect("pending signatures were not failed");
    assert!(answers.0.is_err() && answers.1.is_err(), "{answers:?}");
    // Nothing starts any more.
    assert!(matches!(
        co.sign(b"m").await,
        Err(SignError::Unavailable(_))
    ));
    assert!(matches!(
        one.sign(b"m").await,
        Err(SignError::Unavailable(_))
    ));
    assert!(eventually(Duration::from_secs(2), || lap_signing::live_groups() == 0).await);
    assert_eq!(co.pid(), None);
}
