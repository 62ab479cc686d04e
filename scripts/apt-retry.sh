#!/usr/bin/env bash
# Sourced by scripts/setup.sh, scripts/ci-prefetch.sh, scripts/container-test.sh and scripts/slurm-test.sh.
# CI installs packages from several of these at once: apt-get takes the lists and archives
# locks without waiting (DPkg::Lock::Timeout covers dpkg's lock only), so a command that finds
# a lock held is retried for up to 10 minutes. Any other failure (no network, no such package)
# is returned at once.
apt_retry() {
  local err rc
  err="$(mktemp)"
  for _ in $(seq 1 120); do
    rc=0
    apt-get -o DPkg::Lock::Timeout=600 "$@" 2>"$err" || rc=$?
    if [ "$rc" = 0 ] || ! grep -qi "lock" "$err"; then
      cat "$err" >&2; rm -f "$err"; return "$rc"
    fi
    sleep 5
  done
  cat "$err" >&2; rm -f "$err"
  return 1
}
