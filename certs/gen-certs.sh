#!/usr/bin/env bash
# Creates a local CA and a server certificate (SAN: localhost, 127.0.0.1, ::1) for TLS in
# front of the gateway, plus a client certificate for future mTLS tests.
#
#   certs/gen-certs.sh OUT_DIR [CN]
#
# Files: ca.crt ca.key server.crt server.key client.crt client.key (keys mode 0600).
# Idempotent: existing files are kept. For production use certificates from your PKI.
set -euo pipefail
out=${1:?usage: gen-certs.sh OUT_DIR [CN]}
cn=${2:-localhost}
mkdir -p "$out"
cd "$out"
umask 077
if [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
    -subj "/CN=LAP gateway local CA" -keyout ca.key -out ca.crt 2>/dev/null
fi
issue() { # name subject extensions
  [ -f "$1.key" ] && return 0
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 398 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/CN=$cn" "subjectAltName=DNS:$cn,DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth"
issue client "/CN=lap-test-agent" "subjectAltName=URI:spiffe://lap.test/agent/test
extendedKeyUsage=clientAuth"
chmod 644 ca.crt server.crt client.crt
echo "certificates in $(pwd)"
