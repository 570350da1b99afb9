//! JSON request bodies as Cedar values.
//!
//! Parsing is strict on purpose: a gateway that reads `{"amount": 1, "amount": 1000}` as 1000
//! while the tool reads 1 (or the reverse) can be talked past. Duplicate keys are therefore an
//! error, as is nesting deeper than [`MAX_ARGS_DEPTH`].
//!
//! Conversion: strings, booleans → themselves; integers in `i64` → `Long`; other numbers →
//! `decimal` when Cedar's decimal can hold them exactly (≤ 4 fractional digits), otherwise their
//! JSON text as a `String`; arrays → sets; objects → records; `null` members are left out
//! (Cedar has no null, and `has` then reads naturally).

use cedar_policy::RestrictedExpression;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// Deepest nesting of arrays/objects accepted in a JSON body.
pub const MAX_ARGS_DEPTH: usize = 32;

/// Why a JSON body could not become `args`. Codes are stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("the JSON body is not valid JSON: {0}")]
    Syntax(String),
    #[error("the JSON body repeats the key {0:?} in one object")]
    DuplicateKey(String),
    #[error("the JSON body nests deeper than {MAX_ARGS_DEPTH} levels")]
    TooDeep,
}

impl ArgsError {
    pub fn code(&self) -> &'static str {
        match self {
            ArgsError::Syntax(_) => "INVALID_JSON_BODY",
            ArgsError::DuplicateKey(_) => "JSON_DUPLICATE_KEY",
            ArgsError::TooDeep => "JSON_TOO_DEEP",
        }
    }
}

/// Parses a JSON body strictly (no duplicate keys, bounded depth).
pub fn parse_json_args(body: &[u8]) -> Result<Value, ArgsError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de
        .deserialize_any(StrictVisitor { depth: 0 })
        .map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(value)
}

fn classify(e: serde_json::Error) -> ArgsError {
    let msg = e.to_string();
    if let Some(rest) = msg.strip_prefix(DUP_PREFIX) {
        let key = rest.split(DUP_SUFFIX).next().unwrap_or_default();
        ArgsError::DuplicateKey(key.to_string())
    } else if msg.starts_with(DEEP_MSG) {
        ArgsError::TooDeep
    } else {
        ArgsError::Syntax(msg)
    }
}

const DUP_PREFIX: &str = "lap-duplicate-key:";
const DUP_SUFFIX: &str = ":lap-end";
const DEEP_MSG: &str = "lap-too-deep";

struct StrictVisitor {
    depth: usize,
}

impl<'de> de::DeserializeSeed<'de> for StrictVisitor {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_ARGS_DEPTH {
            return Err(de::Error::custom(DEEP_MSG));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictVisitor {
            depth: self.depth + 1,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_ARGS_DEPTH {
            return Err(de::Error::custom(DEEP_MSG));
        }
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(StrictVisitor {
                depth: self.depth + 1,
            })?;
            if out.contains_key(&k) {
                let shown: String = k.chars().take(64).collect();
                return Err(de::Error::custom(format!(
                    "{DUP_PREFIX}{shown}{DUP_SUFFIX}"
                )));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Converts a parsed JSON value to a Cedar value (see the module docs for the mapping).
///
/// Returns `None` for `null`. Object keys are unique by construction of [`parse_json_args`].
pub fn json_to_cedar(v: &Value) -> Option<RestrictedExpression> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Number(n) => number(n),
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().filter_map(json_to_cedar))
        }
        Value::Object(map) => {
            let fields = map
                .iter()
                .filter_map(|(k, v)| json_to_cedar(v).map(|e| (k.clone(), e)));
            // Keys are unique (serde_json::Map), so construction cannot fail; if it ever did,
            // leaving the member out makes policies that need it fail closed.
            RestrictedExpression::new_record(fields).ok()?
        }
    })
}

fn number(n: &Number) -> RestrictedExpression {
    if let Some(i) = n.as_i64() {
        return RestrictedExpression::new_long(i);
    }
    let text = n.to_string();
    match cedar_decimal(&text) {
        Some(d) => RestrictedExpression::new_decimal(d),
        None => RestrictedExpression::new_string(text),
    }
}

/// Cedar `decimal`: at most 4 fractional digits and within ±922337203685477.5807.
fn cedar_decimal(text: &str) -> Option<String> {
    if text.contains(['e', 'E']) {
        return None;
    }
    let (int, frac) = text.split_once('.')?;
    if frac.is_empty() || frac.len() > 4 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = int.trim_start_matches('-');
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing() {
        assert!(parse_json_args(br#"{"a": 1, "b": {"c": [1, 2]}}"#).is_ok());
        assert_eq!(
            parse_json_args(br#"{"a": 1, "a": 2}"#),
            Err(ArgsError::DuplicateKey("a".into()))
        );
        assert_eq!(
            parse_json_args(br#"{"x": {"a": 1, "a": 2}}"#)
                .unwrap_err()
                .code(),
            "JSON_DUPLICATE_KEY"
        );
        let deep = "[".repeat(MAX_ARGS_DEPTH + 1) + &"]".repeat(MAX_ARGS_DEPTH + 1);
        assert_eq!(parse_json_args(deep.as_bytes()), Err(ArgsError::TooDeep));
        let ok = "[".repeat(MAX_ARGS_DEPTH) + &"]".repeat(MAX_ARGS_DEPTH);
        assert!(parse_json_args(ok.as_bytes()).is_ok());
        assert_eq!(
            parse_json_args(b"{\"a\": 1} trailing").unwrap_err().code(),
            "INVALID_JSON_BODY"
        );
        assert_eq!(
            parse_json_args(b"").unwrap_err().code(),
            "INVALID_JSON_BODY"
        );
    }

    #[test]
    fn decimals() {
        assert_eq!(cedar_decimal("1.5"), Some("1.5".into()));
        assert_eq!(cedar_decimal("-12.3456"), Some("-12.3456".into()));
        assert_eq!(cedar_decimal("1.23456"), None);
        assert_eq!(cedar_decimal("1e5"), None);
        assert_eq!(cedar_decimal("1234567890123456.0"), None);
    }
}
