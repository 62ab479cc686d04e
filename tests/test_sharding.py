"""Sharded stages: N shard jobs merge into the tables one job writes, byte for byte."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from codeinterp.errors import ConfigError
from codeinterp.sharding import batch_range, item_range, shard_targets

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


@given(st.integers(0, 200), st.integers(1, 12))
def test_shards_cover_every_batch_once_in_order(n_batches, n_shards):
    parts = [batch_range(n_batches, n_shards, i) for i in range(n_shards)]
    assert [b for p in parts for b in p] == list(range(n_batches))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@given(st.integers(0, 100), st.integers(1, 9), st.integers(1, 5))
def test_item_shards_cut_only_between_batches(n_items, batch_size, n_shards):
    parts = [item_range(n_items, batch_size, n_shards, i) for i in range(n_shards)]
    assert [x for p in parts for x in p] == list(range(n_items))
    for p in parts[1:]:
        assert p.start % batch_size == 0 or p.start == n_items


def test_a_shard_that_does_not_exist_is_refused():
    with pytest.raises(ConfigError, match="shard 3 of 3"):
        batch_range(10, 3, 3)


def test_shard_targets_are_the_length_sorted_batches():
    class T:
        def __init__(self, i, n):
            self.target_id, self.input_ids = f"t{i}", [0] * n

    targets = [T(i, n) for i, n in enumerate([5, 3, 9, 3, 7, 1, 2])]
    shards = [shard_targets(targets, 2, 3, i) for i in range(3)]
    ordered = sorted(targets, key=lambda t: (len(t.input_ids), t.target_id))
    assert [t for s in shards for t in s] == ordered
    assert [len(s) for s in shards] == [4, 2, 1]  # batches of 2, 1 and 1 (the last one short)


OUTPUTS = ["mbpp/generations.parquet", "mbpp/verdicts.parquet", "mbpp/pass_at_k.parquet",
           "mbpp/ablation/head_deltas.parquet", "mbpp/ablation/head_matrix.parquet",
           "brackets/patching/activation_patching.parquet", "mbpp/activations"]
STAGES = ("generate", "evaluate", "head_ablation", "activation_patching", "cache_activations")


def _run(workdir: Path, shards: int) -> dict[str, bytes]:
    cfg = yaml.safe_load(TINY.read_text())
    # One model: the fine-tuned variant and the comparisons are not what this test is about.
    cfg["models"] = {"tiny-llama": cfg["models"]["tiny-llama"]}
    cfg.pop("comparisons", None)
    cfg["datasets"] = {"mbpp": {"split": "test", "limit": 5}, "brackets": {"benchmark": "brackets", "pairs": 6,
                                                                         "max_depth": 3}}
    # Sampling with two samples per problem: each shard must keep its batches' seeds.
    cfg["generation"].update(n=2, temperature=0.8, batch_size=2)
    cfg["ablation"]["batch_size"] = 1
    cfg["activation_patching"].update(batch_size=2, max_pairs=5, noise_samples=1)
    # Cache files of 7 rows and batches of 2 targets: parts start inside batches.
    cfg["activations"].update(shard_tokens=7, batch_size=2, positions="code")
    cfg["shards"] = {stage: shards for stage in STAGES}
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    base = "results/tiny-llama"
    cmd = [sys.executable, "-m", "snakemake", *[f"{base}/{o}" for o in OUTPUTS], "-s", str(REPO / "Snakefile"),
           "-d", str(workdir), "--cores", "2", "--configfile", str(workdir / "config.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if shards > 1:
        made = sorted(p.name for p in (workdir / base).glob("*/shards/*") if not p.name.endswith(".json"))
        assert len(made) == len(STAGES) * shards, made
    return {o: _bytes(workdir / base / o) for o in OUTPUTS}


def _bytes(path: Path):
    if path.is_dir():  # the cache: every file by name
        return {p.name: p.read_bytes() for p in sorted(path.iterdir())}
    return path.read_bytes()


@pytest.mark.slow
def test_sharded_runs_equal_the_unsharded_run(tmp_path):
    whole = _run(tmp_path / "n1", 1)
    for n in (2, 3):
        sharded = _run(tmp_path / f"n{n}", n)
        assert [o for o in OUTPUTS if sharded[o] != whole[o]] == [], f"{n} shards"


@given(st.lists(st.integers(1, 40), min_size=0, max_size=30), st.integers(1, 6), st.integers(1, 200),
       st.integers(1, 4))
def test_token_budget_batches_and_their_shards(lengths, batch_size, budget, n_shards):
    from codeinterp.access import scoring

    class T:
        def __init__(self, i, n):
            self.target_id, self.input_ids = f"t{i:03d}", [0] * n

    targets = [T(i, n) for i, n in enumerate(lengths)]
    scoring.set_batch_tokens(budget)
    try:
        ordered = scoring.length_order(targets)
        bounds = scoring.batch_bounds(ordered, batch_size)
        assert [t for a, b in bounds for t in ordered[a:b]] == ordered
        for a, b in bounds:
            assert 1 <= b - a <= batch_size
            assert b - a == 1 or (b - a) * len(ordered[b - 1].input_ids) <= budget
        shards = [shard_targets(targets, batch_size, n_shards, i) for i in range(n_shards)]
        assert [t for s in shards for t in s] == ordered
        starts = {a for a, _ in bounds} | {len(ordered)}
        cut = 0
        for s in shards[:-1]:  # every shard boundary is a batch boundary
            cut += len(s)
            assert cut in starts
    finally:
        scoring.set_batch_tokens(None)
