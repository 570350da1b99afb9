//! The LAP external-signer contract: one process per signature.

use crate::{accept, Mode, SignError, Signer};
use async_trait::async_trait;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Most bytes read from a signer's stdout or stderr; a valid answer is 88 characters.
const MAX_OUTPUT: u64 = 4096;

/// Runs `argv` (no shell) for each signature, with a hard timeout; the child is killed when
/// the timeout expires or the caller goes away.
pub struct OneShot {
    kid: String,
    public: VerifyingKey,
    argv: Vec<String>,
    timeout: Duration,
}

impl OneShot {
    pub fn new(kid: String, public: VerifyingKey, argv: Vec<String>, timeout: Duration) -> Self {
        Self {
            kid,
            public,
            argv,
            timeout,
        }
    }

    async fn run(argv: &[String], message: &[u8]) -> Result<String, SignError> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| SignError::Spawn("empty command".into()))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SignError::Spawn(format!("{prog}: {e}")))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| SignError::Spawn("no stdin".into()))?;
        let mut line = base64::engine::general_purpose::STANDARD.encode(message);
        line.push('\n');
        // A signer that exits without reading its input is reported by its exit status.
        let _ = stdin.write_all(line.as_bytes()).await;
        drop(stdin);
        let mut out = String::new();
        let mut err = String::new();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
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
        tokio::join!(read_out, read_err);
        let status = child
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
        // The child runs on the signer runtime, never on the proxy's worker threads.
        let (argv, msg, timeout) = (self.argv.clone(), message.to_vec(), self.timeout);
        let rt = crate::coprocess::signer_runtime()
            .ok_or_else(|| SignError::Unavailable("no signer runtime".into()))?;
        let out = rt
            .spawn(async move {
                tokio::time::timeout(timeout, Self::run(&argv, &msg))
                    .await
                    .map_err(|_| SignError::Timeout(timeout))?
            })
            .await
            .map_err(|e| SignError::Unavailable(e.to_string()))??;
        accept(&self.public, message, &out)
    }
}
