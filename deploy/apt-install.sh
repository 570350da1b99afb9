#!/usr/bin/env bash
# apt-install.sh PACKAGE...: installs Debian packages with apt-get (through sudo unless run as
# root). Callers pass only what the machine lacks; with no arguments it does nothing.
set -euo pipefail
[ $# -gt 0 ] || exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "==> installing: $*"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
