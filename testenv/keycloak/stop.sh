#!/usr/bin/env bash
# Stop the Keycloak started by `start.sh DIR`.
#
#   stop.sh DIR
#
# Sends SIGTERM to Keycloak's process group (kc.sh and its JVM), waits up to
# KEYCLOAK_STOP_TIMEOUT seconds (default 20), then sends SIGKILL. Also ends the
# PARENT_PID watchdog. Idempotent: exits 0 when nothing is running.
# Last stdout line: {"stopped":"SIGTERM"|"SIGKILL"|null,"seconds":N}.
# DIR (certificates, database, logs, endpoint.json) is left in place.
set -euo pipefail

SCRIPT_NAME=stop.sh
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SRC_DIR/lib.sh"

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 DIR" >&2
  exit 64
fi
DIR="$1"
t0="$(now_ms)"

stop_watchdog() {
  local w
  [[ -s "$DIR/watchdog.pid" ]] || return 0
  w="$(cat "$DIR/watchdog.pid")"
  if [[ "$w" =~ ^[0-9]+$ ]] && kill -0 "$w" 2>/dev/null; then
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$w/cmdline" 2>/dev/null || true)"
    if [[ "$cmdline" == *watchdog.sh* ]]; then kill -TERM "$w" 2>/dev/null || true; fi
  fi
  rm -f "$DIR/watchdog.pid"
}

result=null
if [[ -s "$DIR/keycloak.pid" ]]; then
  pgid="$(cat "$DIR/keycloak.pid")"
  if [[ "$pgid" =~ ^[0-9]+$ ]] && group_alive "$pgid"; then
    # The group leader is kc.sh (or the JVM, when kc.sh exec'd it). If the
    # leader is gone, look at any member before signalling the group.
    member="$pgid"
    if ! kill -0 "$pgid" 2>/dev/null; then
      member="$(ps -o pid= -g "$pgid" 2>/dev/null | head -n 1 | tr -d ' ' || true)"
    fi
    if [[ -n "$member" ]] && ! is_our_keycloak "$member"; then
      log "process group $pgid is not our Keycloak; removing stale $DIR/keycloak.pid"
    else
      stop_watchdog
      how="$(stop_group "$pgid" "${KEYCLOAK_STOP_TIMEOUT:-20}")"
      case "$how" in
        TERM) result='"SIGTERM"' ;;
        KILL) result='"SIGKILL"'; log "Keycloak did not stop within ${KEYCLOAK_STOP_TIMEOUT:-20}s of SIGTERM; sent SIGKILL" ;;
        *) result=null ;;
      esac
      log "Keycloak (pgid $pgid) stopped ($how) in $(secs_since "$t0") s"
    fi
  fi
  rm -f "$DIR/keycloak.pid"
fi
stop_watchdog
# these describe a running server (configure.sh needs them); endpoint.json
# stays as the record of the last run
rm -f "$DIR/base-url" "$DIR/http-port"
printf '{"stopped":%s,"seconds":%s}\n' "$result" "$(secs_since "$t0")"
