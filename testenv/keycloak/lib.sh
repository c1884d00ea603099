# shellcheck shell=bash disable=SC2034 # variables are used by the scripts that source this
# Shared helpers for the Keycloak test scripts. Sourced, not executed.
#
# Everything here writes to stderr only; stdout is reserved for the one
# machine-readable line each script prints last.

KEYCLOAK_VERSION="${KEYCLOAK_VERSION:-26.7.3}"
KEYCLOAK_ARTIFACT="org.keycloak:keycloak-quarkus-dist:${KEYCLOAK_VERSION}:zip"
KEYCLOAK_CACHE_ROOT="${KEYCLOAK_CACHE_DIR:-$HOME/.cache/dscc-token-operator/keycloak}"
KEYCLOAK_INSTALL_DIR="$KEYCLOAK_CACHE_ROOT/keycloak-$KEYCLOAK_VERSION"

# Build-time options. fetch.sh augments ("builds") the cached install with
# exactly these, and start.sh passes exactly these again, so that start-dev
# finds a matching build and never re-augments (that would rewrite lib/quarkus
# inside the shared cache while other servers run from it).
# token-exchange-standard:v2 is a DEFAULT feature in 26.7.3 (enabled without
# the flag); naming it keeps it on even if a later default changes.
KEYCLOAK_BUILD_OPTS=(--features=token-exchange-standard:v2)

# Extra JVM options (kc.sh's JAVA_OPTS_APPEND). C1 only: on 2 busy cores the
# C2 compiler threads compete with startup; measured here, start-dev answers in
# about 26 s instead of 48 s and the first configure.sh takes 12-16 s instead
# of 18-24 s. Peak throughput is lower, which tests do not notice.
KEYCLOAK_JVM_OPTS="${KEYCLOAK_JVM_OPTS--XX:TieredStopAtLevel=1}"

# Written into the install by fetch.sh once it is complete; start.sh refuses
# an install whose marker does not match.
keycloak_marker_content() {
  # "template 2": the database template holds realm dscc (bump to rebuild caches)
  printf 'keycloak %s\nbuild %s\nprofile dev\ntemplate 2\n' "$KEYCLOAK_VERSION" "${KEYCLOAK_BUILD_OPTS[*]}"
}

log() { printf '%s: %s\n' "${SCRIPT_NAME:-keycloak}" "$*" >&2; }
die() { log "$*"; exit "${DIE_STATUS:-1}"; }

# now_ms: milliseconds since the epoch (GNU date).
now_ms() { date +%s%3N; }
# secs_since START_MS: elapsed seconds with one decimal.
secs_since() {
  local d=$(( $(now_ms) - $1 ))
  printf '%d.%d' $((d / 1000)) $(((d % 1000) / 100))
}

# java_major JAVA_BIN: prints the major version (17, 21, 25, ...) or nothing.
java_major() {
  [[ -x "$1" ]] || return 0
  "$1" -version 2>&1 | sed -nE '1s/.*version "([0-9]+)[^"]*".*/\1/p'
}

# find_java_home: prints a JAVA_HOME with Java 21 or newer, or fails.
# Order: KEYCLOAK_JAVA_HOME (must be 21+), JAVA_HOME (if 21+),
# /usr/lib/jvm/temurin-25-jdk-amd64, the newest /usr/lib/jvm/* that is 21+,
# the `java` on PATH (if 21+).
find_java_home() {
  local cand major seen=""
  if [[ -n "${KEYCLOAK_JAVA_HOME:-}" ]]; then
    major="$(java_major "$KEYCLOAK_JAVA_HOME/bin/java")"
    if [[ -n "$major" && "$major" -ge 21 ]]; then
      printf '%s\n' "$KEYCLOAK_JAVA_HOME"; return 0
    fi
    log "KEYCLOAK_JAVA_HOME=$KEYCLOAK_JAVA_HOME is not a Java 21+ installation (found: ${major:-no java})"
    return 1
  fi
  local candidates=()
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME")
  candidates+=(/usr/lib/jvm/temurin-25-jdk-amd64)
  for cand in /usr/lib/jvm/*; do candidates+=("$cand"); done
  local path_java
  if path_java="$(command -v java 2>/dev/null)"; then
    path_java="$(readlink -f "$path_java")"
    candidates+=("${path_java%/bin/java}")
  fi
  local best="" best_major=0
  declare -A done_=()
  for cand in "${candidates[@]}"; do
    [[ -x "$cand/bin/java" && -z "${done_[$cand]:-}" ]] || continue
    done_[$cand]=1
    major="$(java_major "$cand/bin/java")"
    [[ -n "$major" ]] || continue
    seen+=" $cand(${major})"
    if [[ "$cand" == "${JAVA_HOME:-}" || "$cand" == /usr/lib/jvm/temurin-25-jdk-amd64 ]]; then
      if [[ "$major" -ge 21 ]]; then printf '%s\n' "$cand"; return 0; fi
      continue
    fi
    if [[ "$major" -ge 21 && "$major" -gt "$best_major" ]]; then best="$cand"; best_major="$major"; fi
  done
  if [[ -n "$best" ]]; then printf '%s\n' "$best"; return 0; fi
  log "Keycloak $KEYCLOAK_VERSION needs Java 21 or newer; none found (looked at:${seen:- nothing})."
  log "Install a JDK 21+ (e.g. Temurin 21 or 25 from packages.adoptium.net: 'apt-get install temurin-21-jdk', or openjdk-21-jdk-headless where the distribution has it) and/or set KEYCLOAK_JAVA_HOME to it."
  return 1
}

# make_certs DIR: creates DIR/ca.crt, DIR/ca.key, DIR/server.crt and
# DIR/server.key (EC P-256; server certificate for IP 127.0.0.1 and DNS
# localhost, signed by the CA, 30 days) unless all four exist and the
# server certificate is valid for at least one more day.
make_certs() {
  local d="$1"
  if [[ -s "$d/ca.crt" && -s "$d/ca.key" && -s "$d/server.crt" && -s "$d/server.key" ]] &&
    openssl x509 -checkend 86400 -noout -in "$d/server.crt" >/dev/null 2>&1; then
    return 0 # reuse (restarts keep the CA), unless it expires within a day
  fi
  rm -f "$d/ca.crt" "$d/ca.key" "$d/server.crt" "$d/server.key" "$d/server.csr" "$d/server.ext"
  (
    umask 077
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$d/ca.key" -out "$d/ca.crt" -days 30 -sha256 \
      -subj "/CN=dscc-token-operator Keycloak test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout "$d/server.key" -out "$d/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" \
      "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -out "$d/server.crt" -days 30 -sha256 \
      -extfile "$d/server.ext" 2>/dev/null
    rm -f "$d/server.csr" "$d/server.ext"
  ) || { log "openssl failed to create certificates in $d"; return 1; }
  chmod 644 "$d/ca.crt" "$d/server.crt"
}

# json_escape STRING: the string as a JSON string literal (with quotes).
json_escape() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\t'/\\t}"
  printf '"%s"' "$s"
}

# group_alive PGID: true while any process of that process group exists.
group_alive() { kill -0 -- "-$1" 2>/dev/null; }

# is_our_keycloak PID: the pid is kc.sh or the Keycloak JVM (guards against
# signalling an unrelated process that reused the pid).
is_our_keycloak() {
  local cmdline
  [[ -r "/proc/$1/cmdline" ]] || return 0 # cannot tell (no /proc): trust the pid file
  cmdline="$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true)"
  [[ "$cmdline" == *kc.sh* || "$cmdline" == *kc.home.dir* ]]
}

# stop_group PGID TIMEOUT_SECONDS: SIGTERM the process group, then SIGKILL
# after the timeout. Prints TERM, KILL or NONE (nothing was running) on stdout.
stop_group() {
  local pgid="$1" timeout="$2" deadline
  if ! group_alive "$pgid"; then echo NONE; return 0; fi
  kill -TERM -- "-$pgid" 2>/dev/null || true
  deadline=$(( $(now_ms) + timeout * 1000 ))
  while group_alive "$pgid"; do
    if (( $(now_ms) >= deadline )); then
      kill -KILL -- "-$pgid" 2>/dev/null || true
      local _
      for _ in $(seq 1 50); do group_alive "$pgid" || break; sleep 0.1; done
      echo KILL; return 0
    fi
    sleep 0.1
  done
  echo TERM
}
