//! Expiry gauges: seconds until each certificate or key stops being valid, negative once it
//! has.
//!
//! Certificates and keys expire on a date everyone knows in advance and still forgets; an
//! alert on a gauge (`docs/runbooks.md`) turns that date into a ticket weeks before it turns
//! into an outage. The gauges are refreshed by the TLS watcher thread on every poll, so they
//! count down between reloads; the times themselves are read when the material is (re)loaded.
//!
//! * `lap_cert_expiry_seconds{kind,file,subject}`: the TLS server certificate (`kind="server"`)
//!   and every certificate of the client CA bundles (`kind="client_ca"`);
//! * `lap_signing_key_expiry_seconds{key_id}`: receipt signing keys whose keyset gives them a
//!   `not_after`;
//! * `lap_api_key_expiry_seconds{key_id}`: API keys with an `expires_at`.

use super::reload::TlsMaterial;
use crate::live::LiveState;
use prometheus::{GaugeVec, Opts};
use std::sync::{Arc, OnceLock};

/// The three gauges, and where the keys' times are read from.
pub struct ExpiryGauges {
    pub certs: GaugeVec,
    pub signing_keys: GaugeVec,
    pub api_keys: GaugeVec,
    /// Set once the hot-reloaded keys exist (after the TLS material is loaded at start-up).
    live: OnceLock<Arc<LiveState>>,
}

impl ExpiryGauges {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            certs: GaugeVec::new(
                Opts::new(
                    "lap_cert_expiry_seconds",
                    "Seconds until a TLS certificate's not_after (negative: expired)",
                ),
                &["kind", "file", "subject"],
            )?,
            signing_keys: GaugeVec::new(
                Opts::new(
                    "lap_signing_key_expiry_seconds",
                    "Seconds until a receipt signing key's not_after (negative: past)",
                ),
                &["key_id"],
            )?,
            api_keys: GaugeVec::new(
                Opts::new(
                    "lap_api_key_expiry_seconds",
                    "Seconds until an API key's expires_at (negative: expired)",
                ),
                &["key_id"],
            )?,
            live: OnceLock::new(),
        })
    }

    /// Where the API keys and the published keyset are read from; their gauges are set at
    /// once (and then on every refresh).
    pub fn watch_keys(&self, live: Arc<LiveState>) {
        self.refresh_keys(&live, time::OffsetDateTime::now_utc().unix_timestamp());
        let _ = self.live.set(live);
    }

    /// Sets every gauge from the material and keys in force.
    pub fn refresh_all(&self, material: &TlsMaterial) {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.certs.reset();
        if let (Some(server), Some(file)) = (material.server_cert(), material.server_cert_file()) {
            self.certs
                .with_label_values(&["server", &file, &server.leaf.subject])
                .set((server.leaf.not_after - now) as f64);
        }
        if let Some(cas) = material.client_cas() {
            for (file, facts) in &cas.certs {
                self.certs
                    .with_label_values(&["client_ca", &file.display().to_string(), &facts.subject])
                    .set((facts.not_after - now) as f64);
            }
        }
        if let Some(live) = self.live.get() {
            self.refresh_keys(live, now);
        }
    }

    fn refresh_keys(&self, live: &LiveState, now: i64) {
        self.api_keys.reset();
        for entry in live.keys.load().entries() {
            if let Some(exp) = entry.expires_at {
                self.api_keys
                    .with_label_values(&[&entry.key_id])
                    .set((exp.unix_timestamp() - now) as f64);
            }
        }
        self.signing_keys.reset();
        for (key_id, not_after) in signing_key_expiries(&live.published.load().keys) {
            self.signing_keys
                .with_label_values(&[&key_id])
                .set((not_after - now) as f64);
        }
    }
}

/// The receipt keys of a published trust document (`/v1/keys`) that have a `not_after`, with
/// it in seconds since the Unix epoch.
fn signing_key_expiries(trust_document: &[u8]) -> Vec<(String, i64)> {
    let Ok(doc) = serde_json::from_slice::<lap_keys::TrustDocument>(trust_document) else {
        return Vec::new();
    };
    doc.keys
        .into_iter()
        .filter_map(|key| {
            let at = time::OffsetDateTime::parse(
                key.not_after.as_deref()?,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            Some((key.key_id, at.unix_timestamp()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_keys_with_a_validity_window() {
        let doc = serde_json::json!({
            "active_kid": "k2",
            "keys": [
                {"key_id": "k1", "alg": "Ed25519", "public_key_hex": "00".repeat(32),
                 "status": "retired", "not_before": null, "not_after": null,
                 "retired_at": "2026-01-01T00:00:00Z", "revoked_at": null},
                {"key_id": "k2", "alg": "Ed25519", "public_key_hex": "11".repeat(32),
                 "status": "active", "not_before": null, "not_after": "2027-01-01T00:00:00Z",
                 "retired_at": null, "revoked_at": null}
            ],
            "log": null
        });
        assert_eq!(
            signing_key_expiries(doc.to_string().as_bytes()),
            [("k2".to_string(), 1_798_761_600)]
        );
        assert!(signing_key_expiries(b"not json").is_empty());
    }
}
