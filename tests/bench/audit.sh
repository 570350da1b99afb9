#!/usr/bin/env bash
# Audit benchmark: offline verification speed on N receipts (default 1,000,000).
#
# MODE=per_receipt (default): writes a log of N genuine signed receipts, exports one pack of all
#   of them with `lap-gateway audit-pack`, then times `lap-verify pack` on it (all CPUs, and
#   one thread).
# MODE=batched: the gateway's evidence pipeline issues N batched receipts (decision and
#   completion receipts of CALLS calls in flight, default 512: the batch sizes that load makes)
#   and the complete pack of them is exported as `lap-gateway audit-pack` exports it
#   (tests/bench/pack-gen --batched); then `lap-verify pack` and `lap-verify log` are timed on
#   them, with wall time, CPU time and peak RSS.
# Knobs: N, MODE, CALLS, THREADS (pack verifier threads, default all), KEEP=1 keeps the work
# directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-1000000}"
MODE="${MODE:-per_receipt}"
SEED=8a5c1c2e6f0d4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a392817160504a3b2
ORIGIN=lap.bench/audit
work="$(mktemp -d)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

if [ "$MODE" = batched ]; then
  cargo build --release --locked -p lap-verify -p pack-gen
  REL="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
  "$REL/pack-gen" "$work" "$N" "$SEED" "$ORIGIN" --batched "${CALLS:-512}"
  ls -l "$work/pack.tar"
  # Wall time, CPU time (user + system) and peak RSS of one lap-verify run; fails unless it
  # verifies.
  python3 - "$N" "$REL/lap-verify" "$work" "${THREADS:-0}" <<'PY'
import os, subprocess, sys, time
n, verify, work, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
trust = os.path.join(work, "trust.json")
runs = [
    ("verify pack, all CPUs" if threads == "0" else f"verify pack, {threads} threads",
     ["pack", os.path.join(work, "pack.tar"), "--trusted-keys", trust, "--threads", threads]),
    ("verify log directory", ["log", os.path.join(work, "log"), "--trusted-keys", trust]),
]
print(f"receipts: {n:,}")
for what, args in runs:
    t0 = time.monotonic()
    p = subprocess.Popen([verify, *args], stdout=subprocess.PIPE)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if status != 0:
        sys.exit(f"{what}: lap-verify failed: {last}")
    cpu = ru.ru_utime + ru.ru_stime
    print(f"{what}: {wall:.2f} s wall, {cpu:.2f} s CPU ({ru.ru_utime:.2f} user + "
          f"{ru.ru_stime:.2f} sys), peak RSS {ru.ru_maxrss / 1024:,.0f} MiB, "
          f"{n / wall:,.0f} receipts/s — {last}")
PY
  exit 0
fi

cargo build --release --locked -p lap-gateway -p lap-verify -p pack-gen
REL="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)"
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
