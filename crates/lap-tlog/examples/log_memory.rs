//! Memory used by an open log: appends N entries to a new log directory (or opens an existing
//! one) and prints the process's resident set size, so the RAM a log costs per entry can be
//! measured at any size.
//!
//! ```text
//! cargo run --release -p lap-tlog --example log_memory -- write DIR 1000000
//! cargo run --release -p lap-tlog --example log_memory -- open DIR
//! ```
//!
//! `write` appends in batches of 1,000 entries of 400 bytes (about a batched receipt) and
//! reports the resident set after the appends; `open` reports it after opening the log (start-
//! up recovery re-reads every entry) and after one inclusion proof per 1,000 entries, then
//! times a multi-leaf proof of every tenth entry and staging a batch of 256 entries (its root
//! and audit paths). `VmHWM` is the peak of the
//! process.

use lap_tlog::store::LogStore;
use std::path::PathBuf;
use std::time::Instant;

const BATCH: u64 = 1_000;
const ENTRY_BYTES: usize = 400;
const STAGED: u64 = 256;
const STAGINGS: u32 = 1_000;

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Time this thread has spent on a CPU, in nanoseconds (unlike wall time, not inflated by
/// other processes on a busy machine).
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn report(what: &str, baseline: u64, entries: u64) {
    let (now, peak) = rss();
    let grown = now.saturating_sub(baseline);
    println!(
        "{what}: {entries} entries, VmRSS {now} KiB (+{grown} KiB over the baseline, {:.1} bytes per entry), VmHWM {peak} KiB",
        grown as f64 * 1024.0 / entries.max(1) as f64
    );
}

fn entry(i: u64) -> Vec<u8> {
    let mut e = format!("{{\"entry\":{i},\"pad\":\"").into_bytes();
    e.resize(ENTRY_BYTES - 2, b'x');
    e.extend_from_slice(b"\"}");
    e
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (baseline, _) = rss();
    println!("baseline: VmRSS {baseline} KiB");
    match args.as_slice() {
        [cmd, dir, n] if cmd == "write" => {
            let n: u64 = n.parse().map_err(|e| format!("N: {e}"))?;
            let dir = PathBuf::from(dir);
            let (store, _) = LogStore::open(&dir).map_err(|e| e.to_string())?;
            let started = Instant::now();
            let mut i = store.size();
            let target = i + n;
            while i < target {
                let batch: Vec<Vec<u8>> = (i..target.min(i + BATCH)).map(entry).collect();
                let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                store.append(&refs).map_err(|e| e.to_string())?;
                i += batch.len() as u64;
            }
            println!("appended {n} entries in {:.1?}", started.elapsed());
            report("after appending", baseline, store.size());
        }
        [cmd, dir] if cmd == "open" => {
            let started = Instant::now();
            let (store, _) = LogStore::open(&PathBuf::from(dir)).map_err(|e| e.to_string())?;
            let size = store.size();
            println!("opened in {:.1?}", started.elapsed());
            report("after opening", baseline, size);
            let started = Instant::now();
            let mut hashes = 0;
            for index in (0..size).step_by(BATCH as usize) {
                let proof = store
                    .with_tree(|t| t.inclusion_proof(index, size))
                    .map_err(|e| e.to_string())?;
                hashes += proof.len();
                store.read(index).map_err(|e| e.to_string())?;
            }
            println!(
                "{} inclusion proofs ({hashes} hashes) and entry reads in {:.1?}",
                size.div_ceil(BATCH),
                started.elapsed()
            );
            report("after proofs", baseline, size);
            // An audit pack of scattered receipts (say, one agent's): one multi-leaf proof.
            let scattered: Vec<u64> = (0..size).step_by(10).collect();
            let started = Instant::now();
            let hashes = store
                .with_tree(|t| t.multi_proof(&scattered, size))
                .map_err(|e| e.to_string())?
                .len();
            println!(
                "multi-leaf proof of {} scattered entries ({hashes} hashes) in {:.1?}",
                scattered.len(),
                started.elapsed()
            );
            // The hot path of batched evidence: a batch's root and audit paths, not appended.
            let batch: Vec<Vec<u8>> = (size..size + STAGED).map(entry).collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let (started, cpu) = (Instant::now(), cpu_ns());
            for _ in 0..STAGINGS {
                store.stage(&refs).map_err(|e| e.to_string())?;
            }
            println!(
                "staging a batch of {STAGED} entries: {:.1?} each ({:.1} µs of CPU)",
                started.elapsed() / STAGINGS,
                cpu_ns().saturating_sub(cpu) as f64 / 1000.0 / f64::from(STAGINGS)
            );
        }
        _ => return Err("usage: log_memory write DIR N | log_memory open DIR".into()),
    }
    Ok(())
}
