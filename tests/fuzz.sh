#!/usr/bin/env bash
# Fuzzes every parser of untrusted or operator-supplied input (request bodies, receipt
# envelopes, signed notes and checkpoints, verifier keys, key files, keysets, trust files,
# audit packs, Merkle proofs) with libFuzzer for SECONDS (default 60). cargo-fuzz needs nightly features;
# RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
secs=${SECONDS_BUDGET:-${1:-60}}
RUSTC_BOOTSTRAP=1 cargo fuzz run untrusted_inputs -- -max_total_time="$secs" -max_len=65536
