//! Helpers for tests that drive signers as real child processes.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

/// A key nobody signs with here: the scripts below never produce a valid signature.
pub fn some_key() -> ed25519_dalek::VerifyingKey {
    ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key()
}

pub fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

/// Whether `pid` is a running process (a zombie, dead but not reaped by whoever inherited it,
/// counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits up to `bound` for `cond`; whether it came true.
pub async fn eventually(bound: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > bound {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pid a script wrote to `file`, once it is there.
pub async fn pid_in(file: &Path) -> u32 {
    let mut pid = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            pid = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some()
        })
        .await,
        "{} never written",
        file.display()
    );
    pid.unwrap()
}
