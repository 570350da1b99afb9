//! Measures signatures per second through `lap-signing`'s external seams, each signature
//! verified against the pinned key exactly as the gateway does.
//!
//! `signer-throughput LAP_SIGNER_BIN [SIGNATURES] [IN_FLIGHT]`
//!
//! Prints one line per mode: `coprocess: N signatures in S s = R/s` and the same for
//! `oneshot` (one process per signature, the LAP contract; a smaller sample).

use lap_signing::{CoProcess, Limits, OneShot, Signer};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEED: &str = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c";

async fn run(signer: Arc<dyn Signer>, total: usize, in_flight: usize) -> Result<f64, String> {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut issued = 0;
    let mut done = 0;
    while done < total {
        while issued < total && set.len() < in_flight {
            let s = signer.clone();
            let msg =
                format!("receipt payload number {issued} with some realistic length ........");
            set.spawn(async move { s.sign(msg.as_bytes()).await });
            issued += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(_))) => done += 1,
            Some(Ok(Err(e))) => return Err(format!("signature {done} failed: {e}")),
            Some(Err(e)) => return Err(e.to_string()),
            None => break,
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(bin) = args.get(1) else {
        eprintln!("usage: signer-throughput LAP_SIGNER_BIN [SIGNATURES] [IN_FLIGHT]");
        std::process::exit(2);
    };
    let total: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let in_flight: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(512);
    let dir = std::env::temp_dir().join(format!("signer-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let seed = dir.join("k.seed");
    std::fs::write(&seed, SEED).expect("seed");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let public = lap_keys::parse_seed_hex(SEED)
        .expect("seed")
        .verifying_key();
    let key_file = seed.display().to_string();

    // Pipelined: IN_FLIGHT requests written to the signer at once (the gateway's
    // `[signing] max_in_flight`; its default, 1, makes each signature a round trip).
    let timeout = Duration::from_secs(10);
    let co: Arc<dyn Signer> = Arc::new(CoProcess::with_limits(
        "bench".into(),
        public,
        vec![
            bin.clone(),
            "serve".into(),
            "--key-file".into(),
            key_file.clone(),
        ],
        timeout,
        Limits {
            max_in_flight: in_flight,
            ..Limits::coprocess(timeout)
        },
    ));
    // Warm-up: the first request waits for the process to start.
    if let Err(e) = run(co.clone(), 1000, 64).await {
        eprintln!("co-process signer failed: {e}");
        std::process::exit(1);
    }
    match run(co, total, in_flight).await {
        Ok(s) => println!(
            "coprocess: {total} signatures in {s:.2} s = {:.0}/s (in flight {in_flight})",
            total as f64 / s
        ),
        Err(e) => {
            eprintln!("co-process signer failed: {e}");
            std::process::exit(1);
        }
    }
    let one: Arc<dyn Signer> = Arc::new(OneShot::new(
        "bench".into(),
        public,
        vec![bin.clone(), "sign".into(), "--key-file".into(), key_file],
        Duration::from_secs(10),
    ));
    let n = 300;
    match run(one, n, 8).await {
        Ok(s) => println!(
            "oneshot: {n} signatures in {s:.2} s = {:.0}/s (in flight 8)",
            n as f64 / s
        ),
        Err(e) => eprintln!("one-shot signer failed: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
