#!/usr/bin/env bash
# Build the project's image and run the tiny pipeline inside it (CI; docs/deployment.md).
#   bash scripts/container-test.sh [DIR]     # DIR/work is the mounted work directory (default: a temp dir)
#   bash scripts/container-test.sh --prepare # only docker and the base image (CI starts this early)
#   bash scripts/container-test.sh --build   # also the image, without running it (needs .venv)
# Installs docker.io and debootstrap from Debian and starts dockerd when none answers (root only).
# No registry is needed: the base image is a debootstrap of Debian bookworm imported into
# docker, and pip installs from a wheelhouse of the host's .venv (same versions, the CPU torch).
# Environment:
#   CODEINTERP_CI_CACHE  base rootfs, build context and wheelhouse (default /var/cache/codeinterp-ci)
#   BASE                 use this base image instead (e.g. python:3.11-slim where a registry answers)
#   IMAGE                image tag to build (default codeinterp:ci)
#   RUN_AS               uid:gid the pipeline runs as (default: the caller; for root 4242:4242, so
#                        that "outputs belong to the calling user" is a real check)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${CODEINTERP_CI_CACHE:-/var/cache/codeinterp-ci}"
image="${IMAGE:-codeinterp:ci}"
# Bump the tag when the package list below changes, so that old bases are not reused.
base_packages="python3,python3-venv,graphviz,bubblewrap,ca-certificates"
base="${BASE:-codeinterp/base:bookworm-1}"
upto=run
case "${1:-}" in --prepare) upto=base; shift ;; --build) upto=image; shift ;; esac
dir="${1:-$(mktemp -d /tmp/codeinterp-container.XXXXXX)}"
if [ -n "${RUN_AS:-}" ]; then run_as="$RUN_AS"
elif [ "$(id -u)" = 0 ]; then run_as="4242:4242"
else run_as="$(id -u):$(id -g)"; fi

red() { printf '\033[31m%s\033[0m\n' "$*" >&2; }
fail() { red "container-test: $*"; exit 1; }
step_start=$SECONDS
step() { echo "container-test: $* ($((SECONDS - step_start)) s so far)"; }

source "$repo/scripts/apt-retry.sh"

apt_install() {
  [ "$(id -u)" = 0 ] || fail "need root to install $* (or install them first)"
  export DEBIAN_FRONTEND=noninteractive
  apt_retry update -qq
  apt_retry install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_docker() {
  command -v dockerd >/dev/null || apt_install docker.io
  if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || fail "no docker daemon answers and only root may start one"
    mkdir -p "$cache"
    # Left running on purpose: the layer cache serves the next CI run on this machine.
    nohup dockerd >"$cache/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || fail "dockerd did not start (log: $cache/dockerd.log)"
  fi
  # BuildKit is required (RUN --mount). Debian's client has it built in; a newer client
  # without the buildx plugin refuses DOCKER_BUILDKIT=1, so prefer Debian's then.
  docker_cmd=(docker)
  if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then docker_cmd=(/usr/bin/docker); fi
  export DOCKER_BUILDKIT=1
}

debian_mirror() {
  local uri
  uri=$(grep -hoE '^URIs:\s*\S+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
  [ -n "$uri" ] || uri=$(grep -hoE '^deb\s+\S+/debian/?\s' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

ensure_base() {
  "${docker_cmd[@]}" image inspect "$base" >/dev/null 2>&1 && return 0
  [ -z "${BASE:-}" ] || { "${docker_cmd[@]}" pull "$base" && return 0; fail "base image $base is not available"; }
  command -v debootstrap >/dev/null || apt_install debootstrap
  local rootfs="$cache/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include="$base_packages" bookworm "$rootfs" "$(debian_mirror)" \
    >"$cache/debootstrap.log" 2>&1 || fail "debootstrap failed (log: $cache/debootstrap.log)"
  rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | "${docker_cmd[@]}" import - "$base" >/dev/null
  rm -rf "$rootfs"
}

# The build context: the repository's files (tracked or not ignored, as in the work tree) and
# .wheels/, a wheelhouse of exactly what the host's .venv holds, refreshed when that changes.
make_context() {
  local ctx="$cache/context" wheels="$cache/context/.wheels" pip=("$repo/.venv/bin/python" -m pip)
  [ -x "$repo/.venv/bin/python" ] || bash "$repo/scripts/setup.sh"
  mkdir -p "$wheels"
  find "$ctx" -mindepth 1 -maxdepth 1 ! -name .wheels -exec rm -rf {} +
  (cd "$repo" && git ls-files -z -co --exclude-standard | xargs -0 -I{} sh -c '[ -e "$1" ] && printf "%s\0" "$1"' _ {} \
    | tar --null -T - -c) | tar -C "$ctx" -x
  "${pip[@]}" freeze --all --exclude-editable | grep -v '^snakemake-executor-plugin-slurm==' >"$cache/requirements.new"
  if ! cmp -s "$cache/requirements.new" "$wheels/requirements.txt"; then
    rm -rf "$wheels" && mkdir -p "$wheels"
    "${pip[@]}" wheel -q --no-deps -w "$wheels" -r "$cache/requirements.new" >"$cache/wheels.log" 2>&1 \
      || fail "could not fill the wheelhouse (log: $cache/wheels.log)"
    mv "$cache/requirements.new" "$wheels/requirements.txt"
  fi
}

build_image() {
  local secret=()
  local ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
  [ -s "$ca" ] && secret=(--secret "id=ca,src=$ca")
  "${docker_cmd[@]}" build --progress=plain "${secret[@]}" --build-arg "BASE=$base" \
    -t "$image" "$cache/context" >"$cache/build.log" 2>&1 \
    || { tail -n 30 "$cache/build.log" >&2; fail "docker build failed (log: $cache/build.log)"; }
}

run_tiny() {
  local work="$dir/work" uid="${run_as%%:*}" gid="${run_as##*:}"
  mkdir -p "$work"
  [ "$(id -u)" = 0 ] && chown "$run_as" "$work"
  # --network none: the tiny pipeline must need nothing from outside the image.
  "${docker_cmd[@]}" run --rm --network none --user "$run_as" -v "$work:/work" "$image" \
    --cores 2 --configfile /opt/codeinterp/tests/configs/tiny.yaml >"$dir/run.log" 2>&1 \
    || { tail -n 40 "$dir/run.log" >&2; fail "the tiny pipeline failed in the container (log: $dir/run.log)"; }
  local tables foreign
  tables=$(find "$work/results" -name '*.parquet' | wc -l)
  [ "$tables" -gt 0 ] || fail "no result tables in $work/results"
  ls "$work"/reports/*.html >/dev/null 2>&1 || fail "no report in $work/reports"
  foreign=$(find "$work" \( ! -uid "$uid" -o ! -gid "$gid" \) -print | head -5)
  [ -z "$foreign" ] || fail "outputs not owned by $run_as: $foreign"
  echo "container-test: $tables tables and the report in $work, all owned by $run_as"
}

mkdir -p "$cache"
ensure_docker;  step "docker ready"
ensure_base;    step "base image $base ready"
[ "$upto" != base ] || exit 0
make_context;   step "build context and wheelhouse ready"
build_image;    step "image $image built"
[ "$upto" != image ] || exit 0
run_tiny;       step "tiny pipeline ran in the container"
