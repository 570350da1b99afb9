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
//! Each setting says where it came from ([`Setting`], [`Origin`]): an environment variable or a
//! configuration-file key. Errors name that origin, so they speak of what the operator wrote.
//!
//! Everything is validated here: hex lengths, that a seed matches a pinned public key, that the
//! active key can sign. Secrets are zeroized on drop and never appear in `Debug` output or errors.
//!
//! Two documents are defined here once, for their writers and their readers alike: the keyset
//! file ([`KeysetFile`], loaded by the gateway, edited by `lap-signer keyset`) and the published
//! trust document ([`TrustDocument`], served at `/v1/keys`, read by `lap-verify`).

mod keyset;
mod settings;
mod trust;

pub use keyset::{
    parse_keyset, CommandError, EntryError, KeyFields, KeyFileEntry, KeysetError, KeysetFile,
    SeedHex, SigningCmd, DEFAULT_SIGNER_TIMEOUT,
};
pub use settings::{load, KeyError, KeySettings, Origin, Setting, SettingError};
pub use trust::{Alg, LogKey, PublishedKey, TrustDocument};

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

/// Where a key stands, as published in the trust document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// The key signing receipts now.
    Active,
    /// Not the active key, neither retired nor revoked.
    Valid,
    /// Stopped signing; its earlier signatures stay valid.
    Retired,
    /// Compromised: signatures made from `revoked_at` on are invalid.
    Revoked,
}

impl KeyStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Valid => "valid",
            KeyStatus::Retired => "retired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

impl Lifecycle {
    /// [`KeyStatus::Revoked`], [`KeyStatus::Retired`] or [`KeyStatus::Valid`] (whether the key
    /// is the active one is the keyset's business, not the key's).
    pub fn status(&self) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.retired_at.is_some() {
            KeyStatus::Retired
        } else {
            KeyStatus::Valid
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
///
/// Invariant (established by [`Keyset::new`]): the active key is in the set, can sign, is
/// neither retired nor revoked, and is inside its validity window at load time.
#[derive(Debug)]
pub struct Keyset {
    active_kid: String,
    keys: BTreeMap<String, KeyEntry>,
    source: KeySource,
}

impl Keyset {
    /// Builds a keyset; the active key must exist, be able to sign and be usable now.
    pub fn new(
        active_kid: String,
        keys: BTreeMap<String, KeyEntry>,
        source: KeySource,
    ) -> Result<Self, KeysetError> {
        let active = keys
            .get(&active_kid)
            .ok_or_else(|| KeysetError::ActiveMissing(active_kid.clone()))?;
        if !active.can_sign() {
            return Err(KeysetError::ActiveCannotSign(active_kid));
        }
        let l = &active.lifecycle;
        if l.revoked_at.is_some() || l.retired_at.is_some() {
            return Err(KeysetError::ActiveNotInService {
                kid: active_kid,
                status: l.status(),
            });
        }
        let now = time::OffsetDateTime::now_utc();
        let at = |s: &Option<String>| {
            s.as_deref()
                .map(keyset::parse_time)
                .transpose()
                .map_err(|e| KeysetError::Entry {
                    kid: active_kid.clone(),
                    problem: e,
                })
        };
        if at(&l.not_before)?.is_some_and(|t| now < t)
            || at(&l.not_after)?.is_some_and(|t| now >= t)
        {
            return Err(KeysetError::ActiveOutsideWindow(active_kid));
        }
        Ok(Self {
            active_kid,
            keys,
            source,
        })
    }

    /// A keyset of one key that signs, with no lifecycle: it satisfies the invariant by
    /// construction.
    fn single(
        kid: String,
        public_key: VerifyingKey,
        material: KeyMaterial,
        source: KeySource,
    ) -> Self {
        debug_assert!(!matches!(material, KeyMaterial::VerifyOnly));
        let entry = KeyEntry {
            kid: kid.clone(),
            public_key,
            material,
            lifecycle: Lifecycle::default(),
        };
        Self {
            active_kid: kid.clone(),
            keys: BTreeMap::from([(kid, entry)]),
            source,
        }
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

    /// Replaces how the active key signs (SIGNER_MODE=external), keeping its public key. An
    /// external command can sign, so the invariant holds.
    fn with_active_material(mut self, material: KeyMaterial) -> Self {
        if let Some(entry) = self.keys.get_mut(&self.active_kid) {
            entry.material = material;
        }
        self
    }
}

/// A key id outside the LAP trusted-keys schema (`^[A-Za-z0-9._-]{1,64}$`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key id {0:?} must be 1-64 characters from [A-Za-z0-9._-]")]
pub struct InvalidKeyId(pub String);

/// Key ids follow the LAP trusted-keys schema: `^[A-Za-z0-9._-]{1,64}$`.
pub fn validate_kid(kid: &str) -> Result<(), InvalidKeyId> {
    let ok = !kid.is_empty()
        && kid.len() <= 64
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(InvalidKeyId(kid.to_string()))
    }
}

/// Why hex text is not an Ed25519 seed or public key. Never carries the text itself (it may
/// be a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HexKeyError {
    #[error("expected 64 hex characters (a 32-byte Ed25519 seed), got {0}")]
    SeedLength(usize),
    #[error("expected 64 hex characters (a 32-byte Ed25519 public key), got {0}")]
    PublicKeyLength(usize),
    #[error("not hexadecimal")]
    NotHex,
    #[error("not a valid Ed25519 public key")]
    NotAPublicKey,
}

/// Parses a 32-byte Ed25519 seed written as 64 hex characters.
pub fn parse_seed_hex(s: &str) -> Result<SigningKey, HexKeyError> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    if s.len() != 64 {
        return Err(HexKeyError::SeedLength(s.len()));
    }
    hex::decode_to_slice(s, seed.as_mut()).map_err(|_| HexKeyError::NotHex)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Parses a 32-byte Ed25519 public key written as 64 hex characters.
pub fn parse_public_hex(s: &str) -> Result<VerifyingKey, HexKeyError> {
    let mut raw = [0u8; 32];
    if s.len() != 64 {
        return Err(HexKeyError::PublicKeyLength(s.len()));
    }
    hex::decode_to_slice(s, &mut raw).map_err(|_| HexKeyError::NotHex)?;
    VerifyingKey::from_bytes(&raw).map_err(|_| HexKeyError::NotAPublicKey)
}

/// Why a new seed file was not made.
#[derive(Debug, thiserror::Error)]
pub enum SeedFileError {
    #[error("no randomness for a key: {0}")]
    Random(getrandom::Error),
    /// The file could not be created: it exists already (never overwritten), or the directory
    /// refuses it.
    #[error("{path}: {source} (refusing to overwrite)")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Creates `path` holding a fresh random Ed25519 seed (64 hex characters and a newline), mode
/// 0600, durably (the file and its directory). Never overwrites: an existing file is an error.
pub fn create_seed_file(path: &Path) -> Result<SigningKey, SeedFileError> {
    use std::io::Write;
    let fail = |source| SeedFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(seed.as_mut()).map_err(SeedFileError::Random)?;
    let text = zeroize::Zeroizing::new(format!("{}\n", hex::encode(seed.as_ref())));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|source| SeedFileError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// Why a file holding secrets was not read.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}")]
    InsecurePermissions { path: PathBuf, mode: u32 },
}

/// Reads a file that holds secrets, refusing it when group or others may read it.
pub fn read_private_file(path: &Path) -> Result<String, PrivateFileError> {
    let io = |source| PrivateFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PrivateFileError::InsecurePermissions {
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
    fn hex_keys_and_key_ids() {
        let key = parse_seed_hex(SEED).unwrap();
        let public = parse_public_hex(&hex::encode(key.verifying_key().as_bytes())).unwrap();
        assert_eq!(public, key.verifying_key());
        assert_eq!(
            parse_seed_hex("ab").unwrap_err(),
            HexKeyError::SeedLength(2)
        );
        assert_eq!(
            parse_seed_hex(&"zz".repeat(32)).unwrap_err(),
            HexKeyError::NotHex
        );
        assert_eq!(
            parse_public_hex("").unwrap_err(),
            HexKeyError::PublicKeyLength(0)
        );
        assert!(validate_kid("k-1.a_b").is_ok());
        for bad in ["", "a b", &"k".repeat(65)] {
            assert_eq!(validate_kid(bad), Err(InvalidKeyId(bad.to_string())));
        }
    }

    #[test]
    fn seed_files_are_new_private_and_readable() {
        let dir = std::env::temp_dir().join(format!("lap-keys-seed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("new.seed");
        let key = create_seed_file(&path).unwrap();
        let text = read_private_file(&path).unwrap();
        assert_eq!(
            parse_seed_hex(text.trim()).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert!(matches!(
            create_seed_file(&path),
            Err(SeedFileError::Create { .. })
        ));
        assert!(matches!(
            read_private_file(&dir.join("missing")),
            Err(PrivateFileError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
