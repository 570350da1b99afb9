//! The LAP external-signer contract: one process per signature.
//!
//! Parallelism is bounded: at most [`Limits::max_in_flight`] processes run at once (16 by
//! default); a signature waits for a slot at most [`Limits::queue_timeout`]
//! (`SIGNER_QUEUE_TIMEOUT`), with at most [`Limits::max_queued`] waiting (`SIGNER_QUEUE_FULL`).
//! The signing clock (`timeout`) starts when the process is started and covers start-up,
//! input, output and exit; when it expires the process's whole group is killed
//! (`SIGNER_TIMEOUT`). So is it when the caller stops waiting or the gateway shuts down.

use crate::child::Group;
use crate::{accept, Limits, Mode, SignError, Signer};
use async_trait::async_trait;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::Semaphore;

/// Most bytes read from a signer's stdout or stderr; a valid answer is 88 characters.
const MAX_OUTPUT: u64 = 4096;
/// How long a killed process is waited for before it is left to the background reaper.
const REAP_BOUND: Duration = Duration::from_secs(1);

/// Runs `argv` (no shell) for each signature, in its own process group, with a hard timeout.
pub struct OneShot {
    kid: String,
    public: VerifyingKey,
    argv: Arc<[String]>,
    timeout: Duration,
    limits: Limits,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

impl OneShot {
    /// A one-shot signer with the default [`Limits::oneshot`].
    pub fn new(kid: String, public: VerifyingKey, argv: Vec<String>, timeout: Duration) -> Self {
        Self::with_limits(kid, public, argv, timeout, Limits::oneshot(timeout))
    }

    pub fn with_limits(
        kid: String,
        public: VerifyingKey,
        argv: Vec<String>,
        timeout: Duration,
        limits: Limits,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
        Self {
            kid,
            public,
            argv: argv.into(),
            timeout,
            limits,
            slots,
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Waits for a slot, then runs the signer under its timeout.
    async fn queue_and_run(
        argv: Arc<[String]>,
        message: Vec<u8>,
        timeout: Duration,
        limits: Limits,
        slots: Arc<Semaphore>,
        waiting: Arc<AtomicUsize>,
    ) -> Result<String, SignError> {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if waiting.fetch_add(1, Ordering::AcqRel) >= limits.max_queued {
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(SignError::QueueFull);
                }
                let got = tokio::time::timeout(limits.queue_timeout, slots.acquire_owned()).await;
                waiting.fetch_sub(1, Ordering::AcqRel);
                match got {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return Err(SignError::Unavailable("signer closed".into())),
                    Err(_) => return Err(SignError::QueueTimeout(limits.queue_timeout)),
                }
            }
        };
        let result = Self::run(&argv, &message, timeout).await;
        drop(permit);
        result
    }

    /// One process: start, write, read, wait — all within `timeout`, or the group is killed.
    async fn run(argv: &[String], message: &[u8], timeout: Duration) -> Result<String, SignError> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| SignError::Spawn("empty command".into()))?;
        let mut group = Group::spawn(
            Command::new(prog)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            prog,
        )?;
        match tokio::time::timeout(timeout, Self::exchange(&mut group, message)).await {
            Ok(result) => result,
            Err(_) => {
                group.kill_and_reap(REAP_BOUND).await;
                Err(SignError::Timeout(timeout))
            }
        }
    }

    async fn exchange(group: &mut Group, message: &[u8]) -> Result<String, SignError> {
        let child = group.child_mut();
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| SignError::Spawn("no stdin".into()))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut line = base64::engine::general_purpose::STANDARD.encode(message);
        line.push('\n');
        let mut out = String::new();
        let mut err = String::new();
        let write_in = async {
            // A signer that exits without reading its input is reported by its exit status.
            let _ = stdin.write_all(line.as_bytes()).await;
            drop(stdin);
        };
        let read_out = async {
            if let Some(s) = stdout {
                let _ = s.take(MAX_OUTPUT).read_to_string(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr {
                let _ = s.take(MAX_OUTPUT).read_to_string(&mut err).await;
            }
        };
        // Concurrently: a signer may write before it has read everything (or never read).
        tokio::join!(write_in, read_out, read_err);
        let status = group
            .wait()
            .await
            .map_err(|e| SignError::Spawn(e.to_string()))?;
        if !status.success() {
            let first = err.lines().next().unwrap_or("").trim();
            let stderr = if first.is_empty() {
                String::new()
            } else {
                // One line, bounded: enough to diagnose, not enough to flood logs.
                format!(": {}", first.chars().take(200).collect::<String>())
            };
            return Err(SignError::Exit {
                status: status.to_string(),
                stderr,
            });
        }
        Ok(out)
    }
}

#[async_trait]
impl Signer for OneShot {
    fn key_id(&self) -> &str {
        &self.kid
    }
    fn public_key(&self) -> &VerifyingKey {
        &self.public
    }
    fn mode(&self) -> Mode {
        Mode::External
    }
    async fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        // The child runs on the signer runtime, never on the proxy's worker threads. If the
        // caller goes away, the task still ends within the two bounds, and the process with it.
        let rt = crate::coprocess::signer_runtime()
            .ok_or_else(|| SignError::Unavailable("no signer runtime".into()))?;
        let out = rt
            .spawn(Self::queue_and_run(
                self.argv.clone(),
                message.to_vec(),
                self.timeout,
                self.limits,
                self.slots.clone(),
                self.waiting.clone(),
            ))
            .await
            .map_err(|e| SignError::Unavailable(e.to_string()))??;
        accept(&self.public, message, &out)
    }
}
