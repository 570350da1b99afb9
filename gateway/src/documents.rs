//! The JSON documents the gateway writes, each defined once as a type.
//!
//! | document | where |
//! |---|---|
//! | [`Health`] | data plane `/v1/health` (the seed's health document, extended) |
//! | `lap_keys::TrustDocument` | data plane `/v1/keys`, and `trust.json` in audit packs (read by `lap-verify`) |
//! | [`ErrorBody`] | every refusal, on both planes: `{"error":{"code","message","request_id"?}}` |
//! | [`Ready`] | admin `/readyz` |
//! | [`Alive`] | admin `/healthz` |
//!
//! Field order is the order in which they are written, and what `docs/api.md` shows.

use crate::config::Config;
use crate::state::StoreStatus;
use bytes::Bytes;
use lap_keys::{KeyMaterial, Keyset, LogKey, TrustDocument};
use serde::Serialize;
use std::sync::Arc;

/// The public documents, serialised once per keyset (they change only when it does).
pub struct Published {
    /// `/v1/health`, one per status of the state store (see [`Published::health`]).
    health: Vec<(StoreStatus, Bytes)>,
    /// `/v1/keys`
    pub keys: Bytes,
}

/// Builds the public documents of this process for a keyset.
pub struct Publisher {
    config: Arc<Config>,
    /// A random id for this process. The admin plane's `/readyz` asks the data port for it, so
    /// "ready" means the data listener is this process's, not merely that something answers on
    /// the port.
    instance: String,
    /// The receipt log's origin and checkpoint verifier key; `None` when evidence is off.
    log: Option<LogKey>,
}

impl Publisher {
    pub fn new(config: Arc<Config>, instance: String, log: Option<LogKey>) -> Self {
        Self {
            config,
            instance,
            log,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// `/v1/health` and `/v1/keys` for `keyset`.
    pub fn publish(&self, keyset: &Keyset) -> Published {
        let active = keyset.active();
        let health = |store: StoreStatus| Health {
            status: if store == StoreStatus::Ok {
                "healthy"
            } else {
                "degraded"
            },
            gateway_id: &self.config.gateway_id,
            instance: &self.instance,
            crypto_available: true,
            signing: Signing {
                key_id: &active.kid,
                source: keyset.source().as_str(),
                ephemeral: keyset.is_ephemeral(),
                mode: signer_mode(&active.material, self.config.external_coprocess),
            },
            evidence: EvidenceState {
                required: self.config.evidence_required,
                log_origin: self.log.as_ref().map(|l| l.origin.as_str()),
            },
            state: StateHealth {
                backend: self.config.state.backend.name(),
                status: store.name(),
            },
        };
        Published {
            health: StoreStatus::ALL
                .iter()
                .map(|s| (*s, to_bytes(&health(*s))))
                .collect(),
            keys: TrustDocument::new(keyset, self.log.clone())
                .to_json()
                .into(),
        }
    }
}

impl Published {
    /// Documents given as they are (tests).
    pub fn fixed(health: Bytes, keys: Bytes) -> Self {
        Self {
            health: vec![(StoreStatus::Ok, health)],
            keys,
        }
    }

    /// `/v1/health` with the state store's status as last seen.
    pub fn health(&self, store: StoreStatus) -> Bytes {
        self.health
            .iter()
            .find(|(s, _)| *s == store)
            .or(self.health.first())
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    }
}

/// How the active key signs, as the health document names it.
fn signer_mode(material: &KeyMaterial, coprocess: bool) -> &'static str {
    match material {
        KeyMaterial::Seed(_) => "in_process",
        KeyMaterial::External { .. } if coprocess => "coprocess",
        KeyMaterial::External { .. } => "external",
        KeyMaterial::VerifyOnly => "none",
    }
}

fn to_bytes(doc: &impl Serialize) -> Bytes {
    // Serialising the gateway's own document types into a Vec cannot fail.
    serde_json::to_vec(doc).unwrap_or_default().into()
}

/// `/v1/health`: the seed's fields (`status`, `gateway_id`, `crypto_available`, `signing`)
/// plus this process's instance id, the evidence settings and the state store. `status` is
/// `degraded` while the state store does not answer (calls that need it are refused).
#[derive(Debug, Serialize)]
pub struct Health<'a> {
    pub status: &'static str,
    pub gateway_id: &'a str,
    pub instance: &'a str,
    pub crypto_available: bool,
    pub signing: Signing<'a>,
    pub evidence: EvidenceState<'a>,
    pub state: StateHealth,
}

/// The state store in `/v1/health`: which backend, and whether it answered last time
/// (`ok`, `unavailable`, `timeout`). Never its address or credentials.
#[derive(Debug, Serialize)]
pub struct StateHealth {
    pub backend: &'static str,
    pub status: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Signing<'a> {
    pub key_id: &'a str,
    /// Where the key came from (`keyset_file`, `signing_key_file`, `ephemeral`, …).
    pub source: &'static str,
    pub ephemeral: bool,
    /// `in_process`, `external` (one-shot), `coprocess`, or `none` (verify-only).
    pub mode: &'static str,
}

#[derive(Debug, Serialize)]
pub struct EvidenceState<'a> {
    pub required: bool,
    /// The receipt log's origin; `null` when evidence is off.
    pub log_origin: Option<&'a str>,
}

/// The body of every refusal. `code` is stable (documented in `docs/api.md`); `message` is
/// built only from values the gateway itself produced, never from secrets or request bodies.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
    /// The data plane's request id (the admin plane has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
}

impl<'a> ErrorBody<'a> {
    pub fn new(code: &'a str, message: &'a str, request_id: Option<&'a str>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message,
                request_id,
            },
        }
    }

    /// The body as bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising borrowed strings into a Vec cannot fail.
        serde_json::to_vec(self)
            .unwrap_or_else(|_| b"{\"error\":{\"code\":\"INTERNAL_ERROR\"}}".to_vec())
    }
}

/// Admin `/healthz`: the process serves.
#[derive(Debug, Serialize)]
pub struct Alive {
    pub status: &'static str,
}

/// Admin `/readyz`: the data listener answers for this process, and what is in force.
#[derive(Debug, Serialize)]
pub struct Ready<'a> {
    pub status: &'static str,
    pub gateway_id: &'a str,
    pub api_keys: usize,
    pub policies: usize,
    pub policy_digest: &'a str,
    /// Entries in the receipt log; `null` when evidence is off.
    pub log_size: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_name_the_request_only_when_there_is_one() {
        let body = ErrorBody::new("X_Y", "why", Some("r-1")).to_vec();
        assert_eq!(
            body,
            br#"{"error":{"code":"X_Y","message":"why","request_id":"r-1"}}"#
        );
        let body = ErrorBody::new("X_Y", "why", None).to_vec();
        assert_eq!(body, br#"{"error":{"code":"X_Y","message":"why"}}"#);
    }
}
