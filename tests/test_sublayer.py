"""Sublayer ablation on answers known in advance: the hand-built one-head model (all behaviour in
one attention head of layer 1), the block-runner fast path against the model's own forward."""

import numpy as np
import polars as pl
import pytest
import torch

from archs import build
from codeinterp.access.architectures import BlockRunner, RunnerMismatch, layout
from codeinterp.access.hooks import edit_site
from codeinterp.causal.pairs import Pair, logit_diff, make_pair_batch
from codeinterp.causal.sublayer import Ablation, Ablator, ablate, ratio_interval, site_means, sublayer_ablation
from codeinterp.uncertainty import Bootstrap
from handbuilt import HEAD_DIM, build_one_head_model
from test_task_metrics import TEXTS, _pairs

BOOT = Bootstrap(200, 0.95, 0)


def test_zero_ablating_the_planted_attention_removes_everything_and_nothing_else_matters():
    model, tok, (layer, _) = build_one_head_model("llama")
    table = sublayer_ablation(model, _pairs(tok, TEXTS), ["zero"], 4, BOOT)
    per = table.filter(pl.col("layer") >= 0)
    planted = per.filter((pl.col("half") == "attn") & (pl.col("layer") == layer)).row(0, named=True)
    # Without the head the copy subspace is empty and every logit is exactly 0.
    assert abs(planted["logit_diff"]) < 1e-6 and abs(planted["delta"] + planted["intact"]) < 1e-5
    assert planted["fraction"] == pytest.approx(-1.0) and planted["fraction_ci_low"] == pytest.approx(-1.0)
    assert per.filter((pl.col("half") != "attn") | (pl.col("layer") != layer))["delta"].abs().max() < 1e-6
    diff = table.filter(pl.col("half") == "attn - mlp").row(0, named=True)
    assert diff["n"] == len(TEXTS) and diff["delta"] == pytest.approx(planted["intact"], abs=1e-5)
    assert diff["delta_ci_low"] > 0  # attention matters more, with an interval over pairs


def test_mean_ablation_gives_the_logit_difference_computed_by_hand():
    """The head attends uniformly to the prefix and copies the RMS-normed token subspace, so its
    output at position t is the prefix mean of the normed token vectors; mean ablation puts the
    mean of those over every position of every prompt in its place at the last position."""
    model, tok, (layer, _) = build_one_head_model("llama")
    model.requires_grad_(False)
    pairs = _pairs(tok, TEXTS)
    d, eps = HEAD_DIM, model.config.rms_norm_eps
    E, U = model.model.embed_tokens.weight, model.lm_head.weight

    def rms(x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    prefix = []
    for p in pairs:
        v = rms(E[p.clean_ids])[:, :d]
        prefix.append(v.cumsum(0) / torch.arange(1, len(v) + 1)[:, None])
    fill = torch.cat(prefix).mean(0)
    expected = []
    for p in pairs:
        last = E[p.clean_ids[-1]].clone()
        last[d:2 * d] = fill
        logits = U @ rms(last)
        expected.append(float(logits[p.clean_token] - logits[p.corrupt_token]))
    per = ablate(model, pairs, ["mean"], 4)
    got = per.filter((pl.col("half") == "attn") & (pl.col("layer") == layer)).sort("pair_id")
    np.testing.assert_allclose(got["logit_diff"].to_numpy(), expected, atol=1e-4)
    means = site_means(model, pairs, [f"attn.{layer}"], 4)
    torch.testing.assert_close(means[f"attn.{layer}"][d:2 * d], fill, atol=1e-5, rtol=1e-5)


def test_site_means_skip_padding():
    model, tok, (layer, _) = build_one_head_model("llama")
    pairs = _pairs(tok, TEXTS)  # prompts of different lengths: batches of 3 are padded
    name = f"attn.{layer}"
    one_by_one = torch.stack([site_means(model, [p], [name], 1)[name] * p.length for p in pairs]).sum(0)
    total = sum(p.length for p in pairs)
    torch.testing.assert_close(site_means(model, pairs, [name], 3)[name], one_by_one / total, atol=1e-5, rtol=1e-5)


def _random_pairs(model, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        T = 5 + i % 3
        clean = torch.randint(3, 100, (T,), generator=g)
        corrupt = clean.clone()
        corrupt[1] = (clean[1] + 1) % 100
        out.append(Pair(f"r{i}", "t", "s", ")", 1 + i % 2, 0, clean, corrupt, int(clean[-1]), int(corrupt[1]),
                        (1, 2), (), ()))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_batched_ablations_equal_the_models_forward(arch):
    """Every ablation of every layer, started mid-stream on the batch axis, is the model's own
    forward with that half's output overwritten."""
    model = build(arch)
    pairs = _random_pairs(model)
    n = len(layout(model).blocks)
    per = ablate(model, pairs, ["zero", "mean"], 3)
    means = site_means(model, pairs, [f"{h}.{l}" for l in range(n) for h in ("attn", "mlp")], 3)
    batch = make_pair_batch(pairs)
    for (kind, half, l), part in per.group_by("ablation", "half", "layer"):
        fill = (lambda v: torch.zeros_like(v)) if kind == "zero" else \
            (lambda v, m=means[f"{half}.{l}"]: m.to(v.dtype).expand_as(v).clone())
        with torch.no_grad(), edit_site(model, f"{half}.{l}", fill):
            slow = logit_diff(model(input_ids=batch.clean, attention_mask=batch.mask).logits, batch)
        fast = part.sort("pair_id")["logit_diff"].to_numpy()
        np.testing.assert_allclose(fast, slow.numpy(), atol=2e-4, rtol=1e-4)


def test_a_wrong_fast_path_is_refused(monkeypatch):
    model = build("llama")
    pairs = _random_pairs(model)
    real = BlockRunner.run
    monkeypatch.setattr(BlockRunner, "run", lambda self, resid, start=0, end=None: real(self, resid, start, end) + 0.5)
    ablator = Ablator(model, make_pair_batch(pairs), {})
    with pytest.raises(RunnerMismatch, match="sublayer_ablation"):
        ablator.check([Ablation("attn", 0, "zero")])
    with pytest.raises(RunnerMismatch):
        ablate(model, pairs, ["zero"], 3)


def test_ratio_interval():
    den = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    num = np.stack([2 * den, -den], 1)
    ratio, low, high = ratio_interval(num, den, BOOT)
    np.testing.assert_allclose(ratio, [2, -1])
    np.testing.assert_allclose(low, [2, -1])
    np.testing.assert_allclose(high, [2, -1])
    _, low, _ = ratio_interval(num[:3], den[:3], BOOT)
    assert np.isnan(low).all()  # too few pairs for an interval
