//! A persistent external signer: one long-running process, a line protocol with request ids.
//!
//! Line protocol (UTF-8, one message per line, `\n`-terminated):
//!
//! ```text
//! gateway → signer:  <id> <base64(message)>
//! signer → gateway:  <id> <base64(64-byte signature)>      on success
//!                    <id> ERR <reason>                      on failure
//! ```
//!
//! `id` is a decimal request number chosen by the gateway; answers may come in any order. The
//! signer must exit when its stdin reaches end of file (that is how it learns that the gateway
//! is gone, even after a SIGKILL). `lap-signer serve` implements the signer side.
//!
//! ## Taken, and the two clocks
//!
//! The gateway keeps at most [`Limits::max_in_flight`] requests written and unanswered (one by
//! default: a co-process is assumed to sign one request at a time). A request is **taken** when
//! it is written to the signer's stdin into such a free slot; until then it waits in the
//! gateway's queue, at most [`Limits::queue_timeout`] (`SIGNER_QUEUE_TIMEOUT`), and never
//! reaches the signer if it gives up there. Its signing clock (`timeout`, `SIGNER_TIMEOUT`)
//! runs from when it is taken to its answer. Time a slow signer spends on *other* requests
//! therefore never counts against a request, as long as `max_in_flight` is no more than what
//! the signer really works on at once.
//!
//! ## States of the supervisor
//!
//! ```text
//!            spawn ok                    answer / ERR: reply, free the slot
//!  Starting ─────────► Running ◄───────┐ request: queue; write it when a slot is free
//!     ▲  │ spawn fails    │  │ └────────┘
//!     │  │                │  │ a taken request outlives `timeout` and the signer has written
//!     │  │                │  │ nothing since it was taken ─► Wedged
//!     │  │                │  │ end of output, malformed or over-long line, write error ─► Dead
//!     │  ▼                ▼  ▼
//!     │ Backoff ◄──── Wedged / Dead: kill the process group and reap it; the request that
//!     │  │            timed out gets SIGNER_TIMEOUT, every other taken or queued request
//!     │  │            SIGNER_UNAVAILABLE
//!     └──┘ after the back-off (100 ms, doubling to 5 s; back to 100 ms once a signature
//!          succeeded); meanwhile every request fails at once with SIGNER_UNAVAILABLE
//!
//!  any state ── signer dropped (keyset reload, gateway exit) ─► Stopped: group killed, every
//!               request failed with SIGNER_UNAVAILABLE
//!  any state ── lap_signing::shutdown() ─► the group is killed; no restart: Stopped
//! ```
//!
//! With `max_in_flight` above one, a request that outlives `timeout` while the signer keeps
//! answering others is failed alone (`SIGNER_TIMEOUT`); it keeps its slot until it is answered,
//! and the signer is declared wedged if it then stays silent for another `timeout`.

use crate::child::Group;
use crate::{accept, Limits, Mode, SignError, Signer};
use async_trait::async_trait;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest line accepted from the signer.
const MAX_LINE: usize = 4096;
/// How long a killed signer is waited for before it is left to the background reaper.
const REAP_BOUND: Duration = Duration::from_secs(1);
/// Slack on the caller's own bound, past the supervisor's two clocks (which answer first).
const CALLER_SLACK: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<Result<String, SignError>>;

struct Request {
    line_b64: String,
    reply: Reply,
    queued_at: Instant,
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

/// What the supervisor tells the handle (for diagnostics and tests).
#[derive(Default)]
struct Shared {
    /// Process id of the running signer; 0 while none runs.
    pid: AtomicU32,
}

pub struct CoProcess {
    kid: String,
    public: VerifyingKey,
    timeout: Duration,
    limits: Limits,
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
}

impl CoProcess {
    /// Starts the supervisor (and the signer process) on the signer runtime, with the default
    /// [`Limits::coprocess`].
    pub fn spawn(kid: String, public: VerifyingKey, argv: Vec<String>, timeout: Duration) -> Self {
        Self::with_limits(kid, public, argv, timeout, Limits::coprocess(timeout))
    }

    pub fn with_limits(
        kid: String,
        public: VerifyingKey,
        argv: Vec<String>,
        timeout: Duration,
        limits: Limits,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let limits = Limits {
            max_in_flight: limits.max_in_flight.max(1),
            ..limits
        };
        let supervisor = Supervisor {
            kid: kid.clone(),
            argv,
            timeout,
            limits,
            shared: shared.clone(),
            rx,
            queue: VecDeque::new(),
            backoff: BACKOFF_MIN,
        };
        // Without a runtime the receiver is dropped here and every request fails closed.
        if let Some(rt) = signer_runtime() {
            rt.spawn(supervisor.run());
        }
        Self {
            kid,
            public,
            timeout,
            limits,
            tx,
            shared,
        }
    }

    /// Process id of the signer process now running, if one is.
    pub fn pid(&self) -> Option<u32> {
        match self.shared.pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
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
            .send(Request {
                line_b64,
                reply,
                queued_at: Instant::now(),
            })
            .map_err(|_| SignError::Unavailable("signer supervisor stopped".into()))?;
        // The supervisor answers within its two clocks; this bound only guards against a
        // supervisor that cannot run at all.
        let bound = self.limits.queue_timeout + self.timeout + CALLER_SLACK;
        let answer = tokio::time::timeout(bound, rx)
            .await
            .map_err(|_| SignError::Timeout(self.timeout))?
            .map_err(|_| SignError::Unavailable("signer went away".into()))??;
        accept(&self.public, message, &answer)
    }
}

/// A request written to the signer and not yet answered.
struct Taken {
    /// `None` once the caller has had its answer (it timed out) or stopped waiting.
    reply: Option<Reply>,
    /// Since when the signer owes progress on it: when it was taken, later when the signer
    /// last answered anything (see the module docs, "States").
    watch_from: Instant,
}

/// Why a run of the signer process ended.
enum Ended {
    /// The handle was dropped: nobody will ask again.
    Closed,
    /// Wedged or dead; restart after the back-off.
    Down(String),
}

struct Supervisor {
    kid: String,
    argv: Vec<String>,
    timeout: Duration,
    limits: Limits,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Request>,
    /// Requests waiting for a slot, oldest first.
    queue: VecDeque<Request>,
    backoff: Duration,
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            if crate::child::is_shut_down() {
                return self.stopped().await;
            }
            match self.run_once().await {
                Ended::Closed => return,
                Ended::Down(why) => {
                    if crate::child::is_shut_down() {
                        return self.stopped().await;
                    }
                    tracing::error!(key_id = %self.kid, reason = %why, retry_in = ?self.backoff,
                        "co-process signer is down; requests fail until it restarts");
                }
            }
            // Back-off: fail everything that arrives meanwhile — fail closed, never queue.
            let sleep = tokio::time::sleep(self.backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    req = self.rx.recv() => match req {
                        None => return,
                        Some(r) => {
                            let _ = r.reply.send(Err(unavailable("signer is restarting")));
                        }
                    },
                }
            }
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// After [`crate::shutdown`]: no process any more; fail every request until dropped.
    async fn stopped(mut self) {
        self.fail_queue("the gateway is shutting down");
        while let Some(r) = self.rx.recv().await {
            let _ = r
                .reply
                .send(Err(unavailable("the gateway is shutting down")));
        }
    }

    fn fail_queue(&mut self, why: &str) {
        for r in self.queue.drain(..) {
            let _ = r.reply.send(Err(unavailable(why)));
        }
    }

    /// Accepts a new request into the queue (or refuses it when the queue is full).
    fn enqueue(&mut self, req: Request) {
        if self.queue.len() >= self.limits.max_queued {
            let _ = req.reply.send(Err(SignError::QueueFull));
        } else {
            self.queue.push_back(req);
        }
    }

    /// Fails queued requests that waited longer than the queue bound.
    fn expire_queue(&mut self, now: Instant) {
        while let Some(front) = self.queue.front() {
            if front.reply.is_closed() {
                self.queue.pop_front();
            } else if now >= front.queued_at + self.limits.queue_timeout {
                if let Some(r) = self.queue.pop_front() {
                    let _ = r
                        .reply
                        .send(Err(SignError::QueueTimeout(self.limits.queue_timeout)));
                }
            } else {
                break;
            }
        }
    }

    /// One life of the signer process: Starting, then Running until it is wedged or dead.
    async fn run_once(&mut self) -> Ended {
        let Some((prog, args)) = self.argv.split_first() else {
            self.fail_queue("signer command is empty");
            return Ended::Down("empty command".into());
        };
        let spawned = Group::spawn(
            Command::new(prog)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            prog,
        );
        let mut group = match spawned {
            Ok(g) => g,
            Err(e) => {
                self.fail_queue("signer could not be started");
                return Ended::Down(e.to_string());
            }
        };
        let child = group.child_mut();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            self.fail_queue("signer has no pipes");
            group.kill_and_reap(REAP_BOUND).await;
            return Ended::Down("no pipes to the signer".into());
        };
        let pid = group.pid();
        self.shared.pid.store(pid, Ordering::Release);
        tracing::info!(key_id = %self.kid, pid, "co-process signer started");

        // Writes go through their own task, so a signer that stops reading (a full pipe) can
        // never block the supervisor: its clocks keep running and it is found wedged.
        let (to_writer, writes) = mpsc::unbounded_channel::<String>();
        let mut writer = tokio::spawn(write_lines(stdin, writes));
        let mut output = BufReader::new(stdout);
        let mut partial = Vec::new();
        let mut running = Running {
            taken: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
            last_answer: None,
            timeout: self.timeout,
        };

        let (ended, timed_out) = loop {
            let now = Instant::now();
            self.expire_queue(now);
            // Dispatch: fill the free slots from the queue, oldest first.
            while running.taken.len() < self.limits.max_in_flight {
                let Some(req) = self.queue.pop_front() else {
                    break;
                };
                if req.reply.is_closed() {
                    continue;
                }
                let id = running.take(req.reply, now);
                // A send error means the writer has ended; its result is read below.
                let _ = to_writer.send(format!("{id} {}\n", req.line_b64));
            }
            let next = [
                running.deadlines.first().map(|(t, _)| *t),
                self.queue
                    .front()
                    .map(|r| r.queued_at + self.limits.queue_timeout),
            ]
            .into_iter()
            .flatten()
            .min();

            tokio::select! {
                req = self.rx.recv() => match req {
                    Some(req) => self.enqueue(req),
                    None => break (Ended::Closed, None),
                },
                line = read_line(&mut output, &mut partial) => match line {
                    Ok(Some(l)) => match std::str::from_utf8(&l).ok().and_then(parse_answer) {
                        Some((id, answer)) => {
                            if answer.is_ok() {
                                self.backoff = BACKOFF_MIN;
                            }
                            running.answered(id, answer, Instant::now());
                        }
                        None => break (Ended::Down("signer wrote a malformed line".into()), None),
                    },
                    Ok(None) => break (Ended::Down("signer closed its output".into()), None),
                    Err(e) => break (Ended::Down(format!("reading from signer failed: {e}")), None),
                },
                written = &mut writer => {
                    let why = match written {
                        Ok(Ok(())) => "signer stdin closed".to_string(),
                        Ok(Err(e)) => format!("write to signer failed: {e}"),
                        Err(e) => format!("signer writer stopped: {e}"),
                    };
                    break (Ended::Down(why), None);
                }
                _ = sleep_until(next) => {
                    if let Err(overdue) = running.expire(Instant::now()) {
                        break (
                            Ended::Down(format!(
                                "wedged: no answer within {:?} of taking a request",
                                self.timeout
                            )),
                            overdue,
                        );
                    }
                }
            }
        };

        // Wedged, dead or dropped: the process (its whole group) goes, then its requests fail.
        writer.abort();
        self.shared.pid.store(0, Ordering::Release);
        let status = group.kill_and_reap(REAP_BOUND).await;
        if let Some(reply) = timed_out {
            let _ = reply.send(Err(SignError::Timeout(self.timeout)));
        }
        let why = match &ended {
            Ended::Closed => "signer stopped",
            Ended::Down(_) => "signer was restarted",
        };
        for (_, t) in running.taken {
            if let Some(reply) = t.reply {
                let _ = reply.send(Err(unavailable(why)));
            }
        }
        self.fail_queue(why);
        match ended {
            Ended::Closed => {
                tracing::info!(key_id = %self.kid, pid, "co-process signer stopped");
                Ended::Closed
            }
            Ended::Down(why) => {
                let status = status.map(|s| s.to_string()).unwrap_or_default();
                Ended::Down(format!("{why} (pid {pid} {status})"))
            }
        }
    }
}

/// The requests a running signer has taken.
struct Running {
    taken: BTreeMap<u64, Taken>,
    /// (`watch_from + timeout`, id) of every taken request: the next clock to expire first.
    deadlines: BTreeSet<(Instant, u64)>,
    next_id: u64,
    last_answer: Option<Instant>,
    timeout: Duration,
}

impl Running {
    fn take(&mut self, reply: Reply, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.taken.insert(
            id,
            Taken {
                reply: Some(reply),
                watch_from: now,
            },
        );
        self.deadlines.insert((now + self.timeout, id));
        id
    }

    fn answered(&mut self, id: u64, answer: Result<String, SignError>, now: Instant) {
        self.last_answer = Some(now);
        // An id we do not have (never sent, or answered twice) is ignored.
        if let Some(t) = self.taken.remove(&id) {
            self.deadlines.remove(&(t.watch_from + self.timeout, id));
            if let Some(reply) = t.reply {
                let _ = reply.send(answer);
            }
        }
    }

    /// Handles expired clocks. `Err` when one shows the signer wedged (taken `timeout` ago,
    /// nothing written by the signer since), with that request's reply if it still has one.
    fn expire(&mut self, now: Instant) -> Result<(), Option<Reply>> {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(t) = self.taken.get_mut(&id) else {
                continue;
            };
            if self.last_answer.is_none_or(|a| a <= t.watch_from) {
                // Reported to the caller once the process is gone.
                return Err(t.reply.take());
            }
            // The signer is alive but this request is overdue: fail it alone, keep its slot
            // (the signer may still be working on it) and watch for silence from now on.
            if let Some(reply) = t.reply.take() {
                let _ = reply.send(Err(SignError::Timeout(self.timeout)));
            }
            if let Some(a) = self.last_answer {
                t.watch_from = a;
                self.deadlines.insert((a + self.timeout, id));
            }
        }
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn unavailable(why: &str) -> SignError {
    SignError::Unavailable(why.to_string())
}

/// Writes each line to the signer, flushing when nothing more is waiting (so a burst of
/// requests costs one write). Ends when the supervisor drops its sender or a write fails.
async fn write_lines(
    stdin: ChildStdin,
    mut lines: mpsc::UnboundedReceiver<String>,
) -> std::io::Result<()> {
    let mut stdin = tokio::io::BufWriter::new(stdin);
    while let Some(line) = lines.recv().await {
        stdin.write_all(line.as_bytes()).await?;
        if lines.is_empty() {
            stdin.flush().await?;
        }
    }
    Ok(())
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

    /// Clock bookkeeping without processes: a request overdue while the signer answers others
    /// fails alone; silence after that is a wedge.
    #[tokio::test]
    async fn an_overdue_request_fails_alone_until_the_signer_falls_silent() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut r = Running {
            taken: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
            last_answer: None,
            timeout,
        };
        let (a_tx, mut a_rx) = oneshot::channel();
        let (b_tx, mut b_rx) = oneshot::channel();
        let a = r.take(a_tx, t0);
        let b = r.take(b_tx, t0);
        // b is answered at 0.5 s; a is still owed at 1 s: it alone fails, the signer is alive.
        r.answered(b, Ok("sig".into()), t0 + Duration::from_millis(500));
        assert_eq!(b_rx.try_recv().unwrap(), Ok("sig".into()));
        assert!(r.expire(t0 + Duration::from_millis(999)).is_ok());
        assert!(a_rx.try_recv().is_err(), "not yet");
        assert!(r.expire(t0 + timeout).is_ok(), "alive: not wedged");
        assert_eq!(a_rx.try_recv().unwrap(), Err(SignError::Timeout(timeout)));
        // a keeps its slot; nothing more written for a whole timeout after the last answer:
        // wedged.
        assert_eq!(r.taken.len(), 1);
        assert!(r.expire(t0 + Duration::from_millis(1499)).is_ok());
        assert!(matches!(
            r.expire(t0 + Duration::from_millis(1500)),
            Err(None)
        ));
        let _ = a;
    }

    /// With one slot (the default), the only request outliving its clock means silence.
    #[tokio::test]
    async fn a_silent_signer_is_wedged_at_the_first_expired_clock() {
        let t0 = Instant::now();
        let mut r = Running {
            taken: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 0,
            last_answer: None,
            timeout: Duration::from_secs(1),
        };
        let (tx, _rx) = oneshot::channel();
        r.take(tx, t0);
        assert!(r.expire(t0 + Duration::from_millis(999)).is_ok());
        assert!(matches!(
            r.expire(t0 + Duration::from_secs(1)),
            Err(Some(_))
        ));
    }
}
