#!/usr/bin/env bash
# Audit-pack benchmark: writes a log of N genuine signed receipts (default 1,000,000), exports
# one pack of all of them with `lap-gateway audit-pack`, then times `lap-verify pack` on it
# (all CPUs, and one thread). Knobs: N, THREADS (verifier threads, default all), KEEP=1 keeps
# the work directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-1000000}"
cargo build --release --locked -p lap-gateway -p lap-verify -p pack-gen
REL="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
work="$(mktemp -d)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
steps=$(bash tests/bench/make-pack.sh "$work" "$N" "$REL")
eval "$steps"
ls -l "$work/pack.tar"
verify() {
  local t0 t1
  t0=$(date +%s.%N)
  "$REL/lap-verify" pack "$work/pack.tar" --trusted-keys "$work/trust.json" --threads "$1" | tail -1
  t1=$(date +%s.%N)
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$t1"
}
v_all=$(verify "${THREADS:-0}" | tail -1)
v_one=$(verify 1 | tail -1)
python3 - "$N" "$gen_s" "$export_s" "$v_all" "$v_one" <<'PY'
import sys
n = int(sys.argv[1]); gen, export, v_all, v_one = map(float, sys.argv[2:])
print(f"receipts: {n:,}")
print(f"write log (sign + append): {gen:.1f} s")
print(f"export pack (lap-gateway audit-pack): {export:.1f} s ({n / export:,.0f} receipts/s)")
print(f"verify pack, all CPUs: {v_all:.1f} s ({n / v_all:,.0f} receipts/s)")
print(f"verify pack, 1 thread: {v_one:.1f} s ({n / v_one:,.0f} receipts/s)")
PY
