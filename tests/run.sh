#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, then runs
# formatting and lint checks, unit tests and the end-to-end tests (real lap-gateway binary,
# real upstream servers, real nginx, real signer processes, a real OpenID provider
# (oidc-provider on Node, the JWT tests), real MCP servers and agents (the
# official MCP Python SDK), real redis-server processes (the state layer, crates/lap-state),
# and the interop checks against Python securesystemslib (DSSE) and
# Go golang.org/x/mod/sumdb (notes, RFC 6962 proofs)).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v nginx >/dev/null || need+=(nginx)
command -v redis-server >/dev/null || need+=(redis-server)   # lap-state's shared backend
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
command -v cc >/dev/null || need+=(build-essential)
command -v go >/dev/null || need+=(golang-go)
[ -d /usr/share/gocode/src/golang.org/x/mod/sumdb ] || need+=(golang-golang-x-mod-dev)
type -P kill >/dev/null || need+=(procps)            # the tests signal processes (SIGHUP, SIGTERM)
command -v python3 >/dev/null || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
command -v npm >/dev/null || need+=(nodejs npm)        # the OpenID provider of the JWT tests
bash deploy/apt-install.sh "${need[@]}"
# The packaged nginx and redis-server may start system instances; tests run their own on
# loopback ports.

if ! python3 -c "import securesystemslib.dsse, securesystemslib.signer, cryptography" 2>/dev/null; then
  echo "==> installing securesystemslib (DSSE interop test)"
  python3 -m pip install -q "securesystemslib>=1.0" cryptography \
    || python3 -m pip install -q --break-system-packages "securesystemslib>=1.0" cryptography
fi
if ! python3 -c "import mcp, importlib.metadata as m
v = tuple(int(x) for x in m.version('mcp').split('.')[:2]); assert (2, 3) <= v < (3, 0)" 2>/dev/null; then
  echo "==> installing the MCP Python SDK (MCP servers and agents of the end-to-end tests)"
  python3 -m pip install -q "mcp>=2.3,<3" \
    || python3 -m pip install -q --break-system-packages "mcp>=2.3,<3"
fi

# oidc-provider needs Node.js >= 20.18 (URL.parse); Debian 12's nodejs is 18. When the system's
# node is older (or missing), a Node.js 22 binary comes from the npm registry (the
# node-linux-<arch> package carries it) into tests/oidc/.runtime, where the tests look first.
node_ok() { [ -x "$1" ] || command -v "$1" >/dev/null && "$1" -e 'process.exit(typeof URL.parse === "function" ? 0 : 1)' 2>/dev/null; }
if ! node_ok node && ! node_ok tests/oidc/.runtime/node; then
  case $(uname -m) in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  echo "==> installing Node.js 22 (node-linux-$arch) for the OpenID provider: the system's node is missing or older than 20.18"
  (cd tests/oidc && npm install --no-save --no-audit --no-fund --loglevel=error --prefix .runtime "node-linux-$arch@22")
  ln -sf "node_modules/node-linux-$arch/bin/node" tests/oidc/.runtime/node
fi
if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
  echo "==> installing oidc-provider (the OpenID provider of the JWT end-to-end tests)"
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

# The Rust toolchain: cargo with rustfmt and clippy (rustup adds the components when missing).
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 2
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null && rustup component add "$component"
  fi
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> build (debug binaries used by the end-to-end tests)"
cargo build --workspace --bins --locked

echo "==> static lap-verify on a generated pack"
bash tests/static-verify.sh

echo "==> tests"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --workspace --locked -- --test-threads="${LAP_TEST_THREADS:-4}" 2>&1 | tee "$out"
passed=$(grep -Eo '[0-9]+ passed' "$out" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$out" | awk '{s+=$1} END {print s+0}')
echo
echo "summary: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
