//! The LAP keyset JSON format.
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
//! may be a bare public-key hex string.

use crate::{
    parse_public_hex, parse_seed_hex, validate_kid, KeyEntry, KeyError, KeyMaterial, KeySource,
    Keyset, Lifecycle,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Default external-signer timeout, as in the seed (`SIGNER_TIMEOUT_SECONDS`).
pub const DEFAULT_SIGNER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysetFile {
    #[serde(alias = "active_key_id", alias = "active_key")]
    active_kid: String,
    keys: BTreeMap<String, EntryFile>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EntryFile {
    PublicHex(String),
    Full(FullEntry),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullEntry {
    #[serde(default)]
    seed_hex: Option<String>,
    #[serde(default)]
    public_key_hex: Option<String>,
    #[serde(default)]
    signing_cmd: Option<SigningCmd>,
    #[serde(default)]
    timeout_seconds: Option<f64>,
    #[serde(default)]
    not_before: Option<String>,
    #[serde(default)]
    not_after: Option<String>,
    #[serde(default)]
    retired_at: Option<String>,
    #[serde(default)]
    revoked_at: Option<String>,
}

/// Parses an RFC 3339 time of a keyset entry.
pub fn parse_time(s: &str) -> Result<time::OffsetDateTime, KeyError> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| KeyError::Invalid(format!("{s:?} is not an RFC 3339 time")))
}

/// A signing command, either one shell-style string or an argv list.
#[derive(Deserialize)]
#[serde(untagged)]
enum SigningCmd {
    Line(String),
    Argv(Vec<String>),
}

/// Parses and validates a keyset document.
pub fn parse_keyset(text: &str, source: KeySource) -> Result<Keyset, KeyError> {
    let file: KeysetFile = serde_json::from_str(text).map_err(|e| {
        KeyError::Invalid(format!(
            "line {}, column {}: {}",
            e.line(),
            e.column(),
            // serde's message for an untagged enum mismatch carries no key material.
            e
        ))
    })?;
    let mut keys = BTreeMap::new();
    for (kid, entry) in file.keys {
        validate_kid(&kid).map_err(KeyError::Invalid)?;
        let parsed = entry_material(&kid, entry)?;
        keys.insert(kid, parsed);
    }
    Keyset::new(file.active_kid, keys, source)
}

fn entry_material(kid: &str, entry: EntryFile) -> Result<KeyEntry, KeyError> {
    let bad = |what: String| KeyError::Invalid(format!("key {kid:?}: {what}"));
    let full = match entry {
        EntryFile::PublicHex(hex) => FullEntry {
            seed_hex: None,
            public_key_hex: Some(hex),
            signing_cmd: None,
            timeout_seconds: None,
            not_before: None,
            not_after: None,
            retired_at: None,
            revoked_at: None,
        },
        EntryFile::Full(f) => f,
    };
    for t in [
        &full.not_before,
        &full.not_after,
        &full.retired_at,
        &full.revoked_at,
    ]
    .into_iter()
    .flatten()
    {
        parse_time(t).map_err(|e| bad(e.to_string()))?;
    }
    let lifecycle = Lifecycle {
        not_before: full.not_before.clone(),
        not_after: full.not_after.clone(),
        retired_at: full.retired_at.clone(),
        revoked_at: full.revoked_at.clone(),
    };
    let pinned = full
        .public_key_hex
        .as_deref()
        .map(parse_public_hex)
        .transpose()
        .map_err(|e| bad(format!("public_key_hex: {e}")))?;
    if full.seed_hex.is_some() && full.signing_cmd.is_some() {
        return Err(bad("give either seed_hex or signing_cmd, not both".into()));
    }
    if full.timeout_seconds.is_some() && full.signing_cmd.is_none() {
        return Err(bad("timeout_seconds only applies to signing_cmd".into()));
    }
    if let Some(seed_hex) = full.seed_hex {
        let key = parse_seed_hex(&seed_hex).map_err(|e| bad(format!("seed_hex: {e}")))?;
        let public_key = key.verifying_key();
        if pinned.is_some_and(|p| p != public_key) {
            return Err(bad("public_key_hex does not match seed_hex".into()));
        }
        return Ok(KeyEntry {
            kid: kid.to_string(),
            public_key,
            material: KeyMaterial::Seed(Box::new(key)),
            lifecycle,
        });
    }
    let public_key = pinned.ok_or_else(|| bad("needs seed_hex or public_key_hex".into()))?;
    let material = match full.signing_cmd {
        None => KeyMaterial::VerifyOnly,
        Some(cmd) => {
            let argv = match cmd {
                SigningCmd::Argv(v) => v,
                SigningCmd::Line(line) => split_command(&line)
                    .ok_or_else(|| bad("signing_cmd has unbalanced quotes".into()))?,
            };
            if argv.is_empty() || argv[0].is_empty() {
                return Err(bad("signing_cmd is empty".into()));
            }
            let timeout = match full.timeout_seconds {
                None => DEFAULT_SIGNER_TIMEOUT,
                Some(t) if t.is_finite() && t > 0.0 && t <= 60.0 => Duration::from_secs_f64(t),
                Some(t) => return Err(bad(format!("timeout_seconds {t} must be in (0, 60]"))),
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
pub fn split_command(line: &str) -> Option<Vec<String>> {
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
        assert_eq!(ks.get("k1").unwrap().lifecycle.status(), "retired");
        assert_eq!(ks.get("k0").unwrap().lifecycle.status(), "revoked");
        assert_eq!(ks.active().lifecycle.status(), "valid");
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
