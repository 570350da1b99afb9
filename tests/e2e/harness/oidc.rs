//! A real OpenID provider (`tests/oidc/provider.mjs`: the certified `oidc-provider` package on
//! Node) and the test's own signing keys.
//!
//! The test generates the keys (RSA with the `openssl` tool, Ed25519 with ring) and hands the
//! provider its private keys, so that it can also mint the tokens no provider would issue:
//! expired, not yet valid, for another audience, `alg: none`, HMAC over the public key,
//! tampered, signed with a key the issuer never published. The provider listens on a leased
//! loopback port and is killed when dropped; restarting it on the same port with other keys is
//! a key rotation at the issuer, stopping it an issuer outage.

use crate::http::Request;
use crate::ports::{loopback, PortLease};
use crate::process::{repo_root, wait_for, ChildGuard};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{self as sig, KeyPair};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the provider may take to answer its discovery document after start.
pub const OIDC_READY_TIMEOUT: Duration = Duration::from_secs(20);

enum Signer {
    Rsa(sig::RsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

/// A signing key of the test: its private half (PEM, for the provider) and public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: &'static str,
    pem: String,
    signer: Signer,
    jwk: Value,
}

impl SigningKey {
    /// A 2048-bit RSA key (RS256).
    pub fn rsa(kid: &str) -> SigningKey {
        let dir = tempfile::tempdir().expect("tempdir");
        let pem_path = dir.path().join("k.pem");
        let der_path = dir.path().join("k.der");
        let ok = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl (tests/run.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let pem = pem_path.to_str().expect("path");
        ok(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem,
        ]);
        let der = der_path.to_str().expect("path");
        ok(&[
            "rsa",
            "-in",
            pem,
            "-traditional",
            "-outform",
            "DER",
            "-out",
            der,
        ]);
        let kp = sig::RsaKeyPair::from_der(&std::fs::read(&der_path).expect("der")).expect("rsa");
        let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(kp.public());
        let jwk = json!({"kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e),
                         "kid": kid, "alg": "RS256", "use": "sig"});
        SigningKey {
            kid: kid.into(),
            alg: "RS256",
            pem: std::fs::read_to_string(&pem_path).expect("pem"),
            signer: Signer::Rsa(kp),
            jwk,
        }
    }

    /// An Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> SigningKey {
        let pkcs8 =
            sig::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("ed25519");
        let kp = sig::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ed25519");
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(kp.public_key().as_ref()),
                         "kid": kid, "alg": "EdDSA", "use": "sig"});
        let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
        SigningKey {
            kid: kid.into(),
            alg: "EdDSA",
            pem: format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
            signer: Signer::Ed(kp),
            jwk,
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A token with this key's `alg` and `kid` over `claims`.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": self.alg, "typ": "at+jwt", "kid": self.kid}),
            claims,
        )
    }

    /// A token with exactly this header.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let s = match &self.signer {
            Signer::Rsa(kp) => {
                let mut out = vec![0; kp.public().modulus_len()];
                kp.sign(
                    &sig::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    signed.as_bytes(),
                    &mut out,
                )
                .expect("sign");
                out
            }
            Signer::Ed(kp) => kp.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", B64.encode(s))
    }
}

/// A JWKS document of the keys' public halves.
pub fn jwks_json(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A token signed with HMAC-SHA256 keyed by `secret` (the alg-confusion attack).
pub fn hs256_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let signed = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!(
        "{signed}.{}",
        B64.encode(ring::hmac::sign(&key, signed.as_bytes()))
    )
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A running `tests/oidc/provider.mjs`. Killed when dropped.
pub struct OidcProvider {
    child: Option<ChildGuard>,
    lease: PortLease,
    dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts the provider with `keys` (the first signs) on a fresh leased port.
    pub async fn start(keys: &[&SigningKey]) -> OidcProvider {
        let mut p = OidcProvider {
            child: None,
            lease: PortLease::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        p.restart_with(keys).await;
        p
    }

    /// `http://127.0.0.1:PORT`: the issuer.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.lease.port())
    }

    /// Stops the provider (an issuer outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill_and_reap();
        }
    }

    /// (Re)starts the provider on its port with other keys (a key rotation at the issuer).
    pub async fn restart_with(&mut self, keys: &[&SigningKey]) {
        self.stop();
        let modules = repo_root().join("tests/oidc/node_modules/oidc-provider");
        assert!(
            modules.exists(),
            "{} is missing: run tests/run.sh (it runs npm ci in tests/oidc, and brings a recent Node.js when the system's is too old)",
            modules.display()
        );
        let list: Vec<Value> = keys
            .iter()
            .map(|k| json!({"kid": k.kid, "alg": k.alg, "pem": k.pem}))
            .collect();
        let keys_file = self.dir.path().join("keys.json");
        std::fs::write(&keys_file, Value::Array(list).to_string()).expect("keys file");
        let log = std::fs::File::create(self.dir.path().join("provider.log")).expect("log");
        // tests/run.sh puts a recent enough Node.js there when the system's is too old.
        let bundled = repo_root().join("tests/oidc/.runtime/node");
        let mut cmd = Command::new(if bundled.exists() {
            bundled.into_os_string()
        } else {
            "node".into()
        });
        cmd.arg(repo_root().join("tests/oidc/provider.mjs"))
            .arg(self.lease.port().to_string())
            .arg(&keys_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(ChildGuard::spawn(&mut cmd));
        let addr = loopback(self.lease.port());
        let ready = wait_for(OIDC_READY_TIMEOUT, || async move {
            let r = Request::get(addr, "/.well-known/openid-configuration")
                .try_send(Duration::from_secs(2))
                .await?;
            (r.status == 200).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "the OpenID provider did not start:\n{}",
            self.log()
        );
    }

    /// The provider's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    /// A client-credentials access token (a JWT) of `client` for `resource` (RFC 8707), with
    /// `scope` when given. Clients: `agent-1` (files:read files:write), `agent-2` (files:read).
    pub async fn token(&self, client: &str, resource: &str, scope: Option<&str>) -> String {
        let mut form = format!(
            "grant_type=client_credentials&client_id={client}&client_secret={client}-secret&resource={}",
            percent(resource)
        );
        if let Some(s) = scope {
            form.push_str(&format!("&scope={}", percent(s)));
        }
        let r = Request::post(loopback(self.lease.port()), "/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await;
        assert_eq!(r.status, 200, "token endpoint: {}", r.text());
        r.json()["access_token"]
            .as_str()
            .expect("an access token")
            .to_string()
    }

    /// The provider's directory (its keys file and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
