//! The project's binaries as child processes, and bounded waits.
//!
//! The rules kept here: a binary is found next to the test binary (`target/debug`, whatever
//! `CARGO_TARGET_DIR` is) or named by an environment variable; every child runs with a time
//! limit, or is killed and reaped when its guard is dropped, so a failing test leaves no
//! process behind; every wait polls with a deadline ([`wait_for`], [`wait_until`]) instead of
//! sleeping a fixed time and hoping.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
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

/// The workspace root (scripts, configuration and interop programs live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Runs a command to completion with stdout and stderr captured, killing it (and panicking)
/// if it runs longer than `limit`.
pub fn run_command(cmd: &mut Command, limit: Duration) -> Output {
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
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

/// Runs the real `lap-signer` with `args` (at most 30 s) and asserts that it succeeds.
pub fn lap_signer(args: &[&str]) -> Output {
    let out = run_command(
        Command::new(signer_bin()).args(args),
        Duration::from_secs(30),
    );
    assert_success(&out, &format!("lap-signer {args:?}"));
    out
}

/// Asserts that a finished command succeeded; otherwise panics with `what`, its exit status
/// and both its outputs.
#[track_caller]
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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

/// A child process that is SIGKILLed and reaped when dropped: a test that fails half-way
/// leaves no process behind. Derefs to the [`Child`].
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Spawns `cmd`; panics (naming the command) if it cannot be started.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    /// Waits (at most `limit`) for the process to exit by itself; if it does not, kills and
    /// reaps it and returns `None`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let status = wait_for(limit, || {
            let exited = self.0.try_wait().ok().flatten();
            async move { exited }
        })
        .await;
        if status.is_none() {
            self.kill_and_reap();
        }
        status
    }

    /// SIGKILL and reap (a process that already exited is only reaped).
    pub fn kill_and_reap(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_are_bounded() {
        let started = Instant::now();
        assert!(!wait_until(Duration::from_millis(200), || async { false }).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        // A poll that hangs is cut short at the deadline.
        let hang = wait_for(Duration::from_millis(200), || {
            std::future::pending::<Option<()>>()
        });
        assert_eq!(hang.await, None);
        let mut n = 0;
        let third = wait_for(Duration::from_secs(5), || {
            n += 1;
            let v = (n == 3).then_some(n);
            async move { v }
        });
        assert_eq!(third.await, Some(3));
    }

    #[tokio::test]
    async fn a_child_that_does_not_exit_is_killed() {
        let mut sleeper = ChildGuard::spawn(Command::new("sleep").arg("30"));
        assert_eq!(sleeper.wait_exit(Duration::from_millis(200)).await, None);
        assert!(sleeper.try_wait().expect("reaped").is_some());
        let mut quick = ChildGuard::spawn(Command::new("sh").args(["-c", "exit 3"]));
        let status = quick.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.and_then(|s| s.code()), Some(3));
    }
}
