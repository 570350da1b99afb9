//! Agent-facing routes and path hygiene.
//!
//! `/tools/<tool>/<rest>` is split into the tool name and the path forwarded to the tool. The
//! rest is normalised so that what the policy sees is exactly what the tool receives:
//! percent-encoded *unreserved* characters (`%61` for `a`) are decoded, and anything an upstream
//! might resolve differently from us is refused — `.`/`..` segments, empty inner segments,
//! encoded `/`, `\` or NUL, raw backslashes and control characters. Otherwise
//! `/tools/files/%2e%2e/admin` could pass a policy on `/files/*` and reach `/admin`.

use crate::errors::ApiError;

pub const TOOLS_PREFIX: &str = "/tools/";
pub const HEALTH_PATH: &str = "/v1/health";
pub const KEYS_PATH: &str = "/v1/keys";

/// Splits `/tools/<tool>[/<rest>]`. `None` when the path is not under `/tools/`.
pub fn split_tool_path(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix(TOOLS_PREFIX)?;
    Some(match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, ""),
    })
}

/// Normalises and checks the path below the tool prefix.
pub fn normalize_rest(rest: &str) -> Result<String, ApiError> {
    if rest.is_empty() {
        return Ok("/".to_string());
    }
    let bytes = rest.as_bytes();
    let mut out = String::with_capacity(rest.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = rest
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .ok_or_else(|| ApiError::path_invalid("malformed percent-encoding in path"))?;
                let v = u8::from_str_radix(hex, 16)
                    .map_err(|_| ApiError::path_invalid("malformed percent-encoding in path"))?;
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    out.push(v as char);
                } else if matches!(v, b'/' | b'\\' | 0) {
                    return Err(ApiError::path_invalid(
                        "encoded '/', '\\' or NUL in path is not allowed",
                    ));
                } else {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
            }
            b'\\' => return Err(ApiError::path_invalid("backslash in path is not allowed")),
            0..=0x20 | 0x7f => {
                return Err(ApiError::path_invalid("control character or space in path"))
            }
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    // Non-ASCII bytes were pushed one by one above; the URI parser only lets ASCII through,
    // but re-check rather than trust it.
    if !out.is_ascii() {
        return Err(ApiError::path_invalid("non-ASCII byte in path"));
    }
    let segments: Vec<&str> = out.split('/').collect();
    // segments[0] is "" (leading slash); the last may be "" (trailing slash).
    for (n, seg) in segments.iter().enumerate().skip(1) {
        if *seg == "." || *seg == ".." {
            return Err(ApiError::path_invalid(
                "'.' or '..' segments are not allowed",
            ));
        }
        if seg.is_empty() && n + 1 != segments.len() {
            return Err(ApiError::path_invalid(
                "empty path segment ('//') is not allowed",
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split() {
        assert_eq!(split_tool_path("/tools/w/a/b"), Some(("w", "/a/b")));
        assert_eq!(split_tool_path("/tools/w"), Some(("w", "")));
        assert_eq!(split_tool_path("/tools/"), Some(("", "")));
        assert_eq!(split_tool_path("/v1/health"), None);
        assert_eq!(split_tool_path("/toolsx/w"), None);
    }

    #[test]
    fn normalizes_unreserved_and_keeps_reserved_encoded() {
        assert_eq!(normalize_rest("").unwrap(), "/");
        assert_eq!(normalize_rest("/a/b/").unwrap(), "/a/b/");
        assert_eq!(normalize_rest("/%61dmin").unwrap(), "/admin");
        assert_eq!(normalize_rest("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize_rest("/a%3fb").unwrap(), "/a%3Fb");
    }

    #[test]
    fn refuses_ambiguous_paths() {
        for p in [
            "/..",
            "/a/../b",
            "/./a",
            "/%2e%2e/admin",
            "/%2E/x",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a//b",
            "/%00",
            "/%zz",
            "/%4",
            "/a b",
        ] {
            let e = normalize_rest(p).unwrap_err();
            assert_eq!(e.code, "PATH_INVALID", "{p}");
        }
    }
}
