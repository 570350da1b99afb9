#!/usr/bin/env bash
# Builds the auditor CLI `lap-verify` as a static executable (glibc with crt-static; it makes
# no network or name-service calls) and checks that this very binary verifies a pack exported
# by `lap-gateway audit-pack` from a generated log. Needs the debug binaries (pack-gen,
# lap-gateway) built first, as tests/run.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --release -p lap-verify --target "$host"
bin="$target_dir/$host/release/lap-verify"
if ldd "$bin" 2>&1 | grep -q "=>"; then
  echo "lap-verify is dynamically linked:"; ldd "$bin"; exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bash tests/bench/make-pack.sh "$work" 3000 "$target_dir/debug" >/dev/null
"$bin" pack "$work/pack.tar" --trusted-keys "$work/trust.json"
"$bin" pack - --trusted-keys "$work/trust.json" < "$work/pack.tar" >/dev/null   # from a pipe
# And it refuses a damaged copy.
head -c 200000 "$work/pack.tar" > "$work/cut.tar"
if "$bin" pack "$work/cut.tar" --trusted-keys "$work/trust.json"; then
  echo "a truncated pack was accepted"; exit 1
fi
echo "static lap-verify: ok ($(du -h "$bin" | cut -f1))"
