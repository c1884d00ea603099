# Sourced by the scripts in testenv/image: where the container state lives, the buildah and
# podman configuration this machine needs, and installing the tools when they are missing.
# shellcheck shell=bash

IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # used by the scripts that source this
REPO_ROOT=$(cd "$IMAGE_DIR/../.." && pwd)

# All container state (images, layers, build caches, temporary files) lives here, never in
# the repository. Two storage trees can't share one directory: override only as a whole.
CONTAINERS_DIR=${CONTAINERS_DIR:-$HOME/.cache/dscc-token-operator/containers}

# The image build.sh produces and run.sh runs.
IMAGE=${IMAGE:-localhost/dscc-token-operator:dev}

log() { printf '[image] %s\n' "$*" >&2; }
die() {
	printf '[image] error: %s\n' "$*" >&2
	exit 1
}

# install_packages PKG...: apt-get install what is missing (CI starts from a fresh machine).
install_packages() {
	local missing=() pkg
	for pkg in "$@"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$pkg")
	done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	command -v apt-get >/dev/null ||
		die "missing ${missing[*]} and there is no apt-get: install them by hand (Debian 12 packages)"
	[[ $(id -u) -eq 0 ]] ||
		die "missing ${missing[*]}: run as root (apt-get install ${missing[*]}) or install them first"
	log "installing ${missing[*]} (apt-get)"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$CONTAINERS_DIR/apt.log" 2>&1; then
		apt-get update -q >>"$CONTAINERS_DIR/apt.log" 2>&1 ||
			die "apt-get update failed, see $CONTAINERS_DIR/apt.log"
		apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$CONTAINERS_DIR/apt.log" 2>&1 ||
			die "apt-get install ${missing[*]} failed, see $CONTAINERS_DIR/apt.log"
	fi
}

# setup_containers: write the storage and engine configuration and export the variables that
# make every buildah and podman call below use it. No flag needs repeating on each call.
setup_containers() {
	mkdir -p "$CONTAINERS_DIR"/{storage,run,tmp,libpod-tmp}
	install_packages podman buildah runc binutils
	# The storage: the vfs driver (plain directories: it needs no kernel support and no
	# fuse-overlayfs), graphroot and runroot in our own folder.
	cat >"$CONTAINERS_DIR/storage.conf.new" <<-EOF
		[storage]
		driver = "vfs"
		graphroot = "$CONTAINERS_DIR/storage"
		runroot = "$CONTAINERS_DIR/run"
	EOF
	# The engine: runc (crun fails here: "cgroups in hybrid mode not supported"), cgroupfs,
	# and no default ulimits (otherwise "setrlimit RLIMIT_NOFILE: Operation not permitted").
	cat >"$CONTAINERS_DIR/containers.conf.new" <<-EOF
		[containers]
		default_ulimits = []

		[engine]
		runtime = "runc"
		cgroup_manager = "cgroupfs"
		events_logger = "file"
		tmp_dir = "$CONTAINERS_DIR/libpod-tmp"
	EOF
	local f
	for f in storage.conf containers.conf; do
		if cmp -s "$CONTAINERS_DIR/$f.new" "$CONTAINERS_DIR/$f"; then
			rm -f "$CONTAINERS_DIR/$f.new"
		else
			mv -f "$CONTAINERS_DIR/$f.new" "$CONTAINERS_DIR/$f"
		fi
	done
	export CONTAINERS_STORAGE_CONF="$CONTAINERS_DIR/storage.conf"
	export CONTAINERS_CONF="$CONTAINERS_DIR/containers.conf"
	export BUILDAH_RUNTIME=runc
	# buildah keeps RUN --mount=type=cache directories under $TMPDIR/buildah-cache: keep
	# them with the rest of the state (and off a tmpfs that a reboot empties).
	export TMPDIR="$CONTAINERS_DIR/tmp"
}

# podman with the flags this kernel needs spelled out too (the configuration above already
# says so; the flags keep a copied command line working without it).
podman_cmd() {
	podman --runtime runc --cgroup-manager cgroupfs --storage-driver vfs \
		--root "$CONTAINERS_DIR/storage" --runroot "$CONTAINERS_DIR/run" "$@"
}

# image_exists NAME: whether the local storage has that image.
image_exists() {
	buildah inspect --type image "$1" >/dev/null 2>&1
}

# image_size NAME: the image's size in bytes and in MB, as podman counts it.
image_size() {
	local bytes
	bytes=$(podman_cmd image inspect --format '{{.Size}}' "$1")
	printf '%s bytes (%s MB)\n' "$bytes" "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1000000 }')"
}
