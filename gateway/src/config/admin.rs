//! `[admin]` beyond its address: how the admin plane is authenticated.
//!
//! The admin plane serves the evidence and acts on the running gateway, so being open to
//! anyone who reaches it must never happen by omission. Either a tokens file is configured
//! (`tokens_file`: every request needs a bearer token with a sufficient role), or OIDC issuers
//! (`[[admin.jwt]]`, `admin_jwt.rs`: the role from a claim of the admin's token), or both, or the operator
//! says in so many words that a loopback-only admin plane may go without
//! (`allow_unauthenticated_loopback`, for development). Anything else refuses start-up
//! ([`AdminConfig::startup_check`]): no setting at all, or an unauthenticated admin plane on an
//! address other hosts can reach.

use super::sources::Sources;
use super::ConfigError;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How requests to the admin plane are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAccess {
    /// Bearer tokens from this hot-reloaded file (`[admin] tokens_file`,
    /// `LAP_ADMIN_TOKENS_FILE`).
    Tokens(PathBuf),
    /// OIDC access tokens only (`[[admin.jwt]]`, in [`AdminConfig::jwt`]), no tokens file.
    Jwt,
    /// No authentication, explicitly allowed on a loopback listener
    /// (`allow_unauthenticated_loopback`).
    UnauthenticatedLoopback,
    /// Nothing configured: start-up is refused.
    Unconfigured,
}

/// `[admin]` authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub access: AdminAccess,
    /// `/healthz` and `/readyz` answer without a token (orchestrator probes rarely carry one).
    pub open_probes: bool,
    /// Issuers whose OIDC tokens authenticate admins (`[[admin.jwt]]`), besides or instead of
    /// the tokens file.
    pub jwt: Vec<super::admin_jwt::AdminJwt>,
}

/// Why the admin settings are refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminConfigError {
    #[error("admin.tokens_file and admin.allow_unauthenticated_loopback exclude each other: with a tokens file every admin request needs a token (remove one of the two)")]
    Contradiction,
    #[error("[[admin.jwt]] and admin.allow_unauthenticated_loopback exclude each other: with OIDC admins every admin request needs a token (remove one of the two)")]
    JwtContradiction,
    #[error("the admin plane has no authentication: set admin.tokens_file (LAP_ADMIN_TOKENS_FILE), or, for development on a loopback address only, admin.allow_unauthenticated_loopback = true (LAP_ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK=1)")]
    Unconfigured,
    #[error("admin.listen {0} is not a loopback address, and an admin plane other hosts can reach must authenticate: set admin.tokens_file (LAP_ADMIN_TOKENS_FILE)")]
    UnauthenticatedRemote(SocketAddr),
}

impl AdminConfigError {
    pub fn code(&self) -> &'static str {
        match self {
            AdminConfigError::Contradiction | AdminConfigError::JwtContradiction => {
                "ADMIN_AUTH_CONTRADICTION"
            }
            AdminConfigError::Unconfigured => "ADMIN_AUTH_UNCONFIGURED",
            AdminConfigError::UnauthenticatedRemote(_) => "ADMIN_AUTH_REQUIRED_REMOTE",
        }
    }
}

impl AdminConfig {
    /// Whether an admin plane on `listen` may start with these settings.
    pub fn startup_check(&self, listen: SocketAddr) -> Result<(), AdminConfigError> {
        match self.access {
            AdminAccess::Tokens(_) | AdminAccess::Jwt => Ok(()),
            AdminAccess::Unconfigured => Err(AdminConfigError::Unconfigured),
            AdminAccess::UnauthenticatedLoopback if listen.ip().is_loopback() => Ok(()),
            AdminAccess::UnauthenticatedLoopback => {
                Err(AdminConfigError::UnauthenticatedRemote(listen))
            }
        }
    }
}

/// Resolves `[admin] tokens_file`, `allow_unauthenticated_loopback` and `open_probes`.
pub(super) fn admin(
    s: &Sources,
    tokens_file: Option<PathBuf>,
    allow_unauthenticated_loopback: Option<bool>,
    open_probes: Option<bool>,
) -> Result<AdminConfig, ConfigError> {
    let tokens = s.path("LAP_ADMIN_TOKENS_FILE", tokens_file);
    let open = s
        .flag(
            "LAP_ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK",
            allow_unauthenticated_loopback,
        )?
        .unwrap_or(false);
    let access = match (tokens, open) {
        (Some(_), true) => return Err(AdminConfigError::Contradiction.into()),
        (Some(path), false) => AdminAccess::Tokens(path),
        (None, true) => AdminAccess::UnauthenticatedLoopback,
        (None, false) => AdminAccess::Unconfigured,
    };
    Ok(AdminConfig {
        access,
        open_probes: s
            .flag("LAP_ADMIN_OPEN_PROBES", open_probes)?
            .unwrap_or(true),
        jwt: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, CliOverrides};
    use std::collections::BTreeMap;

    fn resolve(toml: &str, env: &[(&str, &str)]) -> Result<AdminConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, toml).unwrap();
        let mut vars: BTreeMap<String, String> =
            [("LAP_API_KEYS_JSON".to_string(), "{}".to_string())].into();
        for (k, v) in env {
            vars.insert(k.to_string(), v.to_string());
        }
        load(Some(&path), &vars, &CliOverrides::default()).map(|c| c.admin)
    }

    const LOOPBACK: &str = "127.0.0.1:9090";

    #[test]
    fn tokens_file_from_the_file_or_the_environment() {
        let c = resolve("[admin]\ntokens_file = \"admin.json\"\n", &[]).unwrap();
        assert!(matches!(&c.access, AdminAccess::Tokens(p) if p.ends_with("admin.json")));
        assert!(c.open_probes);
        assert!(c.startup_check("0.0.0.0:9090".parse().unwrap()).is_ok());
        let c = resolve("", &[("LAP_ADMIN_TOKENS_FILE", "/etc/lap/admin.json")]).unwrap();
        assert_eq!(
            c.access,
            AdminAccess::Tokens(PathBuf::from("/etc/lap/admin.json"))
        );
        let c = resolve(
            "[admin]\ntokens_file = \"a.json\"\nopen_probes = false\n",
            &[],
        )
        .unwrap();
        assert!(!c.open_probes);
        let c = resolve("", &[("LAP_ADMIN_OPEN_PROBES", "0")]).unwrap();
        assert!(!c.open_probes);
    }

    #[test]
    fn no_authentication_is_an_explicit_loopback_only_setting() {
        let c = resolve("", &[]).unwrap();
        assert_eq!(c.access, AdminAccess::Unconfigured);
        let e = c.startup_check(LOOPBACK.parse().unwrap()).unwrap_err();
        assert_eq!(e.code(), "ADMIN_AUTH_UNCONFIGURED");
        assert!(e.to_string().contains("allow_unauthenticated_loopback"));

        let c = resolve("[admin]\nallow_unauthenticated_loopback = true\n", &[]).unwrap();
        assert_eq!(c.access, AdminAccess::UnauthenticatedLoopback);
        assert!(c.startup_check(LOOPBACK.parse().unwrap()).is_ok());
        assert!(c.startup_check("[::1]:9090".parse().unwrap()).is_ok());
        for remote in ["0.0.0.0:9090", "10.1.2.3:9090", "[::]:9090"] {
            let e = c.startup_check(remote.parse().unwrap()).unwrap_err();
            assert_eq!(e.code(), "ADMIN_AUTH_REQUIRED_REMOTE", "{remote}");
        }
        let c = resolve("", &[("LAP_ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK", "1")]).unwrap();
        assert_eq!(c.access, AdminAccess::UnauthenticatedLoopback);
        let e = resolve("", &[("LAP_ADMIN_ALLOW_UNAUTHENTICATED_LOOPBACK", "maybe")]);
        assert!(e.is_err());
    }

    #[test]
    fn tokens_and_no_authentication_together_are_refused() {
        let e = resolve(
            "[admin]\ntokens_file = \"a.json\"\nallow_unauthenticated_loopback = true\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("exclude each other"), "{e}");
        let e = resolve(
            "[admin]\nallow_unauthenticated_loopback = true\n",
            &[("LAP_ADMIN_TOKENS_FILE", "a.json")],
        )
        .unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Admin(AdminConfigError::Contradiction)
        ));
    }
}
