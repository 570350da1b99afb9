//! Certificate material read from PEM files: the server's certificate and key, and the CA
//! bundles client certificates are verified against.
//!
//! Every load checks what a TLS handshake would only find out later, when a client is already
//! waiting: a key that does not pair with its certificate, a bundle without a certificate, PEM
//! that does not parse. A load either yields material that works or an error naming the file
//! (never its contents: a key file's bytes are a secret).

use super::spiffe::PeerCert;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why certificate material could not be loaded. Stable codes label the reload metric's log
/// lines; messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: PEM that does not parse ({source})")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: a certificate is not valid X.509")]
    NotX509 { path: PathBuf },
    #[error("{path}: no private key in the file")]
    NoKey { path: PathBuf },
    #[error("{key}: the key does not pair with the certificate in {cert} ({source})")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client CA bundles: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

impl MaterialError {
    pub fn code(&self) -> &'static str {
        match self {
            MaterialError::Read { .. } => "TLS_FILE_UNREADABLE",
            MaterialError::NoCertificate { .. } => "TLS_NO_CERTIFICATE",
            MaterialError::Pem { .. } => "TLS_PEM_INVALID",
            MaterialError::NotX509 { .. } => "TLS_CERT_INVALID",
            MaterialError::NoKey { .. } => "TLS_NO_KEY",
            MaterialError::KeyMismatch { .. } => "TLS_KEY_MISMATCH",
            MaterialError::Verifier(_) => "TLS_CA_INVALID",
        }
    }
}

/// A certificate's facts the expiry gauges need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: String,
    /// `not_after` in seconds since the Unix epoch.
    pub not_after: i64,
}

/// The facts of a DER certificate, if it parses.
pub fn facts(der: &[u8]) -> Option<CertFacts> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(CertFacts {
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, MaterialError> {
    std::fs::read(path).map_err(|source| MaterialError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file, each a valid X.509; at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| MaterialError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(MaterialError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    if certs.iter().any(|c| facts(c).is_none()) {
        return Err(MaterialError::NotX509 {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The server's certificate chain and key, checked to pair.
pub struct ServerCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's facts (for the expiry gauge).
    pub leaf: CertFacts,
}

/// Loads the server's chain (`cert`, leaf first) and its private key (`key`).
pub fn server_cert(cert: &Path, key: &Path) -> Result<ServerCert, MaterialError> {
    let chain = certificates(cert)?;
    let leaf = facts(&chain[0]).ok_or_else(|| MaterialError::NotX509 {
        path: cert.to_path_buf(),
    })?;
    let key_bytes = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => MaterialError::NoKey {
            path: key.to_path_buf(),
        },
        source => MaterialError::Pem {
            path: key.to_path_buf(),
            source,
        },
    })?;
    let mismatch = |source| MaterialError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(mismatch)?;
    // `from_der` lets a key whose public half it cannot derive pass; the gateway does not.
    certified.keys_match().map_err(mismatch)?;
    Ok(ServerCert {
        key: Arc::new(certified),
        leaf,
    })
}

/// The process's crypto provider (ring, as Pingora's rustls build).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The client CAs: a verifier over every certificate of the configured bundles.
pub struct ClientCas {
    /// Verifies a chain; built with `allow_unauthenticated` so the listener's own wrapper
    /// decides whether a certificate is mandatory.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// Each CA certificate's file and facts (for the expiry gauges).
    pub certs: Vec<(PathBuf, CertFacts)>,
    /// Certificates these CAs already verified, forwarded or from a handshake (see
    /// [`ClientCas::verified`]).
    verified: Mutex<HashMap<[u8; 32], (PeerCert, i64)>>,
}

/// Certificates remembered as verified, at most; then the memory starts afresh.
const MAX_VERIFIED: usize = 4096;

impl ClientCas {
    /// Loads every bundle; each must hold at least one certificate.
    pub fn load(files: &[PathBuf]) -> Result<Self, MaterialError> {
        let mut roots = RootCertStore::empty();
        let mut certs = Vec::new();
        for file in files {
            for der in certificates(file)? {
                if let Some(f) = facts(&der) {
                    certs.push((file.clone(), f));
                }
                roots
                    .add(der)
                    .map_err(|_| MaterialError::NotX509 { path: file.clone() })?;
            }
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
                .allow_unauthenticated()
                .build()
                .map_err(MaterialError::Verifier)?;
        Ok(Self {
            verifier,
            certs,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// A certificate these CAs verified before and that is still within its validity: a
    /// forwarded one (`digest`: SHA-256 of the header value; a proxy sends the same certificate
    /// with every request of a client) or a handshake's (`digest`: SHA-256 of the leaf's DER;
    /// every request of a connection, or of a resumed TLS session, presents it again). Its
    /// chain is checked once, not per request. The memory belongs to this set of CAs, so a
    /// reload of the bundles starts it afresh.
    pub fn verified(&self, digest: &[u8; 32], now: i64) -> Option<PeerCert> {
        let memo = self.verified.lock().ok()?;
        let (cert, not_after) = memo.get(digest)?;
        (now < *not_after).then(|| cert.clone())
    }

    /// Remembers a certificate that [`ClientCas::verify`] accepted.
    pub fn remember(&self, digest: [u8; 32], cert: PeerCert, not_after: i64) {
        if let Ok(mut memo) = self.verified.lock() {
            if memo.len() >= MAX_VERIFIED {
                memo.clear();
            }
            memo.insert(digest, (cert, not_after));
        }
    }

    /// Verifies a client chain (leaf first) as the TLS listener would: signed by one of the
    /// CAs, valid now, usable for client authentication.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
    }
}
