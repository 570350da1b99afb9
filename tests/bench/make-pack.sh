#!/usr/bin/env bash
# make-pack.sh WORK N BIN_DIR: in WORK, writes a gateway configuration and a log of N genuine
# signed receipts (pack-gen), then exports one pack of all of them with
# `lap-gateway audit-pack` to WORK/pack.tar and extracts its trust file to WORK/trust.json.
# BIN_DIR holds pack-gen and lap-gateway. Prints the seconds each step took.
set -euo pipefail
work="$1" n="$2" bin="$(cd "$3" && pwd)"
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
now() { date +%s.%N; }
t0=$(now); "$bin/pack-gen" "$work" "$n" "$SEED" "$ORIGIN" >/dev/null; t1=$(now)
"$bin/lap-gateway" audit-pack --config gateway.toml --out pack.tar >/dev/null; t2=$(now)
# The trust file an auditor would pin: what /v1/keys serves, as carried in the pack.
tar -xf pack.tar trust.json
python3 -c "import sys; a, b, c = map(float, sys.argv[1:]); print(f'gen_s={b - a:.2f} export_s={c - b:.2f}')" "$t0" "$t1" "$t2"
