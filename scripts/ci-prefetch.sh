#!/usr/bin/env bash
# CI's downloads and builds for its later stages, started beside the host tests (.ci/run): they
# wait on the network and the disk while the tests use the CPU. Installs the Debian packages of
# every stage in one transaction, starts dockerd and makes the base image; then, once .ci/run
# has installed .venv (it touches the file named by $1), builds the image from it
# (scripts/container-test.sh --build). Each stage still checks and makes what it needs, so a
# failure here costs time, not correctness; .ci/run prints this script's log.
#   bash scripts/ci-prefetch.sh [VENV_READY_FILE]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "ci-prefetch: not root, nothing to do"; exit 0; }
command -v apt-get >/dev/null || { echo "ci-prefetch: no apt-get, nothing to do"; exit 0; }
source "$repo/scripts/apt-retry.sh"
t0=$SECONDS
export DEBIAN_FRONTEND=noninteractive
packages="bubblewrap graphviz docker.io debootstrap slurm-wlm slurmdbd munge mariadb-server"
apt_retry update -qq
apt_retry install -y -qq --no-install-recommends $packages >/dev/null
echo "ci-prefetch: Debian packages ready ($((SECONDS - t0)) s)"
bash "$repo/scripts/container-test.sh" --prepare
ready="${1:-}"
if [ -n "$ready" ]; then
  for _ in $(seq 1 900); do [ -e "$ready" ] && break; sleep 2; done
  [ -e "$ready" ] || { echo "ci-prefetch: .venv not ready after 30 min; the image is left to the container stage"; exit 1; }
  bash "$repo/scripts/container-test.sh" --build
fi
echo "ci-prefetch: done ($((SECONDS - t0)) s)"
