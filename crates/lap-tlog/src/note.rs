//! C2SP `signed-note` and `tlog-checkpoint`, with Ed25519 keys.
//!
//! A signed note is a UTF-8 text ending in a newline, a blank line, then signature lines
//! `— <key name> <base64(key id ‖ signature)>`. For Ed25519 the key id is the first four bytes
//! of `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)` and the signature covers the text. A checkpoint
//! is a note whose text is `<origin>\n<tree size>\n<base64 root hash>\n` plus optional extension
//! lines. Verifier keys are written `<name>+<hex key id>+<base64(0x01 ‖ public key)>`, the form
//! Go's `golang.org/x/mod/sumdb/note` reads.

use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature-type byte for Ed25519 in note key ids and verifier keys.
pub const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

/// Why a note, checkpoint or key is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("invalid key name {0:?} (non-empty, no spaces or '+')")]
    KeyName(String),
    #[error("malformed verifier key")]
    VerifierKey,
    #[error("no valid signature by {0:?}")]
    Unverified(String),
    #[error("malformed checkpoint: {0}")]
    Checkpoint(&'static str),
}

pub fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains('+')
}

/// The 4-byte id of an Ed25519 note key.
pub fn key_id(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A named Ed25519 public key that verifies notes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    pub id: [u8; 4],
    pub key: VerifyingKey,
}

impl NoteVerifier {
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        if !valid_key_name(name) {
            return Err(NoteError::KeyName(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            id: key_id(name, &key),
            key,
        })
    }

    /// `<name>+<hex id>+<base64(0x01 ‖ key)>`.
    pub fn to_vkey(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            STANDARD.encode(raw)
        )
    }

    pub fn parse_vkey(s: &str) -> Result<Self, NoteError> {
        let mut parts = s.splitn(3, '+');
        let (name, id_hex, key_b64) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => return Err(NoteError::VerifierKey),
        };
        let raw = STANDARD
            .decode(key_b64)
            .map_err(|_| NoteError::VerifierKey)?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(NoteError::VerifierKey);
        }
        let key_bytes: [u8; 32] = raw[1..].try_into().map_err(|_| NoteError::VerifierKey)?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| NoteError::VerifierKey)?;
        let v = Self::new(name, key)?;
        if hex::encode(v.id) != id_hex {
            return Err(NoteError::VerifierKey);
        }
        Ok(v)
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub id: [u8; 4],
    pub sig: Vec<u8>,
}

impl NoteSignature {
    pub fn line(&self) -> String {
        let mut raw = self.id.to_vec();
        raw.extend_from_slice(&self.sig);
        format!("{SIG_PREFIX}{} {}\n", self.name, STANDARD.encode(raw))
    }
}

/// Checks that `text` is a valid note body: UTF-8 (by type), ends in "\n", no other control
/// characters, no blank line inside.
pub fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::Malformed("text must end with a newline"));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed("control character in text"));
    }
    if text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::Malformed("blank line in text"));
    }
    Ok(())
}

/// Joins a text and its signatures into a note.
pub fn assemble(text: &str, sigs: &[NoteSignature]) -> String {
    let mut out = String::with_capacity(text.len() + 1 + sigs.len() * 100);
    out.push_str(text);
    out.push('\n');
    for s in sigs {
        out.push_str(&s.line());
    }
    out
}

/// Splits a note into its text and signature lines (signatures not yet checked).
pub fn split(note: &str) -> Result<(&str, Vec<NoteSignature>), NoteError> {
    let i = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before signatures"))?;
    let (text, rest) = (&note[..=i], &note[i + 2..]);
    check_text(text)?;
    if rest.is_empty() || !rest.ends_with('\n') {
        return Err(NoteError::Malformed(
            "signature block must end with a newline",
        ));
    }
    let mut sigs = Vec::new();
    for line in rest[..rest.len() - 1].split('\n') {
        let body = line.strip_prefix(SIG_PREFIX).ok_or(NoteError::Malformed(
            "signature line must start with an em dash",
        ))?;
        let (name, b64) = body.split_once(' ').ok_or(NoteError::Malformed(
            "signature line needs a name and a signature",
        ))?;
        if !valid_key_name(name) {
            return Err(NoteError::KeyName(name.to_string()));
        }
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::Malformed("signature is not base64"))?;
        if raw.len() < 5 {
            return Err(NoteError::Malformed("signature too short"));
        }
        sigs.push(NoteSignature {
            name: name.to_string(),
            id: [raw[0], raw[1], raw[2], raw[3]],
            sig: raw[4..].to_vec(),
        });
    }
    Ok((text, sigs))
}

/// Verifies that `note` carries a valid signature by `verifier`; returns the text.
pub fn open<'a>(note: &'a str, verifier: &NoteVerifier) -> Result<&'a str, NoteError> {
    let (text, sigs) = split(note)?;
    let ok = sigs.iter().any(|s| {
        s.name == verifier.name
            && s.id == verifier.id
            && s.sig.len() == 64
            && <[u8; 64]>::try_from(s.sig.as_slice())
                .map(|b| {
                    verifier
                        .key
                        .verify_strict(text.as_bytes(), &Signature::from_bytes(&b))
                        .is_ok()
                })
                .unwrap_or(false)
    });
    if ok {
        Ok(text)
    } else {
        Err(NoteError::Unverified(verifier.name.clone()))
    }
}

/// A `tlog-checkpoint` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Extension lines, without their newlines.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// The checkpoint in a signed note, **without** checking its signatures (for picking
    /// notes by size; anything relied on goes through [`open`] first).
    pub fn from_note_unverified(note: &str) -> Result<Self, NoteError> {
        let (body, _) = split(note)?;
        Self::parse(body)
    }

    pub fn parse(text: &str) -> Result<Self, NoteError> {
        check_text(text)?;
        let mut lines = text[..text.len() - 1].split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::Checkpoint("origin"))?;
        let size_s = lines.next().ok_or(NoteError::Checkpoint("tree size"))?;
        if size_s.is_empty()
            || !size_s.bytes().all(|b| b.is_ascii_digit())
            || (size_s.len() > 1 && size_s.starts_with('0'))
        {
            return Err(NoteError::Checkpoint(
                "tree size must be a decimal without leading zeros",
            ));
        }
        let size = size_s
            .parse()
            .map_err(|_| NoteError::Checkpoint("tree size"))?;
        let root_b64 = lines.next().ok_or(NoteError::Checkpoint("root hash"))?;
        let root: Hash = STANDARD
            .decode(root_b64)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(NoteError::Checkpoint(
                "root hash must be 32 bytes of base64",
            ))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            extensions: lines.map(str::to_string).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn sign_open_and_reject() {
        let sk = SigningKey::from_bytes(&[9u8; 32]);
        let v = NoteVerifier::new("lap.example/gw", sk.verifying_key()).unwrap();
        assert_eq!(NoteVerifier::parse_vkey(&v.to_vkey()).unwrap(), v);
        let cp = Checkpoint {
            origin: "lap.example/gw".into(),
            size: 3,
            root: [7u8; 32],
            extensions: vec![],
        };
        let text = cp.to_text();
        let sig = NoteSignature {
            name: v.name.clone(),
            id: v.id,
            sig: sk.sign(text.as_bytes()).to_bytes().to_vec(),
        };
        let note = assemble(&text, &[sig]);
        assert!(note.contains("\n\n\u{2014} lap.example/gw "));
        let opened = open(&note, &v).unwrap();
        assert_eq!(Checkpoint::parse(opened).unwrap(), cp);
        let tampered = note.replacen("\n3\n", "\n4\n", 1);
        assert!(open(&tampered, &v).is_err());
        let other = NoteVerifier::new(
            "lap.example/gw",
            SigningKey::from_bytes(&[8u8; 32]).verifying_key(),
        )
        .unwrap();
        assert!(open(&note, &other).is_err());
    }

    #[test]
    fn checkpoint_parsing_is_strict() {
        assert!(Checkpoint::parse("o\n01\nAAAA\n").is_err());
        assert!(Checkpoint::parse("o\n1\nAAAA\n").is_err());
        assert!(Checkpoint::parse("\n1\nAAAA\n").is_err());
        let root = STANDARD.encode([0u8; 32]);
        let cp = Checkpoint::parse(&format!("o\n0\n{root}\next one\n")).unwrap();
        assert_eq!(cp.extensions, vec!["ext one"]);
        assert!(NoteVerifier::parse_vkey("a+b").is_err());
        assert!(!valid_key_name("a b"));
        assert!(!valid_key_name("a+b"));
    }
}
