//! Route: which of the agent-facing routes a request is for, and path hygiene.
//!
//! `GET`/`HEAD` of `/v1/health` and `/v1/keys` are answered by the gateway itself, before any
//! credential is asked for (they are public documents). Everything else must be
//! `/tools/<tool>/<rest>` with a method a tool may be called with. `/tools/<tool>/<rest>` is split into the tool name and the path forwarded to the tool. The
//! rest is normalised so that what the policy sees is exactly what the tool receives:
//! percent-encoded *unreserved* characters (`%61` for `a`) are decoded, and anything an upstream
//! might resolve differently from us is refused — `.`/`..` segments, empty inner segments,
//! encoded `/`, `\` or NUL, raw backslashes and control characters. Otherwise
//! `/tools/files/%2e%2e/admin` could pass a policy on `/files/*` and reach `/admin`.

use super::error::ApiError;
use crate::documents::Published;
use crate::tools::{Catalog, Tool};
use bytes::Bytes;
use lap_policy::METHODS;
use pingora::http::RequestHeader;
use std::sync::Arc;

pub const TOOLS_PREFIX: &str = "/tools/";
pub const HEALTH_PATH: &str = "/v1/health";
pub const KEYS_PATH: &str = "/v1/keys";

/// The document the gateway itself answers this request with, if it is one of its own.
pub fn local_document(
    req: &RequestHeader,
    published: &Published,
    store: crate::state::StoreStatus,
) -> Option<Bytes> {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return None;
    }
    match req.uri.path() {
        HEALTH_PATH => Some(published.health(store)),
        KEYS_PATH => Some(published.keys.clone()),
        _ => None,
    }
}

/// A request for a tool, before the tool is looked up: known only by the name in its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolRoute<'a> {
    pub tool: &'a str,
    /// The path below `/tools/<tool>`, as sent (not yet normalised).
    pub raw_rest: &'a str,
}

/// The tool route of a request: `ROUTE_NOT_FOUND` outside `/tools/`, `METHOD_NOT_ALLOWED` for
/// a method tools are never called with. Checked before the credential, so a request that
/// cannot be a tool call costs no key look-up.
pub fn tool_route(req: &RequestHeader) -> Result<ToolRoute<'_>, ApiError> {
    let (tool, raw_rest) = split_tool_path(req.uri.path()).ok_or_else(ApiError::route_not_found)?;
    if !METHODS.contains(&req.method.as_str()) {
        return Err(ApiError::method_not_allowed());
    }
    Ok(ToolRoute { tool, raw_rest })
}

/// A route resolved against the catalog: the tool, the normalised path below it, and the
/// upstream request target (base path + normalised path + raw query).
pub struct Resolved {
    pub tool: Arc<Tool>,
    pub rest: String,
    pub target: String,
}

/// Looks the tool up and normalises the path: `TOOL_NOT_FOUND`, `PATH_INVALID`.
pub fn resolve(
    catalog: &Catalog,
    route: ToolRoute<'_>,
    query: Option<&str>,
) -> Result<Resolved, ApiError> {
    let tool = catalog
        .get(route.tool)
        .cloned()
        .ok_or_else(|| ApiError::tool_not_found(route.tool))?;
    let rest = normalize_rest(route.raw_rest)?;
    let target = tool.target(&rest, query);
    Ok(Resolved { tool, rest, target })
}

pub const MCP_PREFIX: &str = "/mcp/";

/// The server named by an MCP route (`/mcp/<server>`), if the path is under `/mcp/`. The
/// name is looked up later; anything that is not a configured server's name is 404.
pub fn mcp_server(path: &str) -> Option<&str> {
    path.strip_prefix(MCP_PREFIX)
}

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

    fn req(method: &str, path: &str) -> RequestHeader {
        RequestHeader::build(method, path.as_bytes(), None).unwrap()
    }

    #[test]
    fn local_documents_only_for_get_and_head() {
        let published = Published::fixed(Bytes::from_static(b"h"), Bytes::from_static(b"k"));
        let ok = crate::state::StoreStatus::Ok;
        assert_eq!(
            local_document(&req("GET", HEALTH_PATH), &published, ok).unwrap(),
            "h"
        );
        assert_eq!(
            local_document(&req("HEAD", KEYS_PATH), &published, ok).unwrap(),
            "k"
        );
        assert!(local_document(&req("POST", HEALTH_PATH), &published, ok).is_none());
        assert!(local_document(&req("GET", "/v1/healthz"), &published, ok).is_none());
    }

    #[test]
    fn tool_routes_need_the_prefix_and_a_tool_method() {
        let r = req("POST", "/tools/echo/a/b?x=1");
        assert_eq!(
            tool_route(&r).unwrap(),
            ToolRoute {
                tool: "echo",
                raw_rest: "/a/b"
            }
        );
        assert_eq!(
            tool_route(&req("GET", "/v1/other")).unwrap_err().code,
            "ROUTE_NOT_FOUND"
        );
        assert_eq!(
            tool_route(&req("TRACE", "/tools/echo")).unwrap_err().code,
            "METHOD_NOT_ALLOWED"
        );
        // The route is checked first: an unknown route is 404 whatever the method.
        assert_eq!(
            tool_route(&req("TRACE", "/nope")).unwrap_err().code,
            "ROUTE_NOT_FOUND"
        );
        let catalog = Catalog::new();
        let route = tool_route(&r).unwrap();
        assert_eq!(
            resolve(&catalog, route, None).err().unwrap().code,
            "TOOL_NOT_FOUND"
        );
    }

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
