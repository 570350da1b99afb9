//! The TLS material in force, swapped whole when its files change.
//!
//! The listener's `ServerConfig` is built once; what it asks per handshake goes through two
//! objects of ours: [`ServerCertResolver`] (the certificate to present) and
//! [`ClientVerifier`] (whether a client certificate is wanted and trusted). Each reads an
//! [`ArcSwap`], so a reload is one atomic store and the next handshake sees it, with no restart
//! and no lock on the handshake path. Connections already open keep what they negotiated.
//!
//! A watcher thread polls the files' metadata (as `live` does for keys and policy: polling
//! sees atomic renames and ConfigMap symlink swaps) and reloads at once on SIGHUP. A file that
//! fails to load — unreadable, unparsable PEM, an empty bundle, a key that does not pair with
//! its certificate — is logged and counted (`lap_tls_reload_total{file,result="error"}`), and
//! the last good material stays in force: a broken rotation never takes the listener down.
//! At start-up there is no last good material, so the same failure refuses to start.

use super::expiry::ExpiryGauges;
use super::material::{self, ClientCas, MaterialError, ServerCert};
use super::TlsMetrics;
use crate::config::{ClientAuth, TlsSettings};
use crate::live::{stamp, Stamp};
use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The server certificate and client CAs in force, and where they come from.
pub struct TlsMaterial {
    settings: TlsSettings,
    server: Option<ArcSwap<ServerCert>>,
    cas: Option<ArcSwap<ClientCas>>,
    metrics: Arc<TlsMetrics>,
}

impl TlsMaterial {
    /// Loads everything configured; any failure is a start-up refusal.
    pub fn load(settings: &TlsSettings, metrics: Arc<TlsMetrics>) -> Result<Self, MaterialError> {
        let server = match &settings.listener {
            Some(l) => Some(ArcSwap::from_pointee(material::server_cert(
                &l.cert_file,
                &l.key_file,
            )?)),
            None => None,
        };
        let cas = if settings.client_ca_files.is_empty() {
            None
        } else {
            Some(ArcSwap::from_pointee(ClientCas::load(
                &settings.client_ca_files,
            )?))
        };
        let m = Self {
            settings: settings.clone(),
            server,
            cas,
            metrics,
        };
        m.expiry().refresh_all(&m);
        Ok(m)
    }

    fn expiry(&self) -> &ExpiryGauges {
        &self.metrics.expiry
    }

    /// The server certificate in force, if there is a TLS listener.
    pub fn server_cert(&self) -> Option<Arc<ServerCert>> {
        self.server.as_ref().map(ArcSwap::load_full)
    }

    /// The server certificate's file, if there is a TLS listener.
    pub fn server_cert_file(&self) -> Option<String> {
        self.settings
            .listener
            .as_ref()
            .map(|l| l.cert_file.display().to_string())
    }

    /// The client CAs in force, if any are configured.
    pub fn client_cas(&self) -> Option<Arc<ClientCas>> {
        self.cas.as_ref().map(ArcSwap::load_full)
    }

    /// Re-reads the server certificate and key; the old pair stays on failure.
    fn reload_server(&self) -> Result<bool, MaterialError> {
        let (Some(slot), Some(l)) = (&self.server, &self.settings.listener) else {
            return Ok(false);
        };
        slot.store(Arc::new(material::server_cert(&l.cert_file, &l.key_file)?));
        Ok(true)
    }

    /// Re-reads the client CA bundles; the old set stays on failure.
    fn reload_cas(&self) -> Result<bool, MaterialError> {
        let Some(slot) = &self.cas else {
            return Ok(false);
        };
        slot.store(Arc::new(ClientCas::load(&self.settings.client_ca_files)?));
        Ok(true)
    }

    /// The files watched for each kind of material.
    fn watched(&self) -> Vec<(Kind, Vec<PathBuf>)> {
        let mut w = Vec::new();
        if let Some(l) = &self.settings.listener {
            w.push((
                Kind::ServerCert,
                vec![l.cert_file.clone(), l.key_file.clone()],
            ));
        }
        if !self.settings.client_ca_files.is_empty() {
            w.push((Kind::ClientCa, self.settings.client_ca_files.clone()));
        }
        w
    }

    /// One look at the files: reloads what changed (or everything, when `forced`).
    fn poll(&self, stamps: &mut [(Kind, Vec<PathBuf>, Vec<Stamp>)], forced: bool) {
        for (kind, paths, last) in stamps.iter_mut() {
            let now = stamp(paths);
            if !forced && now == *last {
                continue;
            }
            *last = now;
            let _ = self.apply(*kind);
        }
        self.expiry().refresh_all(self);
    }

    /// Re-reads every TLS file now (`POST /v1/reload`), as a forced poll does: each kind's
    /// outcome by its `file` label; a failure keeps the previous material in force.
    pub fn reload_now(&self) -> Vec<(&'static str, Result<(), String>)> {
        let outcomes = self
            .watched()
            .into_iter()
            .map(|(kind, _)| {
                (
                    kind.label(),
                    self.apply(kind).map_err(|e| format!("{}: {e}", e.code())),
                )
            })
            .collect();
        self.expiry().refresh_all(self);
        outcomes
    }

    /// Reloads one kind of material, counted and logged.
    fn apply(&self, kind: Kind) -> Result<(), MaterialError> {
        let result = match kind {
            Kind::ServerCert => self.reload_server(),
            Kind::ClientCa => self.reload_cas(),
        };
        let label = kind.label();
        match result {
            Ok(_) => {
                self.metrics
                    .reloads
                    .with_label_values(&[label, "success"])
                    .inc();
                tracing::info!(file = label, "TLS material reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .reloads
                    .with_label_values(&[label, "error"])
                    .inc();
                tracing::error!(
                    file = label,
                    code = e.code(),
                    error = %e,
                    "TLS material rejected; the previous material stays in force"
                );
                Err(e)
            }
        }
    }
}

/// The kinds of reloaded TLS material (the `file` label of `lap_tls_reload_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ServerCert,
    ClientCa,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::ServerCert => "server_cert",
            Kind::ClientCa => "client_ca",
        }
    }
}

/// Starts the thread that watches the TLS files (every `interval`, and at once on SIGHUP) and
/// refreshes the expiry gauges.
pub fn spawn_watcher(material: Arc<TlsMaterial>, interval: Duration) -> std::io::Result<()> {
    let sighup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, sighup.clone())?;
    let mut stamps: Vec<_> = material
        .watched()
        .into_iter()
        .map(|(k, p)| {
            let s = stamp(&p);
            (k, p, s)
        })
        .collect();
    std::thread::Builder::new()
        .name("lap-tls-reload".into())
        .spawn(move || {
            let tick = Duration::from_millis(50).min(interval);
            let mut since = Duration::ZERO;
            loop {
                std::thread::sleep(tick);
                since += tick;
                let forced = sighup.swap(false, Ordering::AcqRel);
                if forced || since >= interval {
                    since = Duration::ZERO;
                    material.poll(&mut stamps, forced);
                }
            }
        })
        .map(|_| ())
}

/// Presents the server certificate in force.
#[derive(Debug)]
pub struct ServerCertResolver(pub Arc<TlsMaterial>);

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.server_cert().map(|c| c.key.clone())
    }
}

/// Verifies client certificates against the CAs in force; whether one is asked for or
/// required is `[mtls] client_auth`. Refused certificates are counted.
#[derive(Debug)]
pub struct ClientVerifier {
    pub material: Arc<TlsMaterial>,
    pub mode: ClientAuth,
}

impl ClientVerifier {
    fn inner(&self) -> Result<Arc<ClientCas>, rustls::Error> {
        self.material
            .client_cas()
            .ok_or(rustls::Error::General("no client CAs".into()))
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        !matches!(self.mode, ClientAuth::None)
    }

    fn client_auth_mandatory(&self) -> bool {
        matches!(self.mode, ClientAuth::Required)
    }

    /// No hints: the bundles can change under a borrowed list, and clients then send the one
    /// certificate they have.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner().and_then(|cas| {
            cas.verifier
                .verify_client_cert(end_entity, intermediates, now)
        });
        if let Err(e) = &verified {
            self.material
                .metrics
                .handshake_failures
                .with_label_values(&[failure_reason(e)])
                .inc();
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()?
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        material::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `reason` label of a refused client certificate.
fn failure_reason(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "expired",
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "not_yet_valid"
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => "unknown_issuer",
        _ => "invalid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsListener;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    fn self_signed(cn: &str, ca: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn setup(dir: &std::path::Path) -> TlsMaterial {
        let (cert, key) = self_signed("first", false);
        let (ca, _) = self_signed("ca-one", true);
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
        let settings = TlsSettings {
            listener: Some(TlsListener {
                listen: "127.0.0.1:0".parse().unwrap(),
                cert_file: dir.join("server.crt"),
                key_file: dir.join("server.key"),
            }),
            plain_listener: true,
            client_auth: ClientAuth::Optional,
            client_ca_files: vec![dir.join("ca.crt")],
        };
        TlsMaterial::load(&settings, Arc::new(TlsMetrics::new().unwrap())).unwrap()
    }

    fn subject(m: &TlsMaterial) -> String {
        m.server_cert().unwrap().leaf.subject.clone()
    }

    fn count(m: &TlsMaterial, file: &str, result: &str) -> u64 {
        m.metrics.reloads.with_label_values(&[file, result]).get()
    }

    #[test]
    fn a_broken_rotation_keeps_the_last_good_material() {
        let dir = tempfile::tempdir().unwrap();
        let m = setup(dir.path());
        assert_eq!(subject(&m), "CN=first");

        // A certificate whose key is another's: refused, the old pair stays.
        let (second, _) = self_signed("second", false);
        std::fs::write(dir.path().join("server.crt"), &second).unwrap();
        let e = m.reload_server().err().unwrap();
        assert_eq!(e.code(), "TLS_KEY_MISMATCH");
        assert_eq!(subject(&m), "CN=first");

        // Unparsable PEM, an empty file, a key file without a key.
        std::fs::write(
            dir.path().join("server.crt"),
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(m.reload_server().err().unwrap().code(), "TLS_PEM_INVALID");
        std::fs::write(dir.path().join("server.crt"), "").unwrap();
        assert_eq!(
            m.reload_server().err().unwrap().code(),
            "TLS_NO_CERTIFICATE"
        );
        let (third, third_key) = self_signed("third", false);
        std::fs::write(dir.path().join("server.crt"), &third).unwrap();
        std::fs::write(dir.path().join("server.key"), &third).unwrap();
        assert_eq!(m.reload_server().err().unwrap().code(), "TLS_NO_KEY");
        assert_eq!(subject(&m), "CN=first");

        // A pair that matches: taken.
        std::fs::write(dir.path().join("server.key"), third_key).unwrap();
        assert!(m.reload_server().unwrap());
        assert_eq!(subject(&m), "CN=third");

        // An empty CA bundle keeps the old CAs.
        std::fs::write(dir.path().join("ca.crt"), "").unwrap();
        assert_eq!(m.reload_cas().err().unwrap().code(), "TLS_NO_CERTIFICATE");
        assert_eq!(m.client_cas().unwrap().certs[0].1.subject, "CN=ca-one");
        let (ca2, _) = self_signed("ca-two", true);
        std::fs::write(dir.path().join("ca.crt"), ca2).unwrap();
        assert!(m.reload_cas().unwrap());
        assert_eq!(m.client_cas().unwrap().certs[0].1.subject, "CN=ca-two");
    }

    #[test]
    fn the_watcher_counts_reloads_by_result() {
        let dir = tempfile::tempdir().unwrap();
        let m = setup(dir.path());
        let mut stamps: Vec<_> = m
            .watched()
            .into_iter()
            .map(|(k, p)| {
                let s = stamp(&p);
                (k, p, s)
            })
            .collect();
        m.poll(&mut stamps, false);
        assert_eq!(count(&m, "server_cert", "success"), 0, "nothing changed");
        std::fs::write(dir.path().join("server.key"), "junk").unwrap();
        m.poll(&mut stamps, false);
        assert_eq!(count(&m, "server_cert", "error"), 1);
        assert_eq!(count(&m, "client_ca", "error"), 0);
        m.poll(&mut stamps, true);
        assert_eq!(count(&m, "server_cert", "error"), 2);
        assert_eq!(count(&m, "client_ca", "success"), 1);
        assert_eq!(subject(&m), "CN=first");
    }

    #[test]
    fn refused_certificates_are_counted_by_reason() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(setup(dir.path()));
        let verifier = ClientVerifier {
            material: m.clone(),
            mode: ClientAuth::Required,
        };
        assert!(verifier.client_auth_mandatory() && verifier.offer_client_auth());
        // A self-signed leaf no configured CA issued.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stranger");
        let key = KeyPair::generate().unwrap();
        let der = params.self_signed(&key).unwrap().der().clone();
        assert!(verifier
            .verify_client_cert(&der, &[], UnixTime::now())
            .is_err());
        let count = |r: &str| m.metrics.handshake_failures.with_label_values(&[r]).get();
        assert_eq!(count("unknown_issuer"), 1);
        use rustls::CertificateError as C;
        let reason = |c| failure_reason(&rustls::Error::InvalidCertificate(c));
        assert_eq!(reason(C::Expired), "expired");
        assert_eq!(reason(C::NotValidYet), "not_yet_valid");
        assert_eq!(reason(C::BadSignature), "invalid");
        let optional = ClientVerifier {
            material: m,
            mode: ClientAuth::Optional,
        };
        assert!(optional.offer_client_auth() && !optional.client_auth_mandatory());
    }

    #[test]
    fn start_up_refuses_broken_material() {
        let dir = tempfile::tempdir().unwrap();
        let m = setup(dir.path());
        drop(m);
        std::fs::write(dir.path().join("ca.crt"), "no pem here").unwrap();
        let settings = TlsSettings {
            listener: None,
            plain_listener: true,
            client_auth: ClientAuth::None,
            client_ca_files: vec![dir.path().join("ca.crt")],
        };
        let e = TlsMaterial::load(&settings, Arc::new(TlsMetrics::new().unwrap()))
            .err()
            .unwrap();
        assert_eq!(e.code(), "TLS_NO_CERTIFICATE");
    }
}
