//! Hot reload of the admin tokens file: polled like the other hot-reloaded files (metadata,
//! so atomic renames and ConfigMap symlink swaps are seen) and re-read at once on SIGHUP. A
//! file that fails to load is logged and counted, and the tokens in force stay.

use super::auth::AdminAuth;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The file's stamp (modification time, length, inode), as the other watchers take it.
fn stamp(path: &Path) -> Vec<crate::live::Stamp> {
    crate::live::stamp(&[path.to_path_buf()])
}

/// Starts the watcher thread when a tokens file is configured. `sighup` is set by the signal
/// handler (a flag of its own: the other watcher clears its flag when it reloads).
pub fn spawn(
    auth: Arc<AdminAuth>,
    interval: Duration,
    sighup: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let Some(path) = auth.tokens_file().map(Path::to_path_buf) else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("lap-admin-tokens".into())
        .spawn(move || {
            let tick = Duration::from_millis(50).min(interval);
            let mut seen = stamp(&path);
            let mut since_poll = Duration::ZERO;
            loop {
                std::thread::sleep(tick);
                since_poll += tick;
                let forced = sighup.swap(false, Ordering::AcqRel);
                if !forced && since_poll < interval {
                    continue;
                }
                since_poll = Duration::ZERO;
                let now = stamp(&path);
                if !forced && now == seen {
                    continue;
                }
                seen = now;
                match auth.reload() {
                    Ok(n) => tracing::info!(tokens = n, "admin tokens reloaded"),
                    Err(e) => tracing::error!(code = e.code(), error = %e,
                        "admin tokens file rejected; the previous tokens stay in force"),
                }
            }
        })
        .map(|_| ())
}
