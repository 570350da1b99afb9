//! The admin plane's readiness probe over the HTTPS data listener (when there is no plain one).
//!
//! The probe trusts exactly one certificate: the server certificate in force, byte for byte.
//! A completed handshake therefore proves that whoever answers holds this gateway's current
//! key; the health answer (with this process's instance id) then proves it is this process.
//! With `client_auth = "required"` the probe has no certificate to present and the server ends
//! the exchange after the handshake, so there the key proof is the whole check.

use super::material::provider;
use super::reload::TlsMaterial;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use tokio::net::TcpStream;

/// Accepts the one leaf it was given and nothing else.
#[derive(Debug)]
struct ExactLeaf {
    leaf: CertificateDer<'static>,
    provider: CryptoProvider,
}

impl ServerCertVerifier for ExactLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to the data listener at `tcp`, if it presents the certificate in force.
pub async fn connect(
    tcp: TcpStream,
    material: &TlsMaterial,
) -> Option<pingora::tls::ClientTlsStream<TcpStream>> {
    let leaf = material.server_cert()?.key.cert.first()?.clone();
    let ip = tcp.peer_addr().ok()?.ip();
    let config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExactLeaf {
            leaf,
            provider: provider(),
        }))
        .with_no_client_auth();
    pingora::tls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .ok()
}
