//! SPIFFE IDs and the identity a verified client certificate carries (X509-SVID).
//!
//! The SPIFFE ID of an X509-SVID is its one URI SAN with scheme `spiffe`; a leaf that is a CA,
//! has two URIs, or whose URI is not a well-formed SPIFFE ID carries no usable identity. The
//! rules are strict on purpose: a lenient parser would let two spellings (`Lap.Test`,
//! `/a/./b`, `%2F`) name one workload in the gateway and another in the policy, the log or the
//! issuing authority. Refused here, per the SPIFFE ID specification:
//!
//! * a trust domain outside `[a-z0-9._-]` (so no upper case, no port, no user info), empty, or
//!   longer than 255 bytes;
//! * a path segment that is empty, `.` or `..`, or has a character outside
//!   `[A-Za-z0-9._-]` (so no percent-encoding), a trailing `/`, a query or a fragment;
//! * an ID longer than 2048 bytes.
//!
//! The certificate's chain is verified elsewhere (the TLS listener's verifier, or
//! [`super::material::ClientCas::verify`] for a certificate forwarded by a proxy); this module
//! only reads the verified leaf.

use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The longest SPIFFE ID accepted, in bytes (the specification's limit).
pub const MAX_ID_BYTES: usize = 2048;
/// The longest trust domain accepted, in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// A well-formed SPIFFE ID: `spiffe://<trust domain><path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    /// Where the path starts in `id` (its length when there is no path).
    path_at: usize,
}

impl SpiffeId {
    /// Parses a SPIFFE ID; every refusal names its rule.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        if text.len() > MAX_ID_BYTES {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or(SpiffeIdError::Scheme)?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        trust_domain(domain)?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                path_segment(segment)?;
            }
        }
        Ok(Self {
            id: text.to_string(),
            path_at: "spiffe://".len() + domain.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        &self.id["spiffe://".len()..self.path_at]
    }

    pub fn path(&self) -> &str {
        &self.id[self.path_at..]
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// Checks a trust domain name (also used for the configured allowlist).
pub fn trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::TrustDomainEmpty);
    }
    if domain.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(SpiffeIdError::TooLong);
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(SpiffeIdError::TrustDomainChars);
    }
    Ok(())
}

fn path_segment(segment: &str) -> Result<(), SpiffeIdError> {
    match segment {
        "" => Err(SpiffeIdError::EmptySegment),
        "." | ".." => Err(SpiffeIdError::DotSegment),
        s if s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(SpiffeIdError::PathChars),
    }
}

/// Why a text is not a SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("the scheme must be spiffe://")]
    Scheme,
    #[error("the trust domain is empty")]
    TrustDomainEmpty,
    #[error("the trust domain may hold only a-z, 0-9, '.', '-' and '_'")]
    TrustDomainChars,
    #[error("the path has an empty segment (or ends with '/')")]
    EmptySegment,
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    #[error("path segments may hold only A-Z, a-z, 0-9, '.', '-' and '_' (no percent-encoding)")]
    PathChars,
    #[error("a SPIFFE ID has no query or fragment")]
    QueryOrFragment,
    #[error("too long (at most 2048 bytes, a trust domain at most 255)")]
    TooLong,
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// Hex SHA-256 of the leaf's DER.
    pub sha256: String,
    /// The subject distinguished name (RFC 4514 form), if not empty.
    pub subject: Option<String>,
    /// The SPIFFE ID, or why the leaf has no usable one.
    pub spiffe: SvidIdentity,
}

/// The SPIFFE reading of a leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidIdentity {
    /// Exactly one `spiffe://` URI SAN, well formed, on a leaf that is not a CA.
    Id(SpiffeId),
    /// No URI SAN with the `spiffe` scheme at all (a plain client certificate).
    None,
    /// URI SANs that make the leaf no X509-SVID.
    Invalid(SvidError),
}

/// Why a leaf with a SPIFFE URI SAN carries no usable SPIFFE ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("the certificate has more than one URI SAN")]
    SeveralUris,
    #[error("the certificate is a CA (basicConstraints cA=true)")]
    CaCertificate,
    #[error("the SPIFFE ID is malformed: {0}")]
    Malformed(SpiffeIdError),
}

/// Why a certificate could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the certificate is not valid X.509 DER")]
pub struct NotACertificate;

impl PeerCert {
    /// Reads a leaf certificate (DER).
    pub fn read(der: &[u8]) -> Result<Self, NotACertificate> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| NotACertificate)?;
        Ok(Self {
            sha256: hex::encode(Sha256::digest(der)),
            subject: unambiguous_subject(&cert),
            spiffe: svid(&cert),
        })
    }
}

/// The subject as text, when that text names exactly one subject. x509-parser prints attribute
/// values verbatim between `, ` and ` + ` separators, so a single `CN` whose value is
/// `legacy-client, O=Example` would print like the two attributes `CN=legacy-client` and
/// `O=Example` and match a subject mapping meant for another certificate. A subject with a
/// value holding an RFC 4514 special character (`,+="\<>;#`) or a control character is
/// therefore no subject at all here (mapping by subject is refused for it).
fn unambiguous_subject(cert: &X509Certificate<'_>) -> Option<String> {
    for rdn in cert.subject().iter() {
        for attr in rdn.iter() {
            let value = attr.as_str().ok()?;
            if value
                .chars()
                .any(|c| c.is_control() || ",+=\"\\<>;#".contains(c))
            {
                return None;
            }
        }
    }
    let subject = cert.subject().to_string();
    (!subject.is_empty()).then_some(subject)
}

/// The SPIFFE ID of a leaf, per the X509-SVID rules.
fn svid(cert: &X509Certificate<'_>) -> SvidIdentity {
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        // Two SAN extensions, or one that does not parse: no identity can be read from it.
        Err(_) => return SvidIdentity::Invalid(SvidError::Malformed(SpiffeIdError::Scheme)),
    };
    let spiffe = uris
        .iter()
        .filter(|u| {
            u.as_bytes()
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"spiffe:"))
        })
        .count();
    if spiffe == 0 {
        return SvidIdentity::None;
    }
    if uris.len() > 1 {
        return SvidIdentity::Invalid(SvidError::SeveralUris);
    }
    if cert.is_ca() {
        return SvidIdentity::Invalid(SvidError::CaCertificate);
    }
    match SpiffeId::parse(uris[0]) {
        Ok(id) => SvidIdentity::Id(id),
        Err(e) => SvidIdentity::Invalid(SvidError::Malformed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    #[test]
    fn well_formed_ids() {
        let id = SpiffeId::parse("spiffe://lap.test/agent/demo").unwrap();
        assert_eq!(id.trust_domain(), "lap.test");
        assert_eq!(id.path(), "/agent/demo");
        let bare = SpiffeId::parse("spiffe://lap-test_1.example").unwrap();
        assert_eq!(
            (bare.trust_domain(), bare.path()),
            ("lap-test_1.example", "")
        );
        assert!(SpiffeId::parse("spiffe://td/A-z_0.9/x").is_ok());
    }

    #[test]
    fn malformed_ids_name_their_rule() {
        use SpiffeIdError::*;
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_ID_BYTES));
        let long_domain = format!("spiffe://{}/a", "d".repeat(256));
        let cases: [(&str, SpiffeIdError); 15] = [
            ("https://lap.test/a", Scheme),
            ("SPIFFE://lap.test/a", Scheme),
            ("spiffe:///a", TrustDomainEmpty),
            ("spiffe://Lap.Test/a", TrustDomainChars),
            ("spiffe://lap.test:443/a", TrustDomainChars),
            ("spiffe://user@lap.test/a", TrustDomainChars),
            ("spiffe://lap.test/a/", EmptySegment),
            ("spiffe://lap.test//a", EmptySegment),
            ("spiffe://lap.test/a/../b", DotSegment),
            ("spiffe://lap.test/./b", DotSegment),
            ("spiffe://lap.test/a%2Fb", PathChars),
            ("spiffe://lap.test/a b", PathChars),
            ("spiffe://lap.test/a?x=1", QueryOrFragment),
            (&long_path, TooLong),
            (&long_domain, TooLong),
        ];
        for (text, expected) in cases {
            assert_eq!(SpiffeId::parse(text), Err(expected), "{text}");
        }
    }

    fn leaf(uris: &[&str], ca: bool) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "workload");
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        if ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_subject_that_prints_like_another_is_no_subject() {
        let with_cn = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Example");
            let key = KeyPair::generate().unwrap();
            PeerCert::read(params.self_signed(&key).unwrap().der()).unwrap()
        };
        assert_eq!(
            with_cn("legacy-client").subject.as_deref(),
            Some("CN=legacy-client, O=Example")
        );
        // One CN that would print as "CN=legacy-client, O=Example, O=Example".
        for spoof in [
            "legacy-client, O=Example",
            "a+b",
            "x=y",
            "q\"u",
            "back\\slash",
            "semi;colon",
            "<a>",
            "#hash",
            "line\nbreak",
        ] {
            assert_eq!(with_cn(spoof).subject, None, "{spoof:?}");
        }
    }

    #[test]
    fn svid_rules() {
        let one = PeerCert::read(&leaf(&["spiffe://lap.test/agent/demo"], false)).unwrap();
        assert_eq!(
            one.spiffe,
            SvidIdentity::Id(SpiffeId::parse("spiffe://lap.test/agent/demo").unwrap())
        );
        assert_eq!(one.subject.as_deref(), Some("CN=workload"));
        assert_eq!(one.sha256.len(), 64);

        let none = PeerCert::read(&leaf(&[], false)).unwrap();
        assert_eq!(none.spiffe, SvidIdentity::None);
        let https_only = PeerCert::read(&leaf(&["https://lap.test/a"], false)).unwrap();
        assert_eq!(https_only.spiffe, SvidIdentity::None);

        let two = PeerCert::read(&leaf(
            &["spiffe://lap.test/a", "spiffe://lap.test/b"],
            false,
        ))
        .unwrap();
        assert_eq!(two.spiffe, SvidIdentity::Invalid(SvidError::SeveralUris));
        let mixed =
            PeerCert::read(&leaf(&["spiffe://lap.test/a", "https://x.test/"], false)).unwrap();
        assert_eq!(mixed.spiffe, SvidIdentity::Invalid(SvidError::SeveralUris));

        let ca = PeerCert::read(&leaf(&["spiffe://lap.test/a"], true)).unwrap();
        assert_eq!(ca.spiffe, SvidIdentity::Invalid(SvidError::CaCertificate));

        let dots = PeerCert::read(&leaf(&["spiffe://lap.test/a/../b"], false)).unwrap();
        assert_eq!(
            dots.spiffe,
            SvidIdentity::Invalid(SvidError::Malformed(SpiffeIdError::DotSegment))
        );
        assert_eq!(PeerCert::read(b"not der"), Err(NotACertificate));
    }
}
