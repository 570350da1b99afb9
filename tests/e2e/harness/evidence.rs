//! The gateway's evidence as an auditor meets it: published keys, receipts and log entries,
//! checkpoints, audit packs, and the verdicts of the real `lap-verify`.
//!
//! The evidence tests and the audit tests fetch the same things (the `/v1/keys` trust
//! document, a checkpoint that covers the whole log, a log entry) and decode them the same way
//! (a DSSE envelope's payload, a checkpoint note's tree size); one copy of each lives here.
//! The rules kept: the evidence endpoints are read as an outsider reads them (over HTTP, bytes
//! as served, decoded independently of the gateway's code where the format is simple), and
//! every wait for background work (completion receipts, checkpoints) is bounded.

use crate::http::HttpResponse;
use crate::process::{lap_signer, lap_verify_json, wait_for, wait_until};
use crate::Gateway;
use serde_json::Value;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the functions here wait for background evidence work (checkpoints, key reloads).
pub const EVIDENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `bytes` to `dir/name` and returns the path.
pub fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write a test file");
    p
}

/// Writes key material (a seed, a keyset, a credential) readable by its owner only (0600), as
/// the gateway and the signer require.
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write a private file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("standard base64")
}

pub fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The receipt (JSON) of a log entry — inside a DSSE envelope (per-receipt mode), or the
/// batched entry itself — decoded here rather than by the gateway's own crates.
pub fn receipt_payload(entry: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(entry).expect("a JSON log entry");
    if v.get("payloadType").is_none() {
        assert_eq!(
            v["version"], 2,
            "a batched entry is a version 2 receipt: {v}"
        );
        return v;
    }
    let payload = base64_decode(v["payload"].as_str().expect("a payload member"));
    serde_json::from_slice(&payload).expect("a JSON receipt")
}

/// What a response carries for a batched receipt: the entry bytes (`x-lap-receipt`) and the
/// C2SP tlog-proof text (`x-lap-receipt-proof`), both base64 on the wire; `None` when the
/// response has none (per-receipt mode puts the envelope itself in `x-lap-receipt`).
pub fn batched_receipt(r: &HttpResponse) -> Option<(Vec<u8>, String)> {
    let proof = r.header("x-lap-receipt-proof")?;
    let entry = base64_decode(r.header("x-lap-receipt")?);
    let proof = String::from_utf8(base64_decode(proof)).expect("a UTF-8 tlog-proof");
    assert!(proof.starts_with("c2sp.org/tlog-proof@v1\n"), "{proof}");
    Some((entry, proof))
}

/// The tree size of a checkpoint note (its second line).
pub fn note_size(note: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(note).lines().nth(1)?.parse().ok()
}

/// A keyset file (`LAP_GATEWAY_KEYSET_FILE`) kept with the real `lap-signer`, as an operator
/// keeps it: seeds generated with `keygen`, keys added, activated and retired with `keyset`.
pub struct KeysetFile {
    dir: PathBuf,
    file: PathBuf,
}

impl KeysetFile {
    /// `dir/keyset.json` (created by the first [`KeysetFile::add`]); seeds go next to it.
    pub fn new(dir: &Path) -> KeysetFile {
        KeysetFile {
            dir: dir.to_path_buf(),
            file: dir.join("keyset.json"),
        }
    }

    /// The path as the gateway's environment takes it.
    pub fn path_str(&self) -> &str {
        self.file.to_str().expect("a UTF-8 temporary path")
    }

    /// `lap-signer keygen --kid KID`: a new seed file `KID.seed`; returns its path.
    pub fn keygen(&self, kid: &str) -> PathBuf {
        let seed = self.dir.join(format!("{kid}.seed"));
        let out = seed.to_str().expect("a UTF-8 temporary path");
        lap_signer(&["keygen", "--out", out, "--kid", kid]);
        seed
    }

    /// `lap-signer keyset add --kid KID --seed-file SEED`.
    pub fn add(&self, kid: &str, seed: &Path) {
        let seed = seed.to_str().expect("a UTF-8 temporary path");
        self.keyset(&["add", "--kid", kid, "--seed-file", seed]);
    }

    /// `lap-signer keyset activate --kid KID`.
    pub fn activate(&self, kid: &str) {
        self.keyset(&["activate", "--kid", kid]);
    }

    /// `lap-signer keyset retire --kid KID`.
    pub fn retire(&self, kid: &str) {
        self.keyset(&["retire", "--kid", kid]);
    }

    fn keyset(&self, args: &[&str]) {
        let (command, rest) = args.split_first().expect("a keyset command");
        let mut all = vec!["keyset", command, "--file", self.path_str()];
        all.extend_from_slice(rest);
        lap_signer(&all);
    }
}

/// The outcome of `lap-verify pack`: the verdict and the failures of its JSON report.
pub struct Verdict {
    pub ok: bool,
    /// `(code, index)` of every failure, in report order.
    pub failures: Vec<(String, Option<u64>)>,
    pub report: Value,
}

impl Verdict {
    /// Reads a `lap-verify --json` report.
    pub fn from_report(report: Value) -> Verdict {
        let failures = report["report"]["failures"]
            .as_array()
            .expect("a failures list")
            .iter()
            .map(|f| {
                (
                    f["code"].as_str().expect("a code").to_string(),
                    f["index"].as_u64(),
                )
            })
            .collect();
        Verdict {
            ok: report["ok"] == true,
            failures,
            report,
        }
    }

    pub fn has(&self, code: &str) -> bool {
        self.failures.iter().any(|(c, _)| c == code)
    }

    /// Every failure's code, in report order (repeats kept).
    pub fn failure_codes(&self) -> Vec<&str> {
        self.failures.iter().map(|(c, _)| c.as_str()).collect()
    }

    /// The distinct failure codes.
    pub fn codes(&self) -> BTreeSet<&str> {
        self.failures.iter().map(|(c, _)| c.as_str()).collect()
    }

    /// The indices the failures with this code name.
    pub fn indices(&self, code: &str) -> BTreeSet<u64> {
        self.failures
            .iter()
            .filter(|(c, _)| c == code)
            .filter_map(|(_, i)| *i)
            .collect()
    }

    /// The codes and the report (cut at 3,000 characters), for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = self.report.to_string();
        if s.len() > 3000 {
            let mut cut = 3000;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        format!("codes {:?}; report {s}", self.codes())
    }
}

/// Runs `lap-verify pack PACK EXTRA… --json` (see [`lap_verify_json`]: never a crash, and the
/// exit status agrees with the report).
pub fn verify_pack(pack: &Path, extra: &[&OsStr]) -> Verdict {
    let mut args = vec![OsStr::new("pack"), pack.as_os_str()];
    args.extend_from_slice(extra);
    Verdict::from_report(lap_verify_json(&args))
}

impl Gateway {
    /// The data plane's `/v1/keys` document (what an auditor pins); panics unless 200.
    pub async fn trust_doc(&self) -> Vec<u8> {
        let r = self.get("/v1/keys").send().await;
        assert_eq!(r.status, 200, "/v1/keys: {}", r.text());
        r.body
    }

    /// `/v1/keys` as JSON.
    pub async fn keys_json(&self) -> Value {
        serde_json::from_slice(&self.trust_doc().await).expect("/v1/keys is JSON")
    }

    /// Waits (up to [`EVIDENCE_TIMEOUT`]) until `/v1/keys` names `kid` as the active key (after
    /// a keyset reload); `true` if it did.
    pub async fn wait_for_active_kid(&self, kid: &str) -> bool {
        wait_until(EVIDENCE_TIMEOUT, || async {
            self.get("/v1/keys").send().await.json()["active_kid"] == kid
        })
        .await
    }

    /// The size of the receipt log, as admin `/readyz` reports it.
    pub async fn log_size(&self) -> u64 {
        let r = self.admin_get("/readyz").send().await;
        r.json()["log_size"]
            .as_u64()
            .unwrap_or_else(|| panic!("/readyz without a log size: {}", r.text()))
    }

    /// Admin `/v1/log/entries/{index}`: one receipt envelope as logged.
    pub async fn log_entry(&self, index: u64) -> HttpResponse {
        self.admin_get(&format!("/v1/log/entries/{index}"))
            .send()
            .await
    }

    /// The admin plane's audit pack for `query` (e.g. `from=3&agent=a`); panics unless the
    /// answer is 200 with a tar archive.
    pub async fn audit_pack(&self, query: &str) -> Vec<u8> {
        let path = format!("/v1/audit-pack?{query}");
        let r = self.admin_get(&path).send().await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/x-tar"));
        r.body
    }

    /// Waits (up to [`EVIDENCE_TIMEOUT`]) for a signed checkpoint of at least `min_size`
    /// entries; returns the note and its size. Panics if none comes.
    pub async fn checkpoint_at_least(&self, min_size: u64) -> (String, u64) {
        wait_for(EVIDENCE_TIMEOUT, || async {
            let r = self.admin_get("/v1/log/checkpoint").send().await;
            let size = note_size(&r.body).filter(|_| r.status == 200)?;
            (size >= min_size).then(|| (r.text(), size))
        })
        .await
        .unwrap_or_else(|| panic!("no checkpoint of size ≥ {min_size} within {EVIDENCE_TIMEOUT:?}"))
    }

    /// Waits (up to [`EVIDENCE_TIMEOUT`]) until the latest signed checkpoint covers the whole
    /// receipt log and the log has stopped growing (completion receipts are issued in the
    /// background); returns the checkpoint note and the log size. Panics if it does not happen.
    pub async fn settled_checkpoint(&self) -> (String, u64) {
        wait_for(EVIDENCE_TIMEOUT, || async {
            let size = self.admin_get("/readyz").send().await.json()["log_size"].as_u64()?;
            let cp = self.admin_get("/v1/log/checkpoint").send().await;
            let settled = cp.status == 200 && size > 0 && note_size(&cp.body) == Some(size);
            if !settled {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            let still = self.admin_get("/readyz").send().await.json()["log_size"].as_u64()?;
            (still == size).then(|| (cp.text(), size))
        })
        .await
        .unwrap_or_else(|| panic!("no checkpoint covering the log within {EVIDENCE_TIMEOUT:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_and_envelopes_decode() {
        let note = b"lap.test/x\n42\nAAAA=\n\n\xe2\x80\x94 lap.test/x sig\n";
        assert_eq!(note_size(note), Some(42));
        assert_eq!(note_size(b"origin only\n"), None);
        assert_eq!(note_size(b"origin\nforty-two\n"), None);
        let receipt = br#"{"kind":"decision","log":{"index":7}}"#;
        let envelope = serde_json::json!({
            "payloadType": "application/vnd.lap.receipt+json",
            "payload": base64_encode(receipt),
            "signatures": [],
        });
        let r = receipt_payload(envelope.to_string().as_bytes());
        assert_eq!(
            (r["kind"].as_str(), r["log"]["index"].as_u64()),
            (Some("decision"), Some(7))
        );
    }

    #[test]
    fn verdicts_read_the_report() {
        let v = Verdict::from_report(serde_json::json!({
            "ok": false,
            "report": {"failures": [
                {"code": "BAD_SIGNATURE", "index": 4},
                {"code": "MANIFEST_HASH_MISMATCH"},
                {"code": "BAD_SIGNATURE", "index": 2},
            ]},
        }));
        assert!(!v.ok);
        assert!(v.has("BAD_SIGNATURE") && !v.has("UNKNOWN_KEY"));
        assert_eq!(
            v.failure_codes(),
            ["BAD_SIGNATURE", "MANIFEST_HASH_MISMATCH", "BAD_SIGNATURE"]
        );
        assert_eq!(
            v.codes().into_iter().collect::<Vec<_>>(),
            ["BAD_SIGNATURE", "MANIFEST_HASH_MISMATCH"]
        );
        assert_eq!(v.indices("BAD_SIGNATURE"), BTreeSet::from([2, 4]));
        assert!(v.summary().starts_with("codes {"));
    }
}
