#!/usr/bin/env bash
# Tests the chart's alerts (charts/dscc-token-operator/files/alerts.yaml) with promtool:
# renders the PrometheusRule with the pinned helm (testenv/build.sh helm, cached), extracts its
# rule groups into a Prometheus rules file, then runs `promtool check rules` and
# `promtool test rules alerts_test.yaml`. It also checks that every query of the Grafana
# dashboard (files/dashboard.json) parses.
#
#   test-rules.sh                        check and test the rules
#   test-rules.sh --render F [ARGS...]   only write the rendered rules file F; ARGS go to
#                                        helm template (e.g. --set
#                                        prometheusRule.alerts.credentialNotReady.for=5s)
#
# Environment: HELM (a helm binary; default: the one testenv/build.sh builds), PROMTOOL
# (default: promtool on PATH). The tests assume the release name and namespace below.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
chart=$repo/charts/dscc-token-operator
dashboard=$chart/files/dashboard.json
release=dscc-token-operator
namespace=dscc-system

die() { echo "test-rules.sh: $*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

helm_bin() {
	if [[ -n ${HELM:-} ]]; then
		echo "$HELM"
		return
	fi
	"$repo/testenv/build.sh" helm >&2 || die "cannot build helm: run testenv/build.sh helm and fix what it reports"
	echo "$("$repo/testenv/build.sh" print-bin-dir helm)/helm"
}

# Writes the rule groups of the rendered PrometheusRule (its spec) to $1; more arguments go to
# helm template.
render() {
	local out=$1 helm manifest
	shift
	helm=$(helm_bin)
	manifest=$(HELM_CACHE_HOME=$work/helm/cache HELM_CONFIG_HOME=$work/helm/config \
		HELM_DATA_HOME=$work/helm/data "$helm" template "$release" "$chart" --namespace "$namespace" \
		--set prometheusRule.enabled=true "$@" --show-only templates/prometheusrule.yaml) ||
		die "helm template failed"
	# The spec is the last top-level key of the PrometheusRule; its lines, one level up, are a
	# rules file.
	awk '/^spec:$/ { spec = 1; next } spec && /^[^ ]/ { spec = 0 } spec { sub(/^  /, ""); print }' \
		<<<"$manifest" >"$out"
	grep -q '^groups:' "$out" || die "no rule groups in the rendered PrometheusRule:"$'\n'"$manifest"
}

if [[ ${1:-} == --render ]]; then
	[[ -n ${2:-} ]] || die "usage: test-rules.sh --render FILE [HELM-TEMPLATE-ARGS...]"
	shift
	render "$@"
	exit 0
fi
[[ $# -eq 0 ]] || die "usage: test-rules.sh [--render FILE]"

promtool=${PROMTOOL:-promtool}
command -v "$promtool" >/dev/null ||
	die "promtool is missing: install it (Debian/Ubuntu: apt-get install -y --no-install-recommends prometheus) or set PROMTOOL"

render "$work/rules.yaml"
# rule_files in the test file are relative to it: test it next to the rendered rules.
cp "$here/alerts_test.yaml" "$work/alerts_test.yaml"
echo "test-rules.sh: promtool check rules" >&2
"$promtool" check rules "$work/rules.yaml" || die "promtool check rules failed (rules: charts/dscc-token-operator/files/alerts.yaml)"
# The dashboard's queries must parse too: each becomes a recording rule, with Grafana's
# variables replaced by values.
{
	echo "groups:"
	echo "  - name: dashboard-queries"
	echo "    rules:"
	n=0
	while IFS= read -r expr; do
		n=$((n + 1))
		expr=${expr//\\\"/\"}
		expr=${expr//\$job/.+}
		expr=${expr//\$namespace/.*}
		expr=${expr//\$__rate_interval/5m}
		printf "      - record: dashboard_query_%d\n        expr: '%s'\n" "$n" "${expr//\'/\'\'}"
	done < <(sed -n 's/^ *"expr": "\(.*\)",\{0,1\}$/\1/p' "$dashboard")
	[[ $n -gt 0 ]] || die "no \"expr\" in $dashboard"
} >"$work/dashboard-rules.yaml"
echo "test-rules.sh: promtool check rules (the dashboard's queries)" >&2
"$promtool" check rules "$work/dashboard-rules.yaml" ||
	die "a query of charts/dscc-token-operator/files/dashboard.json does not parse"
echo "test-rules.sh: promtool test rules" >&2
"$promtool" test rules "$work/alerts_test.yaml" || die "promtool test rules failed (tests: testenv/prometheus/alerts_test.yaml)"
