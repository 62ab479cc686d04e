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
from codeinterp.access.models import build_tiny_random, save_canonical
from codeinterp.access.vllm_backend import generate_vllm, vllm_python_default

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


def test_worker_timeout_stops_it(tmp_path):
    """A worker that runs past timeout_s is stopped and reported with its last line."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'loading engine'\nexec sleep 60\n")
    fake.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="ran past 1.0 s.*loading engine"):
        generate_vllm(str(fake), str(tmp_path), [[1, 2]], 1, 0.0, 1.0, 4, 0, [], timeout_s=1.0)
    assert time.monotonic() - t0 < 20


def test_error_line_names_engine_root_cause():
    """An engine crash reports vLLM's first exception line, not only "see stack trace"."""
    import collections

    from codeinterp.access.vllm_backend import _last_error_line

    lines = collections.deque([
        "(Worker pid=7) ERROR 11-22 00:44:35 [multiproc_executor.py:1063] RuntimeError: "
        "Unsupported CPU attention configuration: head_dim=16 isa=2 kv_cache_idx=0",
        "(EngineCore pid=4) ERROR 11-22 00:44:35 [core.py:1512] EngineCore encountered a fatal error.",
        "vllm_worker: EngineDeadError: EngineCore encountered an issue. See stack trace (above)",
    ])
    msg = _last_error_line(lines)
    assert msg.startswith("vllm_worker: EngineDeadError")
    assert "root cause: RuntimeError: Unsupported CPU attention configuration: head_dim=16" in msg


def _transformers_greedy(model, tok, ids: list[int], stop: list[str]) -> tuple[list[int], str]:
    """Plain unbatched greedy decoding, cut as vLLM cuts: after EOS or the stop string's token."""
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
    for k in range(1, len(new) + 1):
        if new[k - 1] == tok.eos_token_id:
            return new[:k], "stop"  # up to and including EOS
        if any(s in tok.decode(new[:k], skip_special_tokens=True) for s in stop):
            return new[:k], "stop"
    return new, "length"


def _skip_without_vllm() -> None:
    if not _vllm_available():
        if os.environ.get("CODEINTERP_REQUIRE_VLLM") == "1":  # CI: a missing engine is a failure
            pytest.fail(f"CODEINTERP_REQUIRE_VLLM=1 but {VLLM_PYTHON} cannot import vllm")
        pytest.skip(f"vLLM venv absent: {VLLM_PYTHON} cannot import vllm (run scripts/install-vllm.sh)")


def _tiny_model(tmp_path):
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
    return model, tok, model_dir, prompts


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_greedy_matches_transformers(tmp_path):
    _skip_without_vllm()
    model, tok, model_dir, prompts = _tiny_model(tmp_path)
    # With seed 0 the greedy continuation of prompt 1 is "BS" + 3 invalid bytes + "bbbb...":
    # the stop string "b" ends it early, the other two prompts run to the length limit.
    stop = ["b"]
    expected = [_transformers_greedy(model, tok, p, stop) for p in prompts]
    assert [reason for _, reason in expected] == ["length", "stop", "length"]

    t0 = time.monotonic()
    rows = generate_vllm(
        VLLM_PYTHON, str(model_dir), prompts, n=1, temperature=0.0, top_p=1.0,
        max_new_tokens=MAX_NEW, seed=0, stop=stop, timeout_s=900,
    )
    print(f"vLLM worker total: {time.monotonic() - t0:.1f} s")

    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(0, 0), (1, 0), (2, 0)]
    for row, (want, reason) in zip(rows, expected):
        assert row["token_ids"] == want, (row, want)
        assert row["finish_reason"] == reason
        assert not any(s in row["text"] for s in stop)
        text = tok.decode(want, skip_special_tokens=True)
        for s in stop:
            text = text.split(s)[0]  # vLLM leaves the stop string out of the text
        # The random model emits stray UTF-8 continuation bytes; vLLM's incremental
        # detokenizer may drop their replacement characters where tok.decode keeps them.
        assert row["text"].replace("\ufffd", "") == text.replace("\ufffd", "")


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_sampling_rows(tmp_path):
    """n > 1 with temperature, top_p, seed and a stop string: shape and stop semantics."""
    _skip_without_vllm()
    _, tok, model_dir, prompts = _tiny_model(tmp_path)
    stop = ["b"]
    rows = generate_vllm(
        VLLM_PYTHON, str(model_dir), prompts, n=2, temperature=0.8, top_p=0.95,
        max_new_tokens=MAX_NEW, seed=1, stop=stop, timeout_s=900,
    )
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [
        (i, j) for i in range(3) for j in range(2)
    ]
    for row in rows:
        ids = row["token_ids"]
        assert 1 <= len(ids) <= MAX_NEW and all(isinstance(t, int) for t in ids)
        assert "b" not in row["text"]
        full = tok.decode(ids, skip_special_tokens=True)
        if row["finish_reason"] == "length":
            assert len(ids) == MAX_NEW and "b" not in full
        else:
            assert row["finish_reason"] == "stop"
            assert ids[-1] == tok.eos_token_id or full.endswith("b"), row
    # Sampling, unlike greedy, gives two different samples for some prompt.
    assert any(rows[2 * i]["token_ids"] != rows[2 * i + 1]["token_ids"] for i in range(3))


@pytest.mark.slow
@pytest.mark.vllm
def test_pruned_generation_tables_equal_across_backends(tmp_path):
    """pruned_eval's two paths, a vLLM pruned checkpoint and the transformers head mask, agree."""
    _skip_without_vllm()
    from codeinterp.analyses import pruned
    from codeinterp.benchmarks.datasets import load_problems, select_problems
    from codeinterp.benchmarks.generation import Settings

    model, tok = build_tiny_random({"architecture": "llama", "n_layers": 2, "hidden_size": 128, "n_heads": 2,
                                    "n_kv_heads": 1, "intermediate_size": 256, "seed": 0})
    save_canonical(model, tok, tmp_path / "base", "tiny-random")
    problems = select_problems(load_problems("humaneval", REPO / "data"), limit=3)
    settings = Settings(max_new_tokens=16, batch_size=1, chat=True)
    removed = [(0, 1), (1, 0)]
    via_vllm = pruned._generate(problems, tmp_path / "base", settings, "vllm", VLLM_PYTHON, removed)
    via_hook = pruned._generate(problems, tmp_path / "base", settings, "transformers", None, removed)
    assert via_vllm.drop("backend").equals(via_hook.drop("backend"))


def test_worker_checks_per_prompt_stop_lists(tmp_path):
    """One stop list per prompt (LiveCodeBench mixes stdin and LeetCode problems)."""
    import importlib.util
    import sys

    with pytest.raises(RuntimeError, match="'stop' has 1 lists for 2 prompts"):
        generate_vllm(sys.executable, str(tmp_path), [[1, 2], [3]], 1, 0.0, 1.0, 4, 0, [["a"]])
    with pytest.raises(RuntimeError, match="non-empty strings"):
        generate_vllm(sys.executable, str(tmp_path), [[1, 2], [3]], 1, 0.0, 1.0, 4, 0, [["a"], [""]])
    if importlib.util.find_spec("vllm") is None:  # valid request: fails only at `import vllm`
        with pytest.raises(RuntimeError, match="No module named 'vllm'"):
            generate_vllm(sys.executable, str(tmp_path), [[1, 2], [3]], 1, 0.0, 1.0, 4, 0, [["a"], ["b", "c"]])


def test_vllm_table_records_ids_and_cuts_per_prompt(monkeypatch, tmp_path):
    """The vLLM path of `generation`: per-prompt stops go to the worker, the table keeps the
    prompt and generated ids and cuts the text at that prompt's own stops."""
    import polars as pl

    from codeinterp.benchmarks import generation

    from codeinterp.access import vllm_backend
    from codeinterp.access.models import byte_tokenizer

    tok = byte_tokenizer()
    he = {"dataset": "humaneval", "problem_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f",
          "starter_code": "def f():\n", "test_type": "assert"}
    stdin = {"dataset": "livecodebench", "problem_id": "abc1", "prompt": "Print 1.", "entry_point": "",
             "starter_code": "", "test_type": "stdin"}
    settings = generation.Settings(chat=False, max_new_tokens=32)
    table = generation.prompt_table(pl.DataFrame([he, stdin]), tok, settings, 4096)
    texts = ["    return 1\nprint(f())\n", "print(1)\nprint(2)\n```\nThat prints 1."]
    seen = {}

    def fake_worker(**kw):
        seen.update(kw)
        return [{"prompt_index": i, "sample_index": 0, "token_ids": tok(t, add_special_tokens=False)["input_ids"],
                 "text": t, "finish_reason": "stop"} for i, t in enumerate(texts)]

    monkeypatch.setattr(vllm_backend, "generate_vllm", fake_worker)
    out = generation.generate_vllm(str(tmp_path), tok, table, settings, "python")
    assert seen["stop"] == [["\nclass", "\ndef", "\n#", "\nif", "\nprint"], ["```"]]
    assert out["completion"].to_list() == ["    return 1", "print(1)\nprint(2)\n"]
    assert out["prompt_ids"].to_list() == [p["ids"] for p in table]
    assert out["completion_ids"].to_list() == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert out["program"].to_list() == ["def f():\n    return 1", "print(1)\nprint(2)\n"]
