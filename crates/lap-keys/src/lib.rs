//! Gateway signing-key material.
//!
//! The gateway refuses to start without a signing key, exactly like the LAP seed. Key material
//! comes from, in order of precedence:
//!
//! 1. a keyset (`LAP_GATEWAY_KEYSET_JSON`, then `LAP_GATEWAY_KEYSET_FILE`): `active_kid` plus a
//!    `keys` map whose entries are `{"seed_hex"}`, `{"public_key_hex"}` (verify only) or
//!    `{"signing_cmd", "public_key_hex", "timeout_seconds"}` (external signer);
//! 2. a single seed (`LAP_GATEWAY_SIGNING_KEY`, 64 hex characters), key id
//!    `LAP_GATEWAY_SIGNING_KEY_ID` (default `gateway`);
//! 3. a seed file (`LAP_GATEWAY_SIGNING_KEY_FILE`), refused if group or others can read it;
//! 4. a random ephemeral key, only with `LAP_ALLOW_EPHEMERAL_SIGNING_KEYS=1`.
//!
//! Everything is validated here: hex lengths, that a seed matches a pinned public key, that the
//! active key can sign. Secrets are zeroized on drop and never appear in `Debug` output or errors.

mod keyset;

pub use keyset::parse_keyset;

use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default key id for single-key modes, as in the LAP seed.
pub const DEFAULT_KEY_ID: &str = "gateway";

/// Where the active key came from; recorded in health output (and later in every receipt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    KeysetJson,
    KeysetFile,
    SigningKey,
    SigningKeyFile,
    /// `LAP_GATEWAY_SIGNING_CMD` with `LAP_GATEWAY_PUBLIC_KEY_HEX`.
    SigningCmd,
    /// A random key that dies with the process; only with explicit opt-in.
    Ephemeral,
}

impl KeySource {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeySource::KeysetJson => "keyset_json",
            KeySource::KeysetFile => "keyset_file",
            KeySource::SigningKey => "signing_key",
            KeySource::SigningKeyFile => "signing_key_file",
            KeySource::SigningCmd => "signing_cmd",
            KeySource::Ephemeral => "ephemeral",
        }
    }
}

/// How a key signs.
pub enum KeyMaterial {
    /// In-process Ed25519 key.
    Seed(Box<SigningKey>),
    /// An external command (the LAP signer contract); its output is checked against the
    /// pinned public key.
    External {
        argv: Vec<String>,
        timeout: Duration,
    },
    /// Public key only: verifies older receipts, cannot sign.
    VerifyOnly,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyMaterial::Seed(_) => f.write_str("Seed(<redacted>)"),
            KeyMaterial::External { argv, timeout } => f
                .debug_struct("External")
                .field("argv", argv)
                .field("timeout", timeout)
                .finish(),
            KeyMaterial::VerifyOnly => f.write_str("VerifyOnly"),
        }
    }
}

/// One key of the keyset.
#[derive(Debug)]
pub struct KeyEntry {
    pub kid: String,
    pub public_key: VerifyingKey,
    pub material: KeyMaterial,
    /// Lifecycle, as published in `/v1/keys` and the auditors' trust file.
    pub lifecycle: Lifecycle,
}

/// When a key may be used. Times are RFC 3339 strings, checked when the keyset is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Signatures made before this are not valid.
    pub not_before: Option<String>,
    /// Signatures made at or after this are not valid.
    pub not_after: Option<String>,
    /// The key stopped signing then; its earlier signatures stay valid.
    pub retired_at: Option<String>,
    /// The key was compromised: signatures made at or after this are invalid.
    pub revoked_at: Option<String>,
}

impl Lifecycle {
    /// `revoked`, `retired`, or `valid`.
    pub fn status(&self) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.retired_at.is_some() {
            "retired"
        } else {
            "valid"
        }
    }
}

impl KeyEntry {
    pub fn can_sign(&self) -> bool {
        !matches!(self.material, KeyMaterial::VerifyOnly)
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key.as_bytes())
    }
}

/// The validated signing keys: an active key that can sign, plus keys that only verify.
#[derive(Debug)]
pub struct Keyset {
    active_kid: String,
    keys: BTreeMap<String, KeyEntry>,
    source: KeySource,
}

impl Keyset {
    /// Builds a keyset; the active key must exist and be able to sign.
    pub fn new(
        active_kid: String,
        keys: BTreeMap<String, KeyEntry>,
        source: KeySource,
    ) -> Result<Self, KeyError> {
        let active = keys.get(&active_kid).ok_or_else(|| {
            KeyError::Invalid(format!("active_kid {active_kid:?} is not in keys"))
        })?;
        if !active.can_sign() {
            return Err(KeyError::Invalid(format!(
                "active key {active_kid:?} has only a public key; it needs seed_hex or signing_cmd"
            )));
        }
        let now = time::OffsetDateTime::now_utc();
        let at = |s: &Option<String>| s.as_deref().map(keyset::parse_time).transpose();
        let l = &active.lifecycle;
        if l.revoked_at.is_some() || l.retired_at.is_some() {
            return Err(KeyError::Invalid(format!(
                "active key {active_kid:?} is {}; activate another key",
                l.status()
            )));
        }
        if at(&l.not_before)?.is_some_and(|t| now < t)
            || at(&l.not_after)?.is_some_and(|t| now >= t)
        {
            return Err(KeyError::Invalid(format!(
                "active key {active_kid:?} is outside its validity window (not_before/not_after)"
            )));
        }
        Ok(Self {
            active_kid,
            keys,
            source,
        })
    }

    pub fn active(&self) -> &KeyEntry {
        // Invariant established by `new`.
        &self.keys[&self.active_kid]
    }

    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    pub fn source(&self) -> KeySource {
        self.source
    }

    pub fn is_ephemeral(&self) -> bool {
        self.source == KeySource::Ephemeral
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyEntry> {
        self.keys.values()
    }

    pub fn get(&self, kid: &str) -> Option<&KeyEntry> {
        self.keys.get(kid)
    }

    /// Replaces how the active key signs (SIGNER_MODE=external), keeping its public key.
    fn with_active_material(mut self, material: KeyMaterial) -> Result<Self, KeyError> {
        let kid = self.active_kid.clone();
        if let Some(entry) = self.keys.get_mut(&kid) {
            entry.material = material;
        }
        Ok(self)
    }
}

/// Why key material was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no signing key configured: set LAP_GATEWAY_SIGNING_KEY, LAP_GATEWAY_SIGNING_KEY_FILE, LAP_GATEWAY_KEYSET_JSON or LAP_GATEWAY_KEYSET_FILE (or LAP_ALLOW_EPHEMERAL_SIGNING_KEYS=1 for development)")]
    NotConfigured,
    #[error("{var}: {reason}")]
    BadValue { var: &'static str, reason: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("keyset: {0}")]
    Invalid(String),
    #[error("no system randomness: {0}")]
    Random(String),
}

/// The settings that select key material. Fields mirror the `LAP_*` environment variables.
#[derive(Debug, Default, Clone)]
pub struct KeySettings {
    pub keyset_json: Option<String>,
    pub keyset_file: Option<PathBuf>,
    pub signing_key_hex: Option<String>,
    pub signing_key_file: Option<PathBuf>,
    pub signing_key_id: Option<String>,
    pub allow_ephemeral: bool,
    /// `LAP_GATEWAY_SIGNING_CMD` + `LAP_GATEWAY_PUBLIC_KEY_HEX`: an external signer with a
    /// pinned public key (no private key in the gateway).
    pub signing_cmd: Option<String>,
    pub public_key_hex: Option<String>,
    pub signing_cmd_timeout: Option<f64>,
    /// `SIGNER_MODE=external` + `SIGNER_CMD` (+ `SIGNER_TIMEOUT_SECONDS`): sign the loaded
    /// key's messages with an external command instead, still verifying against its public key.
    pub signer_mode: Option<String>,
    pub signer_cmd: Option<String>,
    pub signer_timeout: Option<f64>,
}

/// Loads and validates key material following the precedence in the crate docs.
pub fn load(settings: &KeySettings) -> Result<Keyset, KeyError> {
    let keyset = load_material(settings)?;
    match settings.signer_mode.as_deref() {
        None | Some("") | Some("file") | Some("local") => Ok(keyset),
        Some("external") => {
            let cmd = settings.signer_cmd.as_deref().ok_or(KeyError::BadValue {
                var: "SIGNER_CMD",
                reason: "SIGNER_MODE=external needs SIGNER_CMD".into(),
            })?;
            let external = external_material(cmd, settings.signer_timeout, "SIGNER_CMD")?;
            keyset.with_active_material(external)
        }
        Some(other) => Err(KeyError::BadValue {
            var: "SIGNER_MODE",
            reason: format!("{other:?} is not \"external\" or \"file\""),
        }),
    }
}

fn external_material(
    cmd: &str,
    timeout: Option<f64>,
    var: &'static str,
) -> Result<KeyMaterial, KeyError> {
    let argv = keyset::split_command(cmd).ok_or(KeyError::BadValue {
        var,
        reason: "unbalanced quotes".into(),
    })?;
    if argv.first().is_none_or(|p| p.is_empty()) {
        return Err(KeyError::BadValue {
            var,
            reason: "empty command".into(),
        });
    }
    let timeout = match timeout {
        None => keyset::DEFAULT_SIGNER_TIMEOUT,
        Some(t) if t.is_finite() && t > 0.0 && t <= 60.0 => std::time::Duration::from_secs_f64(t),
        Some(t) => {
            return Err(KeyError::BadValue {
                var,
                reason: format!("timeout {t} must be in (0, 60] seconds"),
            })
        }
    };
    Ok(KeyMaterial::External { argv, timeout })
}

fn load_material(settings: &KeySettings) -> Result<Keyset, KeyError> {
    if let Some(json) = &settings.keyset_json {
        return parse_keyset(json, KeySource::KeysetJson).map_err(|e| KeyError::BadValue {
            var: "LAP_GATEWAY_KEYSET_JSON",
            reason: e.to_string(),
        });
    }
    if let Some(path) = &settings.keyset_file {
        let text = read_private_file(path)?;
        return parse_keyset(&text, KeySource::KeysetFile).map_err(|e| KeyError::BadValue {
            var: "LAP_GATEWAY_KEYSET_FILE",
            reason: format!("{}: {e}", path.display()),
        });
    }
    let kid = settings
        .signing_key_id
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_ID.to_string());
    validate_kid(&kid).map_err(|reason| KeyError::BadValue {
        var: "LAP_GATEWAY_SIGNING_KEY_ID",
        reason,
    })?;
    if let Some(cmd) = &settings.signing_cmd {
        let pk = settings
            .public_key_hex
            .as_deref()
            .ok_or(KeyError::BadValue {
                var: "LAP_GATEWAY_PUBLIC_KEY_HEX",
                reason: "LAP_GATEWAY_SIGNING_CMD needs the signer's pinned public key".into(),
            })?;
        let public_key = parse_public_hex(pk).map_err(|reason| KeyError::BadValue {
            var: "LAP_GATEWAY_PUBLIC_KEY_HEX",
            reason,
        })?;
        let material =
            external_material(cmd, settings.signing_cmd_timeout, "LAP_GATEWAY_SIGNING_CMD")?;
        let entry = KeyEntry {
            kid: kid.clone(),
            public_key,
            material,
            lifecycle: Lifecycle::default(),
        };
        return Keyset::new(
            kid.clone(),
            BTreeMap::from([(kid, entry)]),
            KeySource::SigningCmd,
        );
    }
    if let Some(hex_seed) = &settings.signing_key_hex {
        let key = parse_seed_hex(hex_seed).map_err(|reason| KeyError::BadValue {
            var: "LAP_GATEWAY_SIGNING_KEY",
            reason,
        })?;
        return single(kid, key, KeySource::SigningKey);
    }
    if let Some(path) = &settings.signing_key_file {
        let text = read_private_file(path)?;
        let key = parse_seed_hex(text.trim()).map_err(|reason| KeyError::BadValue {
            var: "LAP_GATEWAY_SIGNING_KEY_FILE",
            reason: format!("{}: {reason}", path.display()),
        })?;
        return single(kid, key, KeySource::SigningKeyFile);
    }
    if settings.allow_ephemeral {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        return single(
            "ephemeral".to_string(),
            SigningKey::from_bytes(&seed),
            KeySource::Ephemeral,
        );
    }
    Err(KeyError::NotConfigured)
}

fn single(kid: String, key: SigningKey, source: KeySource) -> Result<Keyset, KeyError> {
    let entry = KeyEntry {
        kid: kid.clone(),
        public_key: key.verifying_key(),
        material: KeyMaterial::Seed(Box::new(key)),
        lifecycle: Lifecycle::default(),
    };
    Keyset::new(kid.clone(), BTreeMap::from([(kid, entry)]), source)
}

/// Key ids follow the LAP trusted-keys schema: `^[A-Za-z0-9._-]{1,64}$`.
pub fn validate_kid(kid: &str) -> Result<(), String> {
    let ok = !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key id {kid:?} must be 1-64 characters from [A-Za-z0-9._-]"
        ))
    }
}

/// Parses a 32-byte Ed25519 seed written as 64 hex characters.
pub fn parse_seed_hex(s: &str) -> Result<SigningKey, String> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    if s.len() != 64 {
        return Err(format!(
            "expected 64 hex characters (a 32-byte Ed25519 seed), got {}",
            s.len()
        ));
    }
    hex::decode_to_slice(s, seed.as_mut()).map_err(|_| "not hexadecimal".to_string())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Creates `path` holding a fresh random Ed25519 seed (64 hex characters and a newline), mode
/// 0600, durably (the file and its directory). Never overwrites: an existing file is an error.
pub fn create_seed_file(path: &Path) -> Result<SigningKey, String> {
    use std::io::Write;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(seed.as_mut()).map_err(|e| format!("no randomness for a key: {e}"))?;
    let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(seed.as_ref())));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("{}: {e} (refusing to overwrite)", path.display()))?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a 32-byte Ed25519 public key written as 64 hex characters.
pub fn parse_public_hex(s: &str) -> Result<VerifyingKey, String> {
    let mut raw = [0u8; 32];
    if s.len() != 64 {
        return Err(format!(
            "expected 64 hex characters (a 32-byte Ed25519 public key), got {}",
            s.len()
        ));
    }
    hex::decode_to_slice(s, &mut raw).map_err(|_| "not hexadecimal".to_string())?;
    VerifyingKey::from_bytes(&raw).map_err(|_| "not a valid Ed25519 public key".to_string())
}

/// Reads a file that holds secrets, refusing it when group or others may read it.
pub fn read_private_file(path: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    std::fs::read_to_string(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f";

    #[test]
    fn refuses_without_key() {
        assert!(matches!(
            load(&KeySettings::default()),
            Err(KeyError::NotConfigured)
        ));
    }

    #[test]
    fn external_signer_modes() {
        let pk = hex::encode(parse_seed_hex(SEED).unwrap().verifying_key().as_bytes());
        let ks = load(&KeySettings {
            signing_cmd: Some("lap-signer sign --key-file /k".into()),
            public_key_hex: Some(pk.clone()),
            signing_cmd_timeout: Some(0.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ks.source(), KeySource::SigningCmd);
        assert!(matches!(ks.active().material, KeyMaterial::External { .. }));
        assert!(load(&KeySettings {
            signing_cmd: Some("x".into()),
            ..Default::default()
        })
        .is_err());

        let ks = load(&KeySettings {
            signing_key_hex: Some(SEED.into()),
            signer_mode: Some("external".into()),
            signer_cmd: Some("signer --flag".into()),
            ..Default::default()
        })
        .unwrap();
        match &ks.active().material {
            KeyMaterial::External { argv, timeout } => {
                assert_eq!(argv, &["signer", "--flag"]);
                assert_eq!(*timeout, std::time::Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        let err = load(&KeySettings {
            signing_key_hex: Some(SEED.into()),
            signer_mode: Some("external".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("SIGNER_CMD"), "{err}");
    }

    #[test]
    fn ephemeral_only_on_opt_in() {
        let ks = load(&KeySettings {
            allow_ephemeral: true,
            ..Default::default()
        })
        .unwrap();
        assert!(ks.is_ephemeral());
        assert!(ks.active().can_sign());
    }

    #[test]
    fn seed_from_env_and_bad_seed() {
        let ks = load(&KeySettings {
            signing_key_hex: Some(SEED.into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ks.active_kid(), "gateway");
        assert_eq!(ks.source(), KeySource::SigningKey);
        let err = load(&KeySettings {
            signing_key_hex: Some("zz".repeat(32)),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("LAP_GATEWAY_SIGNING_KEY"));
        assert!(!format!("{ks:?}").contains(SEED));
    }

    #[test]
    fn key_file_must_be_private() {
        let dir = std::env::temp_dir().join(format!("lap-keys-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("seed.hex");
        std::fs::write(&path, format!("{SEED}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let settings = KeySettings {
                signing_key_file: Some(path.clone()),
                ..Default::default()
            };
            assert!(matches!(
                load(&settings),
                Err(KeyError::InsecurePermissions { .. })
            ));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let ks = load(&settings).unwrap();
            assert_eq!(ks.source(), KeySource::SigningKeyFile);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
