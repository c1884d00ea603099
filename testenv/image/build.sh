#!/usr/bin/env bash
# Build the project's Dockerfile without Docker: buildah, with the local stand-ins for its
# base images (standins.sh), tagged localhost/dscc-token-operator:dev.
#
#   build.sh [CONTEXT_DIR]   default: the repository root. Another directory (a git worktree,
#                            `git archive HEAD | tar -x -C DIR`) builds those sources with
#                            this repository's Dockerfile (DOCKERFILE=... to use another).
#
# Then checks the image without running it (the binary's libraries are all in the image, no
# shell, user 65532) and prints its size and the time taken; check.sh runs it.
#
# Environment: IMAGE (default localhost/dscc-token-operator:dev), VERSION and REVISION (the
# OCI labels; default Cargo.toml's version and `git rev-parse HEAD` of the context).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

started=$SECONDS
context=$(cd "${1:-$REPO_ROOT}" && pwd) || die "no such context directory: ${1:-}"
dockerfile=${DOCKERFILE:-$REPO_ROOT/Dockerfile}
[[ -f $context/Cargo.toml && -d $context/src ]] || die "$context has no Cargo.toml and src/"
[[ -f $dockerfile ]] || die "no Dockerfile at $dockerfile"

setup_containers

builder_image='' runtime_image=''
while IFS='=' read -r name value; do
	case $name in
	BUILDER_IMAGE) builder_image=$value ;;
	RUNTIME_IMAGE) runtime_image=$value ;;
	esac
done < <("$IMAGE_DIR/standins.sh" all)
[[ -n $builder_image && -n $runtime_image ]] || die "standins.sh did not name both stand-ins"
standins_done=$SECONDS

version=${VERSION:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$context/Cargo.toml" | head -1)}
revision=${REVISION:-$(git -C "$context" rev-parse HEAD 2>/dev/null || echo unknown)}

log "building $IMAGE from $context (Dockerfile $dockerfile)"
log "  BUILDER_IMAGE=$builder_image"
log "  RUNTIME_IMAGE=$runtime_image"
# --layers: every step is cached, a no-op rebuild runs nothing. --network host: cargo
# downloads crates in a RUN step (the cache mount keeps them; crates.io is reachable).
# --force-rm: a failed step leaves no container behind (each is a full copy under vfs).
bud=(buildah bud --layers --force-rm --pull=never --network host
	--file "$dockerfile"
	--build-arg BUILDER_IMAGE="$builder_image"
	--build-arg RUNTIME_IMAGE="$runtime_image"
	--build-arg VERSION="$version"
	--build-arg REVISION="$revision"
	# buildah 1.28's layer cache ignores build-arg values: a cached LABEL step would keep
	# the previous revision. --label adds a last LABEL step with the value written out.
	--label org.opencontainers.image.version="$version"
	--label org.opencontainers.image.revision="$revision")
mkdir -p "$CONTAINERS_DIR/logs"
build_log="$CONTAINERS_DIR/logs/build-$(date +%Y%m%d-%H%M%S).log"
"${bud[@]}" --tag "$IMAGE" "$context" 2>&1 | tee "$build_log" >&2 ||
	die "buildah bud failed (log: $build_log)"
# The build stage's last layer has no tag and no child: `image prune` below would take it
# and with it the cache of the compile step. A tag keeps it: the id is the last "--> ID"
# of the first stage in the log ("--> Using cache ID" or "--> ID").
stage_id=$(awk '/^\[1\/[0-9]+\] STEP/ { in1 = 1 } /^\[2\/[0-9]+\]/ { in1 = 0 }
	in1 && /^--> / { id = $NF } END { print id }' "$build_log")
prune=1
if [[ -z $stage_id ]] || ! buildah tag "$stage_id" "$IMAGE-build-stage" >/dev/null 2>&1; then
	log "warning: cannot tell the build stage's layer from the log; not pruning old layers"
	prune=0
fi
build_done=$SECONDS

# The image, checked from the outside: no shell, the binary's libraries all there (with the
# loader), user, entrypoint and command as the chart expects.
ctr=$(buildah from --pull=never "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah mount "$ctr")
binary="$mnt/dscc-token-operator"
[[ -x $binary ]] || die "the image has no executable /dscc-token-operator"
if [[ -e $mnt/bin/sh ]] || find "$mnt" -xdev \( -name sh -o -name bash -o -name dash -o -name busybox \) -print -quit | grep -q .; then
	die "the image holds a shell"
fi
missing=()
for lib in $(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
	[[ -e $mnt/usr/lib/x86_64-linux-gnu/$lib || -e $mnt/lib/x86_64-linux-gnu/$lib ]] || missing+=("$lib")
done
interp=$(readelf -l "$binary" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[[ -z $interp || -e $mnt$interp ]] || missing+=("$interp")
[[ ${#missing[@]} -eq 0 ]] ||
	die "the binary needs ${missing[*]}, which the runtime image lacks (add to RUNTIME_LIBS in standins.sh)"
needed=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
config=$(buildah inspect --type image --format '{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE")
[[ $config == "65532:65532 [/dscc-token-operator] [run]" ]] ||
	die "unexpected image config (user entrypoint cmd): $config"
labels=$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.opencontainers.image.version"}} {{index .OCIv1.Config.Labels "org.opencontainers.image.revision"}}' "$IMAGE")
[[ $labels == "$version $revision" ]] ||
	die "the image's version and revision labels are '$labels', expected '$version $revision'"
buildah rm "$ctr" >/dev/null
trap - EXIT

# Dangling images (earlier builds' layers nobody refers to any more): with vfs each holds a
# full copy of the builder's file system. This build's layers are all tagged or parents.
[[ $prune == 0 ]] || podman_cmd image prune --force >/dev/null 2>&1 || true

log "the binary links: $needed(interpreter $interp); no shell; user 65532:65532"
podman_cmd image ls "$IMAGE" >&2
echo "image: $IMAGE"
echo "size: $(image_size "$IMAGE")"
echo "time: $((SECONDS - started)) s (stand-ins $((standins_done - started)) s, buildah bud $((build_done - standins_done)) s)"
echo "log: $build_log"
