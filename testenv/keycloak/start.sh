#!/usr/bin/env bash
# Start a real Keycloak (start-dev) on 127.0.0.1 over TLS and configure it.
#
#   start.sh DIR
#
# - runs fetch.sh (a no-op when the cache is ready);
# - creates (or reuses) DIR/ca.crt, DIR/ca.key, DIR/server.crt, DIR/server.key
#   (server certificate for IP 127.0.0.1 and DNS localhost, signed by the CA);
# - starts `kc.sh start-dev` in its own process group (pid = pgid in
#   DIR/keycloak.pid, output appended to DIR/keycloak.log), HTTPS and HTTP on
#   free ports chosen by the server itself (port 0), database and transaction
#   logs in DIR/data (a new DIR starts from fetch.sh's database template),
#   admin user "admin" with the password in DIR/admin-password;
# - with PARENT_PID set, starts watchdog.sh, which stops Keycloak within about
#   1 s after that pid is gone;
# - waits for the server, then runs `configure.sh DIR` (realm dscc and its
#   clients) and prints configure.sh's JSON as its only stdout line (also in
#   DIR/endpoint.json).
# If anything fails, the server is stopped again and the status is non-zero.
#
# Environment: PARENT_PID, KEYCLOAK_START_TIMEOUT (s, default 180),
# KEYCLOAK_HTTPS_PORT / KEYCLOAK_HTTP_PORT (default 0 = free port),
# KEYCLOAK_JAVA_HOME, JAVA_HOME, KEYCLOAK_JVM_OPTS, KEYCLOAK_CACHE_DIR, KEYCLOAK_NO_TEMPLATE,
# KEYCLOAK_EXTRA_ARGS
# (extra runtime options for kc.sh, split on spaces), plus configure.sh's
# KEYCLOAK_TOKEN_LIFETIME_SECONDS and KEYCLOAK_REFRESH_TOKEN_LIFETIME_SECONDS.
set -euo pipefail

SCRIPT_NAME=start.sh
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SRC_DIR/lib.sh"

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 DIR" >&2
  exit 64
fi
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"

for tool in openssl curl setsid flock; do
  command -v "$tool" >/dev/null 2>&1 || DIE_STATUS=69 die "$tool not found in PATH"
done

if [[ -n "${PARENT_PID:-}" ]]; then
  if ! [[ "$PARENT_PID" =~ ^[0-9]+$ ]] || ! kill -0 "$PARENT_PID" 2>/dev/null; then
    die "PARENT_PID=$PARENT_PID is not a running process"
  fi
fi

# Refuse to start a second server for the same DIR.
if [[ -s "$DIR/keycloak.pid" ]]; then
  old="$(cat "$DIR/keycloak.pid")"
  if [[ "$old" =~ ^[0-9]+$ ]] && group_alive "$old"; then
    die "a Keycloak is already running for $DIR (pid $old); run stop.sh first"
  fi
  rm -f "$DIR/keycloak.pid"
fi

t_start="$(now_ms)"
INSTALL="$("$SRC_DIR/fetch.sh" | tail -n 1)"
[[ -x "$INSTALL/bin/kc.sh" ]] || die "fetch.sh did not produce an install"
JAVA_HOME_KC="$(find_java_home)" || exit 69

# ------------------------------------------------------------ certificates --
make_certs "$DIR"

# ---------------------------------------------------------------- database --
# A new DIR gets a copy of the database template made by fetch.sh (schema,
# master realm, bootstrap admin "admin" with the template's password, realm
# dscc with its clients), which saves 35-50 s. KEYCLOAK_NO_TEMPLATE=1 starts
# from an empty database instead (Keycloak then creates the admin with a new
# random password and configure.sh creates the realm). An existing
# DIR/data/h2 (a restart) is reused as it is: realms, keys, sessions survive.
if [[ ! -s "$DIR/data/h2/keycloakdb.mv.db" ]]; then
  rm -rf "$DIR/data"
  mkdir -p "$DIR/data/h2"
  if [[ "${KEYCLOAK_NO_TEMPLATE:-0}" != 1 ]]; then
    cp "$INSTALL/.dscc-template/keycloakdb.mv.db" "$DIR/data/h2/keycloakdb.mv.db"
    (umask 077 && cp "$INSTALL/.dscc-template/admin-password" "$DIR/admin-password")
  else
    (umask 077 && openssl rand -hex 16 >"$DIR/admin-password")
  fi
fi
[[ -s "$DIR/admin-password" ]] || die "$DIR/admin-password is missing but $DIR/data/h2 exists; delete $DIR/data to start afresh"
# The bootstrap admin is created only together with the master realm, that
# is, never when the database already has one.
ADMIN_PASSWORD="$(cat "$DIR/admin-password")"

# ------------------------------------------------------------------ start --
rm -f "$DIR/endpoint.json" "$DIR/base-url"
touch "$DIR/keycloak.log"
log_offset=$(($(stat -c %s "$DIR/keycloak.log") + 1))
printf '==== start.sh %s: Keycloak %s from %s\n' "$(date -u +%FT%TZ)" "$KEYCLOAK_VERSION" "$INSTALL" >>"$DIR/keycloak.log"

https_port="${KEYCLOAK_HTTPS_PORT:-0}"
http_port="${KEYCLOAK_HTTP_PORT:-0}"
args=(
  start-dev
  "${KEYCLOAK_BUILD_OPTS[@]}"
  --http-host=127.0.0.1
  --http-port="$http_port"
  --https-port="$https_port"
  --https-certificate-file="$DIR/server.crt"
  --https-certificate-key-file="$DIR/server.key"
  # dev-file H2 database in DIR/data/h2 (default: <install>/data/h2)
  "-Dkc.db-url-path=$DIR"
  # JTA object store in DIR/data (default: <install>/data/transaction-logs)
  "-Dquarkus.transaction-manager.object-store.directory=$DIR/data/transaction-logs"
)
if [[ -n "${KEYCLOAK_EXTRA_ARGS:-}" ]]; then
  read -r -a extra <<<"$KEYCLOAK_EXTRA_ARGS"
  args+=("${extra[@]}")
fi

PID=""
cleanup_on_failure() {
  local rc=$?
  if [[ $rc -ne 0 && -n "$PID" ]]; then
    log "startup failed; stopping Keycloak (pid $PID); log: $DIR/keycloak.log"
    "$SRC_DIR/stop.sh" "$DIR" >/dev/null || true
  fi
}
trap cleanup_on_failure EXIT

# setsid: own session and process group, so stop.sh and the watchdog can
# signal kc.sh and its JVM together, and a Ctrl-C in the test's terminal does
# not hit it. The inner shell writes its own pid (= the pgid) before exec'ing
# kc.sh, which is correct whether or not setsid had to fork. All three
# standard streams are redirected so that a caller capturing our stdout (Rust
# Command::output()) is not held open by the server.
(
  cd "$DIR"
  # shellcheck disable=SC2016 # $$ and "$@" belong to the inner shell
  KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    JAVA_HOME="$JAVA_HOME_KC" JAVA_OPTS_APPEND="$KEYCLOAK_JVM_OPTS" \
    exec setsid bash -c 'echo $$ >"$0/keycloak.pid.new" && exec "$@"' "$DIR" "$INSTALL/bin/kc.sh" "${args[@]}" \
    </dev/null >>"$DIR/keycloak.log" 2>&1
) &
for _ in $(seq 1 100); do
  [[ -s "$DIR/keycloak.pid.new" ]] && break
  sleep 0.05
done
[[ -s "$DIR/keycloak.pid.new" ]] || die "Keycloak did not start (see $DIR/keycloak.log)"
PID="$(cat "$DIR/keycloak.pid.new")"
mv -f "$DIR/keycloak.pid.new" "$DIR/keycloak.pid"

if [[ -n "${PARENT_PID:-}" ]]; then
  setsid "$SRC_DIR/watchdog.sh" "$DIR" "$PARENT_PID" "$PID" </dev/null >/dev/null 2>>"$DIR/watchdog.log" &
fi

# ------------------------------------------------------------- readiness --
timeout="${KEYCLOAK_START_TIMEOUT:-180}"
deadline=$(( $(now_ms) + timeout * 1000 ))
t_launch="$(now_ms)"
https=""
warned=""
while :; do
  run_log="$(tail -c +"$log_offset" "$DIR/keycloak.log" 2>/dev/null || true)"
  listening="$(grep -m 1 -o 'Listening on: .*' <<<"$run_log" || true)"
  if [[ "$listening" =~ https://127\.0\.0\.1:([0-9]+) ]]; then
    https="${BASH_REMATCH[1]}"
    break
  fi
  if [[ -z "$warned" && "$run_log" == *"Updating the configuration"* ]]; then
    log "WARNING: Keycloak is re-augmenting the shared install (build options differ from fetch.sh's?)"
    warned=1
  fi
  if ! group_alive "$PID"; then
    log "Keycloak exited during startup; last log lines:"
    tail -n 25 "$DIR/keycloak.log" >&2 || true
    rm -f "$DIR/keycloak.pid"
    PID=""
    exit 1
  fi
  if (( $(now_ms) >= deadline )); then
    log "Keycloak did not start within ${timeout}s (KEYCLOAK_START_TIMEOUT); last log lines:"
    tail -n 25 "$DIR/keycloak.log" >&2 || true
    exit 1
  fi
  sleep 0.2
done
http=""
if [[ "$listening" =~ http://127\.0\.0\.1:([0-9]+) ]]; then http="${BASH_REMATCH[1]}"; fi
base="https://127.0.0.1:$https"

# The port is open once Quarkus logs "Listening"; wait for a real answer.
until curl -fsS -o /dev/null --max-time 10 --cacert "$DIR/ca.crt" "$base/realms/master"; do
  (( $(now_ms) < deadline )) || die "Keycloak logs it listens on $base but does not answer"
  group_alive "$PID" || die "Keycloak exited (see $DIR/keycloak.log)"
  sleep 0.2
done
printf '%s\n' "$base" >"$DIR/base-url"
printf '%s\n' "$http" >"$DIR/http-port"
log "Keycloak $KEYCLOAK_VERSION answers at $base in $(secs_since "$t_launch") s (pid $PID, http port ${http:-none}); log $DIR/keycloak.log"

# -------------------------------------------------------------- configure --
t_conf="$(now_ms)"
json="$("$SRC_DIR/configure.sh" "$DIR" | tail -n 1)"
[[ "$json" == \{*\} ]] || die "configure.sh did not print the endpoint JSON"
log "configured in $(secs_since "$t_conf") s; total $(secs_since "$t_start") s"
trap - EXIT
printf '%s\n' "$json"
