#!/usr/bin/env bash
# Benchmark harness: builds release binaries and, in one run, measures with wrk
#   (a) the upstream directly, (b) a bare Pingora pass-through, (c) nginx proxy_pass,
#   (d) lap-gateway with auth + policy, (e) lap-gateway full path (+ signed receipts and the
#   durable log), then prints req/s, p50/p99 and ratios; then the added latency at a fixed
#   moderate rate (open loop), and external-signer throughput (co-process and one-shot).
# Knobs: ROUNDS (default 3), DURATION seconds (10), WARMUP seconds (2), CONNS ("32 256"),
#        TARGETS (subset of "direct pingora nginx gateway full"), RATE (fixed-rate req/s, 500),
#        SIGNATURES (co-process sample, 200000), BASELINE_BIN (another lap-gateway binary, e.g. the
#        previous release, measured in the same run as "gateway-base" / "full-base").
# More targets (add them to TARGETS) are described in bench.py and docs/performance.md; the
# limits in Redis ("full-redis") need redis-server, installed here like wrk and nginx (the bench
# runs its own on a free loopback port, whatever the package starts).
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v redis-server >/dev/null || need+=(redis-server)
command -v cmake >/dev/null || need+=(cmake)
bash deploy/apt-install.sh "${need[@]}"
cargo build --release --locked -p lap-gateway -p pingora-passthrough -p lap-signer -p signer-throughput -p tls-load
exec python3 tests/bench/bench.py "$@"
