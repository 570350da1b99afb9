//! The verifier: from a bearer string to a verified principal, or a refusal with a code.
//!
//! Order matters. Everything read before the signature check is read only to find the key
//! (header `alg`/`kid`/`crit`, payload `iss`); no claim is judged until the signature holds,
//! so an unsigned token learns nothing about our rules but "invalid".

use crate::cache::TokenCache;
use crate::error::JwtError;
use crate::keys::{Algorithm, KeySet};
use crate::policy::IssuerPolicy;
use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use lap_auth::{AgentId, Credential, Principal};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Longest token accepted (bytes); longer ones are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Whether a bearer value is shaped like a JWS compact serialisation: three dot-separated
/// base64url segments, the first two non-empty (an empty signature is still a JWT's shape:
/// `alg: none`, refused by the verifier with its own code). Used to route a bearer to the JWT verifier instead of the
/// API-key store; it says nothing about validity.
pub fn looks_like_jwt(bearer: &str) -> bool {
    let mut n = 0;
    for part in bearer.split('.') {
        n += 1;
        if (part.is_empty() && n < 3)
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    n == 3
}

/// What a verified token established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The principal (agent, groups, `Credential::Jwt`).
    pub principal: Arc<Principal>,
    pub issuer: String,
    pub subject: String,
    /// The scopes the token grants (`scope`, space-separated, or `scp`).
    pub scopes: Vec<String>,
    /// The token's audiences that are configured audiences of its issuer (at least one).
    pub audiences: Vec<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: i64,
}

/// A verification that succeeded, and whether the cache answered it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verified: Arc<Verified>,
    pub cached: bool,
}

/// A key set as installed, with the generation it was installed under.
#[derive(Debug)]
struct Installed {
    keys: Arc<KeySet>,
    generation: u64,
}

#[derive(Debug)]
struct Issuer {
    policy: IssuerPolicy,
    keys: ArcSwapOption<Installed>,
}

/// The configured issuers, their current keys and the verified-token cache.
#[derive(Debug)]
pub struct Verifier {
    issuers: Vec<Issuer>,
    by_name: HashMap<String, usize>,
    pub(crate) cache: TokenCache,
    generation: std::sync::atomic::AtomicU64,
}

impl Verifier {
    /// A verifier for `issuers` (each validated), with a cache of `cache_capacity` tokens.
    pub fn new(
        issuers: Vec<IssuerPolicy>,
        cache_capacity: usize,
    ) -> Result<Self, crate::PolicyError> {
        let mut by_name = HashMap::new();
        for (i, p) in issuers.iter().enumerate() {
            p.validate()?;
            if by_name.insert(p.issuer.clone(), i).is_some() {
                return Err(crate::PolicyError::Invalid(format!(
                    "issuer {:?} is configured twice",
                    p.issuer
                )));
            }
        }
        Ok(Verifier {
            issuers: issuers
                .into_iter()
                .map(|policy| Issuer {
                    policy,
                    keys: ArcSwapOption::empty(),
                })
                .collect(),
            by_name,
            cache: TokenCache::new(cache_capacity),
            generation: std::sync::atomic::AtomicU64::new(1),
        })
    }

    pub fn issuers(&self) -> impl Iterator<Item = &IssuerPolicy> {
        self.issuers.iter().map(|i| &i.policy)
    }

    /// Installs `keys` as the issuer's current key set. A set that differs from the one in
    /// force starts a new generation: tokens cached under the old keys are verified again.
    /// Returns whether the set changed; `false` also for an issuer that is not configured.
    pub fn install_keys(&self, issuer: &str, keys: KeySet) -> bool {
        self.install_shared_keys(issuer, Arc::new(keys))
    }

    /// [`Verifier::install_keys`] for a key set shared with other verifiers (one JWKS serving
    /// verifiers with different audience policies, e.g. the data and admin planes).
    pub fn install_shared_keys(&self, issuer: &str, keys: Arc<KeySet>) -> bool {
        let Some(&i) = self.by_name.get(issuer) else {
            return false;
        };
        let slot = &self.issuers[i].keys;
        if slot
            .load()
            .as_ref()
            .is_some_and(|cur| cur.keys.same_as(&keys))
        {
            return false;
        }
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        slot.store(Some(Arc::new(Installed { keys, generation })));
        self.cache.evict_issuer(i);
        true
    }

    /// Whether the issuer has keys installed.
    pub fn has_keys(&self, issuer: &str) -> bool {
        self.by_name
            .get(issuer)
            .is_some_and(|&i| self.issuers[i].keys.load().is_some())
    }

    /// Verifies `token` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Outcome, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed("the token is too long"));
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(verified) = self.cache.get(&digest, now, |i| self.generation_of(i)) {
            return Ok(Outcome {
                verified,
                cached: true,
            });
        }
        let (i, generation, verified) = self.verify_uncached(token, &digest, now)?;
        let verified = Arc::new(verified);
        self.cache.put(digest, verified.clone(), i, generation, now);
        Ok(Outcome {
            verified,
            cached: false,
        })
    }

    fn generation_of(&self, issuer: usize) -> Option<u64> {
        self.issuers[issuer]
            .keys
            .load()
            .as_ref()
            .map(|k| k.generation)
    }

    fn verify_uncached(
        &self,
        token: &str,
        digest: &[u8; 32],
        now: i64,
    ) -> Result<(usize, u64, Verified), JwtError> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("a JWT has three dot-separated parts"));
        };
        let header = decode_json(h64, "the header is not base64url-encoded JSON")?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed("the header has no `alg`"))?;
        // `none` and HMAC are refused whatever an issuer allows: they have no Algorithm.
        let alg =
            Algorithm::parse(alg_name).map_err(|_| JwtError::AlgNotAllowed(truncate(alg_name)))?;
        if header.get("crit").is_some() {
            return Err(JwtError::CritUnsupported);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(JwtError::Malformed("the header's `kid` is not a string")),
        };
        let claims = decode_json(p64, "the payload is not base64url-encoded JSON")?;
        if !claims.is_object() {
            return Err(JwtError::Malformed("the payload is not a JSON object"));
        }
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or_else(|| JwtError::ClaimMissing("iss".into()))?;
        let &i = self.by_name.get(iss).ok_or(JwtError::IssuerUnknown)?;
        let issuer = &self.issuers[i];
        let policy = &issuer.policy;
        if !policy.algorithms.contains(&alg) {
            return Err(JwtError::AlgNotAllowed(alg.as_str().to_string()));
        }
        let installed = issuer
            .keys
            .load_full()
            .ok_or_else(|| JwtError::IssuerUnavailable {
                issuer: policy.issuer.clone(),
            })?;
        let key = installed
            .keys
            .select(kid, alg)
            .ok_or_else(|| JwtError::KidUnknown {
                issuer: policy.issuer.clone(),
            })?;
        let signed = &token[..h64.len() + 1 + p64.len()];
        let valid =
            jsonwebtoken::crypto::verify(s64, signed.as_bytes(), &key.decoding, alg.to_jws())
                .unwrap_or(false);
        if !valid {
            return Err(JwtError::SignatureInvalid);
        }
        let verified = check_claims(policy, &claims, kid, digest, now)?;
        Ok((i, installed.generation, verified))
    }
}

/// The claim rules, on a token whose signature holds.
fn check_claims(
    policy: &IssuerPolicy,
    claims: &Value,
    kid: Option<&str>,
    digest: &[u8; 32],
    now: i64,
) -> Result<Verified, JwtError> {
    let leeway = i64::try_from(policy.leeway_secs).unwrap_or(i64::MAX);
    let time = |name: &str| -> Result<Option<i64>, JwtError> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| JwtError::ClaimInvalid(name.to_string())),
        }
    };
    let exp = time("exp")?.ok_or_else(|| JwtError::ClaimMissing("exp".into()))?;
    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = time("nbf")? {
        if now.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = time("iat")? {
        if iat > now.saturating_add(leeway) {
            return Err(JwtError::IssuedInFuture);
        }
    }
    let audiences: Vec<String> = match claims.get("aud") {
        None | Some(Value::Null) => return Err(JwtError::ClaimMissing("aud".into())),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(_) => return Err(JwtError::ClaimInvalid("aud".into())),
    };
    let audiences: Vec<String> = audiences
        .into_iter()
        .filter(|a| policy.audiences.contains(a))
        .collect();
    if audiences.is_empty() {
        return Err(JwtError::AudienceMismatch);
    }
    for required in &policy.required_claims {
        if required.find(claims).is_none() {
            return Err(JwtError::ClaimMissing(required.as_string()));
        }
    }
    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err(JwtError::ClaimMissing("sub".into())),
        Some(_) => return Err(JwtError::ClaimInvalid("sub".into())),
    };
    let agent = match policy.agent_claim.find(claims) {
        None => return Err(JwtError::ClaimMissing(policy.agent_claim.as_string())),
        Some(Value::String(s)) if policy.agent_prefix.is_empty() => {
            AgentId::parse(s).ok_or(JwtError::AgentIdInvalid)?
        }
        Some(Value::String(s)) => AgentId::parse(&format!("{}{s}", policy.agent_prefix))
            .ok_or(JwtError::AgentIdInvalid)?,
        Some(_) => return Err(JwtError::AgentIdInvalid),
    };
    let mut groups: Vec<String> = match &policy.groups_claim {
        None => Vec::new(),
        Some(path) => strings(path.find(claims))
            .ok_or_else(|| JwtError::ClaimInvalid(path.as_string()))?
            .into_iter()
            .map(|g| format!("{}{g}", policy.group_prefix))
            .collect(),
    };
    let scopes = match (claims.get("scope"), claims.get("scp")) {
        (Some(Value::String(s)), _) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        (Some(Value::Null) | None, scp) => {
            strings(scp).ok_or_else(|| JwtError::ClaimInvalid("scp".into()))?
        }
        (Some(_), _) => return Err(JwtError::ClaimInvalid("scope".into())),
    };
    groups.extend(policy.issuer_groups.iter().cloned());
    if let Some(prefix) = &policy.scope_group_prefix {
        groups.extend(scopes.iter().map(|s| format!("{prefix}{s}")));
    }
    // Sorted and deduplicated once per verified token: policy reads them as a set, and equal
    // sets then share decision-cache entries.
    let mut scope_set = scopes.clone();
    scope_set.sort_unstable();
    scope_set.dedup();
    let principal = Principal {
        agent_id: agent,
        groups,
        credential: Credential::Jwt {
            issuer: policy.issuer.clone(),
            subject: subject.clone(),
            kid: kid.map(str::to_string),
            token_hash_prefix: format!("sha256:{}", &hex::encode(digest)[..12]),
            scopes: scope_set,
        },
    };
    Ok(Verified {
        principal: Arc::new(principal),
        issuer: policy.issuer.clone(),
        subject,
        scopes,
        audiences,
        expires_at: exp,
    })
}

/// A claim that is absent (no strings), a string, or an array of strings.
fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::String(s)) => Some(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        Some(_) => None,
    }
}

fn decode_json(segment: &str, what: &'static str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| JwtError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed(what))
}

/// An attacker-chosen header value, cut short for error messages.
fn truncate(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(16)
        .collect()
}
