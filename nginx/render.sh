#!/usr/bin/env bash
# Renders the nginx baseline into a prefix directory with concrete addresses and paths.
#
#   nginx/render.sh PREFIX GATEWAY_ADDR HTTPS_LISTEN HTTP_LISTEN CERT_DIR
#   nginx -p PREFIX -c PREFIX/nginx.conf          (add -g 'daemon off;' to stay in front)
#
# Example (production-like): nginx/render.sh /etc/lap-nginx 10.0.0.5:8080 443 80 /etc/lap-nginx/certs
set -euo pipefail
[ $# -eq 5 ] || { echo "usage: $0 PREFIX GATEWAY_ADDR HTTPS_LISTEN HTTP_LISTEN CERT_DIR" >&2; exit 2; }
prefix=$1; gateway=$2; https=$3; http=$4; certs=$5
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$prefix/conf.d" "$prefix/snippets" "$prefix/logs" "$prefix/temp"
https_port=${https##*:}
render() {
  sed -e "s|@NGINX_CONF_DIR@|$prefix|g" \
      -e "s|@GATEWAY_ADDR@|$gateway|g" \
      -e "s|@LISTEN_HTTPS@|$https|g" \
      -e "s|@LISTEN_HTTP@|$http|g" \
      -e "s|@HTTPS_PORT@|$https_port|g" \
      -e "s|@CERT_DIR@|$certs|g" "$1" > "$2"
}
render "$src/nginx.conf" "$prefix/nginx.conf"
for f in "$src"/conf.d/*.conf; do render "$f" "$prefix/conf.d/$(basename "$f")"; done
for f in "$src"/snippets/*.conf; do render "$f" "$prefix/snippets/$(basename "$f")"; done
echo "$prefix/nginx.conf"
