//! One target for every parser that reads untrusted or operator-supplied bytes. The first byte
//! picks the parser; none may panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = std::str::from_utf8(rest).ok();
    match which % 10 {
        // Agent request bodies.
        // The validate-only check must agree with the parser, error for error.
        0 => {
            let parsed = lap_policy::parse_json_args(rest);
            assert_eq!(
                lap_policy::validate_json_args(rest),
                parsed.as_ref().map(|v| v.is_object()).map_err(Clone::clone)
            );
            if let Ok(v) = parsed {
                let _ = lap_policy::json_to_cedar(&v);
            }
        }
        // Log entries of both kinds (auditor input): envelopes and batched receipts.
        1 => {
            let _ = lap_receipt::open(rest);
            let _ = lap_receipt::open_entry(rest);
            let _ = lap_receipt::is_batched_entry(rest);
        }
        // Signed notes and checkpoints (auditor input).
        2 => {
            if let Some(t) = text {
                if let Ok((body, _)) = lap_tlog::note::split(t) {
                    let _ = lap_tlog::note::Checkpoint::parse(body);
                }
                let _ = lap_tlog::note::Checkpoint::parse(t);
            }
        }
        3 => {
            if let Some(t) = text {
                let _ = lap_tlog::note::NoteVerifier::parse_vkey(t);
                // A call's tlog-proof (agent and auditor input).
                if let Ok(p) = lap_tlog::proof::TlogProof::parse(t) {
                    assert_eq!(lap_tlog::proof::TlogProof::parse(&p.to_text()), Ok(p));
                }
            }
        }
        // Operator files.
        4 => {
            if let Some(t) = text {
                let _ = lap_auth::parse_key_file(t);
            }
        }
        5 => {
            if let Some(t) = text {
                let _ = lap_keys::parse_keyset(t, lap_keys::KeySource::KeysetJson);
            }
        }
        6 => {
            if let Some(t) = text {
                let _ = lap_verify::TrustFile::parse(t);
            }
        }
        // Audit packs as raw archives.
        8 => {
            let _ = lap_verify::pack::verify_pack(rest, &lap_verify::pack::PackOptions::default());
        }
        // Audit packs with well-formed tar framing around fuzzed members (reaches the
        // manifest, entries, proofs and checkpoint checks): members split at 0xFF bytes.
        9 => {
            let mut parts = rest.split(|&b| b == 0xFF);
            let manifest = parts.next().unwrap_or_default().to_vec();
            let names = [
                lap_pack::TRUST,
                lap_pack::ENTRIES,
                lap_pack::PROOFS,
                "checkpoints/000000.note",
                "checkpoints/000001.note",
            ];
            let members = lap_pack::Members(
                names
                    .iter()
                    .zip(parts)
                    .map(|(n, b)| (n.to_string(), b.to_vec()))
                    .collect(),
            );
            let sig = lap_pack::ManifestSignature {
                payload_type: lap_pack::MANIFEST_PAYLOAD_TYPE.into(),
                key: String::new(),
                sig: String::new(),
            };
            let mut tar = Vec::new();
            if lap_pack::write_tar(&mut tar, 0, &manifest, &sig, &members).is_ok() {
                let opts = lap_verify::pack::PackOptions {
                    threads: 1,
                    ..Default::default()
                };
                let _ = lap_verify::pack::verify_pack(&tar[..], &opts);
            }
            let _ = lap_pack::entry_lines(rest).count();
        }
        // Merkle proofs with arbitrary sizes and hashes.
        _ => {
            if rest.len() >= 16 + 64 {
                let n = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) % 1_000_000;
                let (a, b) = (n(&rest[..8]), n(&rest[8..16]));
                let mut h1 = [0u8; 32];
                let mut h2 = [0u8; 32];
                h1.copy_from_slice(&rest[16..48]);
                h2.copy_from_slice(&rest[48..80]);
                let proof: Vec<[u8; 32]> = rest[80..]
                    .chunks_exact(32)
                    .map(|c| c.try_into().unwrap_or([0; 32]))
                    .collect();
                let _ = lap_tlog::merkle::verify_inclusion(a, b, &h1, &proof, &h2);
                let _ = lap_tlog::merkle::verify_consistency(a, b, &h1, &h2, &proof);
            }
        }
    }
});
