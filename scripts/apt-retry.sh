#!/usr/bin/env bash
# Sourced by scripts/container-test.sh and scripts/slurm-test.sh.
# CI runs the container and SLURM stages side by side, and both may install packages: apt-get
# takes the lists and archives locks without waiting (DPkg::Lock::Timeout covers dpkg's lock
# only), so a command that finds them held is retried for up to 10 minutes.
apt_retry() {
  for _ in $(seq 1 120); do
    apt-get -o DPkg::Lock::Timeout=600 "$@" && return 0
    sleep 5
  done
  return 1
}
