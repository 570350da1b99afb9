//! The settings that select key material, each with where it came from.

use crate::keyset::{self, command_argv, signer_timeout, CommandError, KeysetError};
use crate::{
    parse_keyset, parse_public_hex, parse_seed_hex, read_private_file, validate_kid, HexKeyError,
    InvalidKeyId, KeyMaterial, KeySource, Keyset, PrivateFileError, DEFAULT_KEY_ID,
};
use ed25519_dalek::SigningKey;
use std::fmt;
use std::path::PathBuf;

/// Where a setting's value came from. Errors name it, so an operator who wrote
/// `[signing] key_file` reads `signing.key_file: …`, not the name of an environment variable
/// they never set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An environment variable, e.g. `LAP_GATEWAY_SIGNING_KEY_FILE`.
    Env(&'static str),
    /// A configuration-file key, written `section.key`, e.g. `signing.key_file`.
    File(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(name) | Origin::File(name) => f.write_str(name),
        }
    }
}

/// A setting's value and where it came from.
#[derive(Clone, PartialEq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Setting<T> {
    /// A value read from the environment variable `var`.
    pub fn env(var: &'static str, value: T) -> Self {
        Setting {
            value,
            origin: Origin::Env(var),
        }
    }

    /// A value read from the configuration-file key `key` (`section.key`).
    pub fn file(key: &'static str, value: T) -> Self {
        Setting {
            value,
            origin: Origin::File(key),
        }
    }

    /// The error for this setting's value.
    fn refuse(&self, problem: impl Into<SettingError>) -> KeyError {
        KeyError::Setting {
            origin: self.origin,
            problem: problem.into(),
        }
    }
}

/// Shows the origin only: values may be secrets (seeds, inline keysets).
impl<T> fmt::Debug for Setting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Setting({})", self.origin)
    }
}

/// The settings that select key material. Fields mirror the `LAP_*` environment variables;
/// the gateway fills them from those or from its configuration file, and says which.
#[derive(Debug, Default, Clone)]
pub struct KeySettings {
    pub keyset_json: Option<Setting<String>>,
    pub keyset_file: Option<Setting<PathBuf>>,
    pub signing_key_hex: Option<Setting<String>>,
    pub signing_key_file: Option<Setting<PathBuf>>,
    pub signing_key_id: Option<Setting<String>>,
    pub allow_ephemeral: bool,
    /// `LAP_GATEWAY_SIGNING_CMD` + `LAP_GATEWAY_PUBLIC_KEY_HEX`: an external signer with a
    /// pinned public key (no private key in the gateway).
    pub signing_cmd: Option<Setting<String>>,
    pub public_key_hex: Option<Setting<String>>,
    pub signing_cmd_timeout: Option<Setting<f64>>,
    /// `SIGNER_MODE=external` + `SIGNER_CMD` (+ `SIGNER_TIMEOUT_SECONDS`): sign the loaded
    /// key's messages with an external command instead, still verifying against its public key.
    pub signer_mode: Option<Setting<String>>,
    pub signer_cmd: Option<Setting<String>>,
    pub signer_timeout: Option<Setting<f64>>,
}

/// Why key material was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no signing key configured: set LAP_GATEWAY_SIGNING_KEY, LAP_GATEWAY_SIGNING_KEY_FILE, LAP_GATEWAY_KEYSET_JSON or LAP_GATEWAY_KEYSET_FILE (or LAP_ALLOW_EPHEMERAL_SIGNING_KEYS=1 for development)")]
    NotConfigured,
    /// A setting was refused; the message starts with where it came from.
    #[error("{origin}: {problem}")]
    Setting {
        origin: Origin,
        #[source]
        problem: SettingError,
    },
    #[error("no system randomness: {0}")]
    Random(getrandom::Error),
}

/// What is wrong with one setting's value.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error(transparent)]
    File(#[from] PrivateFileError),
    #[error("keyset: {0}")]
    Keyset(#[source] KeysetError),
    #[error("{path}: keyset: {source}")]
    KeysetFile {
        path: PathBuf,
        #[source]
        source: KeysetError,
    },
    #[error("{path}: {source}")]
    SeedFile {
        path: PathBuf,
        #[source]
        source: HexKeyError,
    },
    #[error(transparent)]
    Hex(#[from] HexKeyError),
    #[error(transparent)]
    KeyId(#[from] InvalidKeyId),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("timeout {0} must be in (0, 60] seconds")]
    Timeout(f64),
    #[error("{0:?} is not \"external\" or \"file\"")]
    SignerMode(String),
    #[error("external needs SIGNER_CMD")]
    ExternalWithoutCommand,
    #[error("needs the signer's pinned public key (LAP_GATEWAY_PUBLIC_KEY_HEX)")]
    CommandWithoutPublicKey,
}

/// Loads and validates key material following the precedence in the crate docs.
pub fn load(settings: &KeySettings) -> Result<Keyset, KeyError> {
    let keyset = load_material(settings)?;
    let Some(mode) = &settings.signer_mode else {
        return Ok(keyset);
    };
    match mode.value.as_str() {
        "" | "file" | "local" => Ok(keyset),
        "external" => {
            let cmd = settings
                .signer_cmd
                .as_ref()
                .ok_or_else(|| mode.refuse(SettingError::ExternalWithoutCommand))?;
            let external = external_material(cmd, settings.signer_timeout.as_ref())?;
            Ok(keyset.with_active_material(external))
        }
        other => Err(mode.refuse(SettingError::SignerMode(other.to_string()))),
    }
}

fn external_material(
    cmd: &Setting<String>,
    timeout: Option<&Setting<f64>>,
) -> Result<KeyMaterial, KeyError> {
    let argv =
        command_argv(&keyset::SigningCmd::Line(cmd.value.clone())).map_err(|e| cmd.refuse(e))?;
    let timeout = match timeout {
        None => keyset::DEFAULT_SIGNER_TIMEOUT,
        Some(t) => {
            signer_timeout(t.value).ok_or_else(|| t.refuse(SettingError::Timeout(t.value)))?
        }
    };
    Ok(KeyMaterial::External { argv, timeout })
}

fn load_material(settings: &KeySettings) -> Result<Keyset, KeyError> {
    if let Some(json) = &settings.keyset_json {
        return parse_keyset(&json.value, KeySource::KeysetJson)
            .map_err(|e| json.refuse(SettingError::Keyset(e)));
    }
    if let Some(file) = &settings.keyset_file {
        let text =
            zeroize::Zeroizing::new(read_private_file(&file.value).map_err(|e| file.refuse(e))?);
        return parse_keyset(&text, KeySource::KeysetFile).map_err(|source| {
            file.refuse(SettingError::KeysetFile {
                path: file.value.clone(),
                source,
            })
        });
    }
    let kid = match &settings.signing_key_id {
        Some(id) => {
            validate_kid(&id.value).map_err(|e| id.refuse(e))?;
            id.value.clone()
        }
        None => DEFAULT_KEY_ID.to_string(),
    };
    if let Some(cmd) = &settings.signing_cmd {
        let pk = settings
            .public_key_hex
            .as_ref()
            .ok_or_else(|| cmd.refuse(SettingError::CommandWithoutPublicKey))?;
        let public_key = parse_public_hex(&pk.value).map_err(|e| pk.refuse(e))?;
        let material = external_material(cmd, settings.signing_cmd_timeout.as_ref())?;
        return Ok(Keyset::single(
            kid,
            public_key,
            material,
            KeySource::SigningCmd,
        ));
    }
    if let Some(seed) = &settings.signing_key_hex {
        let key = parse_seed_hex(&seed.value).map_err(|e| seed.refuse(e))?;
        return Ok(in_process(kid, key, KeySource::SigningKey));
    }
    if let Some(file) = &settings.signing_key_file {
        let text =
            zeroize::Zeroizing::new(read_private_file(&file.value).map_err(|e| file.refuse(e))?);
        let key = parse_seed_hex(text.trim()).map_err(|source| {
            file.refuse(SettingError::SeedFile {
                path: file.value.clone(),
                source,
            })
        })?;
        return Ok(in_process(kid, key, KeySource::SigningKeyFile));
    }
    if settings.allow_ephemeral {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(KeyError::Random)?;
        return Ok(in_process(
            "ephemeral".to_string(),
            SigningKey::from_bytes(&seed),
            KeySource::Ephemeral,
        ));
    }
    Err(KeyError::NotConfigured)
}

fn in_process(kid: String, key: SigningKey, source: KeySource) -> Keyset {
    let public_key = key.verifying_key();
    Keyset::single(kid, public_key, KeyMaterial::Seed(Box::new(key)), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f2f";

    fn env<T>(var: &'static str, value: impl Into<T>) -> Option<Setting<T>> {
        Some(Setting::env(var, value.into()))
    }

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
            signing_cmd: env("LAP_GATEWAY_SIGNING_CMD", "lap-signer sign --key-file /k"),
            public_key_hex: env("LAP_GATEWAY_PUBLIC_KEY_HEX", pk.clone()),
            signing_cmd_timeout: env("LAP_GATEWAY_SIGNING_CMD_TIMEOUT_SECONDS", 0.5),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ks.source(), KeySource::SigningCmd);
        assert!(matches!(ks.active().material, KeyMaterial::External { .. }));
        let err = load(&KeySettings {
            signing_cmd: env("LAP_GATEWAY_SIGNING_CMD", "x"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("LAP_GATEWAY_PUBLIC_KEY_HEX"),
            "{err}"
        );
        // A bad timeout is reported under its own name, not the command's.
        let err = load(&KeySettings {
            signing_cmd: env("LAP_GATEWAY_SIGNING_CMD", "x"),
            public_key_hex: env("LAP_GATEWAY_PUBLIC_KEY_HEX", pk),
            signing_cmd_timeout: env("LAP_GATEWAY_SIGNING_CMD_TIMEOUT_SECONDS", 100.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "LAP_GATEWAY_SIGNING_CMD_TIMEOUT_SECONDS: timeout 100 must be in (0, 60] seconds"
        );

        let ks = load(&KeySettings {
            signing_key_hex: env("LAP_GATEWAY_SIGNING_KEY", SEED),
            signer_mode: env("SIGNER_MODE", "external"),
            signer_cmd: env("SIGNER_CMD", "signer --flag"),
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
            signing_key_hex: env("LAP_GATEWAY_SIGNING_KEY", SEED),
            signer_mode: env("SIGNER_MODE", "external"),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("SIGNER_CMD"), "{err}");
        let err = load(&KeySettings {
            signing_key_hex: env("LAP_GATEWAY_SIGNING_KEY", SEED),
            signer_mode: env("SIGNER_MODE", "external"),
            signer_cmd: env("SIGNER_CMD", "'unbalanced"),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "SIGNER_CMD: unbalanced quotes");
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
        let settings = KeySettings {
            signing_key_hex: env("LAP_GATEWAY_SIGNING_KEY", SEED),
            ..Default::default()
        };
        let ks = load(&settings).unwrap();
        assert_eq!(ks.active_kid(), "gateway");
        assert_eq!(ks.source(), KeySource::SigningKey);
        let err = load(&KeySettings {
            signing_key_hex: env("LAP_GATEWAY_SIGNING_KEY", "zz".repeat(32)),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "LAP_GATEWAY_SIGNING_KEY: not hexadecimal");
        assert!(!format!("{ks:?}").contains(SEED));
        assert!(!format!("{settings:?}").contains(SEED));
    }

    #[test]
    fn errors_name_the_configuration_key_the_operator_wrote() {
        let err = load(&KeySettings {
            signing_key_id: Some(Setting::file("signing.key_id", "bad id".to_string())),
            signing_key_hex: env("LAP_GATEWAY_SIGNING_KEY", SEED),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("signing.key_id: key id"),
            "{err}"
        );
        let missing = std::env::temp_dir().join(format!("lap-keys-none-{}", std::process::id()));
        for (key, settings) in [
            (
                "signing.key_file",
                KeySettings {
                    signing_key_file: Some(Setting::file("signing.key_file", missing.clone())),
                    ..Default::default()
                },
            ),
            (
                "signing.keyset_file",
                KeySettings {
                    keyset_file: Some(Setting::file("signing.keyset_file", missing.clone())),
                    ..Default::default()
                },
            ),
        ] {
            let err = load(&settings).unwrap_err();
            assert!(
                matches!(&err, KeyError::Setting { origin: Origin::File(k), problem: SettingError::File(_) } if *k == key),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.starts_with(&format!("{key}: cannot read ")), "{text}");
            assert!(!text.contains("LAP_"), "{text}");
        }
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
                signing_key_file: Some(Setting::file("signing.key_file", path.clone())),
                ..Default::default()
            };
            let err = load(&settings).unwrap_err();
            assert!(
                matches!(
                    &err,
                    KeyError::Setting {
                        origin: Origin::File("signing.key_file"),
                        problem: SettingError::File(PrivateFileError::InsecurePermissions { .. }),
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().starts_with("signing.key_file: "), "{err}");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let ks = load(&settings).unwrap();
            assert_eq!(ks.source(), KeySource::SigningKeyFile);
            // A file that is private but not a seed names the file key and the path.
            std::fs::write(&path, "not a seed\n").unwrap();
            let err = load(&settings).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "signing.key_file: {}: expected 64 hex characters (a 32-byte Ed25519 seed), got 10",
                    path.display()
                )
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
