"""Crash and resume: a long job killed midway and run again gives the same bytes as a run
that was never interrupted.

The library tests kill each resumable loop after some finished steps (an exception that
nothing catches, like a SIGKILL) and resume it from what its checkpoint kept. The pipeline
test (marked `resume`, part of the default suite) SIGKILLs the tiny pipeline's process
group at several points, reruns it with `--rerun-incomplete`, and compares every table
with an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

import handbuilt
from archs import build, random_targets
from codeinterp.analyses import ablation, activations, subset_search
from codeinterp.benchmarks import evaluation, generation
from codeinterp.benchmarks.sandbox import Limits
from codeinterp.progress import Checkpoint


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` in the code under test sees it."""


class DiesAfter(Checkpoint):
    """A checkpoint whose job is killed after `after` more finished steps."""

    def __init__(self, out, key, after):
        super().__init__(out, key, "test")
        self.left, self.puts = after, 0

    def put(self, step, value, advance=True):
        if self.left == 0:
            raise Killed
        self.left -= 1
        self.puts += 1
        super().put(step, value, advance)


def resumed(tmp_path, run, after):
    """run(checkpoint) killed after `after` steps, then run again to the end: (result, steps
    the second run computed, steps in all)."""
    out = tmp_path / "out.parquet"
    with pytest.raises(Killed):
        run(DiesAfter(out, "k", after))
    second = DiesAfter(out, "k", 10**9)
    result = run(second)
    total = len(list(second.dir.glob("*.json")))
    second.done()
    assert not second.dir.exists()
    return result, second.puts, total


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["llama"]


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_head_sweep_resumes_to_the_same_table(llama, tmp_path, kind):
    model, tok = llama
    targets = handbuilt.snippet_targets(tok, 3)
    whole = ablation.head_ablation(model, targets, kind, batch_size=2, heads_per_pass=2)
    again, computed, total = resumed(tmp_path, lambda c: ablation.head_ablation(
        model, targets, kind, batch_size=2, heads_per_pass=2, checkpoint=c), after=4)
    assert total == 6 and computed == 2  # 2 batches x 3 layers, 4 kept from the killed run
    assert again.equals(whole)


def test_knockout_resumes_to_the_same_curves(llama, tmp_path):
    model, tok = llama
    targets = handbuilt.snippet_targets(tok, 3)
    deltas = np.arange(12, dtype=float).reshape(3, 4) % 5
    kw = dict(batch_size=2, steps_per_pass=4)
    whole = ablation.knockout_curves(model, targets, deltas, **kw)
    again, computed, total = resumed(tmp_path, lambda c: ablation.knockout_curves(
        model, targets, deltas, checkpoint=c, **kw), after=5)
    assert total == 2 * 2 * 4 and computed == total - 5
    assert again.equals(whole)


def test_sampled_generation_resumes_to_the_same_samples(llama, tmp_path):
    model, tok = llama
    s = generation.Settings(max_new_tokens=6, n=2, temperature=1.0, seed=5, chat=False, batch_size=1)
    table = [{"row": {"dataset": "humaneval", "problem_id": f"P{i}", "prompt": t, "entry_point": "f",
                      "starter_code": t, "test_type": "assert"}, "text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]}
             for i, t in enumerate(["def f(x):", "import os\n", "class A:", "x = ["])]
    whole = generation.generate_transformers(model, tok, table, s)
    again, computed, total = resumed(tmp_path, lambda c: generation.generate_transformers(model, tok, table, s, checkpoint=c),
                                     after=2)
    assert (computed, total) == (2, 4)
    assert again.equals(whole)
    assert len(set(whole["completion"])) > 2  # sampled, so the per-batch seeds matter


def test_evaluation_resumes_to_the_same_verdicts(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "CHUNK", 2)
    tests = json.dumps({"script": "assert f(2) == 4\n", "entry_point": "f"})
    programs = ["def f(x):\n    return x * x\n", "def f(x):\n    return x + 3\n", "def f(x)\n", "def f(x):\n    raise KeyError(x)\n",
                "def f(x):\n    return 4\n"]
    items = [(p, "assert", tests) for p in programs]
    limits = Limits(timeout_s=5, cpu_s=5)
    whole = [(v.status, v.message) for v in evaluation.evaluate_many(items, limits, 2)]
    again, computed, total = resumed(tmp_path, lambda c: evaluation.evaluate_many(items, limits, 2, checkpoint=c), after=1)
    assert (computed, total) == (2, 3)
    assert [(v.status, v.message) for v in again] == whole
    assert [s for s, _ in whole] == ["passed", "failed", "error", "error", "passed"]


def test_subset_search_resumes_to_the_same_result(llama, tmp_path):
    model, tok = llama
    targets = handbuilt.snippet_targets(tok, 3)
    kw = dict(k=2, batch_size=32, seed=1, max_evals=40)
    whole = subset_search.cma_head_subset(model, targets, **kw)
    calls = []
    real = subset_search.subset_losses

    def counted(*a, **k):
        calls.append(len(a[2]))
        return real(*a, **k)

    again, _, _ = resumed(tmp_path, lambda c: subset_search.cma_head_subset(model, targets, checkpoint=c, **kw), after=2)
    assert again == whole
    subset_search.subset_losses = counted
    try:  # a run that finds every subset loss saved computes none
        out = tmp_path / "again.parquet"
        full = Checkpoint(out, "k2")
        subset_search.cma_head_subset(model, targets, checkpoint=full, **kw)
        n = sum(calls)
        assert n > 0
        assert subset_search.cma_head_subset(model, targets, checkpoint=Checkpoint(out, "k2"), **kw) == whole
        assert sum(calls) == n  # no subset was evaluated again
    finally:
        subset_search.subset_losses = real


def test_activation_cache_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    model = build("llama")
    targets = random_targets(5, seed=3)
    kw = dict(sites=["resid", "head"], positions="all", dtype="float16", shard_tokens=11, batch_size=2)
    activations.write_cache(model, targets, tmp_path / "whole", **kw)
    real = activations._ShardWriter._flush
    flushes = []

    def dying(self, n):
        if len(flushes) == 5:
            raise Killed
        flushes.append(n)
        real(self, n)

    monkeypatch.setattr(activations._ShardWriter, "_flush", dying)
    with pytest.raises(Killed):
        activations.write_cache(model, targets, tmp_path / "c", resume="key", **kw)
    assert not (tmp_path / "c").exists()  # nothing that looks complete
    state = json.loads((tmp_path / ".c.partial" / "resume.json").read_text())
    assert state["rows_per_shard"] == [11] * 5
    monkeypatch.setattr(activations._ShardWriter, "_flush", real)
    computed, real_values = [], activations._batch_values
    monkeypatch.setattr(activations, "_batch_values", lambda *a, **k: computed.append(1) or real_values(*a, **k))
    activations.write_cache(model, targets, tmp_path / "c", resume="key", **kw)
    # rows 0-36 (batch 0) are in finished shards: batches 1 and 2 run, and the one-token shape forward
    assert len(computed) == 3
    for f in sorted(os.listdir(tmp_path / "whole")):
        assert (tmp_path / "c" / f).read_bytes() == (tmp_path / "whole" / f).read_bytes(), f
    assert not (tmp_path / ".c.partial").exists()


def test_a_stale_partial_cache_is_not_resumed(tmp_path):
    model = build("llama")
    targets = random_targets(3, seed=3)
    kw = dict(sites=["resid"], positions="all", dtype="float32", shard_tokens=7, batch_size=2)
    part = tmp_path / ".c.partial"
    part.mkdir()
    (part / "resume.json").write_text(json.dumps({"key": "other", "rows_per_shard": [7]}))
    (part / "shard-00000.safetensors").write_bytes(b"junk")
    activations.write_cache(model, targets, tmp_path / "c", resume="key", **kw)
    activations.write_cache(model, targets, tmp_path / "fresh", **kw)
    assert (tmp_path / "c" / "shard-00000.safetensors").read_bytes() == (tmp_path / "fresh" / "shard-00000.safetensors").read_bytes()


# ---------------------------------------------------------------------------------------
# The pipeline: kill -9 at several points, rerun, compare every table.

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
M = "results/tiny-llama/mbpp"
# The stages with checkpoints, on one dataset; batches of one so that each has several steps.
WANTED = [f"{M}/verdicts.parquet", f"{M}/ablation/knockout.parquet", f"{M}/subset_search/compare.parquet",
          f"{M}/activations"]
# Kill when a step of this stage is saved (or, on a fast machine, once its output exists).
KILL_AT = [(f"{M}/generations.parquet", "batch-00001.json"),
           (f"{M}/ablation/head_deltas.parquet", "zero-batch00002-layer0000.json"),
           (f"{M}/ablation/knockout.parquet", "most_first-batch00001-chunk00000.json")]


def _config(tmp_path: Path) -> Path:
    import yaml

    cfg = yaml.safe_load(TINY.read_text())
    # One model: the fine-tuned variant and the comparisons are not what this test is about.
    cfg["models"] = {"tiny-llama": cfg["models"]["tiny-llama"]}
    cfg.pop("comparisons", None)
    cfg["datasets"] = {"mbpp": cfg["datasets"]["mbpp"]}
    cfg["generation"]["batch_size"] = 1
    cfg["ablation"]["batch_size"] = 1
    cfg["ablation"]["knockout_steps_per_pass"] = 2
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _snakemake(workdir: Path, config: Path, *args: str) -> list[str]:
    # The targets go before --configfile, which takes every word after it as a config file.
    return [sys.executable, "-m", "snakemake", *WANTED, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--cores", "2", *args, "--configfile", str(config)]


def _run(workdir: Path, config: Path, *args: str) -> None:
    proc = subprocess.run(_snakemake(workdir, config, *args), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _kill_when(workdir: Path, config: Path, output: str, step: str, timeout: float = 300) -> str:
    """Start the pipeline, SIGKILL its whole process group once `output`'s checkpoint holds
    `step` (or `output` exists), and say which happened."""
    if workdir.exists():  # a killed Snakemake leaves its lock
        subprocess.run(_snakemake(workdir, config, "--unlock"), capture_output=True, check=True)
    proc = subprocess.Popen(_snakemake(workdir, config, "--rerun-incomplete"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    partial, done = workdir / f"{output}.partial" / step, workdir / output
    end = time.monotonic() + timeout
    seen = "nothing"
    try:
        while time.monotonic() < end and proc.poll() is None:
            if partial.exists():
                seen = "step"
                break
            if done.exists():
                seen = "output"
                break
            time.sleep(0.02)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return seen


def _tables(workdir: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted((workdir / "results").rglob("*")):
        rel = str(path.relative_to(workdir))
        if path.is_file() and not rel.endswith("_timing.json") and ".partial" not in rel:
            out[rel] = path.read_bytes()
    return out


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_tables(tmp_path):
    config = _config(tmp_path)
    killed = tmp_path / "killed"
    seen = [_kill_when(killed, config, output, step) for output, step in KILL_AT]
    assert "nothing" not in seen, seen
    subprocess.run(_snakemake(killed, config, "--unlock"), capture_output=True, check=True)
    _run(killed, config, "--rerun-incomplete")
    _run(tmp_path / "whole", config)
    a, b = _tables(killed), _tables(tmp_path / "whole")
    assert sorted(a) == sorted(b)
    assert any(k.endswith("verdicts.parquet") for k in a) and any("activations/shard-" in k for k in a)
    assert [k for k in a if a[k] != b[k]] == []
    assert not list((killed / "results").rglob("*.partial"))  # checkpoints go once outputs are complete
    logs = "".join(p.read_text() for p in (killed / "logs").rglob("*.log"))
    if "step" in seen:  # a kill caught a job midway: its rerun resumed rather than started over
        assert "resuming from" in logs
