//! Identity from a client certificate (`[mtls] identity = true`).
//!
//! A certificate arrives one of two ways:
//!
//! * on the TLS listener, verified in the handshake against the client CAs (the connection's
//!   TLS digest holds the leaf, read once: `tls::PeerCertCallback`);
//! * from a TLS-terminating proxy (nginx) in a header (`[mtls] cert_header`, the URL-encoded
//!   PEM of `$ssl_client_escaped_cert`). The header is believed only when the TCP peer is one
//!   of `[mtls] trusted_proxies`, and even then the chain is verified again against the
//!   gateway's own client CAs: the proxy's word is not enough. From anyone else the header is
//!   refused (`CLIENT_CERT_HEADER_UNTRUSTED`) — never ignored, because a client that sends it
//!   is either misrouted or forging, and never used.
//!
//! The verified leaf then gives the principal: its SPIFFE ID (X509-SVID rules,
//! `tls::spiffe`) within the allowed trust domains, mapped by `[[mtls.identities]]` (an exact
//! ID first, then the longest prefix), or — for a certificate without a SPIFFE ID — an exact
//! subject mapping. An allowed SPIFFE ID without a mapping is refused or becomes the agent id
//! itself (`[mtls] unmapped`).
//!
//! One request, one credential: a certificate used as identity together with an API key or a
//! bearer token is `AUTH_AMBIGUOUS` (which one would the agent expect to count?). Without a
//! certificate the request goes on to the other credentials, unless `client_auth =
//! "required"`, where it is `CLIENT_CERT_REQUIRED`.

use crate::config::{CertIdentity, CertMatch, Unmapped};
use crate::pipeline::error::ApiError;
use crate::tls::material::ClientCas;
use crate::tls::spiffe::{PeerCert, SvidIdentity};
use crate::tls::ClientCert;
use http::header::{self, HeaderName};
use lap_auth::{AgentId, Credential, Principal};
use pingora::http::RequestHeader;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;

/// Why a client certificate gave no identity. Every one is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MtlsError {
    #[error("a client certificate is required")]
    Required,
    #[error("a client certificate and an API key or bearer token: present exactly one credential")]
    Ambiguous,
    #[error("the client certificate header is only accepted from a trusted proxy")]
    HeaderUntrusted,
    #[error("the forwarded client certificate is not one URL-encoded PEM certificate")]
    HeaderInvalid,
    #[error("the forwarded client certificate is not issued by a trusted CA, or not valid now")]
    Untrusted,
    #[error("the client certificate is not readable X.509")]
    Unreadable,
    #[error("the client certificate's SPIFFE ID is not valid: {0}")]
    SpiffeIdInvalid(crate::tls::spiffe::SvidError),
    #[error("the client certificate's trust domain is not allowed")]
    TrustDomainNotAllowed,
    #[error("the client certificate carries no SPIFFE ID and its subject is not mapped")]
    NoIdentity,
    #[error("the client certificate's SPIFFE ID is not mapped to an agent")]
    Unmapped,
    #[error("X-Agent-Id does not match the agent of the client certificate")]
    AgentIdMismatch,
}

impl MtlsError {
    pub fn code(&self) -> &'static str {
        match self {
            MtlsError::Required => "CLIENT_CERT_REQUIRED",
            MtlsError::Ambiguous => "AUTH_AMBIGUOUS",
            MtlsError::HeaderUntrusted => "CLIENT_CERT_HEADER_UNTRUSTED",
            MtlsError::HeaderInvalid => "CLIENT_CERT_HEADER_INVALID",
            MtlsError::Untrusted => "CLIENT_CERT_UNTRUSTED",
            MtlsError::Unreadable => "CLIENT_CERT_INVALID",
            MtlsError::SpiffeIdInvalid(_) => "SPIFFE_ID_INVALID",
            MtlsError::TrustDomainNotAllowed => "TRUST_DOMAIN_NOT_ALLOWED",
            MtlsError::NoIdentity => "CLIENT_CERT_NO_IDENTITY",
            MtlsError::Unmapped => "CLIENT_IDENTITY_UNMAPPED",
            MtlsError::AgentIdMismatch => "AGENT_ID_MISMATCH",
        }
    }
}

impl From<MtlsError> for ApiError {
    fn from(e: MtlsError) -> Self {
        ApiError::new(401, e.code(), e.to_string())
    }
}

/// What the connection brought: the handshake's certificate (on the TLS listener) and the
/// TCP peer.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// `None` on the plain listener.
    pub tls: Option<&'a ClientCert>,
    pub peer: Option<IpAddr>,
}

/// The principal of the request's client certificate; `Ok(None)` when it presents none (and
/// one is not required), so the other credentials are tried.
pub fn authenticate(
    req: &RequestHeader,
    conn: Connection<'_>,
    id: &CertIdentity,
    cas: Option<&ClientCas>,
) -> Result<Option<Arc<Principal>>, MtlsError> {
    let forwarded = forwarded(req, conn.peer, id, cas)?;
    let cert = match (forwarded, conn.tls) {
        (Some(cert), _) => cert,
        (None, Some(ClientCert::Verified(h))) => still_verified(h, cas)?,
        (None, Some(ClientCert::Unreadable)) => return Err(MtlsError::Unreadable),
        (None, Some(ClientCert::Absent) | None) if id.required => return Err(MtlsError::Required),
        (None, Some(ClientCert::Absent) | None) => return Ok(None),
    };
    if req.headers.contains_key(header::AUTHORIZATION) || req.headers.contains_key(X_API_KEY) {
        return Err(MtlsError::Ambiguous);
    }
    let principal = principal(&cert, id)?;
    let mut claimed = req.headers.get_all(X_AGENT_ID).iter();
    if let Some(first) = claimed.next() {
        let same = claimed.next().is_none()
            && first.to_str().ok().map(str::trim) == Some(principal.agent_id.as_str());
        if !same {
            return Err(MtlsError::AgentIdMismatch);
        }
    }
    Ok(Some(Arc::new(principal)))
}

/// A TLS connection whose handshake left nothing (not expected): no certificate.
static ABSENT: ClientCert = ClientCert::Absent;

impl crate::pipeline::Gateway {
    /// The principal of the request's client certificate, when certificates are identities
    /// (`Ok(None)`: none presented, try the other credentials).
    pub(in crate::pipeline) fn cert_principal(
        &self,
        session: &pingora::proxy::Session,
    ) -> Result<Option<Arc<Principal>>, ApiError> {
        let Some(id) = &self.config.cert_identity else {
            return Ok(None);
        };
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|ssl| ssl.extension.get::<ClientCert>().unwrap_or(&ABSENT));
        let conn = Connection {
            tls,
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
        };
        let cas = self.tls.as_ref().and_then(|m| m.client_cas());
        authenticate(session.req_header(), conn, id, cas.as_deref()).map_err(ApiError::from)
    }
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_AGENT_ID: HeaderName = HeaderName::from_static("x-agent-id");

/// The certificate a trusted proxy forwarded, verified; `None` when there is no header.
fn forwarded(
    req: &RequestHeader,
    peer: Option<IpAddr>,
    id: &CertIdentity,
    cas: Option<&ClientCas>,
) -> Result<Option<PeerCert>, MtlsError> {
    let mut values = req.headers.get_all(id.cert_header.as_str()).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let trusted = peer.is_some_and(|ip| id.trusted_proxies.iter().any(|n| n.contains(&ip)));
    if !trusted {
        return Err(MtlsError::HeaderUntrusted);
    }
    if values.next().is_some() {
        return Err(MtlsError::HeaderInvalid);
    }
    // nginx sends no header without a certificate; an empty one means the same.
    if value.is_empty() {
        return Ok(None);
    }
    let cas = cas.ok_or(MtlsError::Untrusted)?;
    let digest: [u8; 32] = Sha256::digest(value.as_bytes()).into();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(cert) = cas.verified(&digest, now) {
        return Ok(Some(cert));
    }
    let pem = percent_encoding::percent_decode(value.as_bytes()).collect::<Vec<u8>>();
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| MtlsError::HeaderInvalid)?;
    if chain.is_empty() {
        return Err(MtlsError::HeaderInvalid);
    }
    cas.verify(&chain).map_err(|_| MtlsError::Untrusted)?;
    let cert = PeerCert::read(&chain[0]).map_err(|_| MtlsError::Unreadable)?;
    if let Some(facts) = crate::tls::material::facts(&chain[0]) {
        cas.remember(digest, cert.clone(), facts.not_after);
    }
    Ok(Some(cert))
}

/// The handshake's certificate, if the CAs in force still accept it now (see
/// [`crate::tls::HandshakeCert`]): remembered as verified per CA set until its `not_after`, so
/// a connection's requests cost a look-up, and an expired certificate or a removed CA is
/// refused (`CLIENT_CERT_UNTRUSTED`) at the next request, however old the connection or its
/// TLS session.
fn still_verified(
    h: &crate::tls::HandshakeCert,
    cas: Option<&ClientCas>,
) -> Result<PeerCert, MtlsError> {
    let cas = cas.ok_or(MtlsError::Untrusted)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Some(cert) = cas.verified(&h.digest, now) {
        return Ok(cert);
    }
    cas.verify(&h.chain).map_err(|_| MtlsError::Untrusted)?;
    if let Some(facts) = h.chain.first().and_then(|c| crate::tls::material::facts(c)) {
        cas.remember(h.digest, h.cert.clone(), facts.not_after);
    }
    Ok(h.cert.clone())
}

/// The principal a verified certificate maps to.
fn principal(cert: &PeerCert, id: &CertIdentity) -> Result<Principal, MtlsError> {
    let (agent_id, groups, spiffe_id) = match &cert.spiffe {
        SvidIdentity::Invalid(e) => return Err(MtlsError::SpiffeIdInvalid(*e)),
        SvidIdentity::Id(spiffe) => {
            if !id.trust_domains.iter().any(|d| d == spiffe.trust_domain()) {
                return Err(MtlsError::TrustDomainNotAllowed);
            }
            let exact = id
                .rules
                .iter()
                .find(|r| matches!(&r.matcher, CertMatch::SpiffeId(x) if x == spiffe));
            let longest_prefix = || {
                id.rules
                    .iter()
                    .filter_map(|r| match &r.matcher {
                        CertMatch::SpiffePrefix(p) if spiffe.as_str().starts_with(p.as_str()) => {
                            Some((p.len(), r))
                        }
                        _ => None,
                    })
                    .max_by_key(|(len, _)| *len)
                    .map(|(_, r)| r)
            };
            match exact.or_else(longest_prefix) {
                Some(r) => (
                    r.agent_id.clone(),
                    r.groups.clone(),
                    Some(spiffe.to_string()),
                ),
                None => match id.unmapped {
                    Unmapped::Refuse => return Err(MtlsError::Unmapped),
                    Unmapped::SpiffeId => (
                        AgentId::parse(spiffe.as_str()).ok_or(MtlsError::Unmapped)?,
                        Vec::new(),
                        Some(spiffe.to_string()),
                    ),
                },
            }
        }
        SvidIdentity::None => {
            let subject = cert.subject.as_deref().ok_or(MtlsError::NoIdentity)?;
            let r = id
                .rules
                .iter()
                .find(|r| matches!(&r.matcher, CertMatch::Subject(s) if s == subject))
                .ok_or(MtlsError::NoIdentity)?;
            (r.agent_id.clone(), r.groups.clone(), None)
        }
    };
    Ok(Principal {
        agent_id,
        groups,
        credential: Credential::Mtls {
            spiffe_id,
            cert_subject: cert.subject.clone(),
            cert_sha256: cert.sha256.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IdentityRule;
    use crate::tls::spiffe::{SpiffeId, SvidError};
    use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

    fn identity(unmapped: Unmapped, required: bool) -> CertIdentity {
        let rule = |m, a: &str| IdentityRule {
            matcher: m,
            agent_id: AgentId::parse(a).unwrap(),
            groups: vec![format!("g-{a}")],
        };
        CertIdentity {
            trust_domains: vec!["lap.test".into()],
            rules: vec![
                rule(
                    CertMatch::SpiffePrefix("spiffe://lap.test/agent/".into()),
                    "any-agent",
                ),
                rule(
                    CertMatch::SpiffePrefix("spiffe://lap.test/agent/batch/".into()),
                    "batch",
                ),
                rule(
                    CertMatch::SpiffeId(SpiffeId::parse("spiffe://lap.test/agent/demo").unwrap()),
                    "demo",
                ),
                rule(CertMatch::Subject("CN=legacy".into()), "legacy"),
            ],
            unmapped,
            required,
            cert_header: "x-client-cert".into(),
            trusted_proxies: vec!["10.0.0.5/32".parse().unwrap()],
        }
    }

    fn cert(spiffe: SvidIdentity, subject: &str) -> PeerCert {
        PeerCert {
            sha256: "ab".repeat(32),
            subject: Some(subject.into()),
            spiffe,
        }
    }

    fn id(s: &str) -> SvidIdentity {
        SvidIdentity::Id(SpiffeId::parse(s).unwrap())
    }

    fn agent(c: &PeerCert, identity: &CertIdentity) -> Result<String, MtlsError> {
        principal(c, identity).map(|p| p.agent_id.to_string())
    }

    #[test]
    fn mapping_exact_then_longest_prefix_then_subject() {
        let refuse = identity(Unmapped::Refuse, false);
        let a = |s: &str| agent(&cert(id(s), "CN=w"), &refuse);
        assert_eq!(a("spiffe://lap.test/agent/demo").unwrap(), "demo");
        assert_eq!(a("spiffe://lap.test/agent/batch/7").unwrap(), "batch");
        assert_eq!(a("spiffe://lap.test/agent/other").unwrap(), "any-agent");
        // A prefix matches whole segments only.
        assert_eq!(a("spiffe://lap.test/agents"), Err(MtlsError::Unmapped));
        assert_eq!(a("spiffe://lap.test/svc/x"), Err(MtlsError::Unmapped));
        assert_eq!(
            a("spiffe://evil.test/agent/demo"),
            Err(MtlsError::TrustDomainNotAllowed)
        );
        assert_eq!(
            agent(&cert(SvidIdentity::None, "CN=legacy"), &refuse).unwrap(),
            "legacy"
        );
        assert_eq!(
            agent(&cert(SvidIdentity::None, "CN=stranger"), &refuse),
            Err(MtlsError::NoIdentity)
        );
        assert_eq!(
            agent(
                &cert(SvidIdentity::Invalid(SvidError::SeveralUris), "CN=legacy"),
                &refuse
            ),
            Err(MtlsError::SpiffeIdInvalid(SvidError::SeveralUris))
        );

        let own = identity(Unmapped::SpiffeId, false);
        let p = principal(&cert(id("spiffe://lap.test/svc/x"), "CN=w"), &own).unwrap();
        assert_eq!(p.agent_id.as_str(), "spiffe://lap.test/svc/x");
        assert!(p.groups.is_empty());
        assert_eq!(
            p.credential,
            Credential::Mtls {
                spiffe_id: Some("spiffe://lap.test/svc/x".into()),
                cert_subject: Some("CN=w".into()),
                cert_sha256: "ab".repeat(32),
            }
        );
        // Too long for an agent id: refused rather than cut.
        let long = format!("spiffe://lap.test/{}", "a".repeat(130));
        assert_eq!(
            agent(&cert(id(&long), "CN=w"), &own),
            Err(MtlsError::Unmapped)
        );
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/tools/t", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    /// A CA, and a leaf it issued for `uri` (with clientAuth), as PEM.
    fn issued(uri: &str) -> (ClientCas, String, tempfile::TempDir) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "ca");
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ca.pem()).unwrap();
        (ClientCas::load(&[path]).unwrap(), leaf.pem(), dir)
    }

    fn escaped(pem: &str) -> String {
        percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    #[test]
    fn forwarded_certificates_only_from_trusted_proxies() {
        let (cas, pem, _dir) = issued("spiffe://lap.test/agent/demo");
        let idn = identity(Unmapped::Refuse, false);
        let proxy = Some("10.0.0.5".parse().unwrap());
        let stranger = Some("10.0.0.6".parse().unwrap());
        let conn = |peer| Connection { tls: None, peer };
        let run = |headers: &[(&str, &str)], peer| {
            authenticate(&req(headers), conn(peer), &idn, Some(&cas))
                .map(|p| p.map(|p| p.agent_id.to_string()))
        };
        let header = escaped(&pem);
        assert_eq!(
            run(&[("x-client-cert", &header)], proxy)
                .unwrap()
                .as_deref(),
            Some("demo")
        );
        assert_eq!(
            run(&[("x-client-cert", &header)], stranger),
            Err(MtlsError::HeaderUntrusted)
        );
        assert_eq!(
            run(&[("x-client-cert", &header)], None),
            Err(MtlsError::HeaderUntrusted)
        );
        assert_eq!(
            run(
                &[("x-client-cert", &header), ("x-client-cert", &header)],
                proxy
            ),
            Err(MtlsError::HeaderInvalid)
        );
        assert_eq!(
            run(&[("x-client-cert", "not%20pem")], proxy),
            Err(MtlsError::HeaderInvalid)
        );
        assert_eq!(
            run(&[("x-client-cert", &header), ("x-api-key", "k")], proxy),
            Err(MtlsError::Ambiguous)
        );
        assert_eq!(
            run(
                &[
                    ("x-client-cert", &header),
                    ("authorization", "Bearer a.b.c")
                ],
                proxy
            ),
            Err(MtlsError::Ambiguous)
        );
        assert_eq!(
            run(
                &[("x-client-cert", &header), ("x-agent-id", "other")],
                proxy
            ),
            Err(MtlsError::AgentIdMismatch)
        );
        // Verified once, remembered: the same header again gives the same principal.
        let digest: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        assert!(cas.verified(&digest, 0).is_some());
        assert!(
            cas.verified(&digest, i64::MAX).is_none(),
            "not past not_after"
        );
        assert_eq!(
            run(&[("x-client-cert", &header)], proxy)
                .unwrap()
                .as_deref(),
            Some("demo")
        );
        assert_eq!(run(&[("x-client-cert", "")], proxy), Ok(None));
        assert_eq!(run(&[], proxy), Ok(None));

        // Another CA's certificate, however well formed, is not believed.
        let (other_cas, _, _d) = issued("spiffe://lap.test/agent/demo");
        assert_eq!(
            authenticate(
                &req(&[("x-client-cert", &header)]),
                conn(proxy),
                &idn,
                Some(&other_cas)
            )
            .map(|_| ()),
            Err(MtlsError::Untrusted)
        );
    }

    /// A handshake certificate as the listener's callback records it, and the CAs that issued it.
    fn handshake(uri: &str) -> (ClientCas, ClientCert, tempfile::TempDir) {
        let (cas, pem, dir) = issued(uri);
        let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let h = crate::tls::HandshakeCert {
            cert: PeerCert::read(&chain[0]).unwrap(),
            digest: Sha256::digest(&chain[0]).into(),
            chain,
        };
        (cas, ClientCert::Verified(h), dir)
    }

    #[test]
    fn handshake_certificates_and_the_required_rule() {
        let idn = identity(Unmapped::Refuse, false);
        let (cas, demo, _dir) = handshake("spiffe://lap.test/agent/demo");
        let tls = |c| Connection {
            tls: Some(c),
            peer: None,
        };
        for _ in 0..2 {
            // verified, then remembered
            let got = authenticate(&req(&[]), tls(&demo), &idn, Some(&cas))
                .unwrap()
                .unwrap();
            assert_eq!(got.agent_id.as_str(), "demo");
            assert_eq!(got.groups, ["g-demo"]);
        }
        assert_eq!(
            authenticate(&req(&[("x-api-key", "k")]), tls(&demo), &idn, Some(&cas)).map(|_| ()),
            Err(MtlsError::Ambiguous)
        );
        // The handshake's verdict does not outlive the CAs: after a reload to other CAs (or
        // with none), the same connection's certificate is refused.
        let (other_cas, _, _d) = issued("spiffe://lap.test/agent/other");
        assert_eq!(
            authenticate(&req(&[]), tls(&demo), &idn, Some(&other_cas)).map(|_| ()),
            Err(MtlsError::Untrusted)
        );
        assert_eq!(
            authenticate(&req(&[]), tls(&demo), &idn, None).map(|_| ()),
            Err(MtlsError::Untrusted)
        );
        assert_eq!(
            authenticate(&req(&[]), tls(&ClientCert::Unreadable), &idn, None).map(|_| ()),
            Err(MtlsError::Unreadable)
        );
        assert_eq!(
            authenticate(&req(&[]), tls(&ClientCert::Absent), &idn, None),
            Ok(None)
        );
        let required = identity(Unmapped::Refuse, true);
        assert_eq!(
            authenticate(
                &req(&[("x-api-key", "k")]),
                tls(&ClientCert::Absent),
                &required,
                None
            )
            .map(|_| ()),
            Err(MtlsError::Required)
        );
        let plain = Connection {
            tls: None,
            peer: None,
        };
        assert_eq!(
            authenticate(&req(&[]), plain, &required, None).map(|_| ()),
            Err(MtlsError::Required)
        );
    }

    #[test]
    fn every_refusal_has_a_stable_code_and_is_401() {
        let all = [
            (MtlsError::Required, "CLIENT_CERT_REQUIRED"),
            (MtlsError::Ambiguous, "AUTH_AMBIGUOUS"),
            (MtlsError::HeaderUntrusted, "CLIENT_CERT_HEADER_UNTRUSTED"),
            (MtlsError::HeaderInvalid, "CLIENT_CERT_HEADER_INVALID"),
            (MtlsError::Untrusted, "CLIENT_CERT_UNTRUSTED"),
            (MtlsError::Unreadable, "CLIENT_CERT_INVALID"),
            (
                MtlsError::SpiffeIdInvalid(SvidError::CaCertificate),
                "SPIFFE_ID_INVALID",
            ),
            (MtlsError::TrustDomainNotAllowed, "TRUST_DOMAIN_NOT_ALLOWED"),
            (MtlsError::NoIdentity, "CLIENT_CERT_NO_IDENTITY"),
            (MtlsError::Unmapped, "CLIENT_IDENTITY_UNMAPPED"),
            (MtlsError::AgentIdMismatch, "AGENT_ID_MISMATCH"),
        ];
        for (e, code) in all {
            assert_eq!(e.code(), code);
            let api = ApiError::from(e);
            assert_eq!((api.status, api.code), (401, code));
        }
    }
}
