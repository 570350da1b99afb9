//! The receipt payload.

use crate::dsse::{Envelope, EnvelopeError, EnvelopeSignature, MAX_ENVELOPE_BYTES};
use crate::RECEIPT_PAYLOAD_TYPE;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Payload version of a receipt signed on its own, in a DSSE envelope (`per_receipt` mode).
pub const RECEIPT_VERSION: u32 = 1;
/// Payload version of a receipt that is itself the log entry (`batched` mode): no envelope,
/// a `blinder`, and a completion names its decision's leaf hash.
pub const LEAF_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Decision,
    Completion,
    Denial,
    /// Many refusals of requests without a verified identity from one client address, counted
    /// instead of receipted one by one (a flood); the counts are in [`Receipt::aggregate`].
    #[serde(rename = "denial_aggregate")]
    DenialAggregate,
    /// An admin-plane request that changes something (a session revoked, files reloaded),
    /// written before it acts, or the refusal of such a request. `principal` is the admin
    /// (`auth: "admin_token"`, or `auth: "jwt"` for an admin signed in with an OIDC token) or
    /// `null` when none was verified; `call` names the route.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
}

/// Who made the call and how that was verified. Never the credential itself: a key or token
/// is named by a non-secret id and a hash prefix, a certificate by its SHA-256.
///
/// On the wire a principal is one flat object: `agent_id`, `auth` (the method) and that
/// method's members (see [`Credential`]); any other member, or a member of another method, is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WirePrincipal", into = "WirePrincipal")]
pub struct Principal {
    pub agent_id: String,
    pub credential: Credential,
}

/// How the principal authenticated, with the method's non-secret facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `auth: "api_key"`: an agent API key (`key_id`: the key file's `id`; `key_hash_prefix`:
    /// `sha256:` and 12 hex digits of the key's digest).
    ApiKey {
        key_id: String,
        key_hash_prefix: String,
    },
    /// `auth: "jwt"`: a bearer JWT (`iss`, `sub`, `kid` of the verifying key when the token
    /// named one, `token_hash_prefix`: `sha256:` and 12 hex digits of the token's SHA-256).
    Jwt {
        issuer: String,
        subject: String,
        kid: Option<String>,
        token_hash_prefix: String,
    },
    /// `auth: "mtls"`: a verified client certificate (`spiffe_id` when it carries one, else
    /// `cert_subject`; `cert_sha256`: hex SHA-256 of the leaf certificate's DER).
    Mtls {
        spiffe_id: Option<String>,
        cert_subject: Option<String>,
        cert_sha256: String,
    },
    /// `auth: "admin_token"`: an admin-plane bearer token (`key_id`, `key_hash_prefix` as for
    /// API keys).
    AdminToken {
        key_id: String,
        key_hash_prefix: String,
    },
}

impl Credential {
    /// The `auth` member: `api_key`, `jwt`, `mtls` or `admin_token`.
    pub fn method(&self) -> &'static str {
        match self {
            Credential::ApiKey { .. } => "api_key",
            Credential::Jwt { .. } => "jwt",
            Credential::Mtls { .. } => "mtls",
            Credential::AdminToken { .. } => "admin_token",
        }
    }
}

/// The flat wire form of [`Principal`]; the members present must be exactly the method's.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePrincipal {
    agent_id: String,
    auth: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_hash_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_hash_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cert_sha256: Option<String>,
}

impl From<Principal> for WirePrincipal {
    fn from(p: Principal) -> Self {
        let mut w = WirePrincipal {
            agent_id: p.agent_id,
            auth: p.credential.method().to_string(),
            key_id: None,
            key_hash_prefix: None,
            iss: None,
            sub: None,
            kid: None,
            token_hash_prefix: None,
            spiffe_id: None,
            cert_subject: None,
            cert_sha256: None,
        };
        match p.credential {
            Credential::ApiKey {
                key_id,
                key_hash_prefix,
            }
            | Credential::AdminToken {
                key_id,
                key_hash_prefix,
            } => {
                w.key_id = Some(key_id);
                w.key_hash_prefix = Some(key_hash_prefix);
            }
            Credential::Jwt {
                issuer,
                subject,
                kid,
                token_hash_prefix,
            } => {
                w.iss = Some(issuer);
                w.sub = Some(subject);
                w.kid = kid;
                w.token_hash_prefix = Some(token_hash_prefix);
            }
            Credential::Mtls {
                spiffe_id,
                cert_subject,
                cert_sha256,
            } => {
                w.spiffe_id = spiffe_id;
                w.cert_subject = cert_subject;
                w.cert_sha256 = Some(cert_sha256);
            }
        }
        w
    }
}

impl TryFrom<WirePrincipal> for Principal {
    type Error = String;

    fn try_from(w: WirePrincipal) -> Result<Self, String> {
        let present = |name: &str, v: Option<String>| {
            v.ok_or_else(|| format!("principal with auth {:?} lacks {name}", w.auth))
        };
        let absent = |names: &[(&str, bool)]| match names.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(format!(
                "principal with auth {:?} must not have {name}",
                w.auth
            )),
            None => Ok(()),
        };
        let key = [
            ("key_id", w.key_id.is_some()),
            ("key_hash_prefix", w.key_hash_prefix.is_some()),
        ];
        let jwt = [
            ("iss", w.iss.is_some()),
            ("sub", w.sub.is_some()),
            ("kid", w.kid.is_some()),
            ("token_hash_prefix", w.token_hash_prefix.is_some()),
        ];
        let mtls = [
            ("spiffe_id", w.spiffe_id.is_some()),
            ("cert_subject", w.cert_subject.is_some()),
            ("cert_sha256", w.cert_sha256.is_some()),
        ];
        let credential = match w.auth.as_str() {
            "api_key" | "admin_token" => {
                absent(&jwt)?;
                absent(&mtls)?;
                let key_id = present("key_id", w.key_id.clone())?;
                let key_hash_prefix = present("key_hash_prefix", w.key_hash_prefix.clone())?;
                if w.auth == "api_key" {
                    Credential::ApiKey {
                        key_id,
                        key_hash_prefix,
                    }
                } else {
                    Credential::AdminToken {
                        key_id,
                        key_hash_prefix,
                    }
                }
            }
            "jwt" => {
                absent(&key)?;
                absent(&mtls)?;
                Credential::Jwt {
                    issuer: present("iss", w.iss.clone())?,
                    subject: present("sub", w.sub.clone())?,
                    kid: w.kid.clone(),
                    token_hash_prefix: present("token_hash_prefix", w.token_hash_prefix.clone())?,
                }
            }
            "mtls" => {
                absent(&key)?;
                absent(&jwt)?;
                if w.spiffe_id.is_none() && w.cert_subject.is_none() {
                    return Err(
                        "principal with auth \"mtls\" needs spiffe_id or cert_subject".into(),
                    );
                }
                Credential::Mtls {
                    spiffe_id: w.spiffe_id.clone(),
                    cert_subject: w.cert_subject.clone(),
                    cert_sha256: present("cert_sha256", w.cert_sha256.clone())?,
                }
            }
            other => return Err(format!("unknown principal auth {other:?}")),
        };
        Ok(Principal {
            agent_id: w.agent_id,
            credential,
        })
    }
}

/// What was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// `null` when the request never reached a known tool.
    pub tool: Option<String>,
    pub method: String,
    /// Normalised path below the tool (or the raw request path when no tool matched).
    pub path: String,
    /// SHA-256 of the raw query string, `null` when there is none (queries may carry secrets).
    pub query_sha256: Option<String>,
    /// SHA-256 of the exact request body bytes; `null` when the body was never read (the
    /// request was refused before that point).
    pub body_sha256: Option<String>,
    pub body_bytes: u64,
    /// SHA-256 of the parsed JSON arguments re-serialised compactly with sorted keys, `null`
    /// for non-JSON bodies.
    pub args_sha256: Option<String>,
    /// The session the call was made in (`X-Session-Id`): `sha256:` and the first 16 hex
    /// digits of the id's SHA-256 — enough to tell a session's calls together, useless as the
    /// id (which is a bearer token). Absent (not `null`) when the call named no session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
}

/// What the gateway decided and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub outcome: Outcome,
    /// Stable code: `ALLOWED`, or the error code returned to the agent.
    pub code: String,
    /// Policies that determined the decision.
    pub policy_ids: Vec<String>,
    /// Digest of the schema and policy text in force.
    pub policy_digest: String,
}

/// What happened after forwarding (completion receipts only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub decision_receipt_id: String,
    pub decision_log_index: u64,
    /// Version 2 only: lower-case hex of the decision entry's RFC 6962 leaf hash, which pins
    /// the exact decision bytes this completes. Absent (not `null`) in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_leaf_hash: Option<String>,
    /// HTTP status returned to the agent; 0 if none could be sent.
    pub status: u16,
    /// SHA-256 of the response body bytes as relayed to the agent.
    pub response_sha256: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
    /// `null` on success; otherwise the stable code of what went wrong.
    pub error_code: Option<String>,
    /// The budgets the call counted against, each with what it reserved before forwarding and
    /// what was left after it settled. Absent (not `[]`) when no budget applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetUse>,
}

/// One budget a forwarded call counted against (completion receipts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetUse {
    /// Which budget: its place in the configuration, `limits.budget[<n>]`.
    pub budget: String,
    /// `hour`, `day`, `month` or `session`.
    pub window: String,
    /// Reserved before the call was forwarded.
    pub reserved: Figures,
    /// Counted after it: the actual figures.
    pub actual: Figures,
    /// What is left in each limited dimension after the settle; `null` when the settle could
    /// not be made (the store failed: the reservation is released at its expiry instead).
    pub remaining: Option<Remaining>,
    /// How far the window is past a limit after the settle (the call used more than it
    /// reserved, e.g. a longer duration); absent when within every limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrun: Option<Figures>,
}

/// Budget figures: calls, bytes, milliseconds, spend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figures {
    pub calls: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: u64,
    pub spend: u64,
}

/// What is left of each limited dimension; unlimited dimensions are absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remaining {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<u64>,
}

/// What an aggregate denial receipt counts: the refusals of one client address (kind
/// `denial_aggregate` only) that got no receipt of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// The client address as the gateway derived it: an IPv4 address, an IPv6 /64 network
    /// (`2001:db8:1:2::/64`), or `other` for the addresses beyond the gateway's table.
    pub client: String,
    /// When the first and the last of the counted refusals arrived (RFC 3339, as `issued_at`).
    pub first_at: String,
    pub last_at: String,
    /// How many refusals are counted; the sum of `codes`.
    pub count: u64,
    /// How many of them were answered `429 UNAUTHENTICATED_RATE_LIMITED` (the address was over
    /// its allowance); the others were answered with their own code while the queue of
    /// unauthenticated receipts was full.
    pub rate_limited: u64,
    /// The stable code each refusal had (before any 429), and how often.
    pub codes: BTreeMap<String, u64>,
}

/// Which key signed, and how.
/// `Default` is the unassigned value a draft carries until the sequencer signs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signer {
    pub key_id: String,
    /// `in_process`, `external` (one process per signature) or `coprocess`.
    pub mode: String,
    /// True when the key is ephemeral (development only): such receipts prove little.
    pub ephemeral: bool,
}

/// Where the receipt sits in the gateway's transparency log.
/// `Default` is the unassigned value a draft carries until the sequencer numbers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPosition {
    pub origin: String,
    pub index: u64,
}

/// A receipt payload. Member order on the wire is the declaration order below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub version: u32,
    pub receipt_id: String,
    pub kind: Kind,
    /// RFC 3339, UTC, microseconds: `2026-11-23T06:00:00.123456Z`.
    pub issued_at: String,
    pub gateway_id: String,
    pub request_id: String,
    /// `null` when the agent was not authenticated (then `decision.code` says why).
    pub principal: Option<Principal>,
    pub call: Call,
    pub decision: Decision,
    pub completion: Option<Completion>,
    /// Aggregate denial receipts only: what they count. Absent (not `null`) in every other
    /// receipt, so receipts of the other kinds keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
    pub signer: Signer,
    pub log: LogPosition,
    /// Version 2 only: 128 random bits as 32 lower-case hex digits, so that the sibling hashes
    /// in one call's inclusion proof reveal nothing about the neighbouring calls (a leaf can
    /// no longer be confirmed by guessing its contents). Absent (not `null`) in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blinder: Option<String>,
}

/// Why a payload is not a receipt.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("payload is not a receipt: {0}")]
    Payload(String),
    #[error("unsupported receipt version {0}")]
    Version(u32),
    /// A version-1 receipt as a bare log entry, or a version-2 one inside an envelope.
    #[error("a version {version} receipt cannot be {place}")]
    Misplaced { version: u32, place: &'static str },
    #[error("receipt larger than {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
}

/// `true` for exactly `n` lower-case hex digits.
fn lower_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Receipt {
    /// The exact payload bytes that get signed (compact JSON, declaration order).
    pub fn to_payload(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a payload of either version and checks the members that depend on it:
    /// version 1 has no `blinder` and no `completion.decision_leaf_hash`; version 2 has a
    /// `blinder` of 32 lower-case hex digits, and a completion receipt has its completion
    /// with the 64-hex-digit `decision_leaf_hash`.
    pub fn from_payload(bytes: &[u8]) -> Result<Self, ReceiptError> {
        // UTF-8 checked once for the whole payload, not string by string (a verifier reads a
        // million of these); the same payloads are refused.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| ReceiptError::Payload(format!("not UTF-8: {e}")))?;
        let r: Receipt =
            serde_json::from_str(text).map_err(|e| ReceiptError::Payload(e.to_string()))?;
        let leaf_hash = r
            .completion
            .as_ref()
            .and_then(|c| c.decision_leaf_hash.as_deref());
        match r.version {
            RECEIPT_VERSION => {
                if r.blinder.is_some() || leaf_hash.is_some() {
                    return Err(ReceiptError::Payload(
                        "a version 1 receipt has no blinder and no decision_leaf_hash".into(),
                    ));
                }
            }
            LEAF_VERSION => {
                if !r.blinder.as_deref().is_some_and(|b| lower_hex(b, 32)) {
                    return Err(ReceiptError::Payload(
                        "blinder must be 32 lower-case hex digits".into(),
                    ));
                }
                if (r.kind == Kind::Completion) != r.completion.is_some() {
                    return Err(ReceiptError::Payload(
                        "completion must be set exactly on completion receipts".into(),
                    ));
                }
                if r.completion.is_some() && !leaf_hash.is_some_and(|h| lower_hex(h, 64)) {
                    return Err(ReceiptError::Payload(
                        "decision_leaf_hash must be 64 lower-case hex digits".into(),
                    ));
                }
            }
            v => return Err(ReceiptError::Version(v)),
        }
        r.check_aggregate()?;
        r.check_admin()?;
        Ok(r)
    }

    /// Both versions: an admin receipt has no completion and no tool, and its principal, when
    /// there is one, is an admin — by an admin token or by an OIDC JWT (`auth: "jwt"`, the
    /// admin plane's own audience); an admin token appears on admin receipts only.
    fn check_admin(&self) -> Result<(), ReceiptError> {
        let credential = self.principal.as_ref().map(|p| &p.credential);
        let admin_principal = matches!(credential, Some(Credential::AdminToken { .. }));
        if self.kind == Kind::Admin {
            let admin_jwt = matches!(credential, Some(Credential::Jwt { .. }));
            if self.principal.is_some() && !admin_principal && !admin_jwt {
                return Err(ReceiptError::Payload(
                    "an admin receipt's principal is an admin (auth \"admin_token\" or \"jwt\") or null"
                        .into(),
                ));
            }
            if self.completion.is_some() || self.call.tool.is_some() {
                return Err(ReceiptError::Payload(
                    "an admin receipt has no completion and no tool".into(),
                ));
            }
        } else if admin_principal {
            return Err(ReceiptError::Payload(
                "an admin_token principal appears on admin receipts only".into(),
            ));
        }
        Ok(())
    }

    /// Both versions: `aggregate` is set exactly on aggregate denial receipts, which name no
    /// principal, deny, and count at least one refusal consistently.
    fn check_aggregate(&self) -> Result<(), ReceiptError> {
        let bad = |why: &str| Err(ReceiptError::Payload(why.into()));
        match (&self.aggregate, self.kind == Kind::DenialAggregate) {
            (None, false) => Ok(()),
            (Some(_), false) | (None, true) => {
                bad("aggregate must be set exactly on denial_aggregate receipts")
            }
            (Some(a), true) => {
                let sum = a
                    .codes
                    .values()
                    .try_fold(0u64, |acc, n| acc.checked_add(*n));
                if self.principal.is_some() || self.decision.outcome != Outcome::Deny {
                    bad("a denial_aggregate receipt names no principal and denies")
                } else if a.count == 0 || sum != Some(a.count) || a.rate_limited > a.count {
                    bad("aggregate.count must be positive, the sum of codes, and at least rate_limited")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// An unsigned envelope around this receipt; sign `envelope.pae()` and push the signature.
    pub fn envelope(&self) -> Envelope {
        Envelope {
            payload_type: RECEIPT_PAYLOAD_TYPE.to_string(),
            payload: self.to_payload(),
            signatures: Vec::new(),
        }
    }

    /// Wraps a signature made over [`Envelope::pae`].
    pub fn signed(&self, keyid: &str, sig: [u8; 64]) -> Envelope {
        let mut env = self.envelope();
        env.signatures.push(EnvelopeSignature {
            keyid: keyid.to_string(),
            sig,
        });
        env
    }
}

/// Parses a receipt envelope, checking the payload type and that it holds a version 1
/// receipt (signatures are checked separately, against a trust file).
pub fn open(envelope_json: &[u8]) -> Result<(Envelope, Receipt), ReceiptError> {
    let env = Envelope::from_json(envelope_json)?;
    if env.payload_type != RECEIPT_PAYLOAD_TYPE {
        return Err(EnvelopeError::PayloadType {
            found: env.payload_type.clone(),
            expected: RECEIPT_PAYLOAD_TYPE.to_string(),
        }
        .into());
    }
    let r = Receipt::from_payload(&env.payload)?;
    if r.version != RECEIPT_VERSION {
        return Err(ReceiptError::Misplaced {
            version: r.version,
            place: "inside a DSSE envelope",
        });
    }
    Ok((env, r))
}

/// Parses a batched log entry: the compact payload of a version 2 receipt, no envelope. (Its
/// authenticity is its inclusion under a signed checkpoint, checked separately.)
pub fn open_leaf(entry: &[u8]) -> Result<Receipt, ReceiptError> {
    if entry.len() > MAX_ENVELOPE_BYTES {
        return Err(ReceiptError::TooLarge);
    }
    let r = Receipt::from_payload(entry)?;
    if r.version != LEAF_VERSION {
        return Err(ReceiptError::Misplaced {
            version: r.version,
            place: "a log entry without an envelope",
        });
    }
    Ok(r)
}

/// A log entry of either kind. A log may hold both (a deployment may switch modes); readers
/// tell them apart by content: an entry is a JSON object, and one with a `payloadType` member
/// is a DSSE envelope (`per_receipt`), any other a version 2 receipt (`batched`). The member
/// sets of the two are disjoint, so no entry can be read both ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A receipt signed on its own (version 1).
    Envelope {
        envelope: Envelope,
        receipt: Receipt,
    },
    /// A receipt that is itself the leaf (version 2), proven by a signed checkpoint.
    Leaf(Receipt),
}

impl Entry {
    pub fn receipt(&self) -> &Receipt {
        match self {
            Entry::Envelope { receipt, .. } | Entry::Leaf(receipt) => receipt,
        }
    }

    pub fn into_receipt(self) -> Receipt {
        match self {
            Entry::Envelope { receipt, .. } | Entry::Leaf(receipt) => receipt,
        }
    }

    pub fn is_leaf(&self) -> bool {
        matches!(self, Entry::Leaf(_))
    }
}

/// Which kind an entry is (see [`Entry`]); the writers' own member order makes the common
/// cases a prefix test.
fn is_envelope(entry: &[u8]) -> Result<bool, ReceiptError> {
    if entry.starts_with(br#"{"payload":"#) {
        return Ok(true);
    }
    if entry.starts_with(br#"{"version":"#) {
        return Ok(false);
    }
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "payloadType")]
        payload_type: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe =
        serde_json::from_slice(entry).map_err(|e| ReceiptError::Payload(e.to_string()))?;
    Ok(probe.payload_type.is_some())
}

/// Whether `entry` is (if anything) a batched leaf rather than an envelope — the test of
/// [`Entry`], without parsing the receipt; for readers that only sort entries (nothing is
/// verified by it).
pub fn is_batched_entry(entry: &[u8]) -> bool {
    matches!(is_envelope(entry), Ok(false))
}

/// Parses a log entry of either kind (see [`Entry`]).
pub fn open_entry(entry: &[u8]) -> Result<Entry, ReceiptError> {
    if entry.len() > MAX_ENVELOPE_BYTES {
        return Err(ReceiptError::TooLarge);
    }
    if is_envelope(entry)? {
        let (envelope, receipt) = open(entry)?;
        Ok(Entry::Envelope { envelope, receipt })
    } else {
        open_leaf(entry).map(Entry::Leaf)
    }
}

/// Receipt ids derived from log positions: `rcpt_<first 12 hex digits of SHA-256(origin)>_<index
/// in lower-case hex, no leading zeros>`. The sequencer names a receipt when it gives it its
/// index, so a look-up by id needs no table: the id says where the receipt is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptIds {
    prefix: String,
}

impl ReceiptIds {
    pub fn new(origin: &str) -> Self {
        Self {
            prefix: format!("rcpt_{}_", &sha256_hex(origin.as_bytes())[..12]),
        }
    }

    /// The id of the receipt at `index`.
    pub fn id(&self, index: u64) -> String {
        format!("{}{index:x}", self.prefix)
    }

    /// The index an id of this log names; `None` for any other id (another log's, a legacy
    /// random one, or a non-canonical spelling).
    pub fn index_of(&self, id: &str) -> Option<u64> {
        let hex = id.strip_prefix(&self.prefix)?;
        let canonical = !hex.is_empty()
            && hex.len() <= 16
            && lower_hex(hex, hex.len())
            && (hex == "0" || !hex.starts_with('0'));
        canonical
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
    }
}

/// The note key name under which the receipt key `kid` signs the checkpoints of the log
/// `origin` in batched mode (a second signature line next to the log key's):
/// `<origin>/receipt-key/<kid>`. Key ids (`[A-Za-z0-9._-]`) and origins (no spaces, no `+`)
/// make it a valid C2SP key name.
pub fn batch_key_name(origin: &str, kid: &str) -> String {
    format!("{origin}/receipt-key/{kid}")
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    pub fn sample() -> Receipt {
        Receipt {
            version: RECEIPT_VERSION,
            receipt_id: "rcpt_01".into(),
            kind: Kind::Decision,
            issued_at: "2026-11-23T06:00:00.000001Z".into(),
            gateway_id: "gw-1".into(),
            request_id: "req-1".into(),
            principal: Some(Principal {
                agent_id: "agent-a".into(),
                credential: Credential::ApiKey {
                    key_id: "k1".into(),
                    key_hash_prefix: "sha256:0123456789ab".into(),
                },
            }),
            call: Call {
                tool: Some("pay".into()),
                method: "POST".into(),
                path: "/send".into(),
                query_sha256: None,
                body_sha256: Some(sha256_hex(b"{}")),
                body_bytes: 2,
                args_sha256: Some(sha256_hex(b"{}")),
                session: None,
            },
            decision: Decision {
                outcome: Outcome::Allow,
                code: "ALLOWED".into(),
                policy_ids: vec!["p1".into()],
                policy_digest: "00".repeat(32),
            },
            completion: None,
            aggregate: None,
            signer: Signer {
                key_id: "gateway".into(),
                mode: "in_process".into(),
                ephemeral: false,
            },
            log: LogPosition {
                origin: "lap.example/gw-1".into(),
                index: 7,
            },
            blinder: None,
        }
    }

    fn leaf() -> Receipt {
        let mut r = sample();
        r.version = LEAF_VERSION;
        r.blinder = Some("0123456789abcdef0123456789abcdef".into());
        r
    }

    #[test]
    fn payload_roundtrip_is_byte_exact() {
        let r = sample();
        let p = r.to_payload();
        assert!(p.starts_with(br#"{"version":1,"receipt_id":"rcpt_01","kind":"decision""#));
        assert_eq!(Receipt::from_payload(&p).unwrap(), r);
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let env = r.envelope();
        let signed = r.signed("gateway", key.sign(&env.pae()).to_bytes());
        let (env2, r2) = open(signed.to_json().as_bytes()).unwrap();
        assert_eq!(r2, r);
        env2.verify("gateway", &key.verifying_key()).unwrap();
    }

    #[test]
    fn rejects_unknown_fields_and_versions() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_payload()).unwrap();
        v["extra"] = 1.into();
        assert!(Receipt::from_payload(v.to_string().as_bytes()).is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_payload()).unwrap();
        v["version"] = 3.into();
        assert!(matches!(
            Receipt::from_payload(v.to_string().as_bytes()),
            Err(ReceiptError::Version(3))
        ));
    }

    /// Limits' members are optional and left out when unused: a receipt without them is byte
    /// for byte what it was before they existed.
    #[test]
    fn session_and_budgets_are_absent_unless_used() {
        let plain = String::from_utf8(sample().to_payload()).unwrap();
        assert!(
            !plain.contains("session") && !plain.contains("budgets"),
            "{plain}"
        );
        assert!(plain.contains(r#""args_sha256":"#) && plain.contains(r#""body_bytes":"#));
        let mut r = leaf();
        r.call.session = Some("sha256:0123456789abcdef".into());
        r.kind = Kind::Completion;
        r.completion = Some(Completion {
            decision_receipt_id: "rcpt_x_1".into(),
            decision_log_index: 1,
            decision_leaf_hash: Some("ab".repeat(32)),
            status: 200,
            response_sha256: "00".repeat(32),
            bytes_in: 2,
            bytes_out: 3,
            duration_ms: 4,
            error_code: None,
            budgets: vec![BudgetUse {
                budget: "limits.budget[0]".into(),
                window: "day".into(),
                reserved: Figures {
                    calls: 1,
                    ..Figures::default()
                },
                actual: Figures {
                    calls: 1,
                    response_bytes: 3,
                    ..Figures::default()
                },
                remaining: Some(Remaining {
                    calls: Some(9),
                    ..Remaining::default()
                }),
                overrun: None,
            }],
        });
        let bytes = r.to_payload();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.contains(r#""args_sha256":"#)
                && text.contains(r#""session":"sha256:0123456789abcdef"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""remaining":{"calls":9}}]"#),
            "only limited dimensions are listed: {text}"
        );
        assert!(!text.contains("overrun"), "{text}");
        assert_eq!(open_leaf(&bytes).unwrap(), r);
    }

    #[test]
    fn a_version_2_leaf_is_the_payload_with_a_blinder_last() {
        let r = leaf();
        let bytes = r.to_payload();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(r#"{"version":2,"receipt_id":"#), "{text}");
        assert!(
            text.ends_with(r#","blinder":"0123456789abcdef0123456789abcdef"}"#),
            "{text}"
        );
        assert_eq!(open_leaf(&bytes).unwrap(), r);
        assert_eq!(open_entry(&bytes).unwrap(), Entry::Leaf(r.clone()));
        // A version 1 receipt never shows the new members.
        let v1 = String::from_utf8(sample().to_payload()).unwrap();
        assert!(!v1.contains("blinder") && !v1.contains("decision_leaf_hash"));
        // Misplaced versions are refused both ways.
        assert!(matches!(
            open_leaf(&sample().to_payload()),
            Err(ReceiptError::Misplaced { version: 1, .. })
        ));
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let env = r.envelope();
        let wrapped = r
            .signed("gateway", key.sign(&env.pae()).to_bytes())
            .to_json();
        assert!(matches!(
            open(wrapped.as_bytes()),
            Err(ReceiptError::Misplaced { version: 2, .. })
        ));
        assert!(open_entry(wrapped.as_bytes()).is_err());
    }

    #[test]
    fn version_dependent_members_are_checked() {
        let payload = |r: &Receipt| r.to_payload();
        let mut bad = leaf();
        bad.blinder = None;
        assert!(Receipt::from_payload(&payload(&bad)).is_err(), "no blinder");
        for blinder in [
            "0123",
            "0123456789ABCDEF0123456789ABCDEF",
            "g".repeat(32).as_str(),
        ] {
            let mut bad = leaf();
            bad.blinder = Some(blinder.into());
            assert!(Receipt::from_payload(&payload(&bad)).is_err(), "{blinder}");
        }
        let mut v1 = sample();
        v1.blinder = Some("0".repeat(32));
        assert!(Receipt::from_payload(&payload(&v1)).is_err(), "v1 blinder");
        let completion = Completion {
            decision_receipt_id: "rcpt_x_1".into(),
            decision_log_index: 1,
            decision_leaf_hash: Some("ab".repeat(32)),
            status: 200,
            response_sha256: "00".repeat(32),
            bytes_in: 0,
            bytes_out: 0,
            duration_ms: 1,
            error_code: None,
            budgets: Vec::new(),
        };
        let mut c = leaf();
        c.kind = Kind::Completion;
        c.completion = Some(completion.clone());
        assert_eq!(Receipt::from_payload(&payload(&c)).unwrap(), c);
        let text = String::from_utf8(payload(&c)).unwrap();
        assert!(text.contains(r#""decision_log_index":1,"decision_leaf_hash":"abab"#));
        let mut no_hash = c.clone();
        no_hash.completion.as_mut().unwrap().decision_leaf_hash = None;
        assert!(Receipt::from_payload(&payload(&no_hash)).is_err());
        let mut stray = leaf();
        stray.completion = Some(completion.clone());
        assert!(
            Receipt::from_payload(&payload(&stray)).is_err(),
            "decision with completion"
        );
        let mut v1c = sample();
        v1c.kind = Kind::Completion;
        v1c.completion = Some(completion);
        assert!(
            Receipt::from_payload(&payload(&v1c)).is_err(),
            "v1 leaf hash"
        );
    }

    fn aggregated() -> Receipt {
        let mut r = leaf();
        r.kind = Kind::DenialAggregate;
        r.principal = None;
        r.decision.outcome = Outcome::Deny;
        r.decision.code = "UNAUTHENTICATED_RATE_LIMITED".into();
        r.aggregate = Some(Aggregate {
            client: "203.0.113.9".into(),
            first_at: "2026-11-23T06:00:00.000001Z".into(),
            last_at: "2026-11-23T06:00:09.000001Z".into(),
            count: 12,
            rate_limited: 10,
            codes: [
                ("UNAUTHENTICATED".to_string(), 11),
                ("BAD_HOST".to_string(), 1),
            ]
            .into(),
        });
        r
    }

    #[test]
    fn an_aggregate_denial_receipt_counts_consistently() {
        let r = aggregated();
        let text = String::from_utf8(r.to_payload()).unwrap();
        assert!(text.contains(r#""kind":"denial_aggregate""#), "{text}");
        // After `completion`, before `signer`; codes in code-point order.
        assert!(
            text.contains(
                r#""completion":null,"aggregate":{"client":"203.0.113.9","first_at":"2026-11-23T06:00:00.000001Z","last_at":"2026-11-23T06:00:09.000001Z","count":12,"rate_limited":10,"codes":{"BAD_HOST":1,"UNAUTHENTICATED":11}},"signer":"#
            ),
            "{text}"
        );
        assert_eq!(open_leaf(&r.to_payload()).unwrap(), r);
        // Other kinds never show the member.
        assert!(!String::from_utf8(leaf().to_payload())
            .unwrap()
            .contains("aggregate"));
        let broken: [fn(&mut Receipt); 6] = [
            |r| r.aggregate = None,
            |r| r.kind = Kind::Denial,
            |r| r.aggregate.as_mut().unwrap().count = 13,
            |r| r.aggregate.as_mut().unwrap().rate_limited = 13,
            |r| r.principal = sample().principal,
            |r| r.decision.outcome = Outcome::Allow,
        ];
        for (i, f) in broken.iter().enumerate() {
            let mut bad = aggregated();
            f(&mut bad);
            assert!(
                Receipt::from_payload(&bad.to_payload()).is_err(),
                "case {i}"
            );
        }
        let mut empty = aggregated();
        let a = empty.aggregate.as_mut().unwrap();
        (a.count, a.rate_limited, a.codes) = (0, 0, BTreeMap::new());
        assert!(Receipt::from_payload(&empty.to_payload()).is_err(), "empty");
        // A version 1 envelope may carry one too (per-receipt mode).
        let mut v1 = aggregated();
        (v1.version, v1.blinder) = (RECEIPT_VERSION, None);
        assert_eq!(Receipt::from_payload(&v1.to_payload()).unwrap(), v1);
    }

    #[test]
    fn entries_are_told_apart_by_content_in_any_member_order() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let r = sample();
        let env = r.signed("gateway", key.sign(&r.envelope().pae()).to_bytes());
        // Another member order than the writer's.
        let v: serde_json::Value = serde_json::from_str(&env.to_json()).unwrap();
        let text = format!(
            r#"{{"signatures":{},"payloadType":{},"payload":{}}}"#,
            v["signatures"], v["payloadType"], v["payload"]
        );
        match open_entry(text.as_bytes()).unwrap() {
            Entry::Envelope { receipt, .. } => assert_eq!(receipt, r),
            other => panic!("{other:?}"),
        }
        let mut leaf_obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&leaf().to_payload()).unwrap();
        let version = leaf_obj.remove("version").unwrap();
        leaf_obj.insert("version".into(), version);
        let text = serde_json::Value::Object(leaf_obj).to_string();
        assert!(open_entry(text.as_bytes()).unwrap().is_leaf());
        assert!(open_entry(b"[1]").is_err());
        assert!(open_entry(b"not json").is_err());
    }

    #[test]
    fn receipt_ids_name_their_position() {
        let ids = ReceiptIds::new("lap.example/gw-1");
        let prefix = &sha256_hex(b"lap.example/gw-1")[..12];
        assert_eq!(ids.id(0), format!("rcpt_{prefix}_0"));
        assert_eq!(ids.id(255), format!("rcpt_{prefix}_ff"));
        for i in [0, 1, 255, 4096, u64::MAX] {
            assert_eq!(ids.index_of(&ids.id(i)), Some(i));
        }
        for bad in [
            format!("rcpt_{prefix}_"),
            format!("rcpt_{prefix}_0ff"),
            format!("rcpt_{prefix}_FF"),
            format!("rcpt_{prefix}_x"),
            format!("rcpt_{prefix}_1{}", "0".repeat(16)),
            "rcpt_000000000000_1".to_string(),
        ] {
            assert_eq!(ids.index_of(&bad), None, "{bad}");
        }
        assert_ne!(ReceiptIds::new("other").id(1), ids.id(1));
        assert_eq!(
            batch_key_name("lap.example/gw-1", "k1"),
            "lap.example/gw-1/receipt-key/k1"
        );
    }

    #[test]
    fn principal_wire_form_is_flat_and_exact_per_method() {
        let api = r#"{"agent_id":"a","auth":"api_key","key_id":"k1","key_hash_prefix":"sha256:0123456789ab"}"#;
        let jwt = r#"{"agent_id":"a","auth":"jwt","iss":"https://idp","sub":"s","kid":"k","token_hash_prefix":"sha256:0123456789ab"}"#;
        let mtls =
            r#"{"agent_id":"a","auth":"mtls","spiffe_id":"spiffe://td/a","cert_sha256":"00"}"#;
        let admin = r#"{"agent_id":"ops","auth":"admin_token","key_id":"t1","key_hash_prefix":"sha256:0123456789ab"}"#;
        for text in [api, jwt, mtls, admin] {
            let p: Principal = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&p).unwrap(), text);
        }
        let p: Principal = serde_json::from_str(jwt).unwrap();
        assert_eq!(p.credential.method(), "jwt");
        for bad in [
            r#"{"agent_id":"a","auth":"api_key","key_id":"k1"}"#,
            r#"{"agent_id":"a","auth":"api_key","key_id":"k1","key_hash_prefix":"x","iss":"i"}"#,
            r#"{"agent_id":"a","auth":"jwt","iss":"i","sub":"s","token_hash_prefix":"x","cert_sha256":"00"}"#,
            r#"{"agent_id":"a","auth":"mtls","cert_sha256":"00"}"#,
            r#"{"agent_id":"a","auth":"password","key_id":"k1","key_hash_prefix":"x"}"#,
            r#"{"agent_id":"a","auth":"api_key","key_id":"k1","key_hash_prefix":"x","extra":1}"#,
        ] {
            assert!(serde_json::from_str::<Principal>(bad).is_err(), "{bad}");
        }
    }

    /// An admin receipt: a reload by an operator token, or a refused attempt by nobody.
    fn admin() -> Receipt {
        let mut r = leaf();
        r.kind = Kind::Admin;
        r.principal = Some(Principal {
            agent_id: "ops-1".into(),
            credential: Credential::AdminToken {
                key_id: "ops-1".into(),
                key_hash_prefix: "sha256:0123456789ab".into(),
            },
        });
        r.call.tool = None;
        r.call.path = "/v1/reload".into();
        r.call.body_sha256 = None;
        r.call.body_bytes = 0;
        r.decision.policy_ids.clear();
        r
    }

    #[test]
    fn an_admin_receipt_names_an_admin_or_nobody() {
        let r = admin();
        let text = String::from_utf8(r.to_payload()).unwrap();
        assert!(text.contains(r#""kind":"admin""#), "{text}");
        assert!(
            text.contains(r#""principal":{"agent_id":"ops-1","auth":"admin_token","key_id":"ops-1","key_hash_prefix":"sha256:0123456789ab"}"#),
            "{text}"
        );
        assert_eq!(open_leaf(&r.to_payload()).unwrap(), r);
        let mut refused = admin();
        refused.principal = None;
        refused.decision.outcome = Outcome::Deny;
        refused.decision.code = "ADMIN_AUTH_REQUIRED".into();
        assert_eq!(open_leaf(&refused.to_payload()).unwrap(), refused);
        // Version 1 (per-receipt mode) too.
        let mut v1 = admin();
        v1.version = RECEIPT_VERSION;
        v1.blinder = None;
        assert_eq!(Receipt::from_payload(&v1.to_payload()).unwrap(), v1);

        type Spoil = fn(&mut Receipt);
        let broken: [(&str, Spoil); 4] = [
            ("agent principal", |r| r.principal = sample().principal),
            ("tool", |r| r.call.tool = Some("pay".into())),
            ("completion", |r| {
                r.completion = Some(Completion {
                    decision_receipt_id: "rcpt_00".into(),
                    decision_log_index: 0,
                    decision_leaf_hash: Some("00".repeat(32)),
                    status: 200,
                    response_sha256: "00".repeat(32),
                    bytes_in: 0,
                    bytes_out: 0,
                    duration_ms: 0,
                    error_code: None,
                    budgets: Vec::new(),
                })
            }),
            ("admin principal on a decision", |r| r.kind = Kind::Decision),
        ];
        for (what, spoil) in broken {
            let mut r = admin();
            spoil(&mut r);
            assert!(open_leaf(&r.to_payload()).is_err(), "{what}");
        }
    }

    #[test]
    fn an_admin_receipt_may_name_an_admin_signed_in_with_a_jwt() {
        let mut r = admin();
        r.principal = Some(Principal {
            agent_id: "alice".into(),
            credential: Credential::Jwt {
                issuer: "https://idp.example".into(),
                subject: "alice".into(),
                kid: Some("k1".into()),
                token_hash_prefix: "sha256:0123456789ab".into(),
            },
        });
        let text = String::from_utf8(r.to_payload()).unwrap();
        assert!(
            text.contains(r#""principal":{"agent_id":"alice","auth":"jwt","iss":"https://idp.example","sub":"alice","kid":"k1","token_hash_prefix":"sha256:0123456789ab"}"#),
            "{text}"
        );
        assert_eq!(open_leaf(&r.to_payload()).unwrap(), r);
        let mut v1 = r.clone();
        v1.version = RECEIPT_VERSION;
        v1.blinder = None;
        assert_eq!(Receipt::from_payload(&v1.to_payload()).unwrap(), v1);
        // An mTLS principal is an agent's, never an admin's.
        let mut mtls = admin();
        mtls.principal = Some(Principal {
            agent_id: "a".into(),
            credential: Credential::Mtls {
                spiffe_id: Some("spiffe://td/a".into()),
                cert_subject: None,
                cert_sha256: "00".into(),
            },
        });
        assert!(open_leaf(&mtls.to_payload()).is_err());
    }
}
