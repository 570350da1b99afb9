//! Benchmark evidence in the gateway's own formats.
//!
//! `pack-gen DIR N SEED_HEX ORIGIN` writes `DIR/log` holding N per-receipt envelopes signed
//! with the seed (key id `gateway`, the default id of a single key), with a checkpoint signed
//! by the same key. The receipts have the shape and size of real decision receipts; the log is
//! what a gateway with that key and origin would have written, so `lap-gateway audit-pack` and
//! `lap-verify` treat it exactly like one.
//!
//! `pack-gen DIR N SEED_HEX ORIGIN --batched CALLS` writes a **batched** log of N receipts the
//! way the gateway makes them: the gateway's own evidence pipeline (`lap_evidence::Ledger`,
//! batched mode, in-process signers) issues them for CALLS calls in flight at once, each a
//! decision receipt followed by its completion receipt, so batch sizes (and the checkpoint per
//! batch, signed by the log key and the receipt key) are what that load makes them. The log
//! key is derived from the seed. It then writes `DIR/trust.json` (the `/v1/keys` document)
//! and `DIR/pack.tar`: one complete pack of the whole log, assembled as `lap-gateway
//! audit-pack` assembles it (every batch's checkpoint, consistency proofs between them, one
//! multi-leaf inclusion proof), its manifest signed by the log key.

mod batched;

use ed25519_dalek::Signer as _;
use lap_receipt::*;
use lap_tlog::note::{self, Checkpoint, NoteSignature, NoteVerifier};
use lap_tlog::store::LogStore;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn receipt(i: u64, origin: &str) -> Receipt {
    let digest = |s: &str| sha256_hex(format!("{s}{i}").as_bytes());
    Receipt {
        version: RECEIPT_VERSION,
        receipt_id: format!("rcpt_0123456789ab_{i:x}"),
        kind: Kind::Decision,
        issued_at: format!(
            "2026-11-23T06:{:02}:{:02}.{:06}Z",
            (i / 60_000_000) % 60,
            (i / 1_000_000) % 60,
            i % 1_000_000
        ),
        gateway_id: "lap-gateway".into(),
        request_id: format!("req-{i:016x}"),
        principal: Some(Principal {
            agent_id: format!("agent-{}", i % 7),
            credential: lap_receipt::Credential::ApiKey {
                key_id: format!("key-{}", i % 7),
                key_hash_prefix: "sha256:0123456789ab".into(),
            },
        }),
        call: Call {
            tool: Some(["search", "mail", "files"][(i % 3) as usize].into()),
            method: "POST".into(),
            path: "/v1/query".into(),
            query_sha256: None,
            body_sha256: Some(digest("body")),
            body_bytes: 958,
            args_sha256: Some(digest("args")),
            session: None,
        },
        decision: Decision {
            outcome: Outcome::Allow,
            code: "ALLOWED".into(),
            policy_ids: vec!["bench".into()],
            policy_digest: digest("policy"),
        },
        completion: None,
        aggregate: None,
        signer: lap_receipt::Signer {
            key_id: "gateway".into(),
            mode: "in_process".into(),
            ephemeral: false,
        },
        log: LogPosition {
            origin: origin.into(),
            index: i,
        },
        blinder: None,
    }
}

/// The per-receipt log (version 1 envelopes, one checkpoint).
fn per_receipt(
    dir: &Path,
    n: u64,
    key: &ed25519_dalek::SigningKey,
    origin: &str,
) -> Result<(), String> {
    let (store, _) = LogStore::open(dir).map_err(|e| e.to_string())?;
    let mut i = 0;
    while i < n {
        let batch: Vec<Vec<u8>> = (i..n.min(i + 10_000))
            .map(|j| {
                let r = receipt(j, origin);
                let sig = key.sign(&r.envelope().pae()).to_bytes();
                r.signed("gateway", sig).to_json().into_bytes()
            })
            .collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        store.append(&refs).map_err(|e| e.to_string())?;
        i += batch.len() as u64;
    }
    let root = store.with_tree(|t| t.root(n)).map_err(|e| e.to_string())?;
    let text = Checkpoint {
        origin: origin.to_string(),
        size: n,
        root,
        extensions: Vec::new(),
    }
    .to_text();
    let verifier = NoteVerifier::new(origin, key.verifying_key()).map_err(|e| e.to_string())?;
    let signed = note::assemble(
        &text,
        &[NoteSignature {
            name: verifier.name.clone(),
            id: verifier.id,
            sig: key.sign(text.as_bytes()).to_bytes().to_vec(),
        }],
    );
    store.save_checkpoint(&signed).map_err(|e| e.to_string())?;
    println!("{n} receipts in {}", dir.display());
    Ok(())
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: pack-gen DIR N SEED_HEX ORIGIN [--batched CALLS]";
    let (dir, n, seed, origin, calls) = match &args[..] {
        [_, dir, n, seed, origin] => (dir, n, seed, origin, None),
        [_, dir, n, seed, origin, flag, calls] if flag == "--batched" => {
            let calls: usize = calls.parse().map_err(|_| "CALLS must be a number")?;
            (dir, n, seed, origin, Some(calls.max(1)))
        }
        _ => return Err(usage.into()),
    };
    let n: u64 = n.parse().map_err(|_| "N must be a number")?;
    let key = lap_keys::parse_seed_hex(seed).map_err(|e| e.to_string())?;
    let out = PathBuf::from(dir);
    let log = out.join("log");
    if log.exists() {
        return Err(format!("{} exists", log.display()));
    }
    match calls {
        None => per_receipt(&log, n, &key, origin),
        Some(calls) => batched::run(&out, n, &key, origin, calls),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pack-gen: {e}");
            ExitCode::FAILURE
        }
    }
}
