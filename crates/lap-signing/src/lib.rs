//! Signers for receipts and checkpoints. Every one of them fails closed.
//!
//! * [`InProcess`]: an Ed25519 key held by the gateway.
//! * [`OneShot`]: the LAP external-signer contract — one process per signature; stdin is
//!   `base64(message)` and a newline, stdout is `base64(64-byte signature)`.
//! * [`CoProcess`]: one long-running signer speaking a line protocol with request ids,
//!   killed and restarted with back-off when it dies or stops answering (see [`coprocess`]).
//!
//! An external signature is **always verified against the pinned public key** before it is
//! returned: a signer that answers garbage, answers late, exits non-zero, or signs with another
//! key produces an error, never a receipt. Errors carry stable codes ([`SignError::code`]).
//!
//! ## Two clocks per external signature
//!
//! A request to an external signer first waits for its turn, then is worked on; each part has
//! its own bound, so each error says what actually took too long:
//!
//! * **queue** ([`Limits::queue_timeout`], `SIGNER_QUEUE_TIMEOUT`): waiting in the gateway
//!   until the signer has a free slot ([`Limits::max_in_flight`]: one-shot processes running at
//!   once, or co-process requests written and not yet answered);
//! * **signing** (the key's `timeout`, `SIGNER_TIMEOUT`): from the moment the signer *takes*
//!   the request — the one-shot process is started, or the co-process request is written to
//!   its stdin — until its answer.
//!
//! A slow but healthy signer therefore makes calls wait their turn (and, past the queue bound,
//! refuses them as busy), but never has them refused as timed out; a hung signer is detected
//! within `timeout` of taking a request. One signature's wait is bounded by
//! `queue_timeout + timeout`.
//!
//! Signer processes run in their own process groups and never outlive the gateway: see
//! [`shutdown`].

mod child;
pub mod coprocess;
mod oneshot;

pub use child::{is_shut_down, live_groups, shutdown};
pub use coprocess::CoProcess;
pub use oneshot::OneShot;

use async_trait::async_trait;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use std::sync::Arc;
use std::time::Duration;

/// How a signer produces signatures; recorded in every receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    InProcess,
    External,
    CoProcess,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::InProcess => "in_process",
            Mode::External => "external",
            Mode::CoProcess => "coprocess",
        }
    }
}

/// Why no signature was produced. Each variant has a stable code ([`SignError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The signer took longer than its timeout on this request, counted from when it took it
    /// (`SIGNER_TIMEOUT`). A co-process that stays silent meanwhile is killed and restarted.
    #[error("signer did not answer within {0:?}")]
    Timeout(Duration),
    /// The signer process could not be started (`SIGNER_SPAWN_FAILED`).
    #[error("signer could not be started: {0}")]
    Spawn(String),
    /// A one-shot signer exited unsuccessfully (`SIGNER_EXIT_NONZERO`).
    #[error("signer exited with {status}{stderr}")]
    Exit { status: String, stderr: String },
    /// The answer is not base64 of 64 bytes (`SIGNER_MALFORMED_OUTPUT`).
    #[error("signer output is not base64 of a 64-byte signature")]
    Malformed,
    /// The answer does not verify under the pinned public key (`SIGNER_BAD_SIGNATURE`).
    #[error("signer returned a signature that does not verify under the pinned public key")]
    BadSignature,
    /// A co-process answered `ERR` (`SIGNER_REFUSED`).
    #[error("signer reported an error: {0}")]
    Refused(String),
    /// No signer to ask: a co-process died, was killed as wedged, is restarting or was
    /// stopped, or the gateway is shutting down (`SIGNER_UNAVAILABLE`).
    #[error("signer is unavailable: {0}")]
    Unavailable(String),
    /// The request waited its whole queue bound for a free slot and was never given to the
    /// signer (`SIGNER_QUEUE_TIMEOUT`): the signer is busy, not broken.
    #[error("signer was busy: no free slot within {0:?}")]
    QueueTimeout(Duration),
    /// Too many requests were already waiting for a slot (`SIGNER_QUEUE_FULL`).
    #[error("signer queue is full")]
    QueueFull,
}

impl SignError {
    /// Stable code, used in error bodies, metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SignError::Timeout(_) => "SIGNER_TIMEOUT",
            SignError::Spawn(_) => "SIGNER_SPAWN_FAILED",
            SignError::Exit { .. } => "SIGNER_EXIT_NONZERO",
            SignError::Malformed => "SIGNER_MALFORMED_OUTPUT",
            SignError::BadSignature => "SIGNER_BAD_SIGNATURE",
            SignError::Refused(_) => "SIGNER_REFUSED",
            SignError::Unavailable(_) => "SIGNER_UNAVAILABLE",
            SignError::QueueTimeout(_) => "SIGNER_QUEUE_TIMEOUT",
            SignError::QueueFull => "SIGNER_QUEUE_FULL",
        }
    }
}

/// How much work an external signer is given at once, and how long a request may wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests the signer works on at once: one-shot processes running, or co-process
    /// requests written and not yet answered. The signing clock of a request starts when it
    /// gets one of these slots, so set it to what the signer really does in parallel (an HSM
    /// with four sessions: 4); a larger value puts the wait inside the signer, where it counts
    /// against `timeout`.
    pub max_in_flight: usize,
    /// Longest a request waits for a slot (`SIGNER_QUEUE_TIMEOUT`).
    pub queue_timeout: Duration,
    /// Most requests waiting for a slot at once (`SIGNER_QUEUE_FULL` beyond).
    pub max_queued: usize,
}

impl Limits {
    /// Default [`Limits::max_queued`]: more than a full evidence batch, small enough for memory.
    pub const MAX_QUEUED: usize = 4096;
    /// Default co-process slots: one — a co-process is assumed to sign one request at a time
    /// (as `lap-signer serve` does) unless configured otherwise.
    pub const COPROCESS_IN_FLIGHT: usize = 1;
    /// Default one-shot slots: processes started at once.
    pub const ONESHOT_IN_FLIGHT: usize = 16;

    /// Co-process defaults for a key with this signing `timeout` (queue bound = `timeout`).
    pub fn coprocess(timeout: Duration) -> Self {
        Self {
            max_in_flight: Self::COPROCESS_IN_FLIGHT,
            queue_timeout: timeout,
            max_queued: Self::MAX_QUEUED,
        }
    }

    /// One-shot defaults for a key with this signing `timeout` (queue bound = `timeout`).
    pub fn oneshot(timeout: Duration) -> Self {
        Self {
            max_in_flight: Self::ONESHOT_IN_FLIGHT,
            queue_timeout: timeout,
            max_queued: Self::MAX_QUEUED,
        }
    }
}

/// Operator overrides of [`Limits`] for external signers (unset fields keep the defaults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub max_in_flight: Option<usize>,
    pub queue_timeout: Option<Duration>,
}

impl LimitOverrides {
    fn apply(&self, mut limits: Limits) -> Limits {
        if let Some(n) = self.max_in_flight {
            limits.max_in_flight = n.max(1);
        }
        if let Some(t) = self.queue_timeout {
            limits.queue_timeout = t;
        }
        limits
    }
}

/// Something that signs messages with one pinned Ed25519 key.
#[async_trait]
pub trait Signer: Send + Sync {
    fn key_id(&self) -> &str;
    fn public_key(&self) -> &VerifyingKey;
    fn mode(&self) -> Mode;
    /// Signs `message`; the result has been verified against [`Signer::public_key`].
    async fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError>;
}

/// An in-process Ed25519 key.
pub struct InProcess {
    kid: String,
    key: SigningKey,
    public: VerifyingKey,
}

impl InProcess {
    pub fn new(kid: impl Into<String>, key: SigningKey) -> Self {
        let public = key.verifying_key();
        Self {
            kid: kid.into(),
            key,
            public,
        }
    }

    /// Synchronous signing (about 20 µs); used where no await point is wanted.
    pub fn sign_now(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

#[async_trait]
impl Signer for InProcess {
    fn key_id(&self) -> &str {
        &self.kid
    }
    fn public_key(&self) -> &VerifyingKey {
        &self.public
    }
    fn mode(&self) -> Mode {
        Mode::InProcess
    }
    async fn sign(&self, message: &[u8]) -> Result<[u8; 64], SignError> {
        Ok(self.sign_now(message))
    }
}

/// Checks an external signer's answer: strict base64 of exactly 64 bytes that verifies.
pub(crate) fn accept(
    public: &VerifyingKey,
    message: &[u8],
    answer_b64: &str,
) -> Result<[u8; 64], SignError> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(answer_b64.trim())
        .map_err(|_| SignError::Malformed)?;
    let sig: [u8; 64] = raw.try_into().map_err(|_| SignError::Malformed)?;
    public
        .verify_strict(message, &Signature::from_bytes(&sig))
        .map_err(|_| SignError::BadSignature)?;
    Ok(sig)
}

/// Builds the signer for a keyset entry that can sign, with default [`Limits`].
pub fn for_key(entry: &lap_keys::KeyEntry, persistent: bool) -> Option<Arc<dyn Signer>> {
    for_key_with(entry, persistent, LimitOverrides::default())
}

/// Builds the signer for a keyset entry that can sign; `limits` adjust an external signer's.
pub fn for_key_with(
    entry: &lap_keys::KeyEntry,
    persistent: bool,
    limits: LimitOverrides,
) -> Option<Arc<dyn Signer>> {
    match &entry.material {
        lap_keys::KeyMaterial::Seed(key) => {
            Some(Arc::new(InProcess::new(entry.kid.clone(), (**key).clone())))
        }
        lap_keys::KeyMaterial::External { argv, timeout } if persistent => {
            Some(Arc::new(CoProcess::with_limits(
                entry.kid.clone(),
                entry.public_key,
                argv.clone(),
                *timeout,
                limits.apply(Limits::coprocess(*timeout)),
            )))
        }
        lap_keys::KeyMaterial::External { argv, timeout } => Some(Arc::new(OneShot::with_limits(
            entry.kid.clone(),
            entry.public_key,
            argv.clone(),
            *timeout,
            limits.apply(Limits::oneshot(*timeout)),
        ))),
        lap_keys::KeyMaterial::VerifyOnly => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_signs_verifiably() {
        let s = InProcess::new("k", SigningKey::from_bytes(&[1u8; 32]));
        let sig = s.sign(b"msg").await.unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
        assert_eq!(accept(s.public_key(), b"msg", &b64).unwrap(), sig);
        assert_eq!(
            accept(s.public_key(), b"other", &b64),
            Err(SignError::BadSignature)
        );
        assert_eq!(
            accept(s.public_key(), b"msg", "AAAA"),
            Err(SignError::Malformed)
        );
        assert_eq!(
            accept(s.public_key(), b"msg", "%%%"),
            Err(SignError::Malformed)
        );
    }
}
