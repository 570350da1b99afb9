//! Key generation and the hashed form kept in key files.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Prefix of keys minted by `lap-signer apikey create`; it makes leaked keys easy to scan for.
pub const KEY_PREFIX: &str = "lap_";

/// SHA-256 digest of an API key, written `sha256:<64 hex>` in key files.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApiKeyHash([u8; 32]);

impl ApiKeyHash {
    pub fn of_key(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Parses `sha256:<64 hex>` (the hex may be upper or lower case).
    pub fn parse(s: &str) -> Option<Self> {
        let hex_part = s.strip_prefix("sha256:")?;
        if hex_part.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(Self(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A short, non-secret prefix of the digest for logs (`sha256:1a2b3c4d5e6f`).
    pub fn short(&self) -> String {
        format!("sha256:{}", &hex::encode(self.0)[..12])
    }
}

impl std::fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl std::fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

/// Mints a new key: `lap_` + 32 random bytes in URL-safe base64 (256 bits of entropy).
pub fn generate_api_key() -> Result<(String, ApiKeyHash), getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    );
    let hash = ApiKeyHash::of_key(&key);
    Ok((key, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_parse() {
        let (key, hash) = generate_api_key().unwrap();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 43);
        assert_eq!(ApiKeyHash::parse(&hash.to_string()), Some(hash));
        assert_eq!(
            ApiKeyHash::parse(
                &hash
                    .to_string()
                    .to_uppercase()
                    .replacen("SHA256", "sha256", 1)
            ),
            Some(hash)
        );
        assert_eq!(ApiKeyHash::parse("sha256:abc"), None);
        assert_eq!(ApiKeyHash::parse("md5:00"), None);
        // Known vector: SHA-256("abc").
        assert_eq!(
            ApiKeyHash::of_key("abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
