//! Forward: the upstream request of an admitted call.
//!
//! The tool's peer carries its own timeouts, TLS verification and CA, and a connection-pool key
//! of its own (see `tools::Tool::pool_key`). The request sent upstream is the agent's with:
//!
//! * the target rewritten to the tool's base path + the normalised path (what policy saw);
//! * every agent credential and identity claim removed (`X-Api-Key`, `Authorization`,
//!   `Cookie`, `X-Agent-Id` and friends, forwarding headers), plus hop-by-hop headers, headers
//!   named in `Connection`, the configured extras and the gateway's own `x-lap-*` namespace;
//! * the tool's credential injected (agents never hold it), the verified agent id in the
//!   configured header, the request id, and `X-Forwarded-For` set to the client address
//!   (`client_ip`);
//! * the body re-framed with its exact length: it was read whole before the decision, and is
//!   forwarded exactly as read (Pingora's patched proxy asks for it in `request_body_filter`);
//! * on MCP: the agent's `Origin` (the gateway is the upstream's client) and the gateway's
//!   `Mcp-Session-Id` removed, the upstream's own session id sent instead when it has one.
//!   `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` and `Mcp-Param-*` pass (checked, or
//!   left for the upstream to check against the body).

use super::request::{Admitted, Exchange};
use crate::config::Config;
use crate::tools::Tool;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones; never forwarded in either direction.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Agent credentials and identity claims; removed before forwarding. Identity reaches the tool
/// only through the gateway's own agent header, derived from the verified credential.
const AGENT_HEADERS: &[&str] = &[
    "x-api-key",
    "authorization",
    "cookie",
    "x-agent-id",
    // The gateway's session id: a bearer token within its agent, of no use to a tool.
    "x-session-id",
    "x-forwarded-user",
    "x-auth-principal",
    "x-remote-user",
    "x-authenticated-user",
    "x-user-id",
    "x-principal",
    "x-request-id",
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
];

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// The peer to connect to for `tool` at `addr`.
pub fn peer(tool: &Tool, addr: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, tool.tls, tool.sni.clone());
    peer.group_key = tool.pool_key;
    let o = &mut peer.options;
    o.connection_timeout = Some(tool.connect_timeout);
    o.total_connection_timeout = Some(tool.connect_timeout * 2);
    o.read_timeout = Some(tool.read_timeout);
    o.write_timeout = Some(tool.write_timeout);
    o.idle_timeout = Some(UPSTREAM_IDLE);
    o.verify_cert = true;
    o.verify_hostname = true;
    o.ca = tool.ca.clone();
    peer
}

/// Rewrites agent requests into upstream requests (the rules in the module docs).
pub struct Rewriter {
    /// Header names removed from agent requests: credentials, identity claims, hop-by-hop
    /// headers and the configured extras.
    strip: Vec<HeaderName>,
    /// Where the verified agent id goes; `None` = not sent.
    agent_header: Option<HeaderName>,
}

impl Rewriter {
    pub fn new(config: &Config) -> Self {
        let strip = AGENT_HEADERS
            .iter()
            .map(|h| h.to_string())
            .chain(config.strip_headers.iter().cloned())
            .chain(config.agent_header.iter().cloned())
            .chain(HOP_BY_HOP.iter().map(|h| h.to_string()))
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let agent_header = config
            .agent_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
        Self {
            strip,
            agent_header,
        }
    }

    /// Turns the agent's request header into the upstream request header of `call`.
    pub fn rewrite(
        &self,
        up: &mut RequestHeader,
        call: &Admitted,
        request_id: &str,
        client: Option<IpAddr>,
    ) -> Result<()> {
        let uri: http::Uri = call
            .target
            .parse()
            .map_err(|_| Error::explain(ErrorType::InternalError, "bad upstream target"))?;
        up.set_uri(uri);
        self.strip(up);
        let tool = &call.tool;
        up.insert_header(header::HOST, tool.host_header.clone())?;
        frame_body(up, call.body.as_ref())?;
        if let Exchange::Mcp(x) = &call.exchange {
            up.remove_header(&header::ORIGIN);
            up.remove_header(crate::mcp::protocol::SESSION_ID);
            if let Some(sid) = x.upstream_session() {
                up.insert_header(crate::mcp::protocol::SESSION_ID, sid)?;
            }
        }
        if let Some((name, value)) = &tool.credential {
            up.insert_header(name.clone(), value.clone())?;
        }
        if let Some(h) = &self.agent_header {
            up.insert_header(h.clone(), call.principal.agent_id.as_str())?;
        }
        up.insert_header("x-request-id", request_id)?;
        if let Some(ip) = client {
            let mut buf = [0u8; 48];
            up.insert_header("x-forwarded-for", ip_text(ip, &mut buf))?;
        }
        Ok(())
    }

    /// Removes credentials, identity claims, hop-by-hop headers (including those named in
    /// `Connection`) and the `x-lap-*` namespace, in one pass over the (few) headers present
    /// instead of a look-up per name.
    fn strip(&self, up: &mut RequestHeader) {
        let listed: Vec<String> = up
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let doomed: Vec<HeaderName> = up
            .headers
            .keys()
            .filter(|k| {
                self.strip.contains(k)
                    || k.as_str().starts_with("x-lap-")
                    || listed.iter().any(|l| l == k.as_str())
            })
            .cloned()
            .collect();
        for h in &doomed {
            up.remove_header(h);
        }
    }
}

/// The body was buffered whole, so its length is known: `Content-Length` exactly, no
/// `Transfer-Encoding`.
fn frame_body(up: &mut RequestHeader, body: Option<&Bytes>) -> Result<()> {
    up.remove_header(&header::TRANSFER_ENCODING);
    let Some(b) = body else {
        up.remove_header(&header::CONTENT_LENGTH);
        return Ok(());
    };
    let mut buf = [0u8; 20];
    let len = decimal(b.len(), &mut buf);
    // Usually the agent's Content-Length already is exactly this.
    let mut present = up.headers.get_all(header::CONTENT_LENGTH).iter();
    let same = present.next().is_some_and(|v| v.as_bytes() == len) && present.next().is_none();
    if !same {
        let value = HeaderValue::from_bytes(len)
            .map_err(|_| Error::explain(ErrorType::InternalError, "content length"))?;
        up.insert_header(header::CONTENT_LENGTH, value)?;
    }
    Ok(())
}

/// An IP address as text into `buf` (IPv4, the usual case, without the formatting machinery).
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    let mut len = 0;
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if o >= 100 {
                    buf[len] = b'0' + o / 100;
                    len += 1;
                }
                if o >= 10 {
                    buf[len] = b'0' + o / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + o % 10;
                len += 1;
            }
        }
        IpAddr::V6(_) => {
            let mut w = &mut buf[..];
            // At most 45 characters; the buffer holds 48.
            if write!(w, "{ip}").is_ok() {
                len = 48 - w.len();
            }
        }
    }
    &buf[..len]
}

/// `n` in decimal into `buf`.
fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, CliOverrides, ToolConfig};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    #[test]
    fn ip_and_decimal_text() {
        let mut buf = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
        let mut buf = [0u8; 20];
        for n in [0usize, 7, 10, 958, 1 << 20, usize::MAX] {
            assert_eq!(decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }

    fn config(extra_env: &[(&str, &str)]) -> Config {
        let mut env: BTreeMap<String, String> =
            [("LAP_API_KEYS_JSON".to_string(), "{}".to_string())].into();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        load(None, &env, &CliOverrides::default()).unwrap()
    }

    fn admitted(body: Option<&'static [u8]>) -> Admitted {
        let env: BTreeMap<String, String> = [("TOK".to_string(), "s3cret".to_string())].into();
        let tool = Tool::prepare(
            &ToolConfig {
                name: "pay".into(),
                key: "tools.pay".into(),
                upstream: "http://127.0.0.1:9000/api".into(),
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                write_timeout: Duration::from_secs(1),
                max_request_bytes: 100,
                max_response_bytes: 100,
                ca_file: None,
                sni: None,
                credential: Some(crate::config::CredentialConfig {
                    header: "authorization".into(),
                    source: crate::config::SecretSource::Env("TOK".into()),
                    prefix: "Bearer ".into(),
                }),
                replay: Default::default(),
                required_scopes: Vec::new(),
            },
            &env,
        )
        .unwrap();
        Admitted {
            principal: Arc::new(lap_auth::Principal {
                agent_id: lap_auth::AgentId::parse("bot").unwrap(),
                groups: vec![],
                credential: lap_auth::Credential::ApiKey {
                    key_id: "k".into(),
                    key_hash_prefix: "sha256:000000000000".into(),
                },
            }),
            tool: Arc::new(tool),
            grant: crate::pipeline::request::Grant::Decided(Arc::new(lap_policy::Decision {
                outcome: lap_policy::Outcome::Allow,
                policy_ids: vec![],
                policy_list: String::new(),
                errors: vec![],
            })),
            target: "/api/x?q=1".into(),
            body: body.map(Bytes::from_static),
            exchange: Exchange::Rest,
            held: Default::default(),
        }
    }

    #[test]
    fn agent_credentials_and_claims_never_reach_the_tool() {
        let mut up = RequestHeader::build("POST", b"/tools/pay/x?q=1", None).unwrap();
        for (k, v) in [
            ("x-api-key", "lap_agent_key"),
            ("authorization", "Bearer lap_agent_key"),
            ("cookie", "s=1"),
            ("x-agent-id", "admin"),
            ("x-lap-agent-id", "admin"),
            ("x-lap-anything", "1"),
            ("x-forwarded-for", "6.6.6.6"),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "5"),
            ("transfer-encoding", "chunked"),
            ("accept", "application/json"),
        ] {
            up.append_header(k, v).unwrap();
        }
        let call = admitted(Some(b"{\"a\":1}"));
        let rw = Rewriter::new(&config(&[]));
        rw.rewrite(
            &mut up,
            &call,
            "req-1",
            Some("203.0.113.9".parse().unwrap()),
        )
        .unwrap();
        let h = |n: &str| {
            up.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(up.uri, "/api/x?q=1");
        assert_eq!(h("authorization"), ["Bearer s3cret"]);
        assert_eq!(h("x-lap-agent-id"), ["bot"]);
        assert_eq!(h("x-request-id"), ["req-1"]);
        assert_eq!(h("x-forwarded-for"), ["203.0.113.9"]);
        assert_eq!(h("host"), ["127.0.0.1:9000"]);
        assert_eq!(h("content-length"), ["7"]);
        assert_eq!(h("accept"), ["application/json"]);
        for gone in [
            "x-api-key",
            "cookie",
            "x-agent-id",
            "x-lap-anything",
            "connection",
            "x-secret-hop",
            "keep-alive",
            "transfer-encoding",
        ] {
            assert!(h(gone).is_empty(), "{gone} was forwarded");
        }
    }

    #[test]
    fn configured_agent_header_and_extras() {
        let mut up = RequestHeader::build("GET", b"/tools/pay/x", None).unwrap();
        up.append_header("x-tenant", "other").unwrap();
        up.append_header("content-length", "5").unwrap();
        let mut c = config(&[]);
        c.agent_header = None;
        c.strip_headers = vec!["x-tenant".into()];
        Rewriter::new(&c)
            .rewrite(&mut up, &admitted(None), "r", None)
            .unwrap();
        assert!(up.headers.get("x-tenant").is_none());
        assert!(up.headers.get("x-lap-agent-id").is_none());
        // No body: no length, no forwarded-for without a client address.
        assert!(up.headers.get("content-length").is_none());
        assert!(up.headers.get("x-forwarded-for").is_none());
    }
}
