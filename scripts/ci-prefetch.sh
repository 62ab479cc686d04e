#!/usr/bin/env bash
# CI's downloads for its later stages, started beside the host tests (.ci/run): they wait on
# the network and the disk while the tests use the CPU. Installs the Debian packages of every
# stage in one transaction, then starts dockerd and makes the base image
# (scripts/container-test.sh --prepare). Each stage still checks and installs what it needs,
# so a failure here costs time, not correctness; .ci/run prints this script's log.
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
echo "ci-prefetch: done ($((SECONDS - t0)) s)"
