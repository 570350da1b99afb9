//! Why a token or a key set was refused, each with a stable code.
//!
//! Messages name claims and header members, never a token's or a key's bytes: they end up in
//! error bodies and log lines.

/// Why a presented bearer JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm {0:?} is not allowed")]
    AlgNotAllowed(String),
    #[error("the token's header carries a `crit` member, which is not supported")]
    CritUnsupported,
    #[error("the token's issuer is not a configured issuer")]
    IssuerUnknown,
    #[error("the keys of issuer {issuer} are not available yet")]
    IssuerUnavailable { issuer: String },
    #[error("no key of issuer {issuer} matches the token's key id and algorithm")]
    KidUnknown { issuer: String },
    #[error("the token's signature is not valid")]
    SignatureInvalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token's audience does not include this resource")]
    AudienceMismatch,
    #[error("the token lacks the claim {0:?}")]
    ClaimMissing(String),
    #[error("the token's claim {0:?} has the wrong type")]
    ClaimInvalid(String),
    #[error("the token's agent claim is not a valid agent id")]
    AgentIdInvalid,
}

impl JwtError {
    /// The stable code of this refusal (error bodies, metrics labels).
    pub fn code(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "JWT_MALFORMED",
            JwtError::AlgNotAllowed(_) => "JWT_ALG_NOT_ALLOWED",
            JwtError::CritUnsupported => "JWT_CRIT_UNSUPPORTED",
            JwtError::IssuerUnknown => "JWT_ISSUER_UNKNOWN",
            JwtError::IssuerUnavailable { .. } => "JWT_ISSUER_UNAVAILABLE",
            JwtError::KidUnknown { .. } => "JWT_KID_UNKNOWN",
            JwtError::SignatureInvalid => "JWT_SIGNATURE_INVALID",
            JwtError::Expired => "JWT_EXPIRED",
            JwtError::NotYetValid => "JWT_NOT_YET_VALID",
            JwtError::IssuedInFuture => "JWT_ISSUED_IN_FUTURE",
            JwtError::AudienceMismatch => "JWT_AUDIENCE_MISMATCH",
            JwtError::ClaimMissing(_) => "JWT_CLAIM_MISSING",
            JwtError::ClaimInvalid(_) => "JWT_CLAIM_INVALID",
            JwtError::AgentIdInvalid => "JWT_AGENT_ID_INVALID",
        }
    }
}

/// Why a JWKS document could not become a key set.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS is not a JSON object with a `keys` array")]
    Malformed(#[source] Option<serde_json::Error>),
    #[error("the JWKS has no key usable for signature verification")]
    NoUsableKey,
    #[error("the JWKS is larger than {0} bytes")]
    TooLarge(usize),
}

impl JwksError {
    pub fn code(&self) -> &'static str {
        match self {
            JwksError::Malformed(_) => "JWKS_MALFORMED",
            JwksError::NoUsableKey => "JWKS_NO_USABLE_KEY",
            JwksError::TooLarge(_) => "JWKS_TOO_LARGE",
        }
    }
}

/// Why an issuer's configuration was refused (start-up, `check-config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("algorithm {0:?} is never allowed (none and HMAC algorithms are refused)")]
    AlgForbidden(String),
    #[error(
        "algorithm {0:?} is not supported (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)"
    )]
    AlgUnknown(String),
    #[error("{0}")]
    Invalid(String),
}

impl PolicyError {
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::AlgForbidden(_) => "JWT_ALG_FORBIDDEN",
            PolicyError::AlgUnknown(_) => "JWT_ALG_UNKNOWN",
            PolicyError::Invalid(_) => "JWT_POLICY_INVALID",
        }
    }
}
