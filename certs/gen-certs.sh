#!/usr/bin/env bash
# Creates a local CA and a server certificate (SAN: localhost, 127.0.0.1, ::1 and the given
# name) for TLS in front of the gateway, plus SPIFFE client certificates (X509-SVIDs) for mTLS.
#
#   certs/gen-certs.sh OUT_DIR [SERVER_NAME [SPIFFE_ID]]
#   LAP_SPIFFE_ID=spiffe://prod.example/ns/billing certs/gen-certs.sh OUT_DIR
#
# Files: ca.crt ca.key server.crt server.key (TLS server), agent.crt agent.key (client
# certificate with the URI SAN SPIFFE_ID, default spiffe://lap.test/agent/demo), client.crt
# client.key (client certificate for spiffe://lap.test/agent/test). Keys mode 0600; client
# certificates have the clientAuth extended key usage.
# Idempotent: valid files are kept; a certificate is (re)issued only when it is missing, does
# not verify against ca.crt, expires within 30 days, or names another SPIFFE ID. For production
# use your own PKI (e.g. SPIRE).
set -euo pipefail
out=${1:?usage: gen-certs.sh OUT_DIR [SERVER_NAME [SPIFFE_ID]]}
cn=${2:-localhost}
spiffe=${3:-${LAP_SPIFFE_ID:-spiffe://lap.test/agent/demo}}
# The X509-SVID rules the gateway applies: lower-case trust domain, plain path segments.
if ! [[ $spiffe =~ ^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)+$ ]] || [[ $spiffe =~ /\.\.?(/|$) ]]; then
  echo "gen-certs.sh: $spiffe is not a SPIFFE ID (spiffe://<trust domain>/<path>)" >&2
  exit 2
fi
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
  rm -f server.crt client.crt agent.crt # issued by the previous CA
fi

issue() { # name subject extensions [URI SAN the certificate must name]
  if [ -f "$1.key" ] && fresh "$1.crt" && openssl verify -CAfile ca.crt "$1.crt" >/dev/null 2>&1 &&
    { [ -z "${4:-}" ] || openssl x509 -in "$1.crt" -noout -ext subjectAltName 2>/dev/null | grep -qxF "    URI:$4"; }; then
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
subjectAltName=URI:spiffe://lap.test/agent/test" spiffe://lap.test/agent/test
issue agent "/CN=lap-demo-agent" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=URI:$spiffe" "$spiffe"
chmod 644 ca.crt server.crt client.crt agent.crt
echo "certificates in $(pwd)"
