#!/usr/bin/env bash
# Runs the LAP gateway on embedded defaults: an example "echo" tool, a fresh API key,
# a Cedar policy you can edit live, an ephemeral signing key (development only).
# Installs the one system package the build needs (cmake) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null || ! command -v cc >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake build-essential >/dev/null
fi
exec cargo run --release --locked -p lap-gateway -- quickstart "$@"
