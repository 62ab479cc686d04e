import copy
import json
import math

import numpy as np
import pytest
import torch

from codeinterp.access import heads

from codeinterp.analyses import pruning
from codeinterp.access.scoring import Target

import handbuilt


def make_targets(tok):
    return handbuilt.snippet_targets(tok, 3)


# ---------------------------------------------------------------- Taylor scores vs references


def reference_target_loss(model, t: Target, keep: torch.Tensor) -> float:
    """Full forward of one unpadded sequence, CE in the model's dtype (float64 here)."""
    ids = torch.tensor([t.input_ids])
    with torch.no_grad(), heads.head_intervention(model, keep):
        logits = model(input_ids=ids).logits[0]
    return torch.nn.functional.cross_entropy(logits[t.code_start - 1 : t.code_end - 1], ids[0, t.code_start : t.code_end]).item()


def test_taylor_scores_equal_central_differences(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    alive = heads.mask_from_heads(model, [(0, 2)])  # one head already pruned
    scores = pruning.taylor_scores(model, targets, batch_size=2, alive=alive)
    assert math.isnan(scores[0, 2])
    assert torch.isfinite(scores[alive > 0]).all()
    ref_model = copy.deepcopy(model).double()
    eps = 1e-3
    for layer, head in [(0, 1), (2, 3), (1, 0)]:
        grads = []
        for t in targets:
            up, down = alive.double().clone(), alive.double().clone()
            up[layer, head] += eps
            down[layer, head] -= eps
            grads.append((reference_target_loss(ref_model, t, up) - reference_target_loss(ref_model, t, down)) / (2 * eps))
        expected = np.mean(np.abs(grads))  # Michel et al.: mean of per-example |gradient|
        assert scores[layer, head].item() == pytest.approx(expected, rel=2e-3, abs=1e-6)


def test_taylor_scores_leave_parameters_without_grads(tiny_models):
    model, tok = tiny_models["llama"]
    flags = [p.requires_grad for p in model.parameters()]
    pruning.taylor_scores(model, make_targets(tok), batch_size=3)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags


def test_taylor_scores_do_not_depend_on_batch_size(tiny_models):
    model, tok = tiny_models["gpt2"]
    targets = make_targets(tok)
    one = pruning.taylor_scores(model, targets, batch_size=1)
    three = pruning.taylor_scores(model, targets, batch_size=3)
    assert torch.allclose(one, three, rtol=1e-4, atol=1e-7)


def test_layer_normalised_scores_have_unit_norm(tiny_models):
    model, tok = tiny_models["llama"]
    s = pruning.taylor_scores(model, make_targets(tok), batch_size=3, normalize_layers=True)
    assert torch.allclose(s.norm(dim=1), torch.ones(s.shape[0]), atol=1e-5)


# ---------------------------------------------------------------- iterative pruning


def test_pruning_history_rows_and_frame(tiny_models):
    model, tok = tiny_models["qwen2"]
    targets = make_targets(tok)
    seen = []
    hist = pruning.taylor_pruning(model, targets, 3, iterations=3, prune_per_iter=2, on_step=lambda h: seen.append(len(h)))
    assert seen == [1, 2, 3, 4]
    assert [r["iteration"] for r in hist] == [0, 1, 2, 3]
    assert hist[0]["pruned"] == [] and len(hist[0]["alive"]) == 12 and hist[0]["scores"] is None
    assert hist[0]["loss"] == pytest.approx(pruning.mean_loss(model, targets, 3))
    removed = []
    for row in hist[1:]:
        scores = np.array([[np.nan if v is None else v for v in r] for r in row["scores"]])
        alive_before = {(l, h) for l in range(3) for h in range(4) if np.isfinite(scores[l, h])}
        assert alive_before.isdisjoint(map(tuple, removed))
        # the pruned heads are the lowest-scored alive ones
        worst_kept = min(scores[l, h] for l, h in alive_before - {tuple(p) for p in row["pruned"]})
        assert all(scores[l, h] <= worst_kept for l, h in row["pruned"])
        removed += row["pruned"]
        assert len(row["alive"]) == 12 - len(removed)
        keep = heads.mask_from_heads(model, [tuple(p) for p in removed])
        assert row["loss"] == pytest.approx(pruning.mean_loss(model, targets, 3, keep), abs=1e-5)
    json.dumps(hist, allow_nan=False)  # persistable as strict JSON
    df = pruning.history_frame(hist)
    assert df.columns == ["iteration", "n_pruned_total", "n_alive", "loss", "ci_low", "ci_high", "n_targets", "pruned"]
    assert df["n_pruned_total"].to_list() == [0, 2, 4, 6]
    assert df["n_alive"].to_list() == [12, 10, 8, 6]
    assert df["pruned"][1].to_list() == [f"L{l}H{h}" for l, h in hist[1]["pruned"]]


def test_pruning_resumes_from_persisted_history(tiny_models):
    model, tok = tiny_models["llama"]
    targets = make_targets(tok)[1:]
    straight = pruning.taylor_pruning(model, targets, 2, iterations=4, prune_per_iter=1)
    first = pruning.taylor_pruning(model, targets, 2, iterations=2, prune_per_iter=1)
    steps = []
    resumed = pruning.taylor_pruning(
        model, targets, 2, iterations=4, prune_per_iter=1,
        history=json.loads(json.dumps(first)), on_step=lambda h: steps.append(h[-1]["iteration"]),
    )
    assert steps == [3, 4]  # only the missing iterations were computed
    assert [r["pruned"] for r in resumed] == [r["pruned"] for r in straight]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert resumed[3]["scores"] == straight[3]["scores"]
    # asking for fewer iterations than stored returns the history untouched
    assert pruning.taylor_pruning(model, targets, 2, iterations=1, prune_per_iter=1, history=straight) == straight


def test_pruning_stops_when_no_head_is_left(tiny_models):
    model, tok = tiny_models["gpt2"]
    hist = pruning.taylor_pruning(model, make_targets(tok)[:1], 1, iterations=10, prune_per_iter=5)
    assert [len(r["alive"]) for r in hist] == [12, 7, 2, 0]
    assert hist[-1]["pruned"] and len({tuple(p) for r in hist for p in r["pruned"]}) == 12


def test_pruning_rejects_inconsistent_history(tiny_models):
    model, tok = tiny_models["llama"]
    with pytest.raises(ValueError, match="iteration"):
        pruning.taylor_pruning(model, make_targets(tok), 2, 2, 1, history=[{"iteration": 1, "alive": [], "pruned": [], "loss": 0.0}])


# ---------------------------------------------------------------- hand-built model: one head matters


@pytest.fixture(scope="module")
def one_head():
    model, tok, known = handbuilt.build_one_head_model(arch="llama")
    return model, tok, tuple(known)




def test_taylor_ranks_the_known_head_first(one_head):
    model, tok, known = one_head
    s = pruning.taylor_scores(model, handbuilt.one_head_targets(tok, 5), batch_size=4).numpy()
    order = np.argsort(-s, axis=None)
    assert tuple(int(v) for v in np.unravel_index(order[0], s.shape)) == known
    second = s.flatten()[order[1]]
    assert s[known] > 10 * second + 1e-6


def test_iterative_pruning_keeps_the_known_head(one_head):
    model, tok, known = one_head
    targets = handbuilt.one_head_targets(tok, 3)
    hist = pruning.taylor_pruning(model, targets, 3, iterations=3, prune_per_iter=2)
    assert [len(r["alive"]) for r in hist] == [12, 10, 8, 6]
    assert all(known in {tuple(p) for p in r["alive"]} for r in hist)
    assert hist[-1]["loss"] == pytest.approx(hist[0]["loss"], abs=1e-5)  # only irrelevant heads went
    part = pruning.taylor_pruning(model, targets, 3, iterations=1, prune_per_iter=2)
    resumed = pruning.taylor_pruning(model, targets, 3, iterations=3, prune_per_iter=2, history=part)
    assert [r["pruned"] for r in resumed] == [r["pruned"] for r in hist]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in hist]


# ---------------------------------------------------------------- Taylor vs exact, regimes


def test_taylor_vs_exact_identical_and_reversed():
    a = np.arange(12, dtype=float).reshape(3, 4)
    same = pruning.taylor_vs_exact(a, a.copy())
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["top5_overlap"] == 1.0 and same["top10_overlap"] == 1.0
    assert "top20_overlap" not in same  # k larger than the number of heads
    rev = pruning.taylor_vs_exact(a, -a)
    assert rev["spearman"] == pytest.approx(-1.0) and rev["kendall"] == pytest.approx(-1.0)
    assert rev["top5_overlap"] == 0.0
    assert rev["top10_overlap"] == pytest.approx(8 / 10)  # 10 of 12 heads: the two rankings share 8


def test_taylor_vs_exact_skips_pruned_heads():
    t = np.arange(12, dtype=float).reshape(3, 4)
    t[0, 0] = np.nan
    e = np.arange(12, dtype=float).reshape(3, 4)
    e[0, 0] = 100.0  # would be top-1 by exact, but it is pruned
    out = pruning.taylor_vs_exact(t, e, ks=(1, 3))
    assert out["n_heads"] == 11 and out["spearman"] == pytest.approx(1.0)
    assert out["top1_overlap"] == 1.0 and out["top3_overlap"] == 1.0


DELTA = np.array([[0.5, 0.1, 0.9, 0.0], [0.3, 0.7, 0.2, 0.05]])


def test_regime_heads_known_answers():
    assert pruning.regime_heads(DELTA, {"kind": "top_k", "k": 3}, None) == [(0, 2), (1, 1), (0, 0)]
    assert pruning.regime_heads(DELTA, {"kind": "top_k", "k": 0}, None) == []
    # 20% of 8 heads rounds down to 1; 50% is 4
    assert pruning.regime_heads(DELTA, {"kind": "bottom_fraction", "fraction": 0.2}, None) == [(0, 3)]
    assert pruning.regime_heads(DELTA, {"kind": "bottom_fraction", "fraction": 0.5}, None) == [(0, 3), (1, 3), (0, 1), (1, 2)]
    hist = [
        {"iteration": 0, "pruned": [], "alive": [], "loss": 1.0},
        {"iteration": 1, "pruned": [[0, 3], [1, 3]], "alive": [], "loss": 1.0},
        {"iteration": 2, "pruned": [[0, 1]], "alive": [], "loss": 1.0},
    ]
    assert pruning.regime_heads(DELTA, {"kind": "taylor", "iteration": 2}, hist) == [(0, 3), (1, 3), (0, 1)]
    assert pruning.regime_heads(DELTA, {"kind": "taylor", "iteration": 1}, hist) == [(0, 3), (1, 3)]
    r1 = pruning.regime_heads(DELTA, {"kind": "random", "k": 3, "seed": 7}, None)
    assert r1 == pruning.regime_heads(DELTA, {"kind": "random", "k": 3, "seed": 7}, None)
    assert len(set(r1)) == 3 and all(0 <= l < 2 and 0 <= h < 4 for l, h in r1)


@pytest.mark.parametrize(
    "regime, history, match",
    [
        ({"kind": "taylor", "iteration": 5}, [{"iteration": 0, "pruned": []}], "iteration"),
        ({"kind": "taylor", "iteration": 1}, None, "history"),
        ({"kind": "top_k", "k": 9}, None, "k"),
        ({"kind": "top_k"}, None, "k"),
        ({"kind": "bottom_fraction", "fraction": 1.5}, None, "fraction"),
        ({"kind": "random", "k": 2, "seed": "x"}, None, "seed"),
        ({"kind": "magic"}, None, "kind"),
    ],
)
def test_regime_heads_rejects_bad_regimes(regime, history, match):
    with pytest.raises(ValueError, match=match) as err:
        pruning.regime_heads(DELTA, regime, history)
    assert repr(regime) in str(err.value)


# ---------------------------------------------------------------- like with like


def test_first_order_estimate_is_mean_minus_gradient(tiny_models):
    model, tok = tiny_models["llama"]
    targets = make_targets(tok)
    hist = pruning.taylor_pruning(model, targets, batch_size=2, iterations=1, prune_per_iter=1)
    first_order = np.array(hist[1]["first_order"], dtype=float)
    ref_model = copy.deepcopy(model).double()
    eps = 1e-3
    for layer, head in [(0, 1), (2, 3)]:
        signed = []
        for t in targets:
            up, down = torch.ones(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64)
            up[layer, head] += eps
            down[layer, head] -= eps
            signed.append(-(reference_target_loss(ref_model, t, up) - reference_target_loss(ref_model, t, down)) / (2 * eps))
        # Per-target gradients of both signs cancel in the mean: tolerance on their scale.
        assert first_order[layer, head] == pytest.approx(np.mean(signed), abs=5e-3 * np.mean(np.abs(signed)))
    # The per-target losses behind every loss in the history are kept, for intervals.
    assert sorted(hist[0]["target_losses"]) == sorted(t.target_id for t in targets)
    assert hist[1]["loss"] == pytest.approx(np.mean(list(hist[1]["target_losses"].values())))


def test_taylor_vs_exact_pairs_each_estimate_with_what_it_estimates():
    import polars as pl

    # Head (0, 0) flips sign between targets: large mean |delta|, zero mean delta. Head (0, 1)
    # is small and consistent. Estimates that equal their exact quantities must agree perfectly
    # within each pair, whichever head is "larger".
    per_target = {(0, 0): [1.0, -1.0], (0, 1): [0.1, 0.1], (0, 2): [0.3, 0.5]}
    rows = [{"ablation": "zero", "layer": l, "head": h, "target_id": f"t{i}", "delta": d}
            for (l, h), ds in per_target.items() for i, d in enumerate(ds)]
    deltas = pl.DataFrame(rows)
    abs_mean = [[float(np.mean(np.abs(per_target[(0, h)]))) for h in range(3)]]
    signed_mean = [[float(np.mean(per_target[(0, h)])) for h in range(3)]]
    history = [{"iteration": 0}, {"iteration": 1, "scores": abs_mean, "first_order": signed_mean}]
    summary, heads_table = pruning.taylor_vs_exact_tables(history, deltas, ks=(1,))
    by_pair = {r["pair"]: r for r in summary.iter_rows(named=True)}
    assert by_pair["importance"]["spearman"] == pytest.approx(1.0)
    assert by_pair["signed"]["spearman"] == pytest.approx(1.0)
    assert by_pair["importance"]["top1_overlap"] == by_pair["signed"]["top1_overlap"] == 1.0
    assert by_pair["importance"]["n_targets"] == 2
    assert heads_table.filter((pl.col("head") == 0))["abs_delta"][0] == 1.0
    assert heads_table.filter((pl.col("head") == 0))["delta"][0] == 0.0


def test_history_frame_has_intervals_over_targets(tiny_models):
    model, tok = tiny_models["llama"]
    hist = pruning.taylor_pruning(model, make_targets(tok), batch_size=2, iterations=2, prune_per_iter=2)
    df = pruning.history_frame(hist)
    assert df["n_targets"].to_list() == [3, 3, 3]
    assert df["ci_low"].is_nan().all()  # three targets: too few for an interval
    many = [dict(r, target_losses={f"t{i}": r["loss"] + 0.1 * i for i in range(6)}) for r in hist]
    df = pruning.history_frame(many)
    assert (df["ci_low"] <= df["loss"] + 0.25).all() and (df["ci_low"] < df["ci_high"]).all()


def test_mean_ablation_pruning_replaces_heads_by_their_mean(tiny_models):
    """Taylor's first step under mean fill, removing one head, gives the loss of exact mean ablation."""
    from codeinterp.analyses.ablation import head_ablation, mean_head_outputs

    model, tok = tiny_models["llama"]
    targets = make_targets(tok)
    fill = mean_head_outputs(model, targets, 2)
    hist = pruning.taylor_pruning(model, targets, batch_size=2, iterations=1, prune_per_iter=1, fill=fill)
    (layer, head), = hist[1]["pruned"]
    exact = head_ablation(model, targets, "mean", 2, fill=fill)
    one = exact.filter((exact["layer"] == layer) & (exact["head"] == head))
    assert hist[1]["loss"] == pytest.approx(float(one["ablated_loss"].mean()), rel=1e-5)
