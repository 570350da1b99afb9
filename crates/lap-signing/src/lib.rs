//! Signers for receipts and checkpoints. Every one of them fails closed.
//!
//! * [`InProcess`]: an Ed25519 key held by the gateway.
//! * [`OneShot`]: the LAP external-signer contract — one process per signature; stdin is
//!   `base64(message)` and a newline, stdout is `base64(64-byte signature)`.
//! * [`CoProcess`]: one long-running signer speaking a line protocol with request ids,
//!   pipelined, restarted with back-off when it dies (see [`coprocess`]).
//!
//! An external signature is **always verified against the pinned public key** before it is
//! returned: a signer that answers garbage, answers late, exits non-zero, or signs with another
//! key produces an error, never a receipt. Errors carry stable codes ([`SignError::code`]).

pub mod coprocess;
mod oneshot;

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

/// Why no signature was produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("signer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("signer could not be started: {0}")]
    Spawn(String),
    #[error("signer exited with {status}{stderr}")]
    Exit { status: String, stderr: String },
    #[error("signer output is not base64 of a 64-byte signature")]
    Malformed,
    #[error("signer returned a signature that does not verify under the pinned public key")]
    BadSignature,
    #[error("signer reported an error: {0}")]
    Refused(String),
    #[error("signer is unavailable: {0}")]
    Unavailable(String),
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
        }
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

/// Builds the signer for a keyset entry that can sign.
pub fn for_key(entry: &lap_keys::KeyEntry, persistent: bool) -> Option<Arc<dyn Signer>> {
    match &entry.material {
        lap_keys::KeyMaterial::Seed(key) => {
            Some(Arc::new(InProcess::new(entry.kid.clone(), (**key).clone())))
        }
        lap_keys::KeyMaterial::External { argv, timeout } if persistent => Some(Arc::new(
            CoProcess::spawn(entry.kid.clone(), entry.public_key, argv.clone(), *timeout),
        )),
        lap_keys::KeyMaterial::External { argv, timeout } => Some(Arc::new(OneShot::new(
            entry.kid.clone(),
            entry.public_key,
            argv.clone(),
            *timeout,
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
