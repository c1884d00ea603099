#!/usr/bin/env bash
# Start the local OAuth 2.0 test server (panva/oidc-provider) over TLS.
#
#   start.sh DIR
#
# - installs node_modules with `npm ci` into a cache keyed by the hash of
#   package-lock.json (outside the repository), unless already complete;
# - creates (or reuses) DIR/ca.crt, DIR/ca.key, DIR/server.crt, DIR/server.key
#   (server certificate for IP 127.0.0.1 and DNS localhost, signed by the CA);
# - starts server.mjs in the background: stderr log in DIR/server.log,
#   stdout (the JSON line) in DIR/endpoint.json, pid in DIR/server.pid;
# - prints the server's JSON line as the only (and last) line on stdout:
#   {"issuer":"https://127.0.0.1:PORT","token_endpoint":"https://127.0.0.1:PORT/as/token.oauth2","port":PORT}
#
# Everything else goes to stderr. Environment passed through to the server:
# PORT, CLIENTS_JSON, TOKEN_TTL_SECONDS, TOKEN_FORMAT, TOKEN_PATH, SCOPES,
# RESOURCE, PARENT_PID (see README.md). Tunables for this script:
# OAUTH_SERVER_CACHE_DIR, OAUTH_SERVER_START_TIMEOUT (seconds, default 30).
set -euo pipefail

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 DIR" >&2
  exit 64
fi

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"

for tool in node npm openssl sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || { echo "start.sh: $tool not found in PATH" >&2; exit 69; }
done

# Refuse to start a second server for the same DIR.
if [[ -s "$DIR/server.pid" ]]; then
  old_pid="$(cat "$DIR/server.pid")"
  if kill -0 "$old_pid" 2>/dev/null; then
    echo "start.sh: a server is already running for $DIR (pid $old_pid); run stop.sh first" >&2
    exit 1
  fi
  rm -f "$DIR/server.pid"
fi

# ------------------------------------------------------------ dependencies --
lock_hash="$(sha256sum "$SRC_DIR/package-lock.json" | cut -c1-16)"
CACHE_ROOT="${OAUTH_SERVER_CACHE_DIR:-$HOME/.cache/dscc-token-operator/oauth-server}"
CACHE="$CACHE_ROOT/$lock_hash"

INSTALL_TMP=""
install_deps() {
  # Install into a private temp dir and rename it into place, so a concurrent
  # start.sh never sees a half-installed cache.
  INSTALL_TMP="$(mktemp -d "$CACHE_ROOT/.install.XXXXXX")"
  trap 'rm -rf "$INSTALL_TMP"' EXIT
  cp "$SRC_DIR/package.json" "$SRC_DIR/package-lock.json" "$INSTALL_TMP/"
  echo "start.sh: installing oidc-provider into $CACHE (npm ci)" >&2
  (cd "$INSTALL_TMP" && npm ci --omit=dev --prefer-offline --no-audit --no-fund --loglevel=error 1>&2)
  touch "$INSTALL_TMP/.complete"
  if [[ ! -f "$CACHE/.complete" ]]; then
    rm -rf "$CACHE" # leftover of an interrupted install, if any
    mv -T "$INSTALL_TMP" "$CACHE" 2>/dev/null || [[ -f "$CACHE/.complete" ]]
  fi
  rm -rf "$INSTALL_TMP"
  trap - EXIT
}

if [[ ! -f "$CACHE/.complete" ]]; then
  mkdir -p "$CACHE_ROOT"
  if command -v flock >/dev/null 2>&1; then
    # Serialize installs between parallel start.sh runs (parallel tests).
    exec 9>"$CACHE_ROOT/.lock"
    flock -w 600 9 || { echo "start.sh: timed out waiting for $CACHE_ROOT/.lock" >&2; exit 1; }
    [[ -f "$CACHE/.complete" ]] || install_deps
    exec 9>&- # release; must not leak into the server process
  else
    install_deps
  fi
fi

# Run a copy of server.mjs from DIR, with DIR/node_modules pointing at the
# cache (ESM ignores NODE_PATH; bare imports are resolved from the script's
# own directory upwards).
cp "$SRC_DIR/server.mjs" "$DIR/server.mjs"
ln -sfn "$CACHE/node_modules" "$DIR/node_modules"

# ------------------------------------------------------------ certificates --
if [[ ! -s "$DIR/ca.crt" || ! -s "$DIR/ca.key" || ! -s "$DIR/server.crt" || ! -s "$DIR/server.key" ]]; then
  rm -f "$DIR/ca.crt" "$DIR/ca.key" "$DIR/server.crt" "$DIR/server.key" "$DIR/server.csr"
  (
    umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$DIR/ca.key" -out "$DIR/ca.crt" -days 30 -sha256 \
      -subj "/CN=dscc-token-operator test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$DIR/server.key" -out "$DIR/server.csr" \
      -subj "/CN=127.0.0.1" 2>/dev/null
    ext="$(mktemp)"
    cat >"$ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
    openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -out "$DIR/server.crt" -days 30 -sha256 -extfile "$ext" 2>/dev/null
    rm -f "$ext" "$DIR/server.csr"
  )
  chmod 644 "$DIR/ca.crt" "$DIR/server.crt"
fi

# ------------------------------------------------------------------ start --
rm -f "$DIR/endpoint.json"
# stdin/stdout/stderr are all redirected so the caller's pipes (e.g. a Rust
# test reading our stdout) are not held open by the background server.
TLS_CERT="$DIR/server.crt" TLS_KEY="$DIR/server.key" \
  node "$DIR/server.mjs" </dev/null >"$DIR/endpoint.json" 2>>"$DIR/server.log" &
pid=$!
echo "$pid" >"$DIR/server.pid"

timeout="${OAUTH_SERVER_START_TIMEOUT:-30}"
deadline=$((SECONDS + timeout))
line=""
while :; do
  if [[ -s "$DIR/endpoint.json" ]]; then
    line="$(head -n 1 "$DIR/endpoint.json")"
    # complete line written (server writes it in one call, newline-terminated)
    if [[ "$line" == \{*\} ]]; then break; fi
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start.sh: server exited during startup; last log lines:" >&2
    tail -n 20 "$DIR/server.log" >&2 || true
    rm -f "$DIR/server.pid"
    exit 1
  fi
  if (( SECONDS >= deadline )); then
    echo "start.sh: server did not report readiness within ${timeout}s; last log lines:" >&2
    tail -n 20 "$DIR/server.log" >&2 || true
    kill -TERM "$pid" 2>/dev/null || true
    rm -f "$DIR/server.pid"
    exit 1
  fi
  sleep 0.05
done

printf '%s\n' "$line"
