#!/usr/bin/env bash
# Run the built image (run.sh, as the chart's Pod does) and check it:
#   1. `run.sh --version` prints the version;
#   2. `--entrypoint /bin/sh` fails: there is no shell;
#   3. `run` with a kubeconfig mounted stays up, as uid/gid 65532 with no capabilities and
#      no_new_privs, until podman stops it (SIGTERM), and it then exits 0.
# The kubeconfig points at a closed port on loopback: the operator starts, serves its
# health and metrics endpoints and retries the API; no cluster is needed.
#
# Environment: IMAGE (default localhost/dscc-token-operator:dev).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
setup_containers
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
"${run[@]}" -d --name "$name" -v "$tmp/kubeconfig:/kubeconfig:ro" -e KUBECONFIG=/kubeconfig -- \
	run --metrics-address=127.0.0.1:0 --health-address=127.0.0.1:0 >/dev/null
pid=0
for _ in $(seq 1 50); do
	pid=$(podman_cmd inspect --format '{{.State.Pid}}' "$name" 2>/dev/null || echo 0)
	[[ $pid != 0 ]] && break
	sleep 0.2
done
sleep 2
if [[ $pid == 0 || ! -e /proc/$pid/status ]]; then
	fail "the operator did not stay up: $(podman_cmd logs "$name" 2>&1 | tail -5)"
else
	ids=$(awk '/^Uid:|^Gid:/ { printf "%s %s %s %s %s ", $1, $2, $3, $4, $5 }' "/proc/$pid/status")
	caps=$(awk '/^CapEff:|^CapPrm:|^NoNewPrivs:/ { printf "%s %s ", $1, $2 }' "/proc/$pid/status")
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
	logs=$(podman_cmd logs "$name" 2>&1)
	if grep -q 'starting dscc-token-operator' <<<"$logs"; then
		pass "started: $(grep -m1 'starting dscc-token-operator' <<<"$logs")"
	else
		fail "no start line in the logs: $(tail -5 <<<"$logs")"
	fi
	podman_cmd stop --time 10 "$name" >/dev/null 2>&1 &
	stopper=$!
	code=$(podman_cmd wait "$name" 2>/dev/null || echo gone)
	wait "$stopper" || true
	# --rm removes it on exit; `podman wait` may then find nothing to report.
	if [[ $code == 0 || $code == gone ]]; then
		pass "stopped on SIGTERM (exit ${code/gone/0, removed})"
	else
		fail "exit code $code after SIGTERM"
	fi
fi

echo "image checks: $passed passed, $failed failed"
[[ $failed == 0 ]]
