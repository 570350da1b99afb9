//! What one issuer's tokens must satisfy, and how their claims map to a principal.

use crate::error::PolicyError;
use crate::keys::{Algorithm, DEFAULT_ALGORITHMS};

/// Clock-skew allowance when none is configured (seconds).
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Largest leeway an issuer may be given (seconds).
pub const MAX_LEEWAY_SECS: u64 = 300;

/// A dotted path into the claims (`groups`, `realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Vec<String>);

impl ClaimPath {
    pub fn parse(path: &str) -> Result<Self, PolicyError> {
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(PolicyError::Invalid(format!(
                "claim path {path:?} has an empty segment"
            )));
        }
        Ok(ClaimPath(parts))
    }

    pub(crate) fn find<'a>(&self, claims: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.0
            .iter()
            .try_fold(claims, |v, part| v.get(part))
            .filter(|v| !v.is_null())
    }

    pub fn as_string(&self) -> String {
        self.0.join(".")
    }
}

/// One trusted issuer: the rules its tokens must pass and the claim mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerPolicy {
    /// Exactly the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// The header `alg` values accepted.
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat` (seconds, at most [`MAX_LEEWAY_SECS`]).
    pub leeway_secs: u64,
    /// The claim naming the agent (`sub`, `azp`, `client_id`, …).
    pub agent_claim: ClaimPath,
    /// Prepended to the agent claim's value (e.g. `partner:`), so that agents of this issuer
    /// cannot take the id of an API-key agent or of another issuer's agent.
    pub agent_prefix: String,
    /// The claim listing the agent's groups, if any.
    pub groups_claim: Option<ClaimPath>,
    /// Prepended to every group taken from the token (e.g. `idp:`).
    pub group_prefix: String,
    /// Groups every agent of this issuer is in (so policies can tell issuers apart).
    pub issuer_groups: Vec<String>,
    /// Claims that must be present (dotted paths).
    pub required_claims: Vec<ClaimPath>,
    /// When set, each scope of the token also becomes a group `<prefix><scope>` (so policies
    /// can read scopes as group membership).
    pub scope_group_prefix: Option<String>,
}

impl IssuerPolicy {
    /// An issuer with the defaults: RS256/ES256/EdDSA, 30 s leeway, agent from `sub`.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        IssuerPolicy {
            issuer: issuer.into(),
            audiences,
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            agent_claim: ClaimPath(vec!["sub".to_string()]),
            agent_prefix: String::new(),
            groups_claim: None,
            group_prefix: String::new(),
            issuer_groups: Vec::new(),
            required_claims: Vec::new(),
            scope_group_prefix: None,
        }
    }

    /// The checks a configuration must pass.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.issuer.is_empty() {
            return Err(PolicyError::Invalid("issuer is empty".into()));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(PolicyError::Invalid(
                "audiences must list at least one non-empty audience".into(),
            ));
        }
        if self.algorithms.is_empty() {
            return Err(PolicyError::Invalid(
                "algorithms must list at least one algorithm".into(),
            ));
        }
        if self.leeway_secs > MAX_LEEWAY_SECS {
            return Err(PolicyError::Invalid(format!(
                "leeway_seconds must be at most {MAX_LEEWAY_SECS}"
            )));
        }
        Ok(())
    }
}
