//! TLS on the data plane: the HTTPS listener, client certificates, and the identity they carry.
//!
//! | file | what |
//! |---|---|
//! | `material.rs` | PEM files read and checked: the server's certificate and key, client CA bundles |
//! | `reload.rs` | the material in force, swapped when its files change; the listener's resolver and client verifier |
//! | `spiffe.rs` | SPIFFE IDs and what a verified leaf says (X509-SVID rules) |
//! | `expiry.rs` | gauges of seconds until certificates and keys expire |
//! | `probe.rs` | the readiness probe over the HTTPS listener (when there is no plain one) |
//!
//! The listener is Pingora's rustls listener with our resolver and verifier. After the
//! handshake, [`PeerCertCallback`] reads the verified leaf once per connection
//! ([`spiffe::PeerCert`]) and leaves it in the connection's TLS digest, where the identity
//! stage (`pipeline::identity::mtls`) finds it for every request of that connection.

pub mod expiry;
pub mod material;
pub mod probe;
pub mod reload;
pub mod spiffe;

use crate::config::TlsSettings;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings as PingoraTls;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use prometheus::{IntCounterVec, Opts};
use reload::{ClientVerifier, ServerCertResolver, TlsMaterial};
use sha2::Digest;
use spiffe::PeerCert;
use std::sync::Arc;

/// Metrics of the TLS layer.
pub struct TlsMetrics {
    /// `lap_tls_reload_total{file,result}`.
    pub reloads: IntCounterVec,
    /// `lap_tls_client_cert_failures_total{reason}`: client certificates refused in the
    /// handshake.
    pub handshake_failures: IntCounterVec,
    pub expiry: expiry::ExpiryGauges,
}

impl TlsMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            reloads: IntCounterVec::new(
                Opts::new(
                    "lap_tls_reload_total",
                    "Reloads of TLS material (server_cert, client_ca) by result",
                ),
                &["file", "result"],
            )?,
            handshake_failures: IntCounterVec::new(
                Opts::new(
                    "lap_tls_client_cert_failures_total",
                    "Client certificates refused in the TLS handshake, by reason \
                     (unknown_issuer, expired, not_yet_valid, invalid)",
                ),
                &["reason"],
            )?,
            expiry: expiry::ExpiryGauges::new()?,
        })
    }

    /// Every collector, for the gateway's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.reloads.clone()),
            Box::new(self.handshake_failures.clone()),
            Box::new(self.expiry.certs.clone()),
            Box::new(self.expiry.signing_keys.clone()),
            Box::new(self.expiry.api_keys.clone()),
        ]
    }
}

/// What the handshake learnt about the client, kept with the connection.
#[derive(Debug)]
pub enum ClientCert {
    /// No certificate presented (`client_auth = "optional"`, or not asked for).
    Absent,
    /// A certificate the verifier accepted at the handshake, read, with the chain it came with.
    Verified(HandshakeCert),
    /// A certificate the verifier accepted but that is not X.509 we can read (refused later).
    Unreadable,
}

/// A client certificate as the handshake presented it. The handshake's verdict does not last
/// as long as the connection: a keep-alive connection outlives the certificate's `not_after`,
/// and a resumed TLS session brings back the chain of its first handshake without the verifier
/// running again (rustls' default session cache and tickets), even after its CA was removed
/// from the bundles. So the identity stage checks the chain against the CAs in force, at the
/// time of each request (`identity::mtls`; remembered per CA set until `not_after`).
#[derive(Debug, Clone)]
pub struct HandshakeCert {
    pub cert: PeerCert,
    /// The presented chain, leaf first.
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// SHA-256 of the leaf's DER: the key under which the CAs remember it verified.
    pub digest: [u8; 32],
}

/// Reads the verified client leaf after each handshake.
pub struct PeerCertCallback;

#[async_trait]
impl TlsAccept for PeerCertCallback {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let cert = match tls.peer_cert_chain_der() {
            None | Some([]) => ClientCert::Absent,
            Some(chain) => match PeerCert::read(&chain[0]) {
                Ok(cert) => ClientCert::Verified(HandshakeCert {
                    cert,
                    digest: sha2::Sha256::digest(&chain[0]).into(),
                    chain: chain.to_vec(),
                }),
                Err(_) => ClientCert::Unreadable,
            },
        };
        Some(Arc::new(cert))
    }
}

/// Pingora's listener settings for the TLS data listener: our resolver, our verifier (when
/// client CAs are configured), HTTP/1.1 only (as the plain listener).
pub fn listener_settings(
    settings: &TlsSettings,
    material: &Arc<TlsMaterial>,
) -> pingora::Result<PingoraTls> {
    let mut tls = PingoraTls::with_callbacks(Box::new(PeerCertCallback))?;
    tls.set_cert_resolver(Arc::new(ServerCertResolver(material.clone())));
    if !matches!(settings.client_auth, crate::config::ClientAuth::None) {
        tls.set_client_cert_verifier(Arc::new(ClientVerifier {
            material: material.clone(),
            mode: settings.client_auth,
        }));
    }
    Ok(tls)
}
