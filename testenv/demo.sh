#!/usr/bin/env bash
# make demo: the operator end to end on this machine, in about a minute.
#
# Brings up the local control plane and a local OAuth token endpoint that issues
# 30-second tokens, installs the CRD, runs the operator, applies the README's example,
# shows the credential becoming Ready and its token Secret (never the token), waits for
# one renewal, and stops everything it started. KEEP=1 leaves it all running.
set -euo pipefail

testenv=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$testenv")
cache_dir=${DSCC_CACHE_DIR:-$HOME/.cache/dscc-token-operator}
demo_dir=$cache_dir/demo
cluster_dir=$demo_dir/cluster
lifetime=${DEMO_TOKEN_LIFETIME:-30s}
mkdir -p "$demo_dir"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

pids=()
cleanup() {
	local status=$?
	if [[ ${KEEP:-0} == 1 && $status == 0 ]]; then
		say "KEEP=1: still running. export KUBECONFIG=$cluster_dir/kubeconfig; stop with: make demo-down"
		return
	fi
	say "Stopping the operator, the token endpoint and the control plane"
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	"$testenv/cluster.sh" down "$cluster_dir" || true
	[[ $status == 0 ]] || echo "demo failed; logs in $demo_dir" >&2
}
trap cleanup EXIT

say "Building the operator and the local token endpoint"
cargo build --quiet -p dscc-token-operator --bin dscc-token-operator -p dscc-testkit --bin token-endpoint
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
operator=$target_dir/debug/dscc-token-operator
endpoint=$target_dir/debug/token-endpoint

say "Starting the local Kubernetes control plane (built from source on first use)"
export KUBECONFIG
KUBECONFIG=$("$testenv/cluster.sh" up "$cluster_dir" | tail -n 1)
kubectl=$(sed -n 's/^KUBECTL=//p' "$cluster_dir/env")
"$kubectl" version | sed 's/^/  /'

say "Starting a local OAuth token endpoint that issues $lifetime tokens"
"$endpoint" --port 0 --lifetime "$lifetime" --client demo-client:demo-client-secret \
	>"$demo_dir/endpoint.out" 2>"$demo_dir/endpoint.log" &
pids+=($!)
for _ in $(seq 50); do
	token_url=$(sed -n 's/.*"token_url":"\([^"]*\)".*/\1/p' "$demo_dir/endpoint.out")
	[[ -n $token_url ]] && break
	sleep 0.1
done
[[ -n ${token_url:-} ]] || { echo "the token endpoint did not start" >&2; exit 1; }
echo "  token endpoint: $token_url"

say "Running the operator (logs: $demo_dir/operator.log)"
"$operator" run --allow-insecure-token-url >"$demo_dir/operator.log" 2>&1 &
pids+=($!)

say "Applying the example: a client Secret and a DsccCredential"
"$kubectl" create namespace storage --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
cat <<EOF | tee "$demo_dir/example.yaml" | sed 's/^/  /'
apiVersion: v1
kind: Secret
metadata: {name: greenlake-client, namespace: storage}
stringData: {client_id: demo-client, client_secret: demo-client-secret}
---
apiVersion: dscc.io/v1alpha1
kind: DsccCredential
metadata: {name: array-reports, namespace: storage}
spec:
  clientSecretRef: {name: greenlake-client}
  tokenUrl: $token_url   # the local endpoint; the default is GreenLake's
  region: us1
EOF
"$kubectl" apply -f "$demo_dir/example.yaml"

say "Waiting for Ready"
"$kubectl" -n storage wait --for=condition=Ready dscccredential/array-reports --timeout=60s
"$kubectl" -n storage get dscc -o wide

say "The token Secret (keys and sizes only; the token itself is not printed)"
"$kubectl" -n storage describe secret array-reports-token | sed -n '/^Data/,$p'
first_issued=$("$kubectl" -n storage get dscc array-reports -o jsonpath='{.status.issuedAt}')
renewal=$("$kubectl" -n storage get dscc array-reports -o jsonpath='{.status.renewalTime}')
echo "  issued at $first_issued, renewal planned at $renewal"

say "Waiting for one renewal"
for _ in $(seq 120); do
	issued=$("$kubectl" -n storage get dscc array-reports -o jsonpath='{.status.issuedAt}')
	[[ $issued != "$first_issued" ]] && break
	sleep 1
done
[[ $issued != "$first_issued" ]] || { echo "no renewal within 120 s" >&2; exit 1; }
echo "  renewed: new token issued at $issued"
"$kubectl" -n storage get dscc array-reports
"$kubectl" -n storage get events --field-selector involvedObject.name=array-reports \
	-o custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message
say "Token requests the endpoint answered with 200: $(grep -c 'status=200' "$demo_dir/endpoint.log" || true)"
