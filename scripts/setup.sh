#!/usr/bin/env bash
# Install everything the workflow and its tests need into <repo>/.venv (idempotent).
#   bash scripts/setup.sh           # the workflow + tests
#   bash scripts/setup.sh --vllm    # also the vLLM virtual environment (.venv-vllm)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CODEINTERP_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
# CI installs the later stages' Debian packages beside this script (scripts/ci-prefetch.sh):
# apt-get's locks do not wait, so every call is retried.
source "$repo/scripts/apt-retry.sh"

# The sandbox prefers bubblewrap; without it (or without root) it falls back to rlimits
# and records that in every verdict.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt_retry update -qq && apt_retry install -y -qq --no-install-recommends bubblewrap) >/dev/null 2>&1 \
    || echo "setup: could not install bubblewrap; the sandbox will use rlimits only" >&2
fi

# Circuit drawings need graphviz's `dot` (Debian package graphviz).
if ! command -v dot >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt_retry update -qq && apt_retry install -y -qq --no-install-recommends graphviz) >/dev/null 2>&1 \
    || echo "setup: could not install graphviz; the circuit stage will stop with a message" >&2
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# torch first and pinned: the CPU build is all the workflow needs (TORCH_SPEC overrides,
# e.g. a CUDA build on a GPU machine).
pip install -q "${TORCH_SPEC:-torch==2.13.0}"
pip install -q -e "$repo[dev]"

if [ "${1:-}" = "--vllm" ]; then
  bash "$repo/scripts/install-vllm.sh"
fi
echo "setup: ready ($venv)"
