#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager,
# kubectl, etcd) and helm from source, pinned by the wrapper modules in
# testenv/go/, and caches the binaries by version.
#
#   build.sh k8s | etcd | helm | all ...   build what is missing or broken
#   build.sh print-bin-dir [k8s|etcd|helm] print a bin directory (default k8s)
#   build.sh print-env                     print KEY=VALUE lines for scripts
#
# Environment: K8S_VERSION (1.37.2 or 1.35.4; picks the etcd version),
# HELM_VERSION (4.3.1), DSCC_CACHE_DIR ($HOME/.cache/dscc-token-operator).
# Everything but the print-* answers goes to stderr.
set -euo pipefail
export LC_ALL=C # a "." in $EPOCHREALTIME

testenv=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSION=${K8S_VERSION:-1.37.2}
HELM_VERSION=${HELM_VERSION:-4.3.1}
cache_dir=${DSCC_CACHE_DIR:-$HOME/.cache/dscc-token-operator}

# Each Kubernetes minor is tested with the etcd minor it recommends.
case "$K8S_VERSION" in
1.37.2) etcd_version=3.7.3 ;;
1.35.4) etcd_version=3.6.16 ;;
*)
	echo "build.sh: K8S_VERSION=$K8S_VERSION is not supported (1.37.2 or 1.35.4);" \
		"add testenv/go/kubernetes-v$K8S_VERSION with testenv/gen-wrapper.sh" >&2
	exit 2
	;;
esac
ETCD_VERSION=${ETCD_VERSION:-$etcd_version}

k8s_bin_dir=$cache_dir/bin/k8s-v$K8S_VERSION
etcd_bin_dir=$cache_dir/bin/etcd-v$ETCD_VERSION
helm_bin_dir=$cache_dir/bin/helm-v$HELM_VERSION

log() { echo "build.sh: $*" >&2; }

# The cache key of a binary: anything that changes the build invalidates it.
build_key() { # module_dir package ldflags
	printf '%s\n' "$(go env GOVERSION)" "$2" "$3" "$(sha256sum <"$1/go.mod")" "$(sha256sum <"$1/go.sum")" |
		sha256sum | cut -d' ' -f1
}

# A cached binary is good when its marker names the same key and its size
# (a truncated or half-copied file has another size). DSCC_VERIFY_CACHE=1
# also compares the sha256 of the whole file.
cached() { # binary key
	local bin=$1 key=$2 marker=$1.built
	[[ -x $bin && -f $marker ]] || return 1
	local m_key m_size m_sha
	{ read -r m_key && read -r m_size && read -r m_sha; } <"$marker" || return 1
	[[ $m_key == "$key" && $m_size == "$(stat -c %s "$bin")" ]] || return 1
	if [[ ${DSCC_VERIFY_CACHE:-0} == 1 ]]; then
		[[ $m_sha == "$(sha256sum <"$bin" | cut -d' ' -f1)" ]] || return 1
	fi
}

# Builds one binary into a temporary name, checks that it runs and reports
# the pinned version, then moves it (and its marker) into place atomically.
build_one() { # module_dir package out_binary expected_version ldflags version_cmd...
	local mod=$1 pkg=$2 out=$3 expect=$4 ldflags=$5
	shift 5
	local key name
	key=$(build_key "$mod" "$pkg" "$ldflags")
	name=$(basename "$out")
	if cached "$out" "$key"; then
		log "$name $expect: cached ($out)"
		return 0
	fi
	lock
	if cached "$out" "$key"; then
		log "$name $expect: cached ($out), built by another build.sh"
		return 0
	fi
	rm -f "$out".tmp.* # left by a killed build (we hold the lock)
	mkdir -p "$(dirname "$out")"
	local tmp=$out.tmp.$$ start=$EPOCHREALTIME
	rm -f "$out.built"
	cleanup_tmp=$tmp
	log "$name $expect: building $pkg in ${mod#"$testenv"/} ..."
	# -mod=readonly: every module must match the committed go.sum.
	# -buildvcs=false: the binary must not depend on this repository's git state.
	(cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -buildvcs=false -trimpath \
		-ldflags "$ldflags" -o "$tmp" "$pkg")

	local got
	if ! got=$("$tmp" "$@" 2>&1) || [[ $got != *"$expect"* ]]; then
		log "$name: '$name $*' did not report $expect: $got"
		exit 1
	fi
	printf '%s\n' "$key" "$(stat -c %s "$tmp")" "$(sha256sum <"$tmp" | cut -d' ' -f1)" >"$tmp.built"
	mv -f "$tmp" "$out"
	mv -f "$tmp.built" "$out.built"
	cleanup_tmp=
	log "$name $expect: built in $(elapsed "$start") s ($(du -m "$out" | cut -f1) MiB, $out)"
}

cleanup_tmp=
trap '[[ -z $cleanup_tmp ]] || rm -f "$cleanup_tmp" "$cleanup_tmp.built"' EXIT
trap 'exit 130' INT TERM


elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

build_k8s() {
	local mod=$testenv/go/kubernetes-v$K8S_VERSION v=v$K8S_VERSION
	local major=${K8S_VERSION%%.*} minor
	minor=${K8S_VERSION#*.}
	minor=${minor%%.*}
	# What hack/lib/version.sh sets, so that /version and kubectl report the
	# pinned version instead of v0.0.0-master.
	local ldflags="-s -w" pkg
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit="
	done
	build_one "$mod" k8s.io/kubernetes/cmd/kube-apiserver "$k8s_bin_dir/kube-apiserver" "$v" "$ldflags" --version
	build_one "$mod" k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_bin_dir/kube-controller-manager" "$v" "$ldflags" --version
	build_one "$mod" k8s.io/kubernetes/cmd/kubectl "$k8s_bin_dir/kubectl" "$v" "$ldflags" version --client
}

build_etcd() {
	# etcd's version is a constant in go.etcd.io/etcd/api/v3/version.
	build_one "$testenv/go/etcd-v$ETCD_VERSION" go.etcd.io/etcd/server/v3 "$etcd_bin_dir/etcd" \
		"$ETCD_VERSION" "-s -w" --version
}

build_helm() {
	local major=${HELM_VERSION%%.*}
	build_one "$testenv/go/helm-v$HELM_VERSION" "helm.sh/helm/v$major/cmd/helm" "$helm_bin_dir/helm" \
		"v$HELM_VERSION" "-s -w -X helm.sh/helm/v$major/internal/version.version=v$HELM_VERSION" version
}

check_module() { # what dir
	if [[ ! -f $2/go.sum ]]; then
		log "$1: no pinned module $2 (create it with testenv/gen-wrapper.sh)"
		exit 2
	fi
}

# Several test binaries may start at once; one builds, the others wait and
# then find the cache filled. Taken only when something is to be built, so
# that a long helm build does not hold up a cluster start.
locked=0
lock() {
	((locked == 0)) || return 0
	locked=1
	mkdir -p "$cache_dir/bin"
	exec 9>"$cache_dir/bin/.build.lock"
	if ! flock -n 9; then
		log "waiting for another build.sh to finish"
		flock 9
	fi
}

[[ $# -gt 0 ]] || set -- all
for what in "$@"; do
	case "$what" in
	print-bin-dir | print-env) ;;
	k8s) check_module k8s "$testenv/go/kubernetes-v$K8S_VERSION" ;;
	etcd) check_module etcd "$testenv/go/etcd-v$ETCD_VERSION" ;;
	helm) check_module helm "$testenv/go/helm-v$HELM_VERSION" ;;
	all)
		check_module k8s "$testenv/go/kubernetes-v$K8S_VERSION"
		check_module etcd "$testenv/go/etcd-v$ETCD_VERSION"
		check_module helm "$testenv/go/helm-v$HELM_VERSION"
		;;
	*)
		echo "usage: build.sh k8s|etcd|helm|all|print-bin-dir [k8s|etcd|helm]|print-env" >&2
		exit 2
		;;
	esac
done

case "$1" in
print-bin-dir)
	case "${2:-k8s}" in
	k8s) echo "$k8s_bin_dir" ;;
	etcd) echo "$etcd_bin_dir" ;;
	helm) echo "$helm_bin_dir" ;;
	*)
		echo "usage: build.sh print-bin-dir [k8s|etcd|helm]" >&2
		exit 2
		;;
	esac
	exit 0
	;;
print-env)
	printf '%s\n' "K8S_VERSION=$K8S_VERSION" "ETCD_VERSION=$ETCD_VERSION" "HELM_VERSION=$HELM_VERSION" \
		"K8S_BIN_DIR=$k8s_bin_dir" "ETCD_BIN_DIR=$etcd_bin_dir" "HELM_BIN_DIR=$helm_bin_dir" \
		"KUBECTL=$k8s_bin_dir/kubectl" "HELM=$helm_bin_dir/helm"
	exit 0
	;;
esac

for what in "$@"; do
	case "$what" in
	k8s) build_k8s ;;
	etcd) build_etcd ;;
	helm) build_helm ;;
	all) build_k8s && build_etcd && build_helm ;;
	esac
done
