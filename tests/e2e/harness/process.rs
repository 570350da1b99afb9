//! The project's binaries as child processes, and bounded waits.
//!
//! The rules kept here: a binary is found next to the test binary (`target/debug`, whatever
//! `CARGO_TARGET_DIR` is) or named by an environment variable; every child runs with a time
//! limit; every wait polls with a deadline instead of sleeping a fixed time and hoping.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn target_dir() -> PathBuf {
    // target/debug/deps/<test binary> → target/debug
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("target dir")
}

fn bin(name: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` first (or set {env})",
        p.display()
    );
    p
}

/// The `lap-gateway` binary next to the test binary (`target/debug`), or `$LAP_GATEWAY_BIN`.
pub fn gateway_bin() -> PathBuf {
    bin("lap-gateway", "LAP_GATEWAY_BIN")
}

/// The `lap-signer` binary, or `$LAP_SIGNER_BIN`.
pub fn signer_bin() -> PathBuf {
    bin("lap-signer", "LAP_SIGNER_BIN")
}

/// The `lap-verify` binary, or `$LAP_VERIFY_BIN`.
pub fn verify_bin() -> PathBuf {
    bin("lap-verify", "LAP_VERIFY_BIN")
}

/// Runs a command to completion with stdout and stderr captured, killing it (and panicking)
/// if it runs longer than `limit`.
pub fn run_command(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let out = tempfile::tempfile().expect("stdout file");
    let err = tempfile::tempfile().expect("stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut v).expect("read");
        v
    };
    std::process::Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// Runs the real `lap-verify` with `args` and `--json`. Whatever the input, it must answer a
/// JSON report and exit 0 or 1 (never 2, never a crash) in agreement with the report's `ok`.
pub fn lap_verify_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = run_command(
        Command::new(verify_bin()).args(args).arg("--json"),
        Duration::from_secs(60),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "lap-verify printed no JSON report (status {:?}); stdout {:?}; stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let ok = report["ok"] == true;
    assert_eq!(
        out.status.code(),
        Some(if ok { 0 } else { 1 }),
        "the exit status follows the verdict: {report}"
    );
    report
}

/// How often [`wait_for`] and [`wait_until`] poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `poll` every [`POLL_INTERVAL`] until it yields a value or `limit` passes (a poll
/// still running at the deadline is cut short); `None` if it never did.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut poll: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Ok(Some(v)) = tokio::time::timeout(remaining, poll()).await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `cond` every [`POLL_INTERVAL`] until it holds or `limit` passes; `true` if it held.
pub async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(limit, || {
        let held = cond();
        async move { held.await.then_some(()) }
    })
    .await
    .is_some()
}
