#!/usr/bin/env bash
# Creates a local CA and a server certificate (SAN: localhost, 127.0.0.1, ::1 and the given
# name) for TLS in front of the gateway, plus a client certificate for future mTLS tests.
#
#   certs/gen-certs.sh OUT_DIR [SERVER_NAME]
#
# Files: ca.crt ca.key server.crt server.key client.crt client.key (keys mode 0600).
# Idempotent: valid files are kept; a certificate is (re)issued only when it is missing, does
# not verify against ca.crt, or expires within 30 days. For production use your own PKI.
set -euo pipefail
out=${1:?usage: gen-certs.sh OUT_DIR [SERVER_NAME]}
cn=${2:-localhost}
command -v openssl >/dev/null || { echo "gen-certs.sh: openssl is required" >&2; exit 1; }
mkdir -p "$out"
cd "$out"
umask 077

fresh() { # cert: exists, not expiring within 30 days
  [ -f "$1" ] && openssl x509 -in "$1" -noout -checkend 2592000 >/dev/null 2>&1
}

if [ ! -f ca.key ] || ! fresh ca.crt; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
    -subj "/CN=LAP gateway local CA" -keyout ca.key -out ca.crt \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  rm -f server.crt client.crt # issued by the previous CA
fi

issue() { # name subject extensions
  if [ -f "$1.key" ] && fresh "$1.crt" && openssl verify -CAfile ca.crt "$1.crt" >/dev/null 2>&1; then
    return 0
  fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 398 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

san="DNS:localhost,IP:127.0.0.1,IP:::1"
case $cn in
  localhost | 127.0.0.1 | ::1) ;;
  *[!0-9.]* | '') case $cn in *:*) san="IP:$cn,$san" ;; *) san="DNS:$cn,$san" ;; esac ;;
  *) san="IP:$cn,$san" ;;
esac
issue server "/CN=$cn" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san"
issue client "/CN=lap-test-agent" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=URI:spiffe://lap.test/agent/test"
chmod 644 ca.crt server.crt client.crt
echo "certificates in $(pwd)"
