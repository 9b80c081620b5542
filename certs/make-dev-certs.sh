#!/usr/bin/env bash
# Make a development CA, a server certificate for localhost / 127.0.0.1 / ::1 and a
# client certificate, with openssl. For testing TLS and mutual TLS on one machine;
# never for production (see certs/README.md for real certificates).
#
#   bash certs/make-dev-certs.sh [OUT_DIR] [CLIENT_CN]
#
# OUT_DIR defaults to certs/dev (ignored by git), CLIENT_CN to "device-1" (the
# username with `identity_as_username = true`). Writes ca.pem, ca.key, server.pem,
# server.key, client.pem, client.key. Keys are P-256 (fast handshakes on small
# boards), PKCS#8, mode 0600.
set -euo pipefail
out=${1:-"$(dirname "$0")/dev"}
client_cn=${2:-device-1}
days=${DAYS:-825}
mkdir -p "$out"
cd "$out"
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -out ca.pem \
  -subj "/O=Tern development/CN=Tern development CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

sign() { # name subject extensions
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "$2"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -sha256 -days "$days" -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

sign server "/O=Tern development/CN=localhost" \
"basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

sign client "/O=Tern development/CN=$client_cn" \
"basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

rm -f ca.srl
chmod 0644 ca.pem server.pem client.pem
echo "wrote $(pwd): ca.pem server.pem server.key client.pem client.key (client CN=$client_cn)"
