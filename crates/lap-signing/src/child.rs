//! Signer processes: each started in a process group of its own, killed as a group, and none
//! outliving the gateway.
//!
//! Why a group: a signer command is often a wrapper (`sh -c '… | hsm-tool'`); killing only the
//! process the gateway started would leave its children running, holding the key session and
//! the pipes. Why the gateway's own bookkeeping: a child in its own group gets no terminal
//! signal (Ctrl-C), so the gateway decides when it goes — after the data plane has drained, not
//! in the middle of the last calls (see [`shutdown`]).
//!
//! Every group whose leader has not been reaped yet is in a process-wide registry. A group is
//! only ever signalled while its leader is unreaped: the leader's pid (the group id) cannot be
//! handed to another process before that, so a kill can never reach an unrelated process that
//! happens to reuse the number.
//!
//! If the gateway itself is killed (SIGKILL, OOM), nothing here runs: the signer's stdin then
//! reaches end of file, and the signer contracts require it to exit then (`lap-signer` does).

use crate::SignError;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::process::{Child, Command};

struct Registry {
    /// Set once by [`shutdown`]: no signer process may start after it.
    shut_down: bool,
    /// Group ids (= leader pids) of signer processes not yet reaped.
    groups: BTreeSet<u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    shut_down: false,
    groups: BTreeSet::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // The registry holds plain data; a panic elsewhere while it was held leaves it usable.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every signer process group and refuses to start new ones; returns how many groups
/// were signalled. Called by the gateway once its services have stopped (after the graceful
/// drain), so no call still waits on a signer. Idempotent.
pub fn shutdown() -> usize {
    let mut reg = registry();
    reg.shut_down = true;
    for &pgid in &reg.groups {
        kill_group(pgid);
    }
    reg.groups.len()
}

/// Whether [`shutdown`] has run.
pub fn is_shut_down() -> bool {
    registry().shut_down
}

/// How many signer processes (groups) are running or not yet reaped.
pub fn live_groups() -> usize {
    registry().groups.len()
}

fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // ESRCH (already gone) is the only expected failure, and it needs nothing done.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// A signer process, leader of its own process group. Dropping it kills the whole group
/// (unless the leader was already reaped, see the module docs).
pub(crate) struct Group {
    child: Child,
    pgid: u32,
    reaped: bool,
}

impl Group {
    /// Starts `cmd` in a new process group and registers it. Refused after [`shutdown`].
    pub(crate) fn spawn(cmd: &mut Command, what: &str) -> Result<Self, SignError> {
        if is_shut_down() {
            return Err(SignError::Unavailable(
                "the gateway is shutting down".into(),
            ));
        }
        // `process_group(0)`: the child calls setpgid(0, 0) between fork and exec (std does it,
        // no unsafe code here). We kill on drop ourselves, as a group.
        let child = cmd
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| SignError::Spawn(format!("{what}: {e}")))?;
        let Some(pgid) = child.id() else {
            // Only when the child has already been reaped, which cannot happen before we wait.
            return Err(SignError::Spawn(format!("{what}: no process id")));
        };
        let group = Self {
            child,
            pgid,
            reaped: false,
        };
        let mut reg = registry();
        if reg.shut_down {
            drop(reg);
            // Dropping `group` kills it: started while the gateway was shutting down.
            return Err(SignError::Unavailable(
                "the gateway is shutting down".into(),
            ));
        }
        reg.groups.insert(pgid);
        Ok(group)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pgid
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends SIGKILL to the whole group (a no-op once the leader has been reaped).
    pub(crate) fn kill(&mut self) {
        if !self.reaped {
            kill_group(self.pgid);
        }
    }

    /// Waits for the leader to exit and reaps it.
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        self.reaped = true;
        registry().groups.remove(&self.pgid);
        Ok(status)
    }

    /// Kills the group and reaps the leader, waiting at most `bound` for it (a process stuck
    /// in the kernel may take longer; it is then reaped in the background when it exits).
    pub(crate) async fn kill_and_reap(mut self, bound: Duration) -> Option<ExitStatus> {
        self.kill();
        tokio::time::timeout(bound, self.wait()).await.ok()?.ok()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
        registry().groups.remove(&self.pgid);
        // An unreaped `Child` dropped here goes to tokio's orphan queue, which reaps it.
    }
}
