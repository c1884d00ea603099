#!/usr/bin/env bash
# Run the built image (run.sh, as the chart's Pod does) and check it:
#   1. `run.sh --version` prints the version;
#   2. `--entrypoint /bin/sh` fails: there is no shell;
#   3. `run` with a kubeconfig mounted (-v, -e) starts and stays up, as uid/gid 65532 with
#      no capabilities and no_new_privs, serves /healthz on the host network, and handles
#      SIGTERM as PID 1.
# The kubeconfig points at a closed port on loopback: the operator starts, serves its
# health and metrics endpoints and retries the API; no cluster is needed. Needs curl and
# python3 (a free port).
#
# Environment: IMAGE (default localhost/dscc-token-operator:dev).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
setup_containers
command -v curl >/dev/null || install_packages curl
command -v python3 >/dev/null || install_packages python3
run=("$IMAGE_DIR/run.sh")
passed=0 failed=0
pass() {
	echo "ok: $*"
	passed=$((passed + 1))
}
fail() {
	echo "FAILED: $*"
	failed=$((failed + 1))
}

# 1. --version
expected_version=$(podman_cmd image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$IMAGE")
if out=$("${run[@]}" --version 2>&1) && [[ $out == "dscc-token-operator $expected_version" ]]; then
	pass "--version: $out"
else
	fail "--version printed '$out', expected 'dscc-token-operator $expected_version'"
fi

# 2. no shell
if out=$("${run[@]}" --entrypoint /bin/sh -- -c 'echo shell' 2>&1); then
	fail "--entrypoint /bin/sh ran: $out"
else
	pass "--entrypoint /bin/sh fails: $(tail -1 <<<"$out")"
fi

# 3. the operator's process, as the chart runs it
tmp=$(mktemp -d)
name="dscc-image-check-$$"
cleanup() {
	podman_cmd rm --force --time 0 "$name" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
cat >"$tmp/kubeconfig" <<'EOF'
apiVersion: v1
kind: Config
clusters:
  - name: nowhere
    cluster:
      server: https://127.0.0.1:9
      insecure-skip-tls-verify: true
users:
  - name: nobody
    user:
      token: not-a-token
contexts:
  - name: nowhere
    context: {cluster: nowhere, user: nobody}
current-context: nowhere
EOF
chmod 0644 "$tmp/kubeconfig"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
health_port=$(free_port)
metrics_port=$(free_port)
"${run[@]}" -d --name "$name" -v "$tmp/kubeconfig:/kubeconfig:ro" -e KUBECONFIG=/kubeconfig -- \
	run --metrics-address="127.0.0.1:$metrics_port" --health-address="127.0.0.1:$health_port" \
	--log-format=json >/dev/null
pid=0
for _ in $(seq 1 50); do
	pid=$(podman_cmd inspect --format '{{.State.Pid}}' "$name" 2>/dev/null || echo 0)
	[[ $pid != 0 ]] && break
	sleep 0.2
done
healthz=000
for _ in $(seq 1 50); do
	healthz=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$health_port/healthz" || true)
	[[ $healthz == 200 ]] && break
	sleep 0.2
done
if [[ $pid == 0 || ! -e /proc/$pid/status ]]; then
	fail "the operator did not stay up: $(podman_cmd logs "$name" 2>&1 | tail -5)"
else
	status=$(cat "/proc/$pid/status")
	ids=$(awk '/^Uid:|^Gid:/ { printf "%s %s %s %s %s ", $1, $2, $3, $4, $5 }' <<<"$status")
	caps=$(awk '/^CapEff:|^CapPrm:|^NoNewPrivs:/ { printf "%s %s ", $1, $2 }' <<<"$status")
	if [[ $ids == "Uid: 65532 65532 65532 65532 Gid: 65532 65532 65532 65532 " ]]; then
		pass "runs as uid/gid 65532 ($(tr -d '\0' <"/proc/$pid/comm"), pid $pid)"
	else
		fail "the process's ids: $ids"
	fi
	if [[ $caps == "CapPrm: 0000000000000000 CapEff: 0000000000000000 NoNewPrivs: 1 " ]]; then
		pass "no capabilities, no_new_privs"
	else
		fail "capabilities: $caps"
	fi
	if [[ $healthz == 200 ]]; then
		pass "it serves /healthz on 127.0.0.1:$health_port (host network): HTTP 200"
	else
		fail "/healthz on 127.0.0.1:$health_port: HTTP $healthz; logs: $(podman_cmd logs "$name" 2>&1 | tail -3)"
	fi
	# PID 1 gets only the signals it handles: SIGTERM (15) must be in its caught mask, or
	# the kubelet's stop would wait out the grace period. No init is needed in the image.
	sigcgt=$(awk '/^SigCgt:/ { print $2 }' <<<"$status")
	if (((16#$sigcgt >> 14) & 1)); then
		pass "PID 1 handles SIGTERM (SigCgt $sigcgt)"
	else
		fail "PID 1 does not handle SIGTERM (SigCgt $sigcgt)"
	fi
	# What it does then is the operator's business, not the image's: reported only.
	podman_cmd kill --signal TERM "$name" >/dev/null 2>&1 || true
	state="still running 5 s after SIGTERM (the API is unreachable here); removed"
	for _ in $(seq 1 25); do
		if ! podman_cmd container exists "$name" ||
			[[ $(podman_cmd inspect --format '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
			state="exited after SIGTERM"
			break
		fi
		sleep 0.2
	done
	echo "note: $state"
fi

echo "image checks: $passed passed, $failed failed"
[[ $failed == 0 ]]
