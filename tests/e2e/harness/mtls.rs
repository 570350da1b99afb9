//! Client certificates: a private PKI made at test time, and a TLS client that presents them.
//!
//! mTLS tests need what an operator has — a CA, a server certificate, SPIFFE client
//! certificates (X509-SVIDs) and plain ones — and a client that controls exactly which
//! certificate it presents (none, a foreign CA's, one with two URIs). Keys are generated per
//! [`Pki`] and never leave the test process, except as the files a gateway config points to.

use crate::http::{read_response, HttpResponse, Request};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate and its key.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Issued {
    /// Writes `<name>.crt` and `<name>.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        std::fs::write(dir.join(format!("{name}.crt")), &self.cert_pem).expect("write cert");
        std::fs::write(dir.join(format!("{name}.key")), &self.key_pem).expect("write key");
    }

    /// Hex SHA-256 of the certificate's DER (what receipts record).
    pub fn sha256(&self) -> String {
        crate::upstream::sha256_hex(&self.cert_der)
    }
}

/// A throw-away certificate authority.
pub struct Pki {
    ca: Certificate,
    ca_key: KeyPair,
    pub ca_pem: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca.self_signed(&ca_key).expect("ca cert");
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    fn issue(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign");
        Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1, subject CN `cn`.
    pub fn server(&self, cn: &str) -> Issued {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(p)
    }

    /// A client certificate (clientAuth) with these URI SANs, subject CN `cn`.
    pub fn client(&self, cn: &str, uris: &[&str]) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().expect("URI SAN")));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(p)
    }

    /// Writes the CA certificate to `path`.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.ca_pem).expect("write CA");
    }
}

/// What a TLS exchange gave: the server's leaf (DER) and the response, or why it failed.
pub struct TlsExchange {
    pub server_leaf: Option<Vec<u8>>,
    /// `None` when the handshake or the exchange failed (a refused client certificate).
    pub response: Option<HttpResponse>,
}

/// Connects to `addr` over TLS trusting `server_ca` (PEM), presents `client` if any, sends
/// `req` and reads one response; everything within 10 s.
pub async fn tls_exchange(
    addr: SocketAddr,
    server_ca: &str,
    client: Option<&Issued>,
    req: Request,
) -> TlsExchange {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile_certs(server_ca) {
        roots.add(c).expect("server CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(c.cert_der.clone())],
                PrivateKeyDer::Pkcs8(c.key_der.clone().into()),
            )
            .expect("client cert"),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let bytes = req.to_bytes();
    let run = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = match connector.connect(name, tcp).await {
            Ok(s) => s,
            Err(_) => return Some((None, None)),
        };
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        if tls.write_all(&bytes).await.is_err() {
            return Some((leaf, None));
        }
        let r = read_response(&mut tls).await;
        Some((leaf, (r.status != 0).then_some(r)))
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Some((server_leaf, response))) => TlsExchange {
            server_leaf,
            response,
        },
        _ => TlsExchange {
            server_leaf: None,
            response: None,
        },
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM")
}

/// A certificate as nginx's `$ssl_client_escaped_cert` forwards it: URL-encoded PEM.
pub fn escaped_pem(pem: &str) -> String {
    let mut out = String::new();
    for b in pem.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
