//! A persistent external signer: one long-running process, pipelined requests.
//!
//! Line protocol (UTF-8, one message per line, `\n`-terminated):
//!
//! ```text
//! gateway → signer:  <id> <base64(message)>
//! signer → gateway:  <id> <base64(64-byte signature)>      on success
//!                    <id> ERR <reason>                      on failure
//! ```
//!
//! `id` is a decimal request number chosen by the gateway; answers may come in any order, so a
//! signer may work on many requests at once (an HSM with several sessions, say). Each answer is
//! verified against the pinned public key. When the process dies, every request in flight
//! fails at once and it is restarted with exponential back-off (100 ms doubling to 5 s, reset
//! after a successful signature); while it is down, requests fail immediately rather than
//! queue. `lap-signer serve` implements the signer side.

use crate::{accept, Mode, SignError, Signer};
use async_trait::async_trait;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Requests in flight beyond which the signer is considered wedged and restarted.
const MAX_IN_FLIGHT: usize = 65_536;
/// Longest line accepted from the signer.
const MAX_LINE: usize = 4096;

type Reply = oneshot::Sender<Result<String, SignError>>;

struct Request {
    line_b64: String,
    reply: Reply,
}

/// The runtime that drives external signers, apart from the proxy's worker threads; `None`
/// if it could not be created (then every external signature fails closed).
pub fn signer_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lap-signer-io")
            .enable_all()
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "cannot start the signer runtime"))
            .ok()
    })
    .as_ref()
}

pub struct CoProcess {
    kid: String,
    public: VerifyingKey,
    timeout: Duration,
    tx: mpsc::UnboundedSender<Request>,
}

impl CoProcess {
    /// Starts the supervisor (and the signer process) on the signer runtime.
    pub fn spawn(kid: String, public: VerifyingKey, argv: Vec<String>, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let label = kid.clone();
        // Without a runtime the receiver is dropped here and every request fails closed.
        if let Some(rt) = signer_runtime() {
            rt.spawn(supervise(label, argv, rx));
        }
        Self {
            kid,
            public,
            timeout,
            tx,
        }
    }
}

#[async_trait]
impl Signer for CoProcess {
    fn key_id(&self) -> &str {
        &self.kid
    }
    fn public_key(&self) -> &VerifyingKey {
        &self.public
    }
    fn mode(&self) -> Mode {
        Mode::CoProcess
    }
    async fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        let (reply, rx) = oneshot::channel();
        let line_b64 = base64::engine::general_purpose::STANDARD.encode(message);
        self.tx
            .send(Request { line_b64, reply })
            .map_err(|_| SignError::Unavailable("signer supervisor stopped".into()))?;
        let answer = tokio::time::timeout(self.timeout, rx)
            .await
            .map_err(|_| SignError::Timeout(self.timeout))?
            .map_err(|_| SignError::Unavailable("signer went away".into()))??;
        accept(&self.public, message, &answer)
    }
}

async fn supervise(kid: String, argv: Vec<String>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match run_once(&kid, &argv, &mut rx, &mut backoff).await {
            Exit::ChannelClosed => return,
            Exit::Died(why) => {
                tracing::error!(key_id = %kid, reason = %why, retry_in = ?backoff,
                    "co-process signer is down; requests fail until it restarts");
            }
        }
        // Fail everything that arrives while we wait: fail closed, never queue.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                req = rx.recv() => match req {
                    None => return,
                    Some(r) => { let _ = r.reply.send(Err(SignError::Unavailable("signer is restarting".into()))); }
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Exit {
    ChannelClosed,
    Died(String),
}

async fn run_once(
    kid: &str,
    argv: &[String],
    rx: &mut mpsc::UnboundedReceiver<Request>,
    backoff: &mut Duration,
) -> Exit {
    let Some((prog, args)) = argv.split_first() else {
        return Exit::Died("empty command".into());
    };
    let spawned = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Exit::Died(format!("cannot start {prog}: {e}")),
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Exit::Died("no pipes to the signer".into());
    };
    tracing::info!(key_id = %kid, pid = ?child.id(), "co-process signer started");
    let mut output = BufReader::new(stdout);
    let mut partial = Vec::new();
    let mut pending: HashMap<u64, Reply> = HashMap::new();
    let mut next_id: u64 = 0;

    let why = loop {
        tokio::select! {
            req = rx.recv() => {
                let Some(req) = req else {
                    fail_all(&mut pending, "gateway shutting down");
                    return Exit::ChannelClosed;
                };
                if pending.len() >= MAX_IN_FLIGHT {
                    let _ = req.reply.send(Err(SignError::Unavailable("signer is not answering".into())));
                    break "too many requests without an answer; restarting".to_string();
                }
                let id = next_id;
                next_id += 1;
                let line = format!("{id} {}\n", req.line_b64);
                if let Err(e) = stdin.write_all(line.as_bytes()).await {
                    let _ = req.reply.send(Err(SignError::Unavailable("signer stdin closed".into())));
                    break format!("write to signer failed: {e}");
                }
                pending.insert(id, req.reply);
            }
            line = read_line(&mut output, &mut partial) => match line {
                Ok(Some(l)) => {
                    match std::str::from_utf8(&l).ok().and_then(parse_answer) {
                        Some((id, answer)) => {
                            if let Some(reply) = pending.remove(&id) {
                                if answer.is_ok() {
                                    *backoff = BACKOFF_MIN;
                                }
                                let _ = reply.send(answer);
                            }
                        }
                        None => break "signer wrote a malformed line".to_string(),
                    }
                }
                Ok(None) => break "signer closed its output".to_string(),
                Err(e) => break format!("reading from signer failed: {e}"),
            },
        }
    };
    let _ = child.start_kill();
    let status = child
        .wait()
        .await
        .map(|s| s.to_string())
        .unwrap_or_default();
    fail_all(&mut pending, "signer died");
    Exit::Died(format!("{why} ({status})"))
}

/// Reads one line (without its `\n`) of at most [`MAX_LINE`] bytes; `None` at the end of the
/// output. The line is bounded while it is read, not after. Cancel-safe: what was read so far
/// stays in `partial`.
async fn read_line(
    output: &mut BufReader<tokio::process::ChildStdout>,
    partial: &mut Vec<u8>,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        let available = output.fill_buf().await?;
        if available.is_empty() {
            return Ok(None);
        }
        if let Some(nl) = available.iter().position(|&b| b == b'\n') {
            partial.extend_from_slice(&available[..nl]);
            output.consume(nl + 1);
        } else {
            let n = available.len();
            partial.extend_from_slice(available);
            output.consume(n);
            if partial.len() <= MAX_LINE {
                continue;
            }
        }
        if partial.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "signer wrote an over-long line",
            ));
        }
        return Ok(Some(std::mem::take(partial)));
    }
}

fn fail_all(pending: &mut HashMap<u64, Reply>, why: &str) {
    for (_, reply) in pending.drain() {
        let _ = reply.send(Err(SignError::Unavailable(why.to_string())));
    }
}

/// `<id> <base64>` or `<id> ERR <reason>`; `None` when the line is not a valid answer.
fn parse_answer(line: &str) -> Option<(u64, Result<String, SignError>)> {
    let (id, rest) = line.split_once(' ')?;
    let id = id.parse().ok()?;
    Some(match rest.strip_prefix("ERR") {
        Some(reason) => (
            id,
            Err(SignError::Refused(
                reason.trim().chars().take(200).collect(),
            )),
        ),
        None => (id, Ok(rest.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(parse_answer("7 abc"), Some((7, Ok("abc".into()))));
        assert!(matches!(
            parse_answer("7 ERR hsm offline"),
            Some((7, Err(SignError::Refused(r)))) if r == "hsm offline"
        ));
        assert_eq!(parse_answer("x abc"), None);
        assert_eq!(parse_answer("7"), None);
    }

    /// A signer that writes endlessly without a newline is cut off at the line limit (not
    /// buffered without bound) and the request fails closed.
    #[tokio::test]
    async fn an_endless_line_fails_closed() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
        let argv = ["sh", "-c", "cat >/dev/null & yes x | tr -d '\\n'"]
            .map(String::from)
            .to_vec();
        let signer = CoProcess::spawn("k".into(), key, argv, Duration::from_secs(10));
        let started = std::time::Instant::now();
        let answer = signer.sign(b"message").await;
        // Cut off at the limit (the signer is then restarted), not left to the timeout.
        assert!(
            matches!(answer, Err(SignError::Unavailable(_))),
            "{answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
