#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's two base images, built from this host (no registry is
# needed):
#
#   builder  Debian bookworm (debootstrap --variant=minbase from Debian's mirror, plus gcc,
#            libc6-dev, pkg-config, ca-certificates) with the host's Rust toolchain copied
#            in: rustc, cargo and the x86_64-unknown-linux-gnu std only. Like rust:bookworm:
#            CARGO_HOME=/usr/local/cargo, cargo and rustc on PATH.
#   runtime  FROM scratch, assembled the way distroless cc is: the glibc loader and the
#            shared libraries the binary links, taken from the builder (so that they are
#            the glibc it was linked against), CA roots, /etc/passwd and /etc/group with
#            nonroot 65532. No shell, no package manager, nothing writable.
#
# Each is tagged with a key of its inputs (builder: the recipe, the package list and the
# toolchain's `rustc -vV`/`cargo -V`; runtime: the recipe and the builder image) and rebuilt
# only when the key changes.
#
#   standins.sh [all|builder|runtime]   build what is missing; print BUILDER_IMAGE=... and
#                                       RUNTIME_IMAGE=... on stdout (logs go to stderr)
#   standins.sh remove                  remove both (and the debootstrap package cache)
#
# Environment: RUST_TOOLCHAIN (default 1.95.0, a rustup toolchain name; without rustup the
# rustc on PATH), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bump when a recipe below changes in a way its key does not capture.
BUILDER_RECIPE=1
RUNTIME_RECIPE=2

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILDER_PACKAGES=(gcc libc6-dev pkg-config ca-certificates)
RUST_TOOLCHAIN=${RUST_TOOLCHAIN:-1.95.0}
RUST_TARGET=x86_64-unknown-linux-gnu
# cargo in the builder trusts what the host trusts: this machine reaches crates.io through
# a TLS-inspecting proxy whose CA only the host's bundle has ("SSL certificate problem:
# self-signed certificate in certificate chain" otherwise). It is given to cargo alone
# (CARGO_HTTP_CAINFO); the system store stays Debian's, and the runtime gets that one.
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# The binary's DT_NEEDED entries plus the loader (its PT_INTERP): build.sh checks the built
# binary against what the runtime holds, and says which library to add here if one is
# missing. The libraries' own DT_NEEDED are checked below.
RUNTIME_LIBS=(ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libgcc_s.so.1)

BUILDER_REPO=localhost/dscc-token-operator-builder
RUNTIME_REPO=localhost/dscc-token-operator-runtime
WORK="$CONTAINERS_DIR/work"

sha() { sha256sum | cut -c1-16; }

toolchain_sysroot() {
	if command -v rustup >/dev/null 2>&1; then
		rustup run "$RUST_TOOLCHAIN" rustc --print sysroot ||
			die "rustup has no toolchain $RUST_TOOLCHAIN (rustup toolchain list; RUST_TOOLCHAIN=...)"
	else
		command -v rustc >/dev/null || die "no Rust toolchain: install rustup and Rust $RUST_TOOLCHAIN"
		rustc --print sysroot
	fi
}

builder_key() {
	local sysroot=$1
	{
		echo "recipe $BUILDER_RECIPE $DEBIAN_SUITE ${BUILDER_PACKAGES[*]}"
		"$sysroot/bin/rustc" -vV
		"$sysroot/bin/cargo" -V
		sha256sum <"$HOST_CA_BUNDLE"
	} | sha
}

# umount_below DIR: undo mounts a failed debootstrap may have left (proc, sys, a bind of
# /dev), deepest first, and make sure none is left before anything deletes DIR.
umount_below() {
	local dir mnt
	dir=$(readlink -f "$1")
	awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
		while read -r mnt; do umount -l "$mnt" || true; done
	if awk -v d="$dir/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
		die "$dir still has mounts below it; not deleting it"
	fi
}

remove_tree() {
	[[ -e $1 ]] || return 0
	umount_below "$1"
	rm -rf --one-file-system "$1"
}

# prune_repo REPO KEEP: remove the other tags of a stand-in repository (older keys).
prune_repo() {
	local name
	buildah images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep "^$1:" | while read -r name; do
		[[ $name == "$2" ]] || buildah rmi "$name" >/dev/null 2>&1 || true
	done
}

build_builder() {
	local tag=$1 sysroot=$2 rootfs="$WORK/builder-rootfs" started=$SECONDS
	install_packages debootstrap debian-archive-keyring
	[[ -s $HOST_CA_BUNDLE ]] || die "no CA bundle at $HOST_CA_BUNDLE (HOST_CA_BUNDLE=...)"
	log "builder: debootstrap $DEBIAN_SUITE (minbase + ${BUILDER_PACKAGES[*]}) from $DEBIAN_MIRROR"
	remove_tree "$rootfs"
	mkdir -p "$WORK" "$CONTAINERS_DIR/debootstrap-cache"
	local includes
	includes=$(IFS=,; echo "${BUILDER_PACKAGES[*]}")
	if ! debootstrap --variant=minbase --include="$includes" \
		--cache-dir="$CONTAINERS_DIR/debootstrap-cache" \
		"$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1; then
		umount_below "$rootfs"
		tail -n 20 "$WORK/debootstrap.log" >&2
		die "debootstrap failed (log: $WORK/debootstrap.log); is $DEBIAN_MIRROR reachable?"
	fi
	umount_below "$rootfs"
	log "builder: debootstrap took $((SECONDS - started)) s"

	# Trim what a build never reads; buildah and podman provide resolv.conf and hostname.
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
		"$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
		"$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log \
		"$rootfs"/tmp/* "$rootfs"/var/tmp/*
	rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"

	# The toolchain, trimmed to what `cargo build` for the host target uses: rustc, cargo,
	# the compiler's shared libraries, the target's std and its self-contained linker
	# (rust-lld is the default linker for x86_64-unknown-linux-gnu). No docs, no rust-src,
	# no clippy/rustfmt/rustdoc, no rustup: /usr/local as the standalone installer lays it.
	local rustlib="lib/rustlib/$RUST_TARGET"
	[[ -x $sysroot/bin/rustc && -x $sysroot/bin/cargo && -d $sysroot/$rustlib/lib ]] ||
		die "$sysroot is not a toolchain with rustc, cargo and the $RUST_TARGET std"
	install -d "$rootfs/usr/local/bin" "$rootfs/usr/local/$rustlib" "$rootfs/usr/local/cargo"
	install -D -m 0644 "$HOST_CA_BUNDLE" "$rootfs/usr/local/share/dscc-standin/host-ca-certificates.crt"
	cp -a "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$rootfs/usr/local/bin/"
	cp -a "$sysroot"/lib/*.so* "$rootfs/usr/local/lib/"
	cp -a "$sysroot/$rustlib/lib" "$rootfs/usr/local/$rustlib/"
	if [[ -d $sysroot/$rustlib/bin ]]; then
		cp -a "$sysroot/$rustlib/bin" "$rootfs/usr/local/$rustlib/"
		rm -f "$rootfs/usr/local/$rustlib/bin/wasm-component-ld" "$rootfs/usr/local/$rustlib/bin/gcc-ld/wasm-ld"
	fi
	log "builder: rootfs $(du -sh --apparent-size "$rootfs" | cut -f1)," \
		"of which the toolchain $(du -shc --apparent-size "$rootfs"/usr/local/{bin,lib} | tail -1 | cut -f1)"

	local ctr mnt
	ctr=$(buildah from scratch)
	mnt=$(buildah mount "$ctr")
	cp -a "$rootfs/." "$mnt/"
	buildah umount "$ctr" >/dev/null
	remove_tree "$rootfs"
	buildah config \
		--env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--env CARGO_HOME=/usr/local/cargo \
		--env CARGO_HTTP_CAINFO=/usr/local/share/dscc-standin/host-ca-certificates.crt \
		--env LANG=C.UTF-8 \
		--workingdir / --cmd bash \
		--label io.dscc-token-operator.standin=builder \
		--label io.dscc-token-operator.standin.key="${tag##*:}" \
		--label org.opencontainers.image.description="local stand-in for rust:bookworm ($("$sysroot/bin/rustc" -V))" \
		"$ctr"
	# Smoke test: the toolchain compiles and links a program inside the container.
	# shellcheck disable=SC2016 # expanded by the container's shell
	if ! buildah run --network none "$ctr" -- sh -ec '
		cd "$(mktemp -d)"
		printf "fn main() { println!(\"hello from {}\", std::env::consts::ARCH); }\n" > hello.rs
		rustc -O hello.rs -o hello
		./hello
		cargo -V
		rm -rf "$PWD"
	' >&2; then
		buildah rm "$ctr" >/dev/null
		die "builder: the toolchain does not work inside the image"
	fi
	buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
	log "builder: $tag built in $((SECONDS - started)) s, $(image_size "$tag")"
}

# elf_needed FILE: its DT_NEEDED entries.
elf_needed() {
	readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
}

# check_closure ROOT: every DT_NEEDED of every ELF file under ROOT is in ROOT's library
# directory, and every PT_INTERP exists. Prints what is missing; fails if anything is.
check_closure() {
	local root=$1 f lib interp bad=0
	while IFS= read -r -d '' f; do
		head -c 4 "$f" | grep -q 'ELF' || continue
		for lib in $(elf_needed "$f"); do
			[[ -e $root/usr/lib/x86_64-linux-gnu/$lib ]] || {
				echo "missing: $lib (needed by ${f#"$root"})" >&2
				bad=1
			}
		done
		interp=$(readelf -l "$f" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
		if [[ -n $interp && ! -e $root$interp ]]; then
			echo "missing: the loader $interp (needed by ${f#"$root"})" >&2
			bad=1
		fi
	done < <(find "$root" -xdev -type f -print0)
	return "$bad"
}

# check_no_shell ROOT: no shell, no busybox, no package manager anywhere in ROOT.
check_no_shell() {
	local root=$1 found
	found=$(find "$root" -xdev \( -name sh -o -name bash -o -name dash -o -name ash \
		-o -name zsh -o -name busybox -o -name toybox -o -name apt -o -name apt-get \
		-o -name dpkg -o -name rpm -o -name apk \) -print)
	if [[ -n $found || -e $root/bin/sh ]]; then
		echo "found in the image: ${found:-/bin/sh}" >&2
		return 1
	fi
}

# check_writable_free ROOT: everything is owned by root and writable by nobody else.
check_writable_free() {
	local found
	found=$(find "$1" -xdev ! -type l \( ! -user 0 -o ! -group 0 -o -perm /022 \) -print)
	[[ -z $found ]] || {
		echo "owned by someone else than root or writable by others: $found" >&2
		return 1
	}
}

build_runtime() {
	local tag=$1 builder=$2 started=$SECONDS
	log "runtime: assembling FROM scratch from $builder's files"
	local bctr bmnt ctr mnt lib real
	bctr=$(buildah from --pull=never "$builder")
	bmnt=$(buildah mount "$bctr")
	ctr=$(buildah from scratch)
	mnt=$(buildah mount "$ctr")
	cleanup_runtime() {
		buildah rm "$bctr" "$ctr" >/dev/null 2>&1 || true
	}
	trap cleanup_runtime EXIT

	install -d -m 0755 "$mnt"/{etc/ssl/certs,usr/lib/x86_64-linux-gnu,usr/lib64,home/nonroot}
	ln -s usr/lib "$mnt/lib"
	ln -s usr/lib64 "$mnt/lib64"
	for lib in "${RUNTIME_LIBS[@]}"; do
		# Resolve symlinks inside the builder's root, not the host's.
		real=$(chroot "$bmnt" readlink -e "/usr/lib/x86_64-linux-gnu/$lib") ||
			die "runtime: the builder has no /usr/lib/x86_64-linux-gnu/$lib"
		install -m 0755 "$bmnt$real" "$mnt/usr/lib/x86_64-linux-gnu/$lib"
	done
	# The loader where the binary asks for it (PT_INTERP /lib64/ld-linux-x86-64.so.2).
	ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$mnt/usr/lib64/ld-linux-x86-64.so.2"

	install -m 0644 "$bmnt/etc/ssl/certs/ca-certificates.crt" "$mnt/etc/ssl/certs/"
	grep -q 'BEGIN CERTIFICATE' "$mnt/etc/ssl/certs/ca-certificates.crt" ||
		die "runtime: the builder's CA bundle is empty"
	install -m 0644 /dev/stdin "$mnt/etc/passwd" <<-'EOF'
		root:x:0:0:root:/root:/sbin/nologin
		nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
		nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
	EOF
	install -m 0644 /dev/stdin "$mnt/etc/group" <<-'EOF'
		root:x:0:
		nobody:x:65534:
		nonroot:x:65532:
	EOF
	install -m 0644 /dev/stdin "$mnt/etc/nsswitch.conf" <<-'EOF'
		passwd: files
		group: files
		shadow: files
		hosts: files dns
		networks: files
		protocols: files
		services: files
	EOF
	sed -e 's/^PRETTY_NAME=.*/PRETTY_NAME="dscc-token-operator runtime stand-in (Debian 12 libraries)"/' \
		"$bmnt/usr/lib/os-release" | install -m 0644 /dev/stdin "$mnt/etc/os-release"
	chown -R -h 0:0 "$mnt"

	check_closure "$mnt" || die "runtime: a library needs another that is not in RUNTIME_LIBS"
	check_no_shell "$mnt" || die "runtime: the image must hold no shell"
	check_writable_free "$mnt" || die "runtime: the image must hold nothing writable"

	buildah umount "$ctr" >/dev/null
	buildah config \
		--user 65532:65532 --workingdir /home/nonroot \
		--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
		--label io.dscc-token-operator.runtime-standin="${tag##*:}" \
		--label org.opencontainers.image.description="local stand-in for gcr.io/distroless/cc-debian12:nonroot" \
		"$ctr"
	buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
	buildah rm "$bctr" >/dev/null
	trap - EXIT
	log "runtime: $tag built in $((SECONDS - started)) s, $(image_size "$tag")"
}

main() {
	local what=${1:-all}
	setup_containers
	case $what in
	all | builder | runtime) ;;
	remove)
		prune_repo "$BUILDER_REPO" none
		prune_repo "$RUNTIME_REPO" none
		rm -rf "$CONTAINERS_DIR/debootstrap-cache"
		remove_tree "$WORK"
		return 0
		;;
	*) die "usage: standins.sh [all|builder|runtime|remove]" ;;
	esac

	local sysroot version key builder runtime builder_id
	sysroot=$(toolchain_sysroot)
	version=$("$sysroot/bin/rustc" -V | awk '{ print $2 }')
	key=$(builder_key "$sysroot")
	builder="$BUILDER_REPO:rust-$version-$key"
	if image_exists "$builder"; then
		log "builder: $builder is up to date"
	else
		build_builder "$builder" "$sysroot"
		prune_repo "$BUILDER_REPO" "$builder"
	fi
	echo "BUILDER_IMAGE=$builder"
	[[ $what == builder ]] && return 0

	builder_id=$(podman_cmd image inspect --format '{{.Id}}' "$builder")
	key=$( {
		echo "recipe $RUNTIME_RECIPE ${RUNTIME_LIBS[*]}"
		echo "builder $builder_id"
	} | sha)
	runtime="$RUNTIME_REPO:$key"
	if image_exists "$runtime"; then
		log "runtime: $runtime is up to date"
	else
		build_runtime "$runtime" "$builder"
		prune_repo "$RUNTIME_REPO" "$runtime"
	fi
	echo "RUNTIME_IMAGE=$runtime"
}

main "$@"
