#!/usr/bin/env bash
# Prints every metric name used in the chart's alert expressions (the rendered PrometheusRule,
# see test-rules.sh) and in the queries of its Grafana dashboard
# (charts/dscc-token-operator/files/dashboard.json), sorted, one per line. Histogram series
# appear as queried (`..._bucket`). `up` is Prometheus' own; --operator-only leaves it (and
# any other name not starting with dscc_) out.
#
# Environment: HELM, as for test-rules.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dashboard=$here/../../charts/dscc-token-operator/files/dashboard.json
operator_only=false
case ${1:-} in
--operator-only) operator_only=true ;;
"") ;;
*) echo "usage: metric-names.sh [--operator-only]" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/test-rules.sh" --render "$work/rules.yaml"

{
	# Alert expressions: the block scalar after each `expr: |-`, or a one-line `expr:`.
	awk '
		block && match($0, /^ */) && RLENGTH > indent { print; next }
		{ block = 0 }
		/^ *expr: *[|>]-?$/ { block = 1; match($0, /^ */); indent = RLENGTH; next }
		/^ *expr: / { sub(/^ *expr: */, ""); print }
	' "$work/rules.yaml"
	# Dashboard queries: one "expr" per line, JSON-escaped quotes; and the template variables'
	# label_values(metric{...}, label) queries.
	sed -n 's/^ *"expr": "\(.*\)",\{0,1\}$/\1/p' "$dashboard" | sed 's/\\"/"/g'
	sed -n 's/^ *"definition": "label_values(\(.*\)),*$/\1/p' "$dashboard" | sed 's/\\"/"/g; s/,[^,]*$//'
} |
	# Drop string literals, label matchers, ranges and the label lists of by/on/... clauses;
	# what is left that is a name and not followed by "(" is a metric name or a keyword.
	sed -E 's/"[^"]*"//g; s/\{[^}]*\}//g; s/\[[^]]*\]//g' |
	sed -E 's/(by|without|on|ignoring|group_left|group_right)[[:space:]]*\([^)]*\)//g' |
	grep -oE '[A-Za-z_:][A-Za-z0-9_:]*[[:space:]]*\(?' |
	grep -vE '\($' |
	sed -E 's/[[:space:]]+$//' |
	grep -vxE 'and|or|unless|bool|offset|by|without|on|ignoring|group_left|group_right|inf|nan|Inf|NaN' |
	sort -u |
	if $operator_only; then grep '^dscc_'; else cat; fi
