#!/usr/bin/env bash
# Stop the server started by `start.sh DIR`: SIGTERM, then SIGKILL after 5 s.
# Exits 0 if no server is running for DIR.
set -euo pipefail

if [[ $# -ne 1 || -z "$1" ]]; then
  echo "usage: $0 DIR" >&2
  exit 64
fi
DIR="$1"
PID_FILE="$DIR/server.pid"

# alive PID: exists and is not a zombie
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  if [[ -r "/proc/$1/stat" ]]; then
    local state
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null || true)"
    [[ "$state" != "Z" ]] || return 1
  fi
  return 0
}

[[ -s "$PID_FILE" ]] || exit 0
pid="$(cat "$PID_FILE")"

if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! alive "$pid"; then
  rm -f "$PID_FILE"
  exit 0
fi

# Do not signal an unrelated process that reused the pid.
cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
if [[ -r "/proc/$pid/cmdline" && "$cmdline" != *server.mjs* ]]; then
  echo "stop.sh: pid $pid is not our server.mjs; removing stale $PID_FILE" >&2
  rm -f "$PID_FILE"
  exit 0
fi

kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 1 50); do
  alive "$pid" || { rm -f "$PID_FILE"; exit 0; }
  sleep 0.1
done

echo "stop.sh: pid $pid still running after 5s, sending SIGKILL" >&2
kill -KILL "$pid" 2>/dev/null || true
for _ in $(seq 1 20); do
  alive "$pid" || break
  sleep 0.1
done
rm -f "$PID_FILE"
