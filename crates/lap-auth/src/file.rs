//! Parsing of API-key files (both formats).

use crate::{AgentId, ApiKeyHash, KeyEntry};
use serde::Deserialize;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why a key file was rejected. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RichFile {
    #[serde(default)]
    version: Option<u32>,
    keys: Vec<RichEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RichEntry {
    #[serde(default)]
    id: Option<String>,
    hash: String,
    agent_id: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    disabled: bool,
    #[serde(default)]
    #[allow(dead_code)] // free text for operators; parsed so typos elsewhere are still caught
    note: Option<String>,
}

/// Parses either key-file format.
///
/// An object whose only member is `keys` (plus an optional `version`) is the rich format;
/// any other object is the legacy `{"<key>": "<agent id>"}` map.
pub fn parse_key_file(text: &str) -> Result<Vec<KeyEntry>, KeyFileError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(syntax)?;
    let obj = value
        .as_object()
        .ok_or_else(|| KeyFileError::Invalid("the key file must hold a JSON object".into()))?;
    let rich = obj.contains_key("keys") && obj.keys().all(|k| k == "keys" || k == "version");
    if rich {
        let file: RichFile = serde_json::from_str(text).map_err(syntax)?;
        if let Some(v) = file.version {
            if v != 1 {
                return Err(KeyFileError::Invalid(format!(
                    "unsupported key file version {v} (expected 1)"
                )));
            }
        }
        file.keys
            .into_iter()
            .enumerate()
            .map(|(i, e)| rich_entry(i, e))
            .collect()
    } else {
        let map: BTreeMap<String, String> = serde_json::from_str(text).map_err(|e| {
            // Do not echo serde's message: it may quote the offending key.
            KeyFileError::Syntax {
                line: e.line(),
                column: e.column(),
                message: "legacy key map values must be agent-id strings".into(),
            }
        })?;
        map.into_iter()
            .enumerate()
            .map(|(i, (key, agent))| {
                if key.is_empty() || key.len() > crate::MAX_PRESENTED_KEY_LEN {
                    return Err(KeyFileError::Invalid(format!(
                        "legacy entry #{}: key length must be 1..={}",
                        i + 1,
                        crate::MAX_PRESENTED_KEY_LEN
                    )));
                }
                let hash = ApiKeyHash::of_key(&key);
                let agent_id = agent_id(&agent, || format!("legacy entry #{}", i + 1))?;
                Ok(KeyEntry {
                    key_id: hash.short(),
                    hash,
                    agent_id,
                    groups: Vec::new(),
                    expires_at: None,
                    disabled: false,
                })
            })
            .collect()
    }
}

fn syntax(e: serde_json::Error) -> KeyFileError {
    KeyFileError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

fn agent_id(s: &str, at: impl Fn() -> String) -> Result<AgentId, KeyFileError> {
    AgentId::parse(s).ok_or_else(|| {
        KeyFileError::Invalid(format!(
            "{}: agent id {s:?} must be 1-128 characters from [A-Za-z0-9._:@/-]",
            at()
        ))
    })
}

fn rich_entry(index: usize, e: RichEntry) -> Result<KeyEntry, KeyFileError> {
    let at = || match &e.id {
        Some(id) => format!("key {id:?}"),
        None => format!("key #{}", index + 1),
    };
    let hash = ApiKeyHash::parse(&e.hash).ok_or_else(|| {
        KeyFileError::Invalid(format!("{}: hash must be \"sha256:<64 hex digits>\"", at()))
    })?;
    let key_id = e.id.clone().unwrap_or_else(|| hash.short());
    if key_id.is_empty() || key_id.len() > 128 || key_id.chars().any(|c| c.is_control()) {
        return Err(KeyFileError::Invalid(format!(
            "{}: id must be 1-128 printable characters",
            at()
        )));
    }
    let agent_id = agent_id(&e.agent_id, at)?;
    for g in &e.groups {
        if AgentId::parse(g).is_none() {
            return Err(KeyFileError::Invalid(format!(
                "{}: group {g:?} must be 1-128 characters from [A-Za-z0-9._:@/-]",
                at()
            )));
        }
    }
    let expires_at = match &e.expires_at {
        None => None,
        Some(s) => Some(OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
            KeyFileError::Invalid(format!(
                "{}: expires_at {s:?} is not an RFC 3339 timestamp",
                at()
            ))
        })?),
    };
    Ok(KeyEntry {
        key_id,
        hash,
        agent_id,
        groups: e.groups,
        expires_at,
        disabled: e.disabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_have_positions() {
        match parse_key_file("{\n  \"keys\": [\n   {,}\n]}") {
            Err(KeyFileError::Syntax { line, .. }) => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn legacy_errors_do_not_echo_keys() {
        let err = parse_key_file(r#"{"super-secret-value": 5}"#).unwrap_err();
        assert!(!err.to_string().contains("super-secret-value"), "{err}");
    }

    #[test]
    fn rich_errors_name_the_entry() {
        let err = parse_key_file(r#"{"keys":[{"id":"x","hash":"sha256:00","agent_id":"a"}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("key \"x\""), "{err}");
        let err = parse_key_file(
            r#"{"keys":[{"hash":"sha256:0000000000000000000000000000000000000000000000000000000000000000","agent_id":"a","groups":["bad group"]}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("group"), "{err}");
        let err =
            parse_key_file(r#"{"keys":[{"hash":"x","agent_id":"a","bogus":1}]}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        assert!(parse_key_file("[]").is_err());
        assert!(parse_key_file(r#"{"keys":[], "version": 2}"#).is_err());
    }
}
