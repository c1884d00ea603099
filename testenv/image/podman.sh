#!/usr/bin/env bash
# podman with this folder's image store and engine configuration (lib.sh): for looking at and
# managing what run.sh started, e.g.
#
#   podman.sh ps -a
#   podman.sh logs NAME
#   podman.sh top NAME pid user group huser hgroup
#   podman.sh stop --time 20 NAME
#   podman.sh rm --force --ignore --time 0 NAME
#
# Unlike the other scripts it installs nothing: without podman it says so and fails (exit 127).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v podman >/dev/null 2>&1; then
	printf '[image] error: podman is not installed: run testenv/image/standins.sh or make image (they install it)\n' >&2
	exit 127
fi
# setup_containers without install_packages: the same configuration and exports.
install_packages() { :; }
setup_containers
podman_cmd "$@"
