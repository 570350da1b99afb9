//! Bearer JWTs as agent credentials, and the OAuth resource-server rules around them.
//!
//! A request carries exactly one credential. An `Authorization: Bearer` value shaped like a
//! JWT (three dot-separated base64url segments, [`lap_jwt::looks_like_jwt`]) goes to the JWT
//! verifier when issuers are configured; otherwise it is an API key as before. A JWT together
//! with an `X-Api-Key` is two credentials: refused `AUTH_AMBIGUOUS`.
//!
//! On top of the token's own rules (`lap_jwt`, keys from `crate::jwks`):
//!
//! * audience per route (RFC 8707): with the default audiences, a token must be for the
//!   gateway (`public_url`) or for the very MCP endpoint it is used on
//!   (`public_url/mcp/<server>`) — a token minted for one MCP server is not good at another;
//! * scopes: a tool or MCP server with `required_scopes` refuses a valid token lacking one of
//!   them with 403 `INSUFFICIENT_SCOPE` and `WWW-Authenticate: Bearer
//!   error="insufficient_scope", scope="…"` (the scopes to ask for when stepping up);
//! * every 401 says where to learn how to get a token: `WWW-Authenticate: Bearer
//!   resource_metadata="<public_url>/.well-known/oauth-protected-resource[/mcp/<server>]"`
//!   (RFC 9728), with `error="invalid_token"` when a credential was presented and refused;
//! * `X-Agent-Id`, when sent, must name the token's agent (`AGENT_ID_MISMATCH`), as with keys.
//!
//! The token itself never leaves this stage: receipts get `Credential::Jwt` (issuer, subject,
//! kid, `sha256:` prefix of the token's hash), and `Authorization` is stripped before
//! forwarding (`forward`).

use crate::config::Config;
use crate::jwks::JwtRuntime;
use crate::pipeline::error::ApiError;
use crate::pipeline::request::Reached;
use http::header::{self, HeaderName};
use lap_auth::{AuthError, Principal};
use lap_jwt::JwtError;
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::sync::Arc;

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const X_AGENT_ID: HeaderName = HeaderName::from_static("x-agent-id");

/// Where the protected resource metadata lives (RFC 9728 §3).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// What a request is for: the resource its token must be for, and the scopes it needs.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The gateway's own endpoints (`/v1/session/new`).
    Gateway,
    /// `/tools/<tool>/…`.
    Tool(&'a str),
    /// `/mcp/<server>`.
    Mcp(&'a str),
}

/// A refusal of the identity stage, with the principal when the credential was good (a
/// missing scope): the denial receipt then names who was refused.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    pub principal: Option<Arc<Principal>>,
}

impl Refusal {
    pub fn reached(&self) -> Reached {
        match &self.principal {
            Some(p) => Reached::Identified {
                principal: p.clone(),
            },
            None => Reached::Arrival,
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Refusal {
            error,
            principal: None,
        }
    }
}

/// The JWT side of identity: the runtime and each route's required scopes.
pub struct JwtGate {
    runtime: Arc<JwtRuntime>,
    tool_scopes: HashMap<String, Vec<String>>,
    mcp_scopes: HashMap<String, Vec<String>>,
}

impl JwtGate {
    pub fn new(runtime: Arc<JwtRuntime>, config: &Config) -> Self {
        let scopes = |m: &std::collections::BTreeMap<String, crate::config::ToolConfig>| {
            m.iter()
                .filter(|(_, t)| !t.required_scopes.is_empty())
                .map(|(n, t)| (n.clone(), t.required_scopes.clone()))
                .collect()
        };
        JwtGate {
            runtime,
            tool_scopes: scopes(&config.tools),
            mcp_scopes: scopes(&config.mcp.servers),
        }
    }

    fn required(&self, target: Target<'_>) -> &[String] {
        let found = match target {
            Target::Gateway => None,
            Target::Tool(t) => self.tool_scopes.get(t),
            Target::Mcp(s) => self.mcp_scopes.get(s),
        };
        found.map_or(&[], Vec::as_slice)
    }

    /// The resource URL a token used on `target` is for (`None` without `public_url`).
    fn resource(&self, target: Target<'_>) -> Option<String> {
        let base = self.runtime.public_url()?;
        Some(match target {
            Target::Mcp(s) => format!("{base}/mcp/{s}"),
            Target::Gateway | Target::Tool(_) => base.to_string(),
        })
    }

    /// The RFC 9728 metadata URL for `target`'s resource.
    fn metadata_url(&self, target: Target<'_>) -> Option<String> {
        let base = self.runtime.public_url()?;
        Some(match target {
            Target::Mcp(s) => format!("{base}{METADATA_PATH}/mcp/{s}"),
            Target::Gateway | Target::Tool(_) => format!("{base}{METADATA_PATH}"),
        })
    }

    /// The protected resource metadata document for a request path, if it names one.
    pub fn metadata(&self, path: &str, config: &Config) -> Option<Vec<u8>> {
        let rest = path.strip_prefix(METADATA_PATH)?;
        let (target, scopes): (Target<'_>, Vec<&String>) = match rest {
            "" | "/" => (
                Target::Gateway,
                self.tool_scopes.values().flatten().collect(),
            ),
            _ => {
                let server = rest.strip_prefix("/mcp/")?;
                if !config.mcp.servers.contains_key(server) {
                    return None;
                }
                (
                    Target::Mcp(server),
                    self.mcp_scopes.get(server).into_iter().flatten().collect(),
                )
            }
        };
        let mut scopes: Vec<&String> = scopes;
        scopes.sort();
        scopes.dedup();
        let servers: Vec<&str> = self
            .runtime
            .issuers()
            .map(|i| i.policy.issuer.as_str())
            .collect();
        let doc = serde_json::json!({
            "resource": self.resource(target)?,
            "authorization_servers": servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": config.gateway_id,
        });
        serde_json::to_vec(&doc).ok()
    }

    /// Verifies the token for `target`; `Ok(None)` when the request carries no JWT (the API
    /// key path then decides).
    pub async fn authenticate(
        &self,
        req: &RequestHeader,
        target: Target<'_>,
    ) -> Result<Option<Arc<Principal>>, Refusal> {
        let token = match bearer_jwt(req) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.unauthorized(ApiError::from(e), target, true).into()),
        };
        if req.headers.contains_key(X_API_KEY) {
            let e = ApiError::new(
                401,
                "AUTH_AMBIGUOUS",
                "the request carries two credentials (a bearer JWT and an X-Api-Key); send one",
            );
            return Err(self.unauthorized(e, target, true).into());
        }
        let outcome = match self.runtime.verify(token).await {
            Ok(o) => o,
            Err(e) => return Err(self.refused_token(e, target).into()),
        };
        let verified = outcome.verified;
        // Default audiences: the gateway's, or this MCP endpoint's own.
        if self.runtime.default_audience(&verified.issuer) {
            let base = self.runtime.public_url().unwrap_or_default();
            let own = self.resource(target).unwrap_or_default();
            if !verified.audiences.iter().any(|a| a == base || *a == own) {
                return Err(self
                    .refused_token(JwtError::AudienceMismatch, target)
                    .into());
            }
        }
        let principal = verified.principal.clone();
        if let Some(claimed) =
            single(req, &X_AGENT_ID).map_err(|e| self.unauthorized(e.into(), target, true))?
        {
            if claimed != principal.agent_id.as_str() {
                return Err(self
                    .unauthorized(AuthError::AgentIdMismatch.into(), target, true)
                    .into());
            }
        }
        let required = self.required(target);
        let missing = required.iter().any(|s| !verified.scopes.contains(s));
        if missing {
            return Err(Refusal {
                error: self.insufficient_scope(required, target),
                principal: Some(principal),
            });
        }
        Ok(Some(principal))
    }

    /// A JWT refusal: 503 while the issuer's keys are unavailable, otherwise 401.
    fn refused_token(&self, e: JwtError, target: Target<'_>) -> ApiError {
        match e {
            JwtError::IssuerUnavailable { .. } => {
                let mut err = ApiError::new(503, e.code(), e.to_string());
                err.retry_after = Some(5);
                err
            }
            _ => self.unauthorized(ApiError::new(401, e.code(), e.to_string()), target, true),
        }
    }

    /// A 401 with `WWW-Authenticate` naming the resource metadata (and `invalid_token` when a
    /// credential was presented).
    pub fn unauthorized(&self, mut e: ApiError, target: Target<'_>, presented: bool) -> ApiError {
        if e.status == 401 {
            e.www_authenticate = Some(challenge(self.metadata_url(target).as_deref(), presented));
        }
        e
    }

    fn insufficient_scope(&self, required: &[String], target: Target<'_>) -> ApiError {
        let scope = required.join(" ");
        let mut e = ApiError::new(
            403,
            "INSUFFICIENT_SCOPE",
            format!("the token lacks a required scope (needs: {scope})"),
        );
        let mut value = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
        if let Some(url) = self.metadata_url(target) {
            value.push_str(&format!(", resource_metadata=\"{url}\""));
        }
        e.www_authenticate = Some(value);
        e
    }
}

/// `WWW-Authenticate` of a 401.
pub fn challenge(metadata_url: Option<&str>, presented: bool) -> String {
    let mut parts = Vec::new();
    if let Some(url) = metadata_url {
        parts.push(format!("resource_metadata=\"{url}\""));
    }
    if presented {
        parts.push("error=\"invalid_token\"".to_string());
    }
    if parts.is_empty() {
        "Bearer".to_string()
    } else {
        format!("Bearer {}", parts.join(", "))
    }
}

/// The bearer value when it is shaped like a JWT.
fn bearer_jwt(req: &RequestHeader) -> Result<Option<&str>, AuthError> {
    let Some(v) = single(req, &header::AUTHORIZATION)? else {
        return Ok(None);
    };
    let Some((scheme, token)) = v.split_once(' ') else {
        return Ok(None);
    };
    let token = token.trim();
    Ok((scheme.eq_ignore_ascii_case("bearer") && lap_jwt::looks_like_jwt(token)).then_some(token))
}

fn single<'a>(req: &'a RequestHeader, name: &HeaderName) -> Result<Option<&'a str>, AuthError> {
    let mut values = req.headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Invalid);
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| AuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/mcp/files", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn only_jwt_shaped_bearers_go_to_the_verifier() {
        assert_eq!(
            bearer_jwt(&req(&[("authorization", "Bearer a.b.c")])),
            Ok(Some("a.b.c"))
        );
        assert_eq!(
            bearer_jwt(&req(&[("authorization", "bearer  a.b.")])),
            Ok(Some("a.b."))
        );
        assert_eq!(
            bearer_jwt(&req(&[("authorization", "Bearer lap_key")])),
            Ok(None)
        );
        assert_eq!(
            bearer_jwt(&req(&[("authorization", "Basic a.b.c")])),
            Ok(None)
        );
        assert_eq!(bearer_jwt(&req(&[])), Ok(None));
        assert_eq!(
            bearer_jwt(&req(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer a.b.c")
            ])),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn challenges() {
        assert_eq!(challenge(None, false), "Bearer");
        assert_eq!(challenge(None, true), "Bearer error=\"invalid_token\"");
        assert_eq!(
            challenge(Some("https://gw/.well-known/oauth-protected-resource/mcp/a"), true),
            "Bearer resource_metadata=\"https://gw/.well-known/oauth-protected-resource/mcp/a\", error=\"invalid_token\""
        );
    }
}
