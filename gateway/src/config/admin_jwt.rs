//! `[[admin.jwt]]`: OIDC access tokens for the admin plane, their role taken from a claim.
//!
//! Operators and auditors sign in with the organisation's identity provider instead of holding
//! a long-lived admin token. The design choices, each a rule enforced here:
//!
//! * **one issuer, one key source.** An `[[admin.jwt]]` names an issuer that is also an
//!   `[[auth.jwt]]` issuer: its keys (discovery, JWKS URL or file, the background refresh and
//!   the rate-limited refresh on an unknown `kid`) are fetched once and serve both planes. Its
//!   algorithm allowlist and clock leeway carry over; everything else is the admin plane's own.
//! * **separate audiences.** An admin token is for `<public_url>/admin` unless `audiences` says
//!   otherwise, and the admin audiences must not overlap the issuer's data-plane audiences:
//!   a token an agent got for calling tools is never good on the admin plane, and an admin's
//!   token is never good for calling tools.
//! * **roles from a claim.** `roles_claim` is a dotted path (`realm_access.roles`, `groups`)
//!   to a string or an array of strings; `role_map` maps claim values to admin roles and the
//!   highest mapped role wins. A token that maps to no role proves who the admin is but grants
//!   nothing: 403 `ADMIN_ROLE_INSUFFICIENT` on every route that needs a role.
//! * **the admin id** is the `subject_claim` (default `sub`), held to the agent-id alphabet so
//!   it is safe in logs and receipts.
//!
//! See `docs/configuration.md` ("`[[admin.jwt]]`").

use super::admin::{AdminAccess, AdminConfig, AdminConfigError};
use super::jwt::JwtConfig;
use super::{ConfigError, Origin, Problem};
use lap_auth::Role;
use lap_jwt::{ClaimPath, IssuerPolicy};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The audience path an admin token is for by default, under `[auth] public_url`.
pub const ADMIN_AUDIENCE_PATH: &str = "/admin";

/// One `[[admin.jwt]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminJwtFile {
    pub issuer: String,
    pub audiences: Option<Vec<String>>,
    pub roles_claim: Option<String>,
    pub role_map: Option<BTreeMap<String, String>>,
    pub subject_claim: Option<String>,
}

/// One issuer whose tokens authenticate admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminJwt {
    /// The token rules: the `[[auth.jwt]]` issuer's algorithms and leeway, the admin
    /// audiences, the admin id from `subject_claim` (`agent_claim`) and the role claim's values
    /// as `groups_claim`.
    pub policy: IssuerPolicy,
    /// Claim value → role.
    pub role_map: BTreeMap<String, Role>,
}

impl AdminJwt {
    /// The highest role the token's role-claim values map to, if any.
    pub fn role<'a>(&self, values: impl IntoIterator<Item = &'a String>) -> Option<Role> {
        values
            .into_iter()
            .filter_map(|v| self.role_map.get(v))
            .max()
            .copied()
    }
}

fn invalid(i: usize, key: &str, why: String) -> ConfigError {
    ConfigError::Invalid {
        origin: Origin::Key(format!("admin.jwt[{i}].{key}")),
        problem: Problem::Auth(why),
    }
}

/// Adds the `[[admin.jwt]]` issuers to the admin settings (after `[auth]` is resolved).
pub(super) fn resolve(
    mut admin: AdminConfig,
    files: Vec<AdminJwtFile>,
    jwt: &JwtConfig,
) -> Result<AdminConfig, ConfigError> {
    if files.is_empty() {
        return Ok(admin);
    }
    let mut resolved: Vec<AdminJwt> = Vec::with_capacity(files.len());
    for (i, f) in files.into_iter().enumerate() {
        let one = issuer(i, f, jwt)?;
        if resolved
            .iter()
            .any(|o| o.policy.issuer == one.policy.issuer)
        {
            return Err(invalid(
                i,
                "issuer",
                "the same issuer is configured twice".into(),
            ));
        }
        resolved.push(one);
    }
    admin.access = match admin.access {
        AdminAccess::UnauthenticatedLoopback => {
            return Err(AdminConfigError::JwtContradiction.into())
        }
        AdminAccess::Unconfigured | AdminAccess::Jwt => AdminAccess::Jwt,
        tokens @ AdminAccess::Tokens(_) => tokens,
    };
    admin.jwt = resolved;
    Ok(admin)
}

fn issuer(i: usize, f: AdminJwtFile, jwt: &JwtConfig) -> Result<AdminJwt, ConfigError> {
    let Some(data) = jwt.issuers.iter().find(|d| d.policy.issuer == f.issuer) else {
        return Err(invalid(
            i,
            "issuer",
            format!(
                "{:?} is not an [[auth.jwt]] issuer: the admin plane uses the keys of an issuer configured there",
                f.issuer
            ),
        ));
    };
    let audiences = match f.audiences {
        Some(list) if list.is_empty() || list.iter().any(String::is_empty) => {
            return Err(invalid(
                i,
                "audiences",
                "must list non-empty audiences".into(),
            ))
        }
        Some(list) => list,
        None => match &jwt.public_url {
            Some(u) => vec![format!("{u}{ADMIN_AUDIENCE_PATH}")],
            None => return Err(invalid(
                i,
                "audiences",
                "without audiences an admin token is for <public_url>/admin: set [auth] public_url (LAP_PUBLIC_URL)".into(),
            )),
        },
    };
    if let Some(shared) = audiences.iter().find(|a| data.policy.audiences.contains(a)) {
        return Err(invalid(
            i,
            "audiences",
            format!("{shared:?} is also a data-plane audience of this issuer: an agent's token would open the admin plane (give the admin plane an audience of its own)"),
        ));
    }
    let path = |key: &str, p: &str| ClaimPath::parse(p).map_err(|e| invalid(i, key, e.to_string()));
    let Some(roles_claim) = f.roles_claim else {
        return Err(invalid(
            i,
            "roles_claim",
            "is required: the claim holding the admin's roles or groups (e.g. \"realm_access.roles\", \"groups\")".into(),
        ));
    };
    let roles_claim = path("roles_claim", &roles_claim)?;
    let subject_claim = path("subject_claim", f.subject_claim.as_deref().unwrap_or("sub"))?;
    let role_map = f.role_map.unwrap_or_default();
    if role_map.is_empty() {
        return Err(invalid(
            i,
            "role_map",
            "is required: map claim values to roles, e.g. {\"lap-operators\" = \"operator\"}"
                .into(),
        ));
    }
    let role_map = role_map
        .into_iter()
        .map(|(value, role)| {
            if value.is_empty() {
                return Err(invalid(
                    i,
                    "role_map",
                    "claim values must be non-empty".into(),
                ));
            }
            let role = Role::parse(&role).ok_or_else(|| {
                invalid(
                    i,
                    "role_map",
                    format!("{role:?} is not a role (viewer, auditor, operator, admin)"),
                )
            })?;
            Ok((value, role))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let mut policy = IssuerPolicy::new(f.issuer, audiences);
    policy.algorithms = data.policy.algorithms.clone();
    policy.leeway_secs = data.policy.leeway_secs;
    policy.agent_claim = subject_claim;
    policy.groups_claim = Some(roles_claim);
    policy
        .validate()
        .map_err(|e| invalid(i, "issuer", e.to_string()))?;
    Ok(AdminJwt { policy, role_map })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, CliOverrides};

    fn resolve(toml: &str) -> Result<AdminConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        let vars: std::collections::BTreeMap<String, String> =
            [("LAP_API_KEYS_JSON".to_string(), "{}".to_string())].into();
        load(Some(&path), &vars, &CliOverrides::default())
            .map(|c| c.admin)
            .map_err(|e| e.to_string())
    }

    const AUTH: &str = "[auth]\npublic_url = \"https://gw.example\"\n[[auth.jwt]]\nissuer = \"https://idp.example\"\njwks_url = \"https://idp.example/jwks\"\nalgorithms = [\"EdDSA\"]\nleeway_seconds = 5\n";

    const ADMIN: &str = "[[admin.jwt]]\nissuer = \"https://idp.example\"\nroles_claim = \"realm_access.roles\"\nrole_map = { \"lap-operators\" = \"operator\", \"lap-auditors\" = \"auditor\" }\n";

    #[test]
    fn defaults_reuse_the_issuer_with_an_audience_of_its_own() {
        let c = resolve(&format!("{AUTH}{ADMIN}")).unwrap();
        assert_eq!(c.access, AdminAccess::Jwt);
        assert!(c.startup_check("0.0.0.0:9090".parse().unwrap()).is_ok());
        let j = &c.jwt[0];
        assert_eq!(j.policy.audiences, ["https://gw.example/admin"]);
        assert_eq!(j.policy.algorithms, [lap_jwt::Algorithm::EdDSA]);
        assert_eq!(j.policy.leeway_secs, 5);
        assert_eq!(j.policy.agent_claim.as_string(), "sub");
        assert_eq!(
            j.policy.groups_claim.as_ref().map(ClaimPath::as_string),
            Some("realm_access.roles".into())
        );
        // With a tokens file too, both work.
        let c = resolve(&format!(
            "{AUTH}{ADMIN}subject_claim = \"preferred_username\"\naudiences = [\"lap-admin\"]\n[admin]\ntokens_file = \"t.json\"\n"
        ))
        .unwrap();
        assert!(matches!(c.access, AdminAccess::Tokens(_)));
        assert_eq!(c.jwt[0].policy.audiences, ["lap-admin"]);
        assert_eq!(
            c.jwt[0].policy.agent_claim.as_string(),
            "preferred_username"
        );
        // Without [[admin.jwt]] nothing changes.
        let c = resolve(AUTH).unwrap();
        assert_eq!(c.access, AdminAccess::Unconfigured);
        assert!(c.jwt.is_empty());
    }

    #[test]
    fn the_highest_mapped_role_wins() {
        let c = resolve(&format!("{AUTH}{ADMIN}")).unwrap();
        let j = &c.jwt[0];
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(j.role(&v(&["lap-auditors"])), Some(Role::Auditor));
        assert_eq!(
            j.role(&v(&["lap-auditors", "x", "lap-operators"])),
            Some(Role::Operator)
        );
        assert_eq!(j.role(&v(&["x", "LAP-OPERATORS"])), None);
        assert_eq!(j.role(&v(&[])), None);
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            (format!("{AUTH}[[admin.jwt]]\nissuer = \"https://other.example\"\nroles_claim = \"groups\"\nrole_map = {{ a = \"admin\" }}\n"), "admin.jwt[0].issuer", "not an [[auth.jwt]] issuer"),
            (format!("{AUTH}{ADMIN}audiences = [\"https://gw.example\"]\n"), "admin.jwt[0].audiences", "data-plane audience"),
            (format!("{AUTH}{ADMIN}audiences = []\n"), "admin.jwt[0].audiences", "non-empty"),
            (format!("{AUTH}[[admin.jwt]]\nissuer = \"https://idp.example\"\nrole_map = {{ a = \"admin\" }}\n"), "admin.jwt[0].roles_claim", "required"),
            (format!("{AUTH}[[admin.jwt]]\nissuer = \"https://idp.example\"\nroles_claim = \"a..b\"\nrole_map = {{ a = \"admin\" }}\n"), "admin.jwt[0].roles_claim", "empty segment"),
            (format!("{AUTH}[[admin.jwt]]\nissuer = \"https://idp.example\"\nroles_claim = \"groups\"\n"), "admin.jwt[0].role_map", "required"),
            (format!("{AUTH}[[admin.jwt]]\nissuer = \"https://idp.example\"\nroles_claim = \"groups\"\nrole_map = {{ a = \"root\" }}\n"), "admin.jwt[0].role_map", "not a role"),
            (format!("{AUTH}{ADMIN}subject_claim = \".x\"\n"), "admin.jwt[0].subject_claim", "empty segment"),
            (format!("{AUTH}{ADMIN}{ADMIN}"), "admin.jwt[1].issuer", "twice"),
        ];
        for (toml, key, why) in cases {
            let e = resolve(&toml).unwrap_err();
            assert!(e.contains(key) && e.contains(why), "{toml}: {e}");
        }
        // The default audience needs public_url.
        let no_url = AUTH
            .replace("public_url = \"https://gw.example\"\n", "")
            .replace("jwks_url", "audiences = [\"d\"]\njwks_url");
        let e = resolve(&format!("{no_url}{ADMIN}")).unwrap_err();
        assert!(
            e.contains("admin.jwt[0].audiences") && e.contains("public_url"),
            "{e}"
        );
        let e = resolve(&format!("{AUTH}{ADMIN}bogus = 1\n")).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        // JWT admins and an unauthenticated admin plane exclude each other.
        let e = resolve(&format!(
            "{AUTH}{ADMIN}[admin]\nallow_unauthenticated_loopback = true\n"
        ))
        .unwrap_err();
        assert!(e.contains("exclude each other"), "{e}");
    }
}
