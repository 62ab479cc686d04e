"""The vLLM backend: greedy output must match transformers token for token.

The slow test needs the vLLM venv (scripts/install-vllm.sh, default <repo>/.venv-vllm,
or CODEINTERP_VLLM_PYTHON pointing at its interpreter).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from codeinterp.errors import ConfigError
from codeinterp.models import build_tiny_random, save_canonical
from codeinterp.vllm_backend import generate_vllm, vllm_python_default

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("CODEINTERP_VLLM_PYTHON") or vllm_python_default(REPO)

# head_dim = 128 / 2 = 64: vLLM's CPU attention refuses head_dim 16.
TINY_SPEC = {
    "architecture": "llama",
    "n_layers": 2,
    "hidden_size": 128,
    "n_heads": 2,
    "n_kv_heads": 1,
    "intermediate_size": 256,
    "seed": 0,
}
MAX_NEW = 24


def _vllm_available() -> bool:
    if not os.path.isfile(VLLM_PYTHON):
        return False
    probe = subprocess.run(
        [VLLM_PYTHON, "-c", "import importlib.util, sys; "
         "sys.exit(importlib.util.find_spec('vllm') is None)"],
        capture_output=True,
        timeout=60,
    )
    return probe.returncode == 0


def test_missing_interpreter_is_config_error(tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(ConfigError) as err:
        generate_vllm(str(missing), str(tmp_path), [[1, 2]], 1, 0.0, 1.0, 4, 0, [])
    msg = str(err.value)
    assert str(missing) in msg and "scripts/install-vllm.sh" in msg and "\n" not in msg


def test_vllm_python_default(tmp_path):
    assert vllm_python_default(tmp_path) == str(tmp_path / ".venv-vllm" / "bin" / "python")


def test_worker_error_is_runtime_error_with_last_line(tmp_path):
    """A failing worker surfaces its one-line message (no vLLM needed: it fails first)."""
    import sys

    with pytest.raises(RuntimeError, match=r"vllm_worker: .*n.* must be >= 1"):
        generate_vllm(sys.executable, str(tmp_path), [[1, 2]], 0, 0.0, 1.0, 4, 0, [])


def _transformers_greedy(model, tok, ids: list[int]) -> list[int]:
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    new = out[0, len(ids):].tolist()
    if tok.eos_token_id in new:  # up to and including EOS
        new = new[: new.index(tok.eos_token_id) + 1]
    return new


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_greedy_matches_transformers(tmp_path):
    if not _vllm_available():
        pytest.skip(f"vLLM venv absent: {VLLM_PYTHON} cannot import vllm (run scripts/install-vllm.sh)")
    model, tok = build_tiny_random(TINY_SPEC)
    model_dir = tmp_path / "tiny"
    save_canonical(model, tok, model_dir, "tiny-random")

    texts = [
        "def add(a, b):",
        "# Return the n-th Fibonacci number\ndef fib(n):\n    if n < 2:\n",
        tok.apply_chat_template(
            [{"role": "user", "content": "Write a Python function that reverses a list."}],
            tokenize=False,
            add_generation_prompt=True,
        ),
    ]
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len({len(p) for p in prompts}) == 3

    expected = [_transformers_greedy(model, tok, p) for p in prompts]

    t0 = time.monotonic()
    rows = generate_vllm(
        VLLM_PYTHON, str(model_dir), prompts, n=1, temperature=0.0, top_p=1.0,
        max_new_tokens=MAX_NEW, seed=0, stop=[], timeout_s=900,
    )
    print(f"vLLM worker total: {time.monotonic() - t0:.1f} s")

    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(0, 0), (1, 0), (2, 0)]
    for row, want in zip(rows, expected):
        assert row["token_ids"] == want, (row, want)
        ended_on_eos = bool(want) and want[-1] == tok.eos_token_id
        assert row["finish_reason"] == ("stop" if ended_on_eos else "length")
        assert ended_on_eos or len(want) == MAX_NEW
        assert row["text"] == tok.decode(want, skip_special_tokens=True)
    # The comparison must mean something: the model generated real tokens somewhere.
    assert sum(len(w) for w in expected) > 3
