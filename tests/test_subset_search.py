import itertools

import numpy as np
import pytest

from codeinterp.access import heads

from codeinterp.analyses import pruning, subset_search

import handbuilt


def make_targets(tok):
    return handbuilt.snippet_targets(tok, 3)


def all_heads(model):
    L, H = heads.full_mask(model).shape
    return [(l, h) for l in range(L) for h in range(H)]


def test_batched_subset_losses_equal_one_mask_at_a_time(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    subsets = [[], [(0, 1)], [(1, 2), (2, 0)], [(0, 0), (0, 3), (2, 2)]]
    for batch_size in (2, 7):  # 1 and 3 tiled copies of a 2-target batch per forward
        got = subset_search.subset_losses(model, targets, subsets, batch_size)
        for s, value in zip(subsets, got):
            assert value == pytest.approx(pruning.mean_loss(model, targets, 3, heads.mask_from_heads(model, s)), abs=1e-5)


def test_cma_finds_the_best_pair_on_a_tiny_model(tiny_models):
    model, tok = tiny_models["llama"]
    targets = make_targets(tok)[:2]
    pairs = [list(p) for p in itertools.combinations(all_heads(model), 2)]
    brute = subset_search.subset_losses(model, targets, pairs, 64)
    result = subset_search.cma_head_subset(model, targets, k=2, batch_size=64, seed=3, max_evals=100)
    assert len(result["heads"]) == 2 and result["evals"] <= 100
    assert result["loss"] == pytest.approx(min(brute), abs=1e-5)
    hist = result["history"]
    assert [r["generation"] for r in hist] == list(range(1, len(hist) + 1))
    assert all(a["best_loss"] >= b["best_loss"] for a, b in zip(hist, hist[1:]))
    assert hist[-1]["best_loss"] == result["loss"]


def test_cma_is_deterministic_and_leaves_numpy_state_alone(tiny_models):
    model, tok = tiny_models["gpt2"]
    targets = make_targets(tok)[:2]
    np.random.seed(123)
    before = np.random.rand()
    np.random.seed(123)
    a = subset_search.cma_head_subset(model, targets, k=3, batch_size=32, seed=0, max_evals=40)
    assert np.random.rand() == before
    b = subset_search.cma_head_subset(model, targets, k=3, batch_size=32, seed=0, max_evals=40)
    assert a == b
    c = subset_search.cma_head_subset(model, targets, k=3, batch_size=32, seed=1, max_evals=40)
    assert [r["mean_loss"] for r in c["history"]] != [r["mean_loss"] for r in a["history"]]


def test_cma_rejects_bad_arguments(tiny_models):
    model, tok = tiny_models["llama"]
    targets = make_targets(tok)[:1]
    with pytest.raises(ValueError, match="k must be"):
        subset_search.cma_head_subset(model, targets, k=13, batch_size=4, seed=0, max_evals=10)
    with pytest.raises(ValueError, match="seed"):
        subset_search.cma_head_subset(model, targets, k=1, batch_size=4, seed=-1, max_evals=10)
    everything = subset_search.cma_head_subset(model, targets, k=12, batch_size=4, seed=0, max_evals=10)
    assert len(everything["heads"]) == 12


def test_compare_subsets_frame(tiny_models):
    model, tok = tiny_models["qwen2"]
    targets = make_targets(tok)
    sets = {"cma": [(0, 1), (2, 3)], "taylor": [(1, 1), (0, 0)]}
    df = subset_search.compare_subsets(model, targets, 2, 3, sets)
    assert df.columns == ["method", "k", "loss", "ci_low", "ci_high", "n_targets", "heads"]
    assert df["n_targets"].to_list() == [3, 3] and df["ci_low"].is_nan().all()  # three targets: no interval
    assert df["method"].to_list() == ["cma", "taylor"] and df["k"].to_list() == [2, 2]
    assert df["heads"][1].to_list() == ["L0H0", "L1H1"]
    assert df["loss"][0] == pytest.approx(pruning.mean_loss(model, targets, 3, heads.mask_from_heads(model, sets["cma"])))
    with pytest.raises(ValueError, match="taylor"):
        subset_search.compare_subsets(model, targets, 2, 3, {"taylor": [(0, 0), (0, 0)]})
    with pytest.raises(ValueError, match="outside"):
        subset_search.compare_subsets(model, targets, 1, 3, {"x": [(5, 0)]})


# ---------------------------------------------------------------- hand-built model: one head matters


@pytest.fixture(scope="module")
def one_head():
    model, tok, known = handbuilt.build_one_head_model(arch="llama")
    return model, tok, tuple(known)




def test_cma_k1_avoids_the_known_head(one_head):
    model, tok, known = one_head
    targets = handbuilt.one_head_targets(tok, 5)
    singles = [[h] for h in all_heads(model)]
    losses = dict(zip(all_heads(model), subset_search.subset_losses(model, targets, singles, 64)))
    assert max(losses, key=losses.get) == known  # removing the known head is the worst single removal
    result = subset_search.cma_head_subset(model, targets, k=1, batch_size=64, seed=0, max_evals=40)
    assert tuple(result["heads"][0]) != known
    assert result["loss"] == pytest.approx(min(losses.values()), abs=1e-4)
    assert result == subset_search.cma_head_subset(model, targets, k=1, batch_size=64, seed=0, max_evals=40)
