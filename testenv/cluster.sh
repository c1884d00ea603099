#!/usr/bin/env bash
# Starts and stops a local Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager) on loopback, for the tests and for a shell.
#
#   cluster.sh up [DIR] [--watch-pid PID]   start; last stdout line: kubeconfig path
#   cluster.sh down [DIR]                   stop everything (idempotent), keep logs
#   cluster.sh status [DIR]                 which components run; 0 when all do
#   cluster.sh stop-apiserver DIR | start-apiserver DIR
#   cluster.sh stop-etcd DIR | start-etcd DIR | restart-etcd DIR
#
# DIR defaults to $HOME/.cache/dscc-token-operator/cluster. Environment:
# K8S_VERSION (as build.sh), CRD_DIR (default <repo>/crds), KCM_CONTROLLERS,
# DSCC_READY_TIMEOUT (s, default 60), DSCC_STOP_TIMEOUT (s, default 10).
# Everything but the kubeconfig path goes to stderr.
set -euo pipefail
export LC_ALL=C # a "." in $EPOCHREALTIME

self=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
testenv=$(dirname "$self")
repo=$(dirname "$testenv")
cache_dir=${DSCC_CACHE_DIR:-$HOME/.cache/dscc-token-operator}
ready_timeout=${DSCC_READY_TIMEOUT:-60}
stop_timeout=${DSCC_STOP_TIMEOUT:-10}
crd_dir=${CRD_DIR:-$repo/crds}
kcm_controllers=${KCM_CONTROLLERS:-garbagecollector,namespace,serviceaccount-token,serviceaccount,root-ca-cert-publisher,clusterrole-aggregation,deployment,replicaset,statefulset,daemonset,job,cronjob,ttl-after-finished,resourcequota,disruption}

log() { echo "cluster.sh: $*" >&2; }
die() {
	log "$*"
	exit 1
}
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$self" >&2
	exit 2
}

# ---- processes -------------------------------------------------------------

# The pid recorded for a component, if that process still runs the recorded
# binary (so a reused pid or a zombie is not mistaken for it).
pid_of() { # name
	local pidfile=$dir/$1.pid cmdfile=$dir/$1.cmdline pid argv0 want state
	[[ -f $pidfile && -f $cmdfile ]] || return 1
	read -r pid <"$pidfile" || return 1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	state=$(proc_field "$pid" 1) || return 1
	[[ $state != Z ]] || return 1
	IFS= read -r -d '' argv0 <"/proc/$pid/cmdline" 2>/dev/null || return 1
	want=$(first_word "$cmdfile")
	[[ $argv0 == "$want" ]] || return 1
	echo "$pid"
}

# Field n of /proc/PID/stat counted after the command name (1 = state,
# 20 = start time).
proc_field() { # pid n
	local stat rest fields
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	rest=${stat##*) }
	read -ra fields <<<"$rest"
	echo "${fields[$2 - 1]}"
}

first_word() { # cmdline_file
	local -a cmd
	eval "cmd=($(<"$1"))"
	echo "${cmd[0]}"
}

# Records a command line (shell-quoted, one line) so that the component can be
# stopped and started again alone, with the same ports and files.
record_cmdline() { # name args...
	local name=$1
	shift
	printf '%q ' "$@" >"$dir/$name.cmdline.tmp"
	echo >>"$dir/$name.cmdline.tmp"
	mv -f "$dir/$name.cmdline.tmp" "$dir/$name.cmdline"
}

# Starts a component in its own session (it outlives the calling shell and
# gets no signal from its terminal), without the lock or the caller's stdout.
start_proc() { # name
	local name=$1
	local -a cmd
	eval "cmd=($(<"$dir/$name.cmdline"))"
	echo "=== $(date -u +%FT%TZ) starting: ${cmd[*]}" >>"$dir/logs/$name.log"
	setsid nohup "${cmd[@]}" >>"$dir/logs/$name.log" 2>&1 </dev/null 8>&- &
	local pid=$! i argv0
	echo "$pid" >"$dir/$name.pid"
	# Until setsid and nohup have exec'd the binary, pid_of does not know the
	# process; wait for that so that it is not taken for dead.
	for ((i = 0; i < 100; i++)); do
		IFS= read -r -d '' argv0 <"/proc/$pid/cmdline" 2>/dev/null || return 0
		[[ $argv0 != "${cmd[0]}" ]] || return 0
		sleep 0.05
	done
}

# SIGTERM, then SIGKILL after $stop_timeout s. With signal KILL: at once
# (a crash).
stop_proc() { # name [signal]
	local name=$1 signal=${2:-TERM} pid start
	if ! pid=$(pid_of "$name"); then
		rm -f "$dir/$name.pid"
		return 0
	fi
	start=$EPOCHREALTIME
	kill "-$signal" "$pid" 2>/dev/null || true
	if ! wait_gone "$name" "$stop_timeout"; then
		log "$name (pid $pid) did not stop in $stop_timeout s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$name" 10 || die "$name (pid $pid) survives SIGKILL"
	fi
	rm -f "$dir/$name.pid"
	log "$name stopped (SIG$signal) in $(elapsed "$start") s"
}

now_us() { echo "${EPOCHREALTIME/./}"; }

wait_gone() { # name timeout_s
	local deadline=$(($(now_us) + $2 * 1000000))
	while pid_of "$1" >/dev/null; do
		(($(now_us) < deadline)) || return 1
		sleep 0.1
	done
}

# Polls check_fn until it succeeds; fails early when the component died.
wait_ready() { # name check_fn
	local name=$1 check=$2 start=$EPOCHREALTIME deadline=$(($(now_us) + ready_timeout * 1000000))
	until "$check"; do
		if ! pid_of "$name" >/dev/null; then
			log "$name exited; the end of $dir/logs/$name.log:"
			tail -n 25 "$dir/logs/$name.log" >&2 || true
			return 1
		fi
		if (($(now_us) >= deadline)); then
			log "$name not ready after $ready_timeout s; the end of $dir/logs/$name.log:"
			tail -n 25 "$dir/logs/$name.log" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	log "$name ready in $(elapsed "$start") s"
}

# ---- ports -----------------------------------------------------------------

used_ports=" "
# A loopback port nobody uses, below the ephemeral range so that outgoing
# connections do not take it between now and the bind.
free_port() {
	local port i
	for ((i = 0; i < 200; i++)); do
		port=$((20000 + RANDOM % 12000))
		[[ $used_ports == *" $port "* ]] && continue
		if command -v ss >/dev/null; then
			[[ -z $(ss -Htan "( sport = :$port )" 2>/dev/null) ]] || continue
		elif (: <"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			continue
		fi
		used_ports+="$port "
		echo "$port"
		return 0
	done
	die "no free port found"
}

port_clash() { # name
	grep -q 'address already in use' "$dir/logs/$1.log" 2>/dev/null
}

# ---- readiness checks ------------------------------------------------------

etcd_url() { sed -n 's/^ETCD_URL=//p' "$dir/ports"; }
apiserver_url() { sed -n 's/^APISERVER_URL=//p' "$dir/ports"; }

etcd_healthy() {
	[[ $(curl -fsS --max-time 2 "$(etcd_url)/health" 2>/dev/null) == *'"health":"true"'* ]]
}

apiserver_ready() {
	[[ -s $dir/pki/apiserver.crt ]] || return 1
	[[ $(curl -fsS --max-time 2 --cacert "$dir/pki/apiserver.crt" \
		-H "Authorization: Bearer $(cut -d, -f1 "$dir/tokens.csv")" \
		"$(apiserver_url)/readyz" 2>/dev/null) == ok ]]
}

lease_holder() {
	"$k8s_bin/kubectl" --kubeconfig "$dir/kubeconfig" --request-timeout=2s -n kube-system \
		get lease kube-controller-manager -o 'jsonpath={.spec.holderIdentity}' 2>/dev/null || true
}

old_holder=
kcm_leads() {
	local holder
	holder=$(lease_holder)
	[[ -n $holder && $holder != "$old_holder" ]]
}

# ---- components ------------------------------------------------------------

start_etcd() {
	start_proc etcd
	wait_ready etcd etcd_healthy
}

start_apiserver() {
	start_proc kube-apiserver
	wait_ready kube-apiserver apiserver_ready
}

# The controller manager exits when it cannot renew its lease (an apiserver
# or etcd outage of more than 50 s); start it again when it is gone.
ensure_controller_manager() {
	pid_of kube-apiserver >/dev/null || return 0
	pid_of kube-controller-manager >/dev/null && return 0
	[[ -f $dir/kube-controller-manager.cmdline ]] || return 0
	wait_ready kube-apiserver apiserver_ready
	old_holder=$(lease_holder)
	# Its holder is gone: without the Lease the new one need not wait for it
	# to expire.
	"$k8s_bin/kubectl" --kubeconfig "$dir/kubeconfig" -n kube-system delete lease \
		kube-controller-manager --ignore-not-found >/dev/null
	start_proc kube-controller-manager
	wait_ready kube-controller-manager kcm_leads
}

# ---- up --------------------------------------------------------------------

write_file() { # path content (atomically: readers never see half a file)
	printf '%s\n' "$2" >"$1.tmp"
	mv -f "$1.tmp" "$1"
}

wipe_state() {
	rm -rf "$dir/etcd-data" "$dir/pki" "$dir/logs"
	rm -f "$dir"/{kubeconfig,env,ports,tokens.csv} "$dir"/*.cmdline "$dir"/*.pid
}

up_failed() {
	local rc=$?
	[[ $up_done == 1 ]] && return 0
	trap - EXIT
	log "start-up failed (exit $rc); stopping what started; logs stay in $dir/logs"
	do_down
	exit "$rc"
}

do_up() {
	local start=$EPOCHREALTIME

	if pid_of etcd >/dev/null && pid_of kube-apiserver >/dev/null &&
		pid_of kube-controller-manager >/dev/null &&
		[[ $(sed -n 's/^K8S_VERSION=//p' "$dir/env" 2>/dev/null) == "$K8S_VERSION" ]] && apiserver_ready; then
		log "already running in $dir (down first for a fresh one)"
		[[ -z $watch_pid ]] || start_watchdog
		echo "$dir/kubeconfig"
		return 0
	fi
	do_down
	wipe_state
	mkdir -p "$dir/logs" "$dir/pki" "$dir/etcd-data"
	chmod 700 "$dir/etcd-data" "$dir/pki"

	up_done=0
	trap up_failed EXIT
	trap 'exit 130' INT TERM
	[[ -z $watch_pid ]] || start_watchdog

	"$testenv/build.sh" k8s etcd

	# Service-account tokens are signed with this key; the admin logs in with a
	# static token (system:masters), so no client certificates are needed.
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/pki/sa.key" 2>/dev/null
	openssl pkey -in "$dir/pki/sa.key" -pubout -out "$dir/pki/sa.pub" 2>/dev/null
	local token
	token=$(openssl rand -hex 32)
	write_file "$dir/tokens.csv" "$token,admin,admin,system:masters"
	chmod 600 "$dir/tokens.csv"

	local attempt etcd_port peer_port api_port
	for attempt in 1 2 3; do
		etcd_port=$(free_port)
		peer_port=$(free_port)
		write_file "$dir/ports" "ETCD_URL=http://127.0.0.1:$etcd_port"
		record_cmdline etcd "$etcd_bin/etcd" --name dscc-test --data-dir "$dir/etcd-data" \
			--listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
			--listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
			--initial-cluster "dscc-test=http://127.0.0.1:$peer_port" \
			--unsafe-no-fsync --log-level=warn
		start_etcd && break
		port_clash etcd && ((attempt < 3)) || return 1
		log "etcd: port taken, trying others"
		stop_proc etcd
		rm -rf "$dir/etcd-data" && mkdir -m 700 "$dir/etcd-data"
	done

	for attempt in 1 2 3; do
		api_port=$(free_port)
		write_file "$dir/ports" "ETCD_URL=http://127.0.0.1:$etcd_port
APISERVER_URL=https://127.0.0.1:$api_port"
		# --advertise-address and --endpoint-reconciler-type=none: loopback only,
		# and no need for a default route (the apiserver's Endpoints would refuse
		# a loopback address anyway).
		record_cmdline kube-apiserver "$k8s_bin/kube-apiserver" \
			--etcd-servers "http://127.0.0.1:$etcd_port" \
			--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port "$api_port" \
			--endpoint-reconciler-type=none \
			--shutdown-watch-termination-grace-period=2s \
			--cert-dir "$dir/pki" \
			--token-auth-file "$dir/tokens.csv" \
			--authorization-mode=RBAC \
			--allow-privileged=true \
			--service-cluster-ip-range=10.0.0.0/24 \
			--service-account-issuer https://kubernetes.default.svc.cluster.local \
			--service-account-key-file "$dir/pki/sa.pub" \
			--service-account-signing-key-file "$dir/pki/sa.key" \
			--disable-admission-plugins=ServiceAccount
		start_apiserver && break
		port_clash kube-apiserver && ((attempt < 3)) || return 1
		log "kube-apiserver: port taken, trying another"
		stop_proc kube-apiserver
	done

	write_file "$dir/kubeconfig" "apiVersion: v1
kind: Config
clusters:
- name: dscc-test
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $dir/pki/apiserver.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: dscc-test
  context:
    cluster: dscc-test
    user: admin
    namespace: default
current-context: dscc-test"
	chmod 600 "$dir/kubeconfig"
	write_file "$dir/env" "CLUSTER_DIR=$dir
KUBECONFIG=$dir/kubeconfig
KUBECTL=$k8s_bin/kubectl
HELM=$helm_bin/helm
APISERVER_URL=https://127.0.0.1:$api_port
APISERVER_CA=$dir/pki/apiserver.crt
ADMIN_TOKEN=$token
ETCD_URL=http://127.0.0.1:$etcd_port
SERVICE_ACCOUNT_ISSUER=https://kubernetes.default.svc.cluster.local
K8S_VERSION=$K8S_VERSION
ETCD_VERSION=$ETCD_VERSION
K8S_BIN_DIR=$k8s_bin
ETCD_BIN_DIR=$etcd_bin
HELM_BIN_DIR=$helm_bin"
	chmod 600 "$dir/env" # it holds the admin token

	# CRDs go in before the controller manager starts: its garbage collector
	# re-reads discovery only every 30 s.
	apply_crds

	record_cmdline kube-controller-manager "$k8s_bin/kube-controller-manager" \
		--kubeconfig "$dir/kubeconfig" \
		--controllers="$kcm_controllers" \
		--service-account-private-key-file "$dir/pki/sa.key" \
		--root-ca-file "$dir/pki/apiserver.crt" \
		--leader-elect=true --secure-port=0 \
		--leader-elect-lease-duration=60s --leader-elect-renew-deadline=50s
	old_holder=
	start_proc kube-controller-manager
	wait_ready kube-controller-manager kcm_leads

	up_done=1
	trap - EXIT INT TERM
	log "Kubernetes v$K8S_VERSION up in $(elapsed "$start") s at https://127.0.0.1:$api_port; logs in $dir/logs; source $dir/env"
	echo "$dir/kubeconfig"
}

apply_crds() {
	[[ -d $crd_dir ]] || return 0
	local files=() crds=() f name applied start=$EPOCHREALTIME
	for f in "$crd_dir"/*.yaml; do
		[[ -f $f ]] && files+=("$f")
	done
	((${#files[@]})) || return 0
	for f in "${files[@]}"; do
		# Server-side: large CRDs do not fit the last-applied annotation.
		applied=$("$k8s_bin/kubectl" --kubeconfig "$dir/kubeconfig" apply --server-side \
			--field-manager=cluster.sh -o name -f "$f") || die "kubectl apply -f $f failed"
		for name in $applied; do
			[[ $name == customresourcedefinition.apiextensions.k8s.io/* ]] && crds+=("$name")
		done
	done
	if ((${#crds[@]})); then
		"$k8s_bin/kubectl" --kubeconfig "$dir/kubeconfig" wait --for=condition=Established \
			--timeout="${ready_timeout}s" "${crds[@]}" >/dev/null
	fi
	log "applied ${#files[@]} file(s) from $crd_dir, ${#crds[@]} CRD(s) Established in $(elapsed "$start") s"
}

# ---- watchdog --------------------------------------------------------------

start_watchdog() {
	[[ $watch_pid =~ ^[0-9]+$ ]] || die "--watch-pid needs a process id"
	local since
	since=$(proc_field "$watch_pid" 20) || die "--watch-pid $watch_pid: no such process"
	stop_watchdog
	record_cmdline watchdog "$BASH" "$self" _watchdog "$dir" "$watch_pid" "$since"
	start_proc watchdog
	log "watchdog (pid $(<"$dir/watchdog.pid")) runs 'down' when pid $watch_pid ends"
}

stop_watchdog() {
	local pid
	pid=$(pid_of watchdog) || return 0
	[[ $pid == "$$" ]] || kill -TERM "$pid" 2>/dev/null || true
	rm -f "$dir/watchdog.pid"
}

# The watched process is the same one while its start time is unchanged
# (a new process may get the pid later).
run_watchdog() { # pid since
	local state
	while state=$(proc_field "$1" 1) && [[ $state != Z && $(proc_field "$1" 20) == "$2" ]]; do
		sleep 0.5
	done
	echo "$(date -u +%FT%TZ) pid $1 ended: down" >&2
	exec "$BASH" "$self" down "$dir"
}

# ---- down ------------------------------------------------------------------

do_down() {
	stop_watchdog
	stop_proc kube-controller-manager
	# The apiserver must be gone before etcd: without etcd its shutdown hangs.
	stop_proc kube-apiserver
	stop_proc etcd
	rm -rf "$dir/etcd-data"
}

# ---- main ------------------------------------------------------------------

[[ $# -gt 0 ]] || usage
cmd=$1
shift
if [[ $cmd == _watchdog ]]; then # started by start_watchdog: DIR PID SINCE
	dir=$1
	run_watchdog "$2" "$3"
fi
dir=
watch_pid=
while [[ $# -gt 0 ]]; do
	case "$1" in
	--watch-pid) watch_pid=${2:?--watch-pid needs a process id}; shift 2 ;;
	--watch-pid=*) watch_pid=${1#*=}; shift ;;
	-h | --help) usage ;;
	-*) die "unknown option $1" ;;
	*)
		[[ -z $dir ]] || die "one directory only"
		dir=$1
		shift
		;;
	esac
done
dir=${dir:-$cache_dir/cluster}
[[ $dir != *[[:space:]]* ]] || die "directory names with blanks are not supported: '$dir'"

case "$cmd" in
up) mkdir -p "$dir" ;;
down | status | stop-* | start-* | restart-*)
	if [[ ! -d $dir ]]; then
		[[ $cmd == down ]] && exit 0
		die "no cluster directory $dir"
	fi
	;;
*) usage ;;
esac
dir=$(cd "$dir" && pwd)

build_env=$("$testenv/build.sh" print-env)
eval "$build_env"
k8s_bin=$K8S_BIN_DIR
etcd_bin=$ETCD_BIN_DIR
helm_bin=$HELM_BIN_DIR

# One command at a time per directory (a watchdog's down waits for an up).
exec 8>"$dir/.lock"
flock 8

up_done=0
case "$cmd" in
up) do_up ;;
down)
	do_down
	log "down ($dir); logs stay in $dir/logs"
	;;
status)
	rc=0
	for name in etcd kube-apiserver kube-controller-manager watchdog; do
		if pid=$(pid_of "$name"); then
			log "$name: running (pid $pid)"
		else
			log "$name: not running"
			[[ $name == watchdog ]] || rc=1
		fi
	done
	exit "$rc"
	;;
stop-apiserver) stop_proc kube-apiserver ;;
start-apiserver)
	pid_of kube-apiserver >/dev/null || start_apiserver
	ensure_controller_manager
	;;
# etcd is killed: a graceful stop waits ~7 s for the apiserver's watches.
# Nothing is lost: without fsync the writes are in the page cache anyway.
stop-etcd) stop_proc etcd KILL ;;
start-etcd)
	pid_of etcd >/dev/null || start_etcd
	ensure_controller_manager
	;;
restart-etcd)
	stop_proc etcd KILL
	start_etcd
	ensure_controller_manager
	;;
esac
