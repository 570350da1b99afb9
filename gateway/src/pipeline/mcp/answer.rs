//! The answer to an MCP request: the upstream's session id sealed into the gateway's on
//! `initialize`, a JSON answer read whole under the cap or an event stream event by event,
//! the decided request's receipt put in `result._meta`, list results filtered to what the
//! agent could be permitted to use, and everything else passed byte for byte.

use super::{candidate, Body, Kind, Listing, McpExchange, META_RECEIPT};
use crate::mcp::jsonrpc::RpcId;
use crate::mcp::protocol;
use crate::mcp::sse::Splitter;
use crate::pipeline::Gateway;
use bytes::{Bytes, BytesMut};
use http::header;
use lap_auth::Principal;
use lap_evidence::Issued;
use lap_policy::mcp::McpCandidate;
use pingora::http::ResponseHeader;
use serde_json::{Map, Value};

/// What the response rewriting needs from the rest of the request.
pub struct Answer<'a> {
    pub receipt: Option<&'a Issued>,
    pub principal: &'a Principal,
    pub server: &'a str,
    /// Whether policy could permit a candidate (`PolicyEngine::could_permit_mcp`).
    pub could_permit: &'a dyn Fn(McpCandidate<'_>) -> bool,
}

/// Why an answer was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub u64);

impl McpExchange {
    /// `response_filter`: seals the session of an `initialize`, never lets the upstream's
    /// session id through, and chooses how the body is handled.
    pub fn response_header(
        &mut self,
        resp: &mut ResponseHeader,
        gateway: &Gateway,
        agent: &str,
        server: &str,
        max_event: u64,
        http11: bool,
    ) -> pingora::Result<()> {
        let upstream_sid = resp
            .headers
            .get(protocol::SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.remove_header(protocol::SESSION_ID);
        if let Kind::Initialize { .. } = self.kind {
            if resp.status.is_success() {
                let minted = gateway
                    .mint_session(agent, server, upstream_sid)
                    .map_err(|e| {
                        pingora::Error::explain(pingora::ErrorType::InternalError, e.to_string())
                    })?;
                resp.insert_header(protocol::SESSION_ID, minted)?;
            }
        }
        let content_type = resp
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let rewrites = matches!(self.kind, Kind::Initialize { .. } | Kind::Call { .. });
        self.body = match content_type.as_str() {
            "application/json" if rewrites && resp.status.is_success() => {
                Body::Json(BytesMut::new())
            }
            "text/event-stream" => Body::Events {
                splitter: Splitter::new(max_event as usize),
                rewrite: rewrites,
            },
            _ => Body::Pass,
        };
        if matches!(self.body, Body::Json(_) | Body::Events { .. }) {
            // The body is rewritten or relayed event by event: its length is not the upstream's.
            // Chunked framing keeps the agent's connection reusable (without a length and
            // without chunking, an HTTP/1.1 body would end only when the connection closes).
            resp.remove_header(&header::CONTENT_LENGTH);
            if http11 && !resp.headers.contains_key(header::TRANSFER_ENCODING) {
                resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        if matches!(self.body, Body::Events { .. }) {
            resp.insert_header("x-accel-buffering", "no")?;
        }
        if let Kind::Call {
            listing: Some(_), ..
        } = self.kind
        {
            // Filtered per agent: no shared cache may keep it.
            resp.insert_header(header::CACHE_CONTROL, "private, no-store")?;
        }
        Ok(())
    }

    /// Whether the cap applies per event (a stream that stays open) rather than to the sum.
    pub fn capped_per_event(&self) -> bool {
        matches!(
            self.kind,
            Kind::Stream
                | Kind::Call {
                    long_lived: true,
                    ..
                }
        ) && matches!(self.body, Body::Events { .. })
    }

    /// `response_body_filter`: what to send to the agent now for this chunk of the upstream's
    /// answer (`None`: nothing yet).
    pub fn response_body(
        &mut self,
        chunk: Option<Bytes>,
        end: bool,
        cap: u64,
        answer: &Answer<'_>,
    ) -> Result<Option<Bytes>, TooLarge> {
        let id = match &self.kind {
            Kind::Initialize { id } | Kind::Call { id, .. } => Some(id.clone()),
            Kind::Stream | Kind::Relay => None,
        };
        let shape = match &self.kind {
            Kind::Call {
                listing, discover, ..
            } => Shape {
                listing: *listing,
                discover: *discover,
                modern: self.era.is_modern(),
            },
            _ => Shape {
                listing: None,
                discover: false,
                modern: self.era.is_modern(),
            },
        };
        let era = &self.era;
        let listable = |l: Listing, name: &str| {
            (answer.could_permit)(candidate(era, answer.principal, answer.server, l, name))
        };
        let answer = Rewrite {
            receipt: answer.receipt,
            listable: &listable,
        };
        let answer = &answer;
        match &mut self.body {
            Body::Unknown | Body::Pass => Ok(chunk),
            Body::Json(buf) => {
                if let Some(c) = chunk {
                    if buf.len() as u64 + c.len() as u64 > cap {
                        return Err(TooLarge(cap));
                    }
                    buf.extend_from_slice(&c);
                }
                if !end {
                    return Ok(None);
                }
                let raw = std::mem::take(buf).freeze();
                let rewritten = serde_json::from_slice::<Value>(&raw)
                    .ok()
                    .and_then(|mut msg| {
                        let forged = strip_ours(&mut msg);
                        let answered = id
                            .as_ref()
                            .is_some_and(|id| rewrite(&mut msg, id, shape, answer));
                        (forged || answered)
                            .then(|| serde_json::to_vec(&msg).ok())
                            .flatten()
                    });
                Ok(Some(rewritten.map_or(raw, Bytes::from)))
            }
            Body::Events {
                splitter,
                rewrite: may_rewrite,
            } => {
                let mut out = BytesMut::new();
                let events = match chunk {
                    Some(c) => splitter.push(&c).map_err(|e| TooLarge(e.0 as u64))?,
                    None => Vec::new(),
                };
                for event in events {
                    let target = id.as_ref().filter(|_| *may_rewrite);
                    let rewritten = rewrite_event(&event, target, shape, answer);
                    match rewritten {
                        Some(new) => out.extend_from_slice(&new),
                        None => out.extend_from_slice(&event),
                    }
                }
                if end {
                    out.extend_from_slice(&splitter.rest());
                }
                Ok((!out.is_empty()).then(|| out.freeze()))
            }
        }
    }
}

/// What kind of answer is expected, for [`rewrite`].
#[derive(Debug, Clone, Copy)]
struct Shape {
    listing: Option<Listing>,
    discover: bool,
    modern: bool,
}

/// What [`rewrite`] adds and filters.
struct Rewrite<'a> {
    receipt: Option<&'a Issued>,
    listable: &'a dyn Fn(Listing, &str) -> bool,
}

/// The event rewritten when it carries the answer to `id`.
fn rewrite_event(
    event: &[u8],
    id: Option<&RpcId>,
    shape: Shape,
    answer: &Rewrite<'_>,
) -> Option<Vec<u8>> {
    let may_be_forged = event
        .windows(META_RECEIPT.len())
        .any(|w| w == META_RECEIPT.as_bytes());
    if id.is_none() && !may_be_forged {
        return None;
    }
    let data = crate::mcp::sse::data(event)?;
    let mut msg: Value = serde_json::from_str(&data).ok()?;
    let forged = may_be_forged && strip_ours(&mut msg);
    let answered = id.is_some_and(|id| rewrite(&mut msg, id, shape, answer));
    if !forged && !answered {
        return None;
    }
    let json = serde_json::to_string(&msg).ok()?;
    Some(crate::mcp::sse::with_data(event, &json))
}

/// Removes entries in the gateway's `_meta` namespace from a message that came from the
/// upstream: only the gateway speaks there (an upstream must not pass off a receipt of its own
/// making). `true` when something was removed.
fn strip_ours(msg: &mut Value) -> bool {
    let mut removed = false;
    for holder in ["result", "params"] {
        if let Some(meta) = msg
            .get_mut(holder)
            .and_then(|h| h.get_mut("_meta"))
            .and_then(Value::as_object_mut)
        {
            removed |= meta.remove(META_RECEIPT).is_some();
        }
    }
    if let Some(meta) = msg
        .get_mut("error")
        .and_then(|e| e.get_mut("data"))
        .and_then(|d| d.get_mut("_meta"))
        .and_then(Value::as_object_mut)
    {
        removed |= meta.remove(META_RECEIPT).is_some();
    }
    removed
}

/// The receipt as it goes into `_meta`: batched, `{receipt_id, log_index, receipt, proof}`
/// with the log entry as a JSON object (parse it back to its bytes with care: the entry's
/// exact bytes are what the proof covers, so verifiers should take them from the
/// `x-lap-receipt` header or the admin plane) and the `tlog-proof` text; per receipt,
/// `{receipt_id, log_index, envelope}` with the DSSE envelope as a JSON object.
fn receipt_meta(r: &Issued) -> Value {
    let entry = serde_json::from_str::<Value>(&r.entry).unwrap_or(Value::Null);
    match &r.proof {
        Some(proof) => serde_json::json!({
            "receipt_id": r.receipt_id,
            "log_index": r.index,
            "receipt": entry,
            "proof": &**proof,
        }),
        None => serde_json::json!({
            "receipt_id": r.receipt_id,
            "log_index": r.index,
            "envelope": entry,
        }),
    }
}

/// Rewrites the answer to `id` in place: filters a list result, adds the receipt to
/// `result._meta`. `false` when `msg` is not that answer (it is then left alone).
fn rewrite(msg: &mut Value, id: &RpcId, shape: Shape, answer: &Rewrite<'_>) -> bool {
    if !msg.get("id").is_some_and(|v| id.matches(v)) || msg.get("method").is_some() {
        return false;
    }
    let Some(result) = msg.get_mut("result").and_then(Value::as_object_mut) else {
        return false;
    };
    if shape.discover {
        // The agent speaks to the gateway: only versions both the gateway and the upstream
        // serve can be used.
        let served = protocol::supported_versions();
        if let Some(versions) = result
            .get_mut("supportedVersions")
            .and_then(Value::as_array_mut)
        {
            versions.retain(|v| v.as_str().is_some_and(|v| served.contains(&v)));
        }
    }
    if let Some(listing) = shape.listing {
        let (array, field, _) = listing.fields();
        if let Some(items) = result.get_mut(array).and_then(Value::as_array_mut) {
            items.retain(|item| {
                item.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|name| (answer.listable)(listing, name))
            });
        }
        if shape.modern {
            // Filtered per agent: fresh at once, and only for this agent.
            result.insert("ttlMs".into(), 0.into());
            result.insert("cacheScope".into(), "private".into());
        }
    }
    if let Some(r) = answer.receipt {
        let meta = result
            .entry("_meta")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(META_RECEIPT.into(), receipt_meta(r));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn issued() -> Issued {
        Issued {
            receipt_id: "rcpt_9".into(),
            index: 41,
            entry: Arc::from(r#"{"payload":"e30=","payloadType":"x","signatures":[]}"#),
            leaf_hash: [0; 32],
            proof: None,
        }
    }

    #[test]
    fn a_batched_receipt_goes_into_meta_with_its_proof() {
        let receipt = Issued {
            receipt_id: "rcpt_9".into(),
            index: 41,
            entry: Arc::from(r#"{"version":2,"kind":"decision"}"#),
            leaf_hash: [0; 32],
            proof: Some(Arc::from("c2sp.org/tlog-proof@v1\nindex 41\n\nnote\n")),
        };
        let answer = Rewrite {
            receipt: Some(&receipt),
            listable: &only_add,
        };
        let mut msg = json!({"jsonrpc":"2.0","id":3,"result":{"content":[]}});
        assert!(rewrite(&mut msg, &RpcId::Number(3), plain(), &answer));
        assert_eq!(
            msg["result"]["_meta"][META_RECEIPT],
            json!({"receipt_id": "rcpt_9", "log_index": 41,
                   "receipt": {"version": 2, "kind": "decision"},
                   "proof": "c2sp.org/tlog-proof@v1\nindex 41\n\nnote\n"})
        );
        // Written back compactly in member order, the object is the entry byte for byte (the
        // bytes the proof covers).
        assert_eq!(
            msg["result"]["_meta"][META_RECEIPT]["receipt"].to_string(),
            &*receipt.entry
        );
    }

    fn only_add(_: Listing, name: &str) -> bool {
        name == "add"
    }

    fn plain() -> Shape {
        Shape {
            listing: None,
            discover: false,
            modern: false,
        }
    }

    fn tools(modern: bool) -> Shape {
        Shape {
            listing: Some(Listing::Tools),
            discover: false,
            modern,
        }
    }

    #[test]
    fn discovery_offers_only_versions_the_gateway_serves() {
        let answer = Rewrite {
            receipt: None,
            listable: &only_add,
        };
        let mut msg = json!({"jsonrpc":"2.0","id":1,"result":{
            "supportedVersions":["2027-01-01","2026-07-28","2025-11-25","2024-11-05"]}});
        let shape = Shape {
            listing: None,
            discover: true,
            modern: true,
        };
        assert!(rewrite(&mut msg, &RpcId::Number(1), shape, &answer));
        assert_eq!(
            msg["result"]["supportedVersions"],
            json!(["2026-07-28", "2025-11-25"])
        );
    }

    #[test]
    fn the_answer_gets_its_receipt_and_nothing_else_changes() {
        let receipt = issued();
        let answer = Rewrite {
            receipt: Some(&receipt),
            listable: &only_add,
        };
        let id = RpcId::Number(3);
        let mut msg = json!({"jsonrpc":"2.0","id":3,"result":{"content":[],"_meta":{"x":1}}});
        assert!(rewrite(&mut msg, &id, plain(), &answer));
        let meta = &msg["result"]["_meta"];
        assert_eq!(meta["x"], 1, "the upstream's own _meta stays");
        assert_eq!(meta[META_RECEIPT]["receipt_id"], "rcpt_9");
        assert_eq!(meta[META_RECEIPT]["log_index"], 41);
        assert_eq!(meta[META_RECEIPT]["envelope"]["payload"], "e30=");
        // Another id, a request from the server, an error: left alone.
        for other in [
            json!({"jsonrpc":"2.0","id":4,"result":{}}),
            json!({"jsonrpc":"2.0","id":3,"method":"elicitation/create","params":{}}),
            json!({"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"x"}}),
            json!({"jsonrpc":"2.0","method":"notifications/progress","params":{}}),
        ] {
            let mut m = other.clone();
            assert!(!rewrite(&mut m, &id, plain(), &answer));
            assert_eq!(m, other);
        }
    }

    #[test]
    fn an_upstream_cannot_pass_off_a_receipt_of_its_own() {
        let answer = Rewrite {
            receipt: None,
            listable: &only_add,
        };
        let forged = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"_meta\":{{\"{META_RECEIPT}\":{{\"receipt_id\":\"rcpt_fake\"}},\"x\":1}}}}}}\n\n"
        );
        let cleaned = rewrite_event(forged.as_bytes(), None, plain(), &answer).unwrap();
        let text = String::from_utf8(cleaned).unwrap();
        assert!(
            !text.contains("rcpt_fake") && text.contains("\"x\":1"),
            "{text}"
        );
        let mut msg = json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m",
            "data":{"_meta":{META_RECEIPT: {"receipt_id":"rcpt_fake"}}}}});
        assert!(strip_ours(&mut msg));
        assert_eq!(msg["error"]["data"]["_meta"], json!({}));
        // Nothing to remove: nothing changes, and other events are not even parsed.
        let plain_event = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n\n";
        assert_eq!(rewrite_event(plain_event, None, plain(), &answer), None);
    }

    #[test]
    fn lists_keep_only_what_the_agent_could_use() {
        let answer = Rewrite {
            receipt: None,
            listable: &only_add,
        };
        let id = RpcId::Text("l".into());
        let mut msg = json!({"jsonrpc":"2.0","id":"l","result":{"tools":[
            {"name":"add"},{"name":"pay"},{"nameless":true}],"ttlMs":60000,"cacheScope":"public"}});
        assert!(rewrite(&mut msg, &id, tools(true), &answer));
        assert_eq!(msg["result"]["tools"], json!([{"name":"add"}]));
        assert_eq!(msg["result"]["ttlMs"], 0);
        assert_eq!(msg["result"]["cacheScope"], "private");
        let mut legacy = json!({"jsonrpc":"2.0","id":"l","result":{"tools":[{"name":"pay"}]}});
        assert!(rewrite(&mut legacy, &id, tools(false), &answer));
        assert_eq!(legacy["result"], json!({"tools": []}));
    }

    #[test]
    fn events_are_rewritten_in_place_and_the_rest_passes() {
        let receipt = issued();
        let answer = Rewrite {
            receipt: Some(&receipt),
            listable: &only_add,
        };
        let id = RpcId::Number(1);
        let progress = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n";
        assert_eq!(rewrite_event(progress, Some(&id), plain(), &answer), None);
        let done =
            b"event: message\nid: e7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        let new = rewrite_event(done, Some(&id), plain(), &answer).unwrap();
        let text = String::from_utf8(new).unwrap();
        assert!(
            text.starts_with("event: message\nid: e7\ndata: {"),
            "{text}"
        );
        assert!(
            text.contains(META_RECEIPT) && text.ends_with("}\n\n"),
            "{text}"
        );
    }
}
