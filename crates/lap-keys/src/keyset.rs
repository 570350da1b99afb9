//! The LAP keyset JSON format, defined once for the gateway that loads it and `lap-signer`
//! that edits it.
//!
//! ```json
//! {"active_kid": "k2",
//!  "keys": {"k1": {"public_key_hex": "…"},
//!           "k2": {"seed_hex": "…"},
//!           "hsm": {"signing_cmd": "lap-signer sign --key-file /run/k", "public_key_hex": "…",
//!                   "timeout_seconds": 2.0}}}
//! ```
//!
//! As in the seed, `active_key_id` / `active_key` are accepted for `active_kid`, and a key entry
//! may be a bare public-key hex string. Optional lifecycle fields per key: `not_before`,
//! `not_after`, `retired_at`, `revoked_at` (RFC 3339).
//!
//! [`KeysetFile`] is the document as written, [`Keyset`] what it means once validated. Unknown
//! fields are refused when a keyset is read, so a tool that reads a [`KeysetFile`], changes it
//! and writes it back cannot silently drop anything an operator wrote; it normalises only the
//! spelling of `active_kid`.

use crate::{
    parse_public_hex, parse_seed_hex, validate_kid, HexKeyError, InvalidKeyId, KeyEntry,
    KeyMaterial, KeySource, KeyStatus, Keyset, Lifecycle,
};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Default external-signer timeout, as in the seed (`SIGNER_TIMEOUT_SECONDS`).
pub const DEFAULT_SIGNER_TIMEOUT: Duration = Duration::from_secs(2);

/// A keyset document as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysetFile {
    #[serde(alias = "active_key_id", alias = "active_key")]
    pub active_kid: String,
    pub keys: BTreeMap<String, KeyFileEntry>,
}

/// One key of a keyset document.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum KeyFileEntry {
    /// A bare public-key hex string: a verify-only key (kept as written).
    PublicKeyHex(String),
    Fields(KeyFields),
}

/// A string or an object, told apart by the JSON type (not by trying each in turn, which
/// would report any mistake inside an object as "did not match any variant").
impl<'de> Deserialize<'de> for KeyFileEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> serde::de::Visitor<'de> for EntryVisitor {
            type Value = KeyFileEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a public key in hex or a key object")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyFileEntry, E> {
                Ok(KeyFileEntry::PublicKeyHex(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<KeyFileEntry, A::Error> {
                KeyFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(KeyFileEntry::Fields)
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}

/// The fields of a key entry; absent fields are not written back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_hex: Option<SeedHex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_cmd: Option<SigningCmd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// A seed as 64 hex characters: zeroized on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SeedHex(String);

impl SeedHex {
    /// The seed of `key`, in hex.
    pub fn of(key: &ed25519_dalek::SigningKey) -> Self {
        let seed = zeroize::Zeroizing::new(key.to_bytes());
        SeedHex(hex::encode(seed.as_ref()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for SeedHex {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SeedHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeedHex(<redacted>)")
    }
}

/// A signing command, either one shell-style string or an argv list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SigningCmd {
    Line(String),
    Argv(Vec<String>),
}

/// Why a signing command cannot be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unbalanced quotes")]
    UnbalancedQuotes,
    #[error("empty command")]
    Empty,
}

/// Why a keyset document was refused. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeysetError {
    // serde's message for an untagged enum mismatch carries no key material.
    #[error("line {}, column {}: {}", .0.line(), .0.column(), .0)]
    Syntax(#[source] serde_json::Error),
    #[error(transparent)]
    KeyId(#[from] InvalidKeyId),
    #[error("key {kid:?}: {problem}")]
    Entry {
        kid: String,
        #[source]
        problem: EntryError,
    },
    #[error("active_kid {0:?} is not in keys")]
    ActiveMissing(String),
    #[error("active key {0:?} has only a public key; it needs seed_hex or signing_cmd")]
    ActiveCannotSign(String),
    #[error("active key {kid:?} is {}; activate another key", .status.as_str())]
    ActiveNotInService { kid: String, status: KeyStatus },
    #[error("active key {0:?} is outside its validity window (not_before/not_after)")]
    ActiveOutsideWindow(String),
}

/// What is wrong with one key entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EntryError {
    #[error("{0:?} is not an RFC 3339 time")]
    Time(String),
    #[error("public_key_hex: {0}")]
    PublicKey(#[source] HexKeyError),
    #[error("seed_hex: {0}")]
    Seed(#[source] HexKeyError),
    #[error("give either seed_hex or signing_cmd, not both")]
    SeedAndCommand,
    #[error("timeout_seconds only applies to signing_cmd")]
    TimeoutWithoutCommand,
    #[error("public_key_hex does not match seed_hex")]
    Mismatch,
    #[error("needs seed_hex or public_key_hex")]
    NoKey,
    #[error("signing_cmd: {0}")]
    Command(#[source] CommandError),
    #[error("timeout_seconds {0} must be in (0, 60]")]
    Timeout(f64),
}

/// Parses an RFC 3339 time of a keyset entry.
pub(crate) fn parse_time(s: &str) -> Result<time::OffsetDateTime, EntryError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| EntryError::Time(s.to_string()))
}

/// An external signer's timeout in seconds, if it is in (0, 60].
pub(crate) fn signer_timeout(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && seconds > 0.0 && seconds <= 60.0)
        .then(|| Duration::from_secs_f64(seconds))
}

/// The argv of a signing command (a line is split shell-style); it must name a program.
pub(crate) fn command_argv(cmd: &SigningCmd) -> Result<Vec<String>, CommandError> {
    let argv = match cmd {
        SigningCmd::Argv(v) => v.clone(),
        SigningCmd::Line(line) => split_command(line).ok_or(CommandError::UnbalancedQuotes)?,
    };
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(CommandError::Empty);
    }
    Ok(argv)
}

/// Parses and validates a keyset document.
pub fn parse_keyset(text: &str, source: KeySource) -> Result<Keyset, KeysetError> {
    KeysetFile::parse(text)?.to_keyset(source)
}

impl KeysetFile {
    /// A keyset of one key, active.
    pub fn with_key(kid: &str, entry: KeyFileEntry) -> Self {
        KeysetFile {
            active_kid: kid.to_string(),
            keys: BTreeMap::from([(kid.to_string(), entry)]),
        }
    }

    /// Reads the document (syntax and field names only; see [`KeysetFile::to_keyset`]).
    pub fn parse(text: &str) -> Result<Self, KeysetError> {
        serde_json::from_str(text).map_err(KeysetError::Syntax)
    }

    /// The document as indented JSON (it holds seeds: zeroized when dropped).
    pub fn to_json_pretty(&self) -> zeroize::Zeroizing<String> {
        // Serialising strings, numbers and string-keyed maps cannot fail.
        zeroize::Zeroizing::new(serde_json::to_string_pretty(self).unwrap_or_default())
    }

    /// Validates every entry and the active key.
    pub fn to_keyset(&self, source: KeySource) -> Result<Keyset, KeysetError> {
        let mut keys = BTreeMap::new();
        for (kid, entry) in &self.keys {
            validate_kid(kid)?;
            let parsed =
                entry_material(kid, &entry.fields()).map_err(|problem| KeysetError::Entry {
                    kid: kid.clone(),
                    problem,
                })?;
            keys.insert(kid.clone(), parsed);
        }
        Keyset::new(self.active_kid.clone(), keys, source)
    }

    /// The fields of key `kid` for editing; a bare public-key entry becomes an object first.
    pub fn fields_mut(&mut self, kid: &str) -> Option<&mut KeyFields> {
        let entry = self.keys.get_mut(kid)?;
        if let KeyFileEntry::PublicKeyHex(hex) = entry {
            *entry = KeyFileEntry::Fields(KeyFields {
                public_key_hex: Some(std::mem::take(hex)),
                ..KeyFields::default()
            });
        }
        match entry {
            KeyFileEntry::Fields(f) => Some(f),
            KeyFileEntry::PublicKeyHex(_) => None,
        }
    }
}

impl KeyFileEntry {
    /// The entry's fields (a bare public key is `public_key_hex` alone).
    pub fn fields(&self) -> Cow<'_, KeyFields> {
        match self {
            KeyFileEntry::Fields(f) => Cow::Borrowed(f),
            KeyFileEntry::PublicKeyHex(hex) => Cow::Owned(KeyFields {
                public_key_hex: Some(hex.clone()),
                ..KeyFields::default()
            }),
        }
    }
}

impl KeyFields {
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            not_before: self.not_before.clone(),
            not_after: self.not_after.clone(),
            retired_at: self.retired_at.clone(),
            revoked_at: self.revoked_at.clone(),
        }
    }
}

fn entry_material(kid: &str, full: &KeyFields) -> Result<KeyEntry, EntryError> {
    let lifecycle = full.lifecycle();
    for t in [
        &lifecycle.not_before,
        &lifecycle.not_after,
        &lifecycle.retired_at,
        &lifecycle.revoked_at,
    ]
    .into_iter()
    .flatten()
    {
        parse_time(t)?;
    }
    let pinned = full
        .public_key_hex
        .as_deref()
        .map(parse_public_hex)
        .transpose()
        .map_err(EntryError::PublicKey)?;
    if full.seed_hex.is_some() && full.signing_cmd.is_some() {
        return Err(EntryError::SeedAndCommand);
    }
    if full.timeout_seconds.is_some() && full.signing_cmd.is_none() {
        return Err(EntryError::TimeoutWithoutCommand);
    }
    if let Some(seed_hex) = &full.seed_hex {
        let key = parse_seed_hex(seed_hex.expose()).map_err(EntryError::Seed)?;
        let public_key = key.verifying_key();
        if pinned.is_some_and(|p| p != public_key) {
            return Err(EntryError::Mismatch);
        }
        return Ok(KeyEntry {
            kid: kid.to_string(),
            public_key,
            material: KeyMaterial::Seed(Box::new(key)),
            lifecycle,
        });
    }
    let public_key = pinned.ok_or(EntryError::NoKey)?;
    let material = match &full.signing_cmd {
        None => KeyMaterial::VerifyOnly,
        Some(cmd) => {
            let argv = command_argv(cmd).map_err(EntryError::Command)?;
            let timeout = match full.timeout_seconds {
                None => DEFAULT_SIGNER_TIMEOUT,
                Some(t) => signer_timeout(t).ok_or(EntryError::Timeout(t))?,
            };
            KeyMaterial::External { argv, timeout }
        }
    };
    Ok(KeyEntry {
        kid: kid.to_string(),
        public_key,
        material,
        lifecycle,
    })
}

/// Splits a command line shell-style (quotes and backslashes, no expansion), like Python's
/// `shlex.split` which the seed uses. Returns `None` on unbalanced quotes.
pub(crate) fn split_command(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => cur.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => cur.push(c),
                            c => {
                                cur.push('\\');
                                cur.push(c);
                            }
                        },
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f";

    fn pubhex() -> String {
        hex::encode(parse_seed_hex(SEED).unwrap().verifying_key().as_bytes())
    }

    #[test]
    fn full_keyset() {
        let json = format!(
            r#"{{"active_kid": "k2", "keys": {{
                "k1": "{p}",
                "k2": {{"seed_hex": "{SEED}", "public_key_hex": "{p}"}},
                "hsm": {{"signing_cmd": "signer --key 'a b'", "public_key_hex": "{p}", "timeout_seconds": 0.5}}
            }}}}"#,
            p = pubhex()
        );
        let ks = parse_keyset(&json, KeySource::KeysetJson).unwrap();
        assert_eq!(ks.active_kid(), "k2");
        assert!(!ks.get("k1").unwrap().can_sign());
        match &ks.get("hsm").unwrap().material {
            KeyMaterial::External { argv, timeout } => {
                assert_eq!(argv, &["signer", "--key", "a b"]);
                assert_eq!(*timeout, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_inconsistent_keysets() {
        let p = pubhex();
        let other = hex::encode(
            parse_seed_hex(&"11".repeat(32))
                .unwrap()
                .verifying_key()
                .as_bytes(),
        );
        for (json, needle) in [
            (
                format!(r#"{{"active_kid":"x","keys":{{"k":"{p}"}}}}"#),
                "not in keys",
            ),
            (
                format!(r#"{{"active_kid":"k","keys":{{"k":"{p}"}}}}"#),
                "only a public key",
            ),
            (
                format!(
                    r#"{{"active_kid":"k","keys":{{"k":{{"seed_hex":"{SEED}","public_key_hex":"{other}"}}}}}}"#
                ),
                "does not match",
            ),
            (
                r#"{"active_kid":"k","keys":{"k":{"signing_cmd":"x"}}}"#.to_string(),
                "needs seed_hex or public_key_hex",
            ),
            (
                format!(
                    r#"{{"active_kid":"k","keys":{{"k":{{"signing_cmd":"x","public_key_hex":"{p}","timeout_seconds":-1}}}}}}"#
                ),
                "timeout_seconds",
            ),
            (
                format!(r#"{{"active_kid":"bad kid","keys":{{"bad kid":"{p}"}}}}"#),
                "key id",
            ),
        ] {
            let err = parse_keyset(&json, KeySource::KeysetJson).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} / {needle}");
            assert!(!err.to_string().contains(SEED));
        }
    }

    #[test]
    fn lifecycle_fields() {
        let p = pubhex();
        let json = format!(
            r#"{{"active_kid":"k2","keys":{{
                "k1":{{"public_key_hex":"{p}","retired_at":"2026-01-01T00:00:00Z"}},
                "k0":{{"public_key_hex":"{p}","revoked_at":"2025-06-01T00:00:00Z"}},
                "k2":{{"seed_hex":"{SEED}","not_before":"2020-01-01T00:00:00Z"}}}}}}"#
        );
        let ks = parse_keyset(&json, KeySource::KeysetJson).unwrap();
        assert_eq!(ks.get("k1").unwrap().lifecycle.status(), KeyStatus::Retired);
        assert_eq!(ks.get("k0").unwrap().lifecycle.status(), KeyStatus::Revoked);
        assert_eq!(ks.active().lifecycle.status(), KeyStatus::Valid);
        // The active key may not be revoked, retired, or outside its window.
        for extra in [
            r#""revoked_at":"2025-01-01T00:00:00Z""#,
            r#""retired_at":"2025-01-01T00:00:00Z""#,
            r#""not_before":"2999-01-01T00:00:00Z""#,
            r#""not_after":"2000-01-01T00:00:00Z""#,
            r#""not_after":"yesterday""#,
        ] {
            let json =
                format!(r#"{{"active_kid":"k","keys":{{"k":{{"seed_hex":"{SEED}",{extra}}}}}}}"#);
            assert!(
                parse_keyset(&json, KeySource::KeysetJson).is_err(),
                "{extra}"
            );
        }
    }

    /// What an operator wrote comes back as written (a bare public key stays bare, an argv
    /// stays a list), apart from `active_kid`'s spelling; what the format does not know is
    /// refused when read, so an edit can never drop it.
    #[test]
    fn keyset_files_round_trip() {
        let p = pubhex();
        let text = format!(
            r#"{{"active_key_id": "k2", "keys": {{
                "k1": "{p}",
                "k2": {{"seed_hex": "{SEED}", "not_before": "2020-01-01T00:00:00Z"}},
                "hsm": {{"signing_cmd": ["signer", "--key", "a b"], "public_key_hex": "{p}", "timeout_seconds": 0.5}}
            }}}}"#
        );
        let file = KeysetFile::parse(&text).unwrap();
        assert_eq!(file.active_kid, "k2");
        assert_eq!(file.keys["k1"], KeyFileEntry::PublicKeyHex(p.clone()));
        let written = file.to_json_pretty();
        assert!(written.contains("\"active_kid\": \"k2\""), "{}", *written);
        assert!(
            !written.contains("null"),
            "absent fields are not written: {}",
            *written
        );
        let again = KeysetFile::parse(&written).unwrap();
        assert_eq!(again, file);
        assert_eq!(
            again.to_keyset(KeySource::KeysetFile).unwrap().active_kid(),
            "k2"
        );
        assert!(!format!("{file:?}").contains(SEED));

        for unknown in [
            format!(r#"{{"active_kid":"k","keys":{{"k":{{"seed_hex":"{SEED}","note":"x"}}}}}}"#),
            format!(r#"{{"active_kid":"k","comment":"x","keys":{{"k":{{"seed_hex":"{SEED}"}}}}}}"#),
        ] {
            let err = KeysetFile::parse(&unknown).unwrap_err();
            assert!(matches!(err, KeysetError::Syntax(_)), "{err}");
            assert!(err.to_string().contains("unknown field"), "{err}");
            assert!(!err.to_string().contains(SEED));
        }
    }

    #[test]
    fn editing_a_bare_key_gives_it_fields() {
        let p = pubhex();
        let mut file = KeysetFile::with_key(
            "k2",
            KeyFileEntry::Fields(KeyFields {
                seed_hex: Some(SeedHex::of(&parse_seed_hex(SEED).unwrap())),
                ..KeyFields::default()
            }),
        );
        file.keys
            .insert("k1".into(), KeyFileEntry::PublicKeyHex(p.clone()));
        file.fields_mut("k1").unwrap().retired_at = Some("2026-01-01T00:00:00Z".into());
        assert!(file.fields_mut("nope").is_none());
        let ks = file.to_keyset(KeySource::KeysetFile).unwrap();
        assert_eq!(ks.get("k1").unwrap().lifecycle.status(), KeyStatus::Retired);
        assert_eq!(ks.get("k1").unwrap().public_key_hex(), p);
        assert_eq!(ks.active().public_key_hex(), p);
    }

    #[test]
    fn split_like_shlex() {
        assert_eq!(
            split_command(r#"a "b c" 'd e' f\ g"#).unwrap(),
            vec!["a", "b c", "d e", "f g"]
        );
        assert_eq!(split_command("  ").unwrap(), Vec::<String>::new());
        assert!(split_command("a 'b").is_none());
        assert_eq!(split_command("''").unwrap(), vec![""]);
    }
}
