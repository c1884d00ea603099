#!/usr/bin/env bash
# Run the image the way the Helm chart's Pod runs it: read-only root file system (and no
# tmpfs podman would add), user 65532:65532, every capability dropped, no privilege
# escalation, the default seccomp profile; host network so that it reaches a control plane
# and a token endpoint on loopback.
#
#   run.sh [PODMAN_ARGS... --] [OPERATOR_ARGS...]
#
# Arguments before a `--` go to `podman run` (volumes, env, -d, --name, --entrypoint);
# without a `--` all arguments are the operator's. No operator arguments: the image's CMD
# (`run`). Examples:
#
#   run.sh --version
#   run.sh -v "$KUBECONFIG:/kubeconfig:ro" -e KUBECONFIG=/kubeconfig -- \
#       run --metrics-address=127.0.0.1:0 --health-address=127.0.0.1:0
#   run.sh -d --name op -v "$KUBECONFIG:/kubeconfig:ro" -e KUBECONFIG=/kubeconfig --
#
# A file given with -v must be readable by uid 65532 (e.g. chmod 0644).
# Environment: IMAGE (default localhost/dscc-token-operator:dev).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

podman_args=() operator_args=("$@")
# Only the first `--` splits; later ones belong to the operator.
for ((i = 0; i < $#; i++)); do
	if [[ ${operator_args[i]} == -- ]]; then
		podman_args=("${operator_args[@]:0:i}")
		operator_args=("${operator_args[@]:i+1}")
		break
	fi
done

setup_containers
image_exists "$IMAGE" || die "no image $IMAGE here: run testenv/image/build.sh first"

exec podman --runtime runc --cgroup-manager cgroupfs --storage-driver vfs \
	--root "$CONTAINERS_DIR/storage" --runroot "$CONTAINERS_DIR/run" \
	run --rm --pull never \
	--read-only --read-only-tmpfs=false \
	--network host \
	--user 65532:65532 \
	--cap-drop ALL \
	--security-opt no-new-privileges \
	${podman_args[@]+"${podman_args[@]}"} \
	"$IMAGE" \
	${operator_args[@]+"${operator_args[@]}"}
