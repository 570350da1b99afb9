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
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
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
    let refusal = Refusal::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de
        .deserialize_any(StrictVisitor(Level::top(&refusal)))
        .map_err(|e| refusal.classify(e))?;
    de.end().map_err(|e| refusal.classify(e))?;
    Ok(value)
}

/// Checks a JSON body exactly as [`parse_json_args`] does — same parser, same checks in the
/// same order, so the same error for the same body — without building a value (no string
/// copies, no maps). For when nothing reads the arguments. `Ok(true)` when it is an object.
pub fn validate_json_args(body: &[u8]) -> Result<bool, ArgsError> {
    let refusal = Refusal::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    let is_object = de
        .deserialize_any(Checker(Level::top(&refusal)))
        .map_err(|e| refusal.classify(e))?;
    de.end().map_err(|e| refusal.classify(e))?;
    Ok(is_object)
}

/// Our own refusals (duplicate key, too deep), carried past serde beside its error.
///
/// A visitor can only fail with the deserializer's error type, whose content is a message. So
/// a visitor that refuses records the typed reason here, then fails with a plain message to
/// stop serde; the caller takes the recorded reason. Anything else serde reports is a syntax
/// error. Nothing is recognised from message text.
#[derive(Default)]
struct Refusal(Cell<Option<ArgsError>>);

impl Refusal {
    /// Records `why` and returns the error that stops the deserializer.
    fn refuse<E: de::Error>(&self, why: ArgsError) -> E {
        let stop = E::custom(&why);
        self.0.set(Some(why));
        stop
    }

    /// Refuses a key seen twice in one object (shown up to 64 characters).
    fn duplicate<E: de::Error>(&self, key: &str) -> E {
        self.refuse(ArgsError::DuplicateKey(key.chars().take(64).collect()))
    }

    /// The typed reason for `e`: ours when a visitor refused, otherwise serde's syntax error.
    fn classify(&self, e: serde_json::Error) -> ArgsError {
        self.0
            .take()
            .unwrap_or_else(|| ArgsError::Syntax(e.to_string()))
    }
}

/// Where a visitor stands: how deep, and where its refusals go.
#[derive(Clone, Copy)]
struct Level<'r> {
    depth: usize,
    refusal: &'r Refusal,
}

impl<'r> Level<'r> {
    fn top(refusal: &'r Refusal) -> Self {
        Level { depth: 0, refusal }
    }

    /// The level of the members of an array or object read at this level; refused beyond
    /// [`MAX_ARGS_DEPTH`].
    fn enter<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_ARGS_DEPTH {
            return Err(self.refusal.refuse(ArgsError::TooDeep));
        }
        Ok(Level {
            depth: self.depth + 1,
            ..self
        })
    }
}

struct StrictVisitor<'r>(Level<'r>);

impl<'de> de::DeserializeSeed<'de> for StrictVisitor<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictVisitor<'_> {
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
        let inner = self.0.enter()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictVisitor(inner))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.0.enter()?;
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let v = map.next_value_seed(StrictVisitor(inner))?;
            if out.contains_key(&k) {
                return Err(inner.refusal.duplicate(&k));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// The validating twin of [`StrictVisitor`]: every value is still parsed (strings are still
/// checked for escapes and UTF-8), only nothing is kept but the keys of the object being read.
/// Its `Value` says whether the value is an object.
struct Checker<'r>(Level<'r>);

impl<'de> de::DeserializeSeed<'de> for Checker<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checker<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_none<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let inner = self.0.enter()?;
        while seq.next_element_seed(Checker(inner))?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let inner = self.0.enter()?;
        let mut keys = SeenKeys::default();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            // As in `StrictVisitor`: the value first, then the duplicate check.
            map.next_value_seed(Checker(inner))?;
            if let Err(k) = keys.insert(k) {
                return Err(inner.refusal.duplicate(&k));
            }
        }
        Ok(true)
    }
}

/// An object key, borrowed from the body unless it contains escapes (then decoded, as
/// `String` keys are, so `"a"` and `"\u0061"` are the same key).
struct KeySeed;

impl<'de> de::DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Keys seen in one object: a linear scan while there are few (the usual case), a hash set
/// beyond that so a body with many keys cannot make the check quadratic.
#[derive(Default)]
struct SeenKeys<'de> {
    few: Vec<Cow<'de, str>>,
    many: Option<HashSet<Cow<'de, str>>>,
}

impl<'de> SeenKeys<'de> {
    const FEW: usize = 16;

    /// Gives the key back when it was already there.
    fn insert(&mut self, k: Cow<'de, str>) -> Result<(), Cow<'de, str>> {
        if let Some(set) = self.many.as_mut() {
            return if set.contains(&k) {
                Err(k)
            } else {
                set.insert(k);
                Ok(())
            };
        }
        if self.few.contains(&k) {
            return Err(k);
        }
        self.few.push(k);
        if self.few.len() > Self::FEW {
            self.many = Some(self.few.drain(..).collect());
        }
        Ok(())
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

    /// The kind of refusal never depends on what the body's text says: keys that look like
    /// internal markers or serde messages are just keys.
    #[test]
    fn refusals_do_not_depend_on_message_text() {
        for key in [
            "lap-too-deep",
            "lap-duplicate-key:x:lap-end",
            "trailing characters",
        ] {
            let body = format!("{{\"{key}\": 1, \"{key}\": 2}}");
            let want = Err(ArgsError::DuplicateKey(key.into()));
            assert_eq!(parse_json_args(body.as_bytes()).map(|_| true), want);
            assert_eq!(validate_json_args(body.as_bytes()), want);
            let once = format!("{{\"{key}\": 1}}");
            assert!(parse_json_args(once.as_bytes()).is_ok());
            assert_eq!(validate_json_args(once.as_bytes()), Ok(true));
        }
        // A syntax error after a refusal-free prefix is a syntax error.
        let err = parse_json_args(br#"{"a": [1, 2}"#).unwrap_err();
        assert_eq!(err.code(), "INVALID_JSON_BODY", "{err}");
    }

    /// The validator must accept and refuse exactly what the parser does, with the same error.
    #[test]
    fn validate_matches_parse() {
        let deep = "[".repeat(MAX_ARGS_DEPTH + 1) + &"]".repeat(MAX_ARGS_DEPTH + 1);
        let ok_deep = "{\"a\":".repeat(MAX_ARGS_DEPTH) + "1" + &"}".repeat(MAX_ARGS_DEPTH);
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        let many_ok = format!("{{{}\"z\":0}}", many);
        let many_dup = format!("{{{}\"k7\":0}}", many);
        let long_dup = format!("{{\"{0}\":1,\"{0}\":2}}", "k".repeat(100));
        let cases: Vec<&[u8]> = vec![
            br#"{"a": 1, "b": {"c": [1, 2]}}"#,
            br#"{"a": 1, "a": 2}"#,
            br#"{"a": 1, "\u0061": 2}"#,
            br#"{"x": {"a": 1, "a": 2}}"#,
            br#"[{"a": 1, "a": 2}]"#,
            br#"{"a": 1, "a": [1,}"#,
            br#"{"a": "\ud800"}"#,
            br#"{"a": "x\y"}"#,
            br#"{"a": 1e400}"#,
            br#"{"a": -0.5, "b": null, "c": true, "d": "\n\u00e9"}"#,
            b"{\"a\": \"\xff\"}",
            b"{\"a\": \"\x01\"}",
            b"{\"a\": 1} trailing",
            b"",
            b"   ",
            b"42",
            b"\"s\"",
            b"[1, 2",
            b"{\"a\" 1}",
            b"{1: 2}",
            deep.as_bytes(),
            ok_deep.as_bytes(),
            many_ok.as_bytes(),
            many_dup.as_bytes(),
            long_dup.as_bytes(),
        ];
        for c in cases {
            let parsed = parse_json_args(c).map(|v| v.is_object());
            assert_eq!(
                validate_json_args(c),
                parsed,
                "{}",
                String::from_utf8_lossy(c)
            );
        }
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
