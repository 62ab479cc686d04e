"""compare_models, head_union and per-target Taylor scores, on planted scores with known answers."""

import math

import numpy as np
import polars as pl
import pytest

from codeinterp.access.scoring import Target
from codeinterp.analyses.compare_models import Scores, circuit_overlap, compare_rankings, depth_overlap, jaccard
from codeinterp.analyses.head_union import head_union
from codeinterp.analyses.pruning import _gradients, taylor_target_scores
from codeinterp.access.heads import full_mask
from codeinterp.uncertainty import Bootstrap

BOOT = Bootstrap(resamples=200, seed=3)


def long(matrix: np.ndarray, n_heads: int, ids=None) -> pl.DataFrame:
    n, width = matrix.shape
    ids = ids or [f"t{i}" for i in range(n)]
    return pl.DataFrame({"target_id": [ids[i] for i in range(n) for _ in range(width)],
                         "layer": [j // n_heads for _ in range(n) for j in range(width)],
                         "head": [j % n_heads for _ in range(n) for j in range(width)],
                         "delta": matrix.reshape(-1)})


def planted(n_targets: int, n_layers: int, n_heads: int, top: list[int], seed: int, noise: float = 0.01):
    """Per-target deltas: the `top` heads (flat indices) well above the rest, in decreasing order."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0, noise, size=(n_targets, n_layers * n_heads))
    for rank, i in enumerate(top):
        m[:, i] += 1.0 - 0.1 * rank
    return Scores(long(m, n_heads), "delta", n_layers, n_heads)


def test_identical_rankings_overlap_completely():
    a = planted(8, 3, 4, [5, 0, 11], seed=0)
    b = Scores(long(a.matrix * 2.0, 4), "delta", 3, 4)  # the same ranking on another scale
    overlap, heads = compare_rankings(a, b, ("A", "B"), "humaneval", "zero", 3, BOOT)
    r = overlap.row(0, named=True)
    assert r["grids_match"] and r["resampling"] == "paired" and r["n_targets_a"] == 8
    assert r["jaccard"] == 1.0 and r["jaccard_ci_low"] == 1.0 and r["jaccard_ci_high"] == 1.0
    assert r["depth_overlap"] == pytest.approx(1.0)
    assert r["spearman"] == pytest.approx(1.0) and r["spearman_ci_low"] == pytest.approx(1.0)
    a_rows = heads.filter(pl.col("model") == "A")
    assert sorted(a_rows.filter(pl.col("category") == "both")["head"].to_list()) == [0, 1, 3]
    assert set(a_rows.filter(~pl.col("in_top_k"))["category"]) == {"neither"}
    assert a_rows.filter(pl.col("in_top_k"))["top_k_frequency"].min() == 1.0


def test_disjoint_rankings_and_who_has_which_head():
    a = planted(6, 2, 4, [0, 1], seed=0)
    b = planted(6, 2, 4, [6, 7], seed=1)
    overlap, heads = compare_rankings(a, b, ("A", "B"), "mbpp", "taylor", 2, BOOT)
    assert overlap["jaccard"][0] == 0.0 and overlap["jaccard_ci_high"][0] == 0.0
    assert overlap["depth_overlap"][0] == 0.0  # layer 0 against layer 1
    cats = {(r["model"], r["layer"], r["head"]): r["category"] for r in heads.iter_rows(named=True)}
    assert cats[("A", 0, 0)] == cats[("B", 0, 0)] == "only A"
    assert cats[("A", 1, 2)] == cats[("B", 1, 2)] == "only B"
    assert cats[("A", 0, 3)] == "neither"


def test_partial_overlap_is_the_set_ratio():
    assert jaccard(np.array([1, 2, 3]), np.array([2, 3, 4])) == pytest.approx(0.5)
    a = planted(5, 2, 4, [0, 1, 2], seed=0)
    b = planted(5, 2, 4, [1, 2, 3], seed=1)
    overlap, _ = compare_rankings(a, b, ("A", "B"), "d", "zero", 3, BOOT)
    assert overlap["jaccard"][0] == pytest.approx(0.5)


def test_other_architecture_is_compared_by_depth_only():
    a = planted(6, 2, 4, [4], seed=0)        # layer 1 of 2: depth 0.75
    same_depth = planted(6, 6, 2, [8], seed=1)  # layer 4 of 6: depth 0.75
    other_depth = planted(6, 4, 2, [4], seed=2)  # layer 2 of 4: depth 0.625
    o, heads = compare_rankings(a, same_depth, ("A", "B"), "d", "zero", 1, BOOT)
    r = o.row(0, named=True)
    assert not r["grids_match"] and math.isnan(r["jaccard"]) and math.isnan(r["spearman"])
    assert r["depth_overlap"] == 1.0
    assert "both" not in set(heads["category"])
    o, _ = compare_rankings(a, other_depth, ("A", "B"), "d", "zero", 1, BOOT)
    assert o["depth_overlap"][0] == 0.0
    assert depth_overlap(np.array([0.05, 0.95]), np.array([0.05, 0.55])) == pytest.approx(0.5)


def test_intervals_resample_targets_and_are_seeded():
    a = planted(12, 2, 4, [0, 1, 2], seed=0, noise=3.0)
    b = planted(12, 2, 4, [0, 1, 3], seed=1, noise=3.0)
    o1, _ = compare_rankings(a, b, ("A", "B"), "d", "zero", 3, BOOT)
    o2, _ = compare_rankings(a, b, ("A", "B"), "d", "zero", 3, BOOT)
    assert o1.equals(o2)
    r = o1.row(0, named=True)
    assert r["jaccard_ci_low"] <= r["jaccard"] <= r["jaccard_ci_high"]
    assert r["jaccard_ci_low"] < r["jaccard_ci_high"]  # noisy scores: the top set varies
    other_ids = Scores(long(b.matrix, 4, [f"u{i}" for i in range(12)]), "delta", 2, 4)
    assert compare_rankings(a, other_ids, ("A", "B"), "d", "zero", 3, BOOT)[0]["resampling"][0] == "independent"


def test_few_targets_get_no_interval():
    a, b = planted(3, 2, 4, [0], seed=0), planted(3, 2, 4, [0], seed=1)
    r = compare_rankings(a, b, ("A", "B"), "d", "zero", 1, BOOT)[0].row(0, named=True)
    assert r["jaccard"] == 1.0 and math.isnan(r["jaccard_ci_low"])


def test_missing_scores_are_an_error():
    df = long(np.ones((2, 8)), 4).filter(~((pl.col("target_id") == "t1") & (pl.col("layer") == 1) & (pl.col("head") == 3)))
    with pytest.raises(ValueError, match="NaN|no score"):
        Scores(df, "delta", 2, 4)


def test_head_union_names_shared_and_single_heads():
    scores = {"humaneval": planted(6, 2, 4, [0, 5], seed=0), "mbpp": planted(6, 2, 4, [0, 6], seed=1),
              "lcb": planted(6, 2, 4, [0, 6], seed=2), "empty": Scores(long(np.zeros((0, 8)), 4), "delta", 2, 4)}
    df = head_union(scores, 2, BOOT)
    assert sorted(df["dataset"].unique()) == ["humaneval", "lcb", "mbpp"]  # no targets: not counted
    per_head = df.unique(["layer", "head"]).sort("layer", "head")
    cat = {(r["layer"], r["head"]): (r["category"], r["datasets_in_top_k"]) for r in per_head.iter_rows(named=True)}
    assert cat[(0, 0)] == ("all", "humaneval,lcb,mbpp")
    assert cat[(1, 1)] == ("one", "humaneval")
    assert cat[(1, 2)] == ("some", "lcb,mbpp")
    assert cat[(0, 1)][0] == "none"
    assert df.filter(pl.col("in_top_k"))["top_k_frequency"].min() == 1.0


def test_circuit_overlap_counts_shared_edges():
    def edges(kept):
        all_edges = [("emb", "L0H0"), ("L0H0", "logits"), ("emb", "logits")]
        return pl.DataFrame({"upstream": [u for u, _ in all_edges], "downstream": [v for _, v in all_edges],
                             "in_circuit": [e in kept for e in all_edges], "n": [4, 4, 4]})
    out = circuit_overlap({"A": edges({("emb", "L0H0"), ("L0H0", "logits")}), "B": edges({("emb", "logits"),
                                                                                        ("L0H0", "logits")})},
                          ("A", "B"), "brackets")
    r = out.row(0, named=True)
    assert r["same_graph"] and r["shared_edges"] == 1 and r["jaccard"] == pytest.approx(1 / 3)


def test_per_target_taylor_scores_average_to_the_taylor_scores(tiny_models):
    model, tok = tiny_models["llama"]
    ids = [tok("def f(x):\n    return x + 1\n")["input_ids"], tok("print([1, 2])\n")["input_ids"],
           tok("x = {'a': (1, 2)}\n")["input_ids"]]
    targets = [Target(f"t{i}", tuple(t), 2, len(t)) for i, t in enumerate(ids)]
    per = taylor_target_scores(model, targets, 2)
    scores, first_order, _ = _gradients(model, targets, 2, full_mask(model))
    mean = per.group_by("layer", "head").agg(pl.col("taylor").mean(), pl.col("first_order").mean()).sort("layer", "head")
    n_heads = scores.shape[1]
    assert np.allclose(mean["taylor"].to_numpy(), scores.flatten().numpy(), rtol=1e-5, atol=1e-7)
    assert np.allclose(mean["first_order"].to_numpy(), first_order.flatten().numpy(), rtol=1e-5, atol=1e-7)
    assert per.height == len(targets) * scores.numel() and n_heads == 4
    # One target alone gives the same score as inside the batch.
    alone = taylor_target_scores(model, targets[:1], 1)
    both = per.filter(pl.col("target_id") == "t0").sort("layer", "head")
    assert np.allclose(alone["taylor"].to_numpy(), both["taylor"].to_numpy(), rtol=1e-4, atol=1e-6)


def _write_pair_files(tmp_path, name: str, n_layers: int, n_heads: int, top: int, targets: list[str]):
    from codeinterp.access.models import ModelFacts

    d = tmp_path / name
    d.mkdir()
    (d / "facts.json").write_text(ModelFacts("llama", n_layers, n_heads, n_heads, 8, 32, 100, 128, 1000, "test").to_json())
    rows = [{"layer": j // n_heads, "head": j % n_heads, "target_id": t, "ablation": "zero",
             "delta": (1.0 if j == top else 0.01 * j) + 0.001 * i, "taylor": 0.5 if j == top else 0.0}
            for i, t in enumerate(targets) for j in range(n_layers * n_heads)]
    df = pl.DataFrame(rows)
    df.drop("taylor").write_parquet(d / "deltas.parquet")
    df.select("layer", "head", "target_id", "taylor").write_parquet(d / "taylor.parquet")
    pl.DataFrame({"lens": ["logit"] * (n_layers + 1), "split": "all", "segment": "all", "outcome": "all",
                  "layer": list(range(n_layers + 1)), "cross_entropy": [3.0 - l for l in range(n_layers + 1)],
                  "n_targets": len(targets)}).write_parquet(d / "lens.parquet")
    pl.DataFrame({"problem_id": ["p0", "p1"], "n": [1, 1], "c": [1, 0], "pass@1": [1.0, 0.0]}).write_parquet(d / "pass.parquet")
    return d


def test_compare_pair_across_architectures_reads_every_table(tmp_path):
    from codeinterp.analyses.compare_models import compare_pair

    targets = [f"t{i}" for i in range(6)]
    a = _write_pair_files(tmp_path, "a", 2, 4, top=7, targets=targets)    # last head of layer 1 of 2
    b = _write_pair_files(tmp_path, "b", 6, 2, top=9, targets=targets)    # layer 4 of 6: the same depth
    files = {}
    for side, d in (("a", a), ("b", b)):
        files.update({f"deltas|{side}|humaneval": str(d / "deltas.parquet"), f"taylor|{side}|humaneval": str(d / "taylor.parquet"),
                      f"lens|{side}|humaneval": str(d / "lens.parquet"), f"pass_at_k|{side}|humaneval": str(d / "pass.parquet")})
    out = compare_pair(("A", "B"), {"a": str(a), "b": str(b)}, files, "zero", 1, BOOT)
    overlap = out["overlap"].sort("ranking")
    assert overlap["ranking"].to_list() == ["taylor", "zero"]
    assert not overlap["grids_match"].any() and overlap["jaccard"].is_nan().all()
    assert overlap["depth_overlap"].to_list() == [1.0, 1.0]
    assert out["lens"].filter(pl.col("model") == "B")["depth"].to_list() == pytest.approx([i / 6 for i in range(7)])
    assert out["pass_at_k"]["pass@1"].to_list() == [0.5, 0.5] and out["pass_at_k"]["n_problems"].to_list() == [2, 2]
    assert out["circuits"].is_empty()
    top = out["heads"].filter(pl.col("in_top_k") & (pl.col("ranking") == "zero"))
    assert sorted(zip(top["model"], top["layer"], top["head"])) == [("A", 1, 3), ("B", 4, 1)]


def test_an_undefined_overlap_is_not_reported_as_a_missing_interval():
    from codeinterp.report.charts import ci

    assert ci(float("nan"), float("nan"), float("nan")) == "–" and ci(None, None, None) == "–"
    assert "fewer than 5" in ci(0.4, float("nan"), float("nan"))
