#!/usr/bin/env bash
# Audit-pack benchmark: writes a log of N genuine signed receipts (default 1,000,000), exports
# one pack of all of them with `lap-gateway audit-pack`, then times `lap-verify pack` on it
# (all CPUs, and one thread). Knobs: N, THREADS (verifier threads, default all), KEEP=1 keeps
# the work directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${N:-1000000}"
cargo build --release --locked -p lap-gateway -p lap-verify -p pack-gen
REL="${CARGO_TARGET_DIR:-target}/release"
work="$(mktemp -d)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
SEED=8a5c1c2e6f0d4b3a29181706f5e4d3c2b1a09f8e7d6c5b4a392817160504a3b2
ORIGIN=lap.bench/audit
export LAP_GATEWAY_SIGNING_KEY="$SEED" LAP_LOG=warn
h=$(printf 'bench-key' | sha256sum | cut -d' ' -f1)
echo "{\"keys\": [{\"id\": \"b\", \"hash\": \"sha256:$h\", \"agent_id\": \"bench\"}]}" > "$work/keys.json"
echo '@id("none") forbid(principal, action, resource);' > "$work/policy.cedar"
cat > "$work/gateway.toml" <<TOML
[auth]
api_keys_file = "keys.json"
[policy]
file = "policy.cedar"
[log]
dir = "log"
origin = "$ORIGIN"
TOML
cd "$work"
secs() { python3 -c 'import sys,time; print(f"{time.time():.3f}")'; }
t0=$(secs); "$OLDPWD/$REL/pack-gen" "$work" "$N" "$SEED" "$ORIGIN"; t1=$(secs)
"$OLDPWD/$REL/lap-gateway" audit-pack --config gateway.toml --out pack.tar; t2=$(secs)
ls -l pack.tar
# The trust file an auditor would pin: the pack's own, extracted (it is what /v1/keys serves).
tar -xf pack.tar trust.json
run_verify() {
  /usr/bin/time -f "%e s, max RSS %M KiB" "$OLDPWD/$REL/lap-verify" pack pack.tar --trusted-keys trust.json --threads "$1" > verify.out 2> time.out
  tail -1 verify.out; cat time.out
}
t3=$(secs); run_verify "${THREADS:-0}"; t4=$(secs)
t5=$(secs); run_verify 1; t6=$(secs)
python3 - "$N" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$t6" <<'PY'
import sys
n = int(sys.argv[1]); t = [float(x) for x in sys.argv[2:]]
gen, export, v_all, v_one = t[1] - t[0], t[2] - t[1], t[4] - t[3], t[6] - t[5]
print(f"receipts: {n:,}")
print(f"write log (sign + append): {gen:.1f} s")
print(f"export pack (lap-gateway audit-pack): {export:.1f} s ({n / export:,.0f} receipts/s)")
print(f"verify pack, all CPUs: {v_all:.1f} s ({n / v_all:,.0f} receipts/s)")
print(f"verify pack, 1 thread: {v_one:.1f} s ({n / v_one:,.0f} receipts/s)")
PY
