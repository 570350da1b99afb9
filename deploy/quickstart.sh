#!/usr/bin/env bash
# Runs the LAP gateway on embedded defaults: an example "echo" tool, a fresh API key,
# a Cedar policy you can edit live, an ephemeral signing key (development only).
# Installs what the build needs (cmake, a C compiler) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
bash deploy/apt-install.sh "${need[@]}"
exec cargo run --release --locked -p lap-gateway -- quickstart "$@"
