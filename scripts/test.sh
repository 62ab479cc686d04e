#!/usr/bin/env bash
# Install, then run the whole test suite. On CI (CI=true) or with WITH_VLLM=1 the vLLM
# environment is installed too, so the vLLM-versus-transformers test runs instead of skipping.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${CI:-}" = "true" ] || [ "${WITH_VLLM:-0}" = "1" ]; then
  bash "$repo/scripts/setup.sh" --vllm
else
  bash "$repo/scripts/setup.sh"
fi
cd "$repo"
exec "$repo/.venv/bin/python" -m pytest -q -rs "$@"
