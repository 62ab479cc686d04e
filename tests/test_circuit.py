"""The component graph and EAP-IG circuits, on random models and on a hand-built model whose
answer runs through one known head (tests/handbuilt.py)."""

import numpy as np
import polars as pl
import pytest
import torch

from archs import build
from codeinterp.access.architectures import RunnerMismatch, UnsupportedArchitecture
from codeinterp.access.edges import EdgeRunner
from codeinterp.causal.attribution import estimate
from codeinterp.causal.circuit import discover, patched_metrics, select, _mask_matrix
from codeinterp.causal.pairs import Pair, make_pair_batch
from codeinterp.causal.patching import sweep
from codeinterp.uncertainty import Bootstrap
from handbuilt import HEAD, build_one_head_model

BOOT = Bootstrap(100, 0.95, 0)


def _pairs(tok, texts):
    """Pairs differing at one position; the answer tokens are the two characters there (the
    hand-built model predicts characters seen before)."""
    out = []
    for i, (clean, corrupt) in enumerate(texts):
        a, b = tok(clean, add_special_tokens=False)["input_ids"], tok(corrupt, add_special_tokens=False)["input_ids"]
        at = next(k for k in range(len(a)) if a[k] != b[k])
        out.append(Pair(f"p{i}", "t", "s", ")", 1, 0, torch.tensor(a), torch.tensor(b), a[at], b[at], (at, at + 1), (), ()))
    return out


TEXTS = [("aaaa bbbb", "aaaa bxbb"), ("abcabc ab", "abcxbc ab"), ("(( )) ((", "(( )x (("), ("xyxy yxyx", "xyxy yqyx"),
         ("0101 1010", "0101 1z10"), ("def f(): f", "def g(): f")]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_the_graph_with_every_edge_is_the_model(arch):
    model = build(arch)
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    runner = EdgeRunner(model, torch.ones_like(ids))
    runner.check(ids, torch.tensor([6, 6]))
    # A wrong graph is caught: drop one head's output from every sum.
    bad = EdgeRunner(model, torch.ones_like(ids))
    bad.forward, real = (lambda emb, combine=None: real(emb, lambda t, outs, total: total - outs[-1]
                                                         if len(outs) > 2 else total)), bad.forward
    with pytest.raises(RunnerMismatch, match="edge graph"):
        bad.check(ids, torch.tensor([6, 6]))


@pytest.mark.parametrize("arch", ["gemma2", "gemma3", "olmo2"])
def test_post_norm_architectures_are_refused(arch):
    model = build(arch)
    with pytest.raises(UnsupportedArchitecture, match="heads do not add linearly"):
        EdgeRunner(model, torch.ones(1, 4, dtype=torch.long))


def test_full_graph_is_faithful_and_the_empty_circuit_is_the_corrupted_run():
    model = build("llama")
    g = torch.Generator().manual_seed(1)
    pairs = []
    for i in range(5):
        a = torch.randint(3, 100, (8,), generator=g)
        b = a.clone()
        b[4] = (a[4] + 7) % 100
        pairs.append(Pair(f"r{i}", "t", "s", ")", 1, 0, a, b, int(a[2]), int(b[4]), (4, 5), (), ()))
    runner = EdgeRunner(model, make_pair_batch(pairs).mask)
    allowed = _mask_matrix(runner)
    values = patched_metrics(model, pairs, [allowed, torch.zeros_like(allowed)], batch_size=5)
    full, empty, clean, bad = values
    np.testing.assert_allclose(full, clean, atol=1e-4)
    np.testing.assert_allclose(empty, bad, atol=1e-4)


def test_the_planted_path_is_found_by_every_method():
    model, tok, (layer, head) = build_one_head_model("llama")
    pairs = _pairs(tok, TEXTS)
    curve, edges = discover(model, pairs, steps=3, target=0.9, sizes=6, batch_size=6, boot=BOOT)
    kept = set(edges.filter(pl.col("in_circuit")).select("upstream", "downstream").rows())
    assert kept == {("input", f"L{layer}H{head}"), (f"L{layer}H{head}", "logits")}
    chosen = curve.filter(pl.col("chosen")).row(0, named=True)
    assert chosen["edges"] == 2 and abs(chosen["faithfulness"] - 1) < 1e-4
    # Exact patching: restoring that head's output recovers everything; any other head nothing.
    table = sweep(model, pairs, kinds=["head"], directions=["denoising"], corruptions=["counterfactual"], window=1,
                  noise_scale=3.0, noise_samples=1, seed=0, batch_size=64)
    by_head = table.group_by("layer", "head").agg(pl.col("normalised").mean())
    planted = by_head.filter((pl.col("layer") == layer) & (pl.col("head") == head))["normalised"][0]
    others = by_head.filter((pl.col("layer") != layer) | (pl.col("head") != head))["normalised"]
    assert abs(planted - 1) < 1e-4 and others.abs().max() < 1e-4
    # Attribution patching ranks it first among heads.
    approx = estimate(model, pairs, kinds=["head"], directions=["denoising"], corruptions=["counterfactual"],
                      noise_scale=3.0, noise_samples=1, seed=0, batch_size=6)
    top = approx.group_by("layer", "head").agg(pl.col("normalised").mean()).sort("normalised", descending=True).row(0)
    assert top[:2] == (layer, head)
