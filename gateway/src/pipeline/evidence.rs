//! Evidence: the receipts of a call — decision, denial, completion — drafted from what the
//! request established, and issued through the gateway's evidence service (sign + durable log).
//!
//! The rule this stage serves is *no evidence, no call*: an admitted call is forwarded only
//! once its decision receipt is durable and signed — on its own (per receipt) or under its
//! batch's checkpoint (batched) — ([`issue_decision`]); when that fails the call is refused
//! with 503 and the tool is never contacted. A refusal gets a denial receipt
//! ([`issue_denial`]); a forwarded call gets a completion receipt after its response
//! ([`issue_completion`]), which names its decision by id, index and (batched) leaf hash and
//! rides a later batch. Refusals without a verified identity that `flood` counted instead of
//! receipting become aggregate denial receipts ([`issue_aggregate`]). Ordering and durability
//! are `lap-evidence`'s; the receipt format is `lap-receipt`'s.
//!
//! What a receipt says about the call ([`Record`]) is gathered while admission runs: method,
//! path and a digest of the query on arrival, the tool and normalised path once routed, digests
//! of the body and of its JSON arguments once read. With evidence off nothing is gathered, so
//! nothing is hashed.

use super::decide::Arguments;
use super::flood::{Client, Tally};
use super::request::{Admitted, Reached};
use crate::evidence::Evidence;
use bytes::Bytes;
use lap_evidence::{EvidenceError, Issued};
use lap_receipt::{sha256_hex, Aggregate, Call, Completion, Decision, Kind, Outcome};
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The receipts' description of a call, built up while admission runs. Empty when evidence
/// is off.
pub struct Record(Option<Draft>);

struct Draft {
    call: Call,
    /// The digest of the policy set that decided; before a decision, the one in force when
    /// the receipt is drafted.
    policy_digest: Option<String>,
}

impl Record {
    /// What is known on arrival: method, path, a digest of the query (queries may carry
    /// secrets).
    pub fn begin(evidence_on: bool, req: &RequestHeader) -> Self {
        Self(evidence_on.then(|| Draft {
            call: Call {
                tool: None,
                method: req.method.as_str().to_string(),
                path: req.uri.path().to_string(),
                query_sha256: req.uri.query().map(|q| sha256_hex(q.as_bytes())),
                body_sha256: None,
                body_bytes: 0,
                args_sha256: None,
                session: None,
            },
            policy_digest: None,
        }))
    }

    /// A record of a request refused before any of it was read (oversized headers): the
    /// receipt names no method or path.
    pub fn unread(evidence_on: bool) -> Self {
        Self(evidence_on.then(|| Draft {
            call: Call {
                tool: None,
                method: String::new(),
                path: String::new(),
                query_sha256: None,
                body_sha256: None,
                body_bytes: 0,
                args_sha256: None,
                session: None,
            },
            policy_digest: None,
        }))
    }

    /// Whether receipts will describe the arguments (so they must be parsed and digested).
    pub fn wants_arguments(&self) -> bool {
        self.0.is_some()
    }

    /// The tool is known: the path becomes the normalised path below it.
    pub fn routed(&mut self, tool: &str, rest: &str) {
        if let Some(d) = &mut self.0 {
            d.call.tool = Some(tool.to_string());
            d.call.path = rest.to_string();
        }
    }

    /// The body was read and its arguments checked.
    pub fn body(&mut self, body: Option<&Bytes>, args: &Arguments) {
        if let Some(d) = &mut self.0 {
            d.call.body_sha256 = args.body_digest.map(hex::encode);
            d.call.body_bytes = body.map_or(0, |b| b.len() as u64);
            d.call.args_sha256 = args.value.as_ref().map(args_sha256);
        }
    }

    /// An MCP request on `server`: the receipt's tool is `<server>/<name>` for a request that
    /// names a tool, prompt or resource (the server alone otherwise), its method the JSON-RPC
    /// method, its arguments digest that of `params.arguments`.
    pub fn mcp(
        &mut self,
        server: &str,
        method: &str,
        target: lap_policy::mcp::McpTarget<'_>,
        body: Option<&Bytes>,
        args_sha256: Option<String>,
    ) {
        use lap_policy::mcp::McpTarget;
        if let Some(d) = &mut self.0 {
            d.call.tool = Some(match target {
                McpTarget::Server => server.to_string(),
                McpTarget::Tool(n) | McpTarget::Prompt(n) | McpTarget::Resource(n) => {
                    format!("{server}/{n}")
                }
            });
            d.call.method = method.to_string();
            d.call.body_sha256 = Some(sha256_hex(body.map_or(&[][..], |b| b.as_ref())));
            d.call.body_bytes = body.map_or(0, |b| b.len() as u64);
            d.call.args_sha256 = args_sha256;
        }
    }

    /// The call names a session (its digest, never the id).
    pub fn session(&mut self, session: Option<String>) {
        if let Some(d) = &mut self.0 {
            d.call.session = session;
        }
    }

    /// The policy set with this digest decided.
    pub fn decided(&mut self, policy_digest: &str) {
        if let Some(d) = &mut self.0 {
            d.policy_digest = Some(policy_digest.to_string());
        }
    }
}

/// What a forwarded call keeps for its completion receipt.
pub struct CallEvidence {
    pub decision_receipt: Issued,
    call: Call,
    policy_digest: String,
    /// SHA-256 of the response body, fed as it streams back.
    response_hash: Sha256,
}

impl CallEvidence {
    /// Feeds relayed response bytes to the completion receipt's digest.
    pub fn response_bytes(&mut self, chunk: &[u8]) {
        self.response_hash.update(chunk);
    }
}

/// The decision receipt of an admitted call. The call may be forwarded only on `Ok`.
pub async fn issue_decision(
    evidence: &Evidence,
    request_id: &str,
    record: Record,
    admitted: &Admitted,
    decision: &lap_policy::Decision,
    current_policy: impl FnOnce() -> String,
) -> Result<Option<CallEvidence>, EvidenceError> {
    let Some(draft) = record.0 else {
        return Ok(None);
    };
    let policy_digest = draft.policy_digest.unwrap_or_else(current_policy);
    let receipt = evidence.draft(
        Kind::Decision,
        request_id,
        Some(&*admitted.principal),
        draft.call.clone(),
        self::decision(true, "ALLOWED", &decision.policy_ids, &policy_digest),
    );
    let issued = evidence.issue(receipt).await?;
    Ok(Some(CallEvidence {
        decision_receipt: issued,
        call: draft.call,
        policy_digest,
        response_hash: Sha256::new(),
    }))
}

/// The denial receipt of a refusal, with what admission had established. `None` when
/// evidence is off or the receipt could not be issued: the refusal stands either way, and a
/// failure is logged (and counted by the ledger).
pub async fn issue_denial(
    evidence: &Evidence,
    request_id: &str,
    record: Record,
    reached: &Reached,
    code: &str,
    current_policy: impl FnOnce() -> String,
) -> Option<Issued> {
    let draft = record.0?;
    let policy_digest = draft.policy_digest.unwrap_or_else(current_policy);
    let ids = reached
        .decision()
        .map_or(&[][..], |d| d.policy_ids.as_slice());
    let receipt = evidence.draft(
        Kind::Denial,
        request_id,
        reached.principal().map(|p| &**p),
        draft.call,
        decision(false, code, ids, &policy_digest),
    );
    match evidence.issue(receipt).await {
        Ok(issued) => Some(issued),
        Err(err) => {
            tracing::error!(code = err.code(), error = %err, request_id = %request_id,
                "denial receipt could not be issued");
            None
        }
    }
}

/// The aggregate denial receipt of the refusals `tally` counted for `client` (see `flood`):
/// no request, no principal, an empty call, and the counts. A failure is logged (and counted
/// by the ledger); the counts are lost with it.
pub async fn issue_aggregate(
    evidence: &Evidence,
    client: Client,
    tally: Tally,
    policy_digest: &str,
) -> Option<Issued> {
    let code = if tally.rate_limited > 0 {
        "UNAUTHENTICATED_RATE_LIMITED"
    } else {
        "UNAUTHENTICATED_RECEIPTS_AGGREGATED"
    };
    let mut receipt = evidence.draft(
        Kind::DenialAggregate,
        "",
        None,
        Call {
            tool: None,
            method: String::new(),
            path: String::new(),
            query_sha256: None,
            body_sha256: None,
            body_bytes: 0,
            args_sha256: None,
            session: None,
        },
        decision(false, code, &[], policy_digest),
    );
    receipt.aggregate = Some(Aggregate {
        client: client.to_string(),
        first_at: crate::evidence::rfc3339(tally.first),
        last_at: crate::evidence::rfc3339(tally.last),
        count: tally.count,
        rate_limited: tally.rate_limited,
        codes: tally
            .codes
            .into_iter()
            .map(|(code, n)| (code.to_string(), n))
            .collect(),
    });
    match evidence.issue(receipt).await {
        Ok(issued) => Some(issued),
        Err(err) => {
            tracing::error!(code = err.code(), error = %err, client = %client,
                refusals = tally.count, "aggregate denial receipt could not be issued");
            None
        }
    }
}

/// How a forwarded call ended, for its completion receipt.
pub struct CallEnd {
    pub status: u16,
    pub bytes_out: u64,
    pub duration: Duration,
    pub error_code: Option<&'static str>,
}

/// The completion receipt of a forwarded call. The response has been sent, so it is issued in
/// the background (the connection is free for the next request at once) and joins the next
/// batch; a failure (or a crash before that batch is durable) loses only the completion, which
/// is logged and counted — the decision receipt is already in the log.
pub fn issue_completion(
    evidence: &Arc<Evidence>,
    request_id: &str,
    admitted: &Admitted,
    call: CallEvidence,
    end: CallEnd,
    budgets: Vec<lap_receipt::BudgetUse>,
) {
    let mut receipt = evidence.draft(
        Kind::Completion,
        request_id,
        Some(&*admitted.principal),
        call.call,
        decision(
            true,
            "ALLOWED",
            admitted
                .grant
                .decision()
                .map_or(&[][..], |d| d.policy_ids.as_slice()),
            &call.policy_digest,
        ),
    );
    receipt.completion = Some(Completion {
        decision_receipt_id: call.decision_receipt.receipt_id.clone(),
        decision_log_index: call.decision_receipt.index,
        // Pins the exact decision bytes (version 2 only; the sequencer drops it in version 1).
        decision_leaf_hash: Some(hex::encode(call.decision_receipt.leaf_hash)),
        status: end.status,
        response_sha256: hex::encode(call.response_hash.finalize()),
        bytes_in: receipt.call.body_bytes,
        bytes_out: end.bytes_out,
        duration_ms: end.duration.as_millis() as u64,
        error_code: end.error_code.map(str::to_string),
        budgets,
    });
    let evidence = evidence.clone();
    let request_id = request_id.to_string();
    tokio::spawn(async move {
        if let Err(e) = evidence.issue(receipt).await {
            tracing::error!(code = e.code(), error = %e, request_id = %request_id,
                "completion receipt could not be issued");
        }
    });
}

/// The decision part of a receipt.
fn decision(allow: bool, code: &str, policy_ids: &[String], policy_digest: &str) -> Decision {
    Decision {
        outcome: if allow { Outcome::Allow } else { Outcome::Deny },
        code: code.to_string(),
        policy_ids: policy_ids.to_vec(),
        policy_digest: policy_digest.to_string(),
    }
}

/// Hex SHA-256 of the parsed JSON arguments in canonical form: compact, object keys sorted by
/// code point, numbers as serde_json writes them. Two bodies that differ only in key order or
/// white space have the same digest.
pub fn args_sha256(value: &serde_json::Value) -> String {
    hex::encode(canonical_args_digest(value))
}

/// SHA-256 of the canonical form (see [`args_sha256`]): identifies the arguments in the
/// decision cache and in receipts.
pub fn canonical_args_digest(value: &serde_json::Value) -> [u8; 32] {
    let mut out = Vec::with_capacity(256);
    canonical(value, &mut out);
    Sha256::digest(&out).into()
}

fn canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Serialising a string cannot fail.
                out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
                out.push(b':');
                canonical(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(&serde_json::to_vec(scalar).unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_args_ignore_key_order() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"y":[1,2],"x":"é"}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":"é","y":[1,2]},"b":1}"#).unwrap();
        assert_eq!(args_sha256(&a), args_sha256(&b));
        let mut out = Vec::new();
        canonical(&a, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":{"x":"é","y":[1,2]},"b":1}"#
        );
    }

    #[test]
    fn a_record_follows_admission() {
        let mut req = RequestHeader::build("POST", b"/tools/pay/x%61?token=s3cret", None).unwrap();
        req.insert_header("content-type", "application/json")
            .unwrap();
        let off = Record::begin(false, &req);
        assert!(!off.wants_arguments());

        let mut rec = Record::begin(true, &req);
        assert!(rec.wants_arguments());
        let call = &rec.0.as_ref().unwrap().call;
        assert_eq!(call.path, "/tools/pay/x%61");
        assert_eq!(call.tool, None);
        assert_eq!(
            call.query_sha256.as_deref(),
            Some(&*sha256_hex(b"token=s3cret"))
        );

        rec.routed("pay", "/xa");
        let body = Bytes::from_static(br#"{"b":1, "a":2}"#);
        let args = Arguments::read(&req, Some(&body), true).unwrap();
        rec.body(Some(&body), &args);
        rec.decided("digest");
        let d = rec.0.unwrap();
        assert_eq!(
            (d.call.tool.as_deref(), d.call.path.as_str()),
            (Some("pay"), "/xa")
        );
        assert_eq!(d.call.body_bytes, body.len() as u64);
        assert_eq!(d.call.body_sha256, Some(sha256_hex(&body)));
        assert_eq!(d.call.args_sha256, Some(sha256_hex(br#"{"a":2,"b":1}"#)));
        assert_eq!(d.policy_digest.as_deref(), Some("digest"));
    }
}
