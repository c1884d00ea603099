#!/usr/bin/env bash
# Internal, started by start.sh when PARENT_PID is set:
#
#   watchdog.sh DIR PARENT_PID PGID
#
# Polls once a second. When PARENT_PID is gone, stops Keycloak's process group
# PGID like stop.sh does (SIGTERM, SIGKILL after KEYCLOAK_STOP_TIMEOUT, default
# 20 s). Exits by itself when the process group is gone (stop.sh ran).
set -euo pipefail

SCRIPT_NAME=watchdog.sh
SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$SRC_DIR/lib.sh"

[[ $# -eq 3 ]] || { echo "usage: $0 DIR PARENT_PID PGID" >&2; exit 64; }
DIR="$1" PARENT="$2" PGID="$3"
echo "$$" >"$DIR/watchdog.pid"
trap '' HUP INT

while group_alive "$PGID"; do
  if ! kill -0 "$PARENT" 2>/dev/null; then
    log "$(date -u +%FT%TZ) parent pid $PARENT is gone; stopping Keycloak (pgid $PGID)"
    how="$(stop_group "$PGID" "${KEYCLOAK_STOP_TIMEOUT:-20}")"
    log "Keycloak stopped ($how)"
    if [[ "$(cat "$DIR/keycloak.pid" 2>/dev/null || true)" == "$PGID" ]]; then
      rm -f "$DIR/keycloak.pid" "$DIR/base-url" "$DIR/http-port"
    fi
    break
  fi
  sleep 1
done
if [[ "$(cat "$DIR/watchdog.pid" 2>/dev/null || true)" == "$$" ]]; then rm -f "$DIR/watchdog.pid"; fi
