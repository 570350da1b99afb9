//! A batched log made by the gateway's evidence pipeline, and the complete audit pack of it.

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use lap_evidence::{Issued, Ledger, Mode, Observer, Settings, SignerSlot};
use lap_pack::{ConsistencyProof, InclusionProof, Manifest, ManifestSignature, Members, Proofs};
use lap_receipt::*;
use lap_signing::InProcess;
use lap_tlog::merkle::Tree;
use lap_tlog::note::{Checkpoint, NoteVerifier};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::format_description::FormatItem;
use time::macros::format_description;

/// `issued_at` as the gateway writes it.
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The receipt key's id (the default id of a single key).
const KID: &str = "gateway";

/// Collects the size of every batch the ledger made durable.
#[derive(Default)]
struct Batches(Mutex<Vec<usize>>);

impl Observer for Batches {
    fn signed(&self, _: &'static str, _: bool, _: &'static str) {}
    fn batch(&self, entries: usize, _: Duration) {
        if let Ok(mut sizes) = self.0.lock() {
            sizes.push(entries);
        }
    }
    fn checkpoint(&self, _: u64) {}
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(TIMESTAMP)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".into())
}

/// The decision receipt draft of call `call` by client `client` (shape and size of a real
/// allowed tool call; id, signer, position and blinder are the sequencer's).
fn decision(call: u64, client: usize) -> Receipt {
    let digest = |s: &str| sha256_hex(format!("{s}{call}").as_bytes());
    Receipt {
        version: 0,
        receipt_id: String::new(),
        kind: Kind::Decision,
        issued_at: now(),
        gateway_id: "lap-gateway".into(),
        request_id: format!("req-{call:016x}"),
        principal: Some(Principal {
            agent_id: format!("agent-{}", client % 7),
            credential: lap_receipt::Credential::ApiKey {
                key_id: format!("key-{}", client % 7),
                key_hash_prefix: "sha256:0123456789ab".into(),
            },
        }),
        call: Call {
            tool: Some(["search", "mail", "files"][(call % 3) as usize].into()),
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
        signer: Default::default(),
        log: Default::default(),
        blinder: None,
    }
}

/// The completion receipt draft of the call whose decision receipt is `issued`.
fn completion(call: u64, client: usize, issued: &Issued, started: Instant) -> Receipt {
    let mut r = decision(call, client);
    r.kind = Kind::Completion;
    r.completion = Some(Completion {
        decision_receipt_id: issued.receipt_id.clone(),
        decision_log_index: issued.index,
        decision_leaf_hash: Some(hex::encode(issued.leaf_hash)),
        status: 200,
        response_sha256: sha256_hex(format!("response{call}").as_bytes()),
        bytes_in: r.call.body_bytes,
        bytes_out: 2_417,
        duration_ms: started.elapsed().as_millis() as u64,
        error_code: None,
        budgets: Vec::new(),
    });
    r
}

/// One client in a closed loop: a call's decision receipt, then its completion receipt, then
/// the next call, until `n` receipts were asked for.
async fn client(
    ledger: Arc<Ledger>,
    next: Arc<AtomicU64>,
    n: u64,
    id: usize,
) -> Result<(), String> {
    let failed = |e: lap_evidence::EvidenceError| format!("issuing a receipt: {}: {e}", e.code());
    loop {
        let call = next.fetch_add(1, Ordering::Relaxed);
        if call >= n {
            return Ok(());
        }
        let started = Instant::now();
        let issued = ledger.issue(decision(call, id)).await.map_err(failed)?;
        if next.fetch_add(1, Ordering::Relaxed) >= n {
            return Ok(());
        }
        ledger
            .issue(completion(call, id, &issued, started))
            .await
            .map_err(failed)?;
    }
}

/// A second key for the log, derived from the receipt key's seed (a fresh gateway makes its
/// own log key).
fn log_key(key: &SigningKey) -> Result<SigningKey, String> {
    let mut material = b"lap bench log key ".to_vec();
    material.extend_from_slice(&key.to_bytes());
    let seed = hex::decode(sha256_hex(&material)).map_err(|e| e.to_string())?;
    let seed: [u8; 32] = seed.try_into().map_err(|_| "log key seed")?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn run(out: &Path, n: u64, key: &SigningKey, origin: &str, calls: usize) -> Result<(), String> {
    let log_key = log_key(key)?;
    let dir = out.join("log");
    let batches = Arc::new(Batches::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let settings = Settings {
        origin: origin.to_string(),
        mode: Mode::Batched,
        checkpoint_every: u64::MAX,
        checkpoint_interval: Duration::from_secs(3600),
        tail_keys: Default::default(),
    };
    let started = Instant::now();
    let (ledger, _) = Ledger::open(
        &dir,
        settings,
        SignerSlot {
            signer: Arc::new(InProcess::new(KID, key.clone())),
            ephemeral: false,
        },
        Arc::new(InProcess::new("log", log_key.clone())),
        batches.clone(),
    )
    .map_err(|e| e.to_string())?;
    let ledger = Arc::new(ledger);
    let next = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for id in 0..calls {
            clients.spawn(client(ledger.clone(), next.clone(), n, id));
        }
        while let Some(done) = clients.join_next().await {
            done.map_err(|e| format!("a client failed: {e}"))??;
        }
        Ok::<_, String>(())
    })?;
    let issued = started.elapsed();
    drop(ledger);
    // The ledger's threads bring the `checkpoint` file up to date once idle; every batch's
    // checkpoint is already durable in the history.
    let want = format!("\n{n}\n");
    for _ in 0..500 {
        if lap_tlog::store::read_checkpoint(&dir)
            .map_err(|e| e.to_string())?
            .is_some_and(|c| c.contains(&want))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let sizes = batches.0.lock().map_err(|_| "batch sizes")?.clone();
    let (min, max) = (sizes.iter().min(), sizes.iter().max());
    println!(
        "{n} batched receipts in {} ({:.1} s, {} calls in flight): {} batches, {:.0} receipts per batch (min {}, max {})",
        dir.display(),
        issued.as_secs_f64(),
        calls,
        sizes.len(),
        n as f64 / sizes.len().max(1) as f64,
        min.copied().unwrap_or_default(),
        max.copied().unwrap_or_default(),
    );

    let vkey = NoteVerifier::new(origin, log_key.verifying_key())
        .map_err(|e| e.to_string())?
        .to_vkey();
    let trust = lap_keys::TrustDocument {
        active_kid: KID.into(),
        keys: vec![lap_keys::PublishedKey {
            key_id: KID.into(),
            alg: lap_keys::Alg::Ed25519,
            public_key_hex: hex::encode(key.verifying_key().as_bytes()),
            status: lap_keys::KeyStatus::Active,
            not_before: None,
            not_after: None,
            retired_at: None,
            revoked_at: None,
        }],
        log: Some(lap_keys::LogKey {
            origin: origin.to_string(),
            vkey: vkey.clone(),
        }),
    }
    .to_json();
    std::fs::write(out.join("trust.json"), &trust).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let pack = out.join("pack.tar");
    let (entries, checkpoints) = export(&dir, origin, trust.as_bytes(), &log_key, &vkey, &pack)?;
    println!(
        "{entries} entries and {checkpoints} checkpoints in {} ({:.1} s)",
        pack.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A complete pack of the whole log (under its latest checkpoint), as `lap-gateway
/// audit-pack` makes it without a range or filter: `entries.txt`, the checkpoint of every
/// batch (the last is the anchor), a consistency proof between each two, one multi-leaf
/// inclusion proof; the manifest signed by the log key. Returns (entries, checkpoints).
fn export(
    dir: &Path,
    origin: &str,
    trust_json: &[u8],
    log_key: &SigningKey,
    vkey: &str,
    out: &Path,
) -> Result<(u64, usize), String> {
    let log = lap_tlog::store::read_only(dir).map_err(|e| e.to_string())?;
    if log.corrupt_at.is_some() {
        return Err("the log is damaged".into());
    }
    let tree = Tree::from_entries(&log.entries);
    let mut by_size: BTreeMap<u64, &String> = BTreeMap::new();
    for text in log.checkpoints.iter().chain(&log.checkpoint) {
        if let Ok(cp) = Checkpoint::from_note_unverified(text) {
            if cp.origin == origin {
                by_size.insert(cp.size, text);
            }
        }
    }
    let (&tree_size, _) = by_size.last_key_value().ok_or("no checkpoint")?;
    let mut entries_txt = Vec::with_capacity(log.entries.iter().map(|e| e.len() + 9).sum());
    let mut batched = Vec::new();
    for (index, entry) in log.entries.iter().take(tree_size as usize).enumerate() {
        let index = index as u64;
        if is_batched_entry(entry) {
            batched.push(index);
        }
        lap_pack::push_entry_line(&mut entries_txt, index, entry).map_err(|e| e.to_string())?;
    }
    // The anchor, and the first checkpoint covering each batched entry (its batch's).
    let mut chosen: BTreeMap<u64, &String> = BTreeMap::new();
    chosen.insert(tree_size, by_size[&tree_size]);
    let mut covered_below = 0;
    for &index in &batched {
        if index < covered_below {
            continue;
        }
        if let Some((&s, &note)) = by_size.range(index + 1..).next() {
            chosen.insert(s, note);
            covered_below = s;
        }
    }
    let chosen: Vec<(u64, &String)> = chosen.into_iter().collect();
    let indices: Vec<u64> = (0..tree_size).collect();
    let range = |e: lap_tlog::merkle::RangeError| e.to_string();
    let inclusion = tree.multi_proof(&indices, tree_size).map_err(range)?;
    let consistency = chosen
        .windows(2)
        .map(|w| {
            let (old, new) = (w[0].0, w[1].0);
            let hashes = tree.consistency_proof(old, new).map_err(range)?;
            Ok(ConsistencyProof {
                old,
                new,
                hashes: lap_pack::encode_hashes(&hashes),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let proofs = Proofs {
        inclusion: InclusionProof {
            tree_size,
            hashes: lap_pack::encode_hashes(&inclusion),
        },
        consistency,
    };
    let mut members = vec![(lap_pack::TRUST.to_string(), trust_json.to_vec())];
    for (k, (_, text)) in chosen.iter().enumerate() {
        members.push((lap_pack::checkpoint_name(k), text.as_bytes().to_vec()));
    }
    members.push((lap_pack::ENTRIES.to_string(), entries_txt));
    let proofs = serde_json::to_vec_pretty(&proofs).map_err(|e| e.to_string())?;
    members.push((lap_pack::PROOFS.to_string(), proofs));
    let members = Members(members);
    let manifest = Manifest {
        format: lap_pack::FORMAT.to_string(),
        origin: origin.to_string(),
        created_at: now(),
        selection: lap_pack::Selection {
            from: 0,
            to: tree_size,
            since: None,
            until: None,
            agent: None,
            tool: None,
            complete: true,
        },
        tree_size,
        entries: tree_size,
        since_size: None,
        files: members.digests(),
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let sig = log_key.sign(&lap_pack::signing_message(&manifest_json));
    let signature = ManifestSignature {
        payload_type: lap_pack::MANIFEST_PAYLOAD_TYPE.to_string(),
        key: vkey.to_string(),
        sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    };
    let mtime = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    lap_pack::write_tar(&mut writer, mtime, &manifest_json, &signature, &members)
        .map_err(|e| e.to_string())?;
    std::io::Write::flush(&mut writer).map_err(|e| e.to_string())?;
    Ok((tree_size, chosen.len()))
}
