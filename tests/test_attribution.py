"""Attention re-derivation, AtP*'s QK fix and the attribution prefilter, on answers known in advance."""

import polars as pl
import pytest
import torch

from archs import build
from codeinterp.access.architectures import RunnerMismatch
from codeinterp.access.attention import check_probabilities, probabilities, probe
from codeinterp.causal.attribution import estimate, top_settings
from codeinterp.causal.pairs import Pair
from codeinterp.causal.patching import sweep
from handbuilt import HEAD, build_one_head_model

KEYS = ["pair_id", "corruption", "direction", "site", "layer", "head", "position"]


def short_pairs(n=2, length=9, span=(3, 5), seed=0, vocab=256):
    """Random clean prompts whose corrupted copies differ on `span`: few positions, fast sweeps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        clean = torch.randint(3, vocab, (length + i,), generator=g)
        corrupt = clean.clone()
        corrupt[span[0]:span[1]] = torch.randint(3, vocab, (span[1] - span[0],), generator=g)
        good, bad = (int(x) for x in torch.randint(3, vocab, (2,), generator=g))
        out.append(Pair(f"p{i}", "brackets", "template", ")", 1, 0, clean, corrupt, good, bad, span, (), ()))
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_probabilities_are_the_models_own_weights(arch):
    model = build(arch)
    ids = torch.randint(3, 300, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
        with probe(model) as calls:
            got = model(input_ids=ids, attention_mask=mask).logits
    assert (got - ref)[mask.bool()].abs().max() < 1e-5  # the probe leaves the forward as it was
    check_probabilities(model, ids, mask)
    # The check can fail: a wrong scaling gives other probabilities.
    call = calls[0]
    wrong = type(call)(call.query, call.key, call.value, call.mask, call.scaling * 2, call.softcap, call.weights)
    assert (probabilities(wrong) - call.weights).abs().max() > 1e-3


def test_check_refuses_a_wrong_re_derivation(monkeypatch):
    import codeinterp.access.attention as attention

    model = build("llama")
    monkeypatch.setattr(attention, "probabilities", lambda call: torch.softmax(attention.scores(call.query, call.key, call),
                                                                              -1))  # forgets the causal mask
    with pytest.raises(RunnerMismatch, match="attention probabilities"):
        check_probabilities(model, torch.randint(3, 300, (1, 8)), torch.ones(1, 8, dtype=torch.long))


def linear_after_attention(arch="llama"):
    """Last block without MLP and no final norm: the metric is linear in the last layer's
    attention probabilities, so AtP* is exact for its queries and keys and AtP is not."""
    model = build(arch)
    model.model.norm = torch.nn.Identity()
    with torch.no_grad():
        down = model.model.layers[-1].mlp.down_proj
        down.weight.zero_()
        down.bias.zero_()
    return model


def test_qk_fix_is_exact_where_the_model_is_linear_in_the_attention_probabilities():
    model = linear_after_attention()
    pairs = short_pairs()
    kw = dict(kinds=["head_q", "head_k"], directions=["denoising", "noising"], corruptions=["counterfactual"],
              noise_scale=3.0, noise_samples=1, seed=0)
    approx = estimate(model, pairs, batch_size=2, **kw)
    last = top_settings(approx.filter(pl.col("layer") == 2), 10**6)
    exact = sweep(model, pairs, window=1, batch_size=64, only=last, **kw)
    assert set(exact["layer"]) == {2} and exact["computed"].any()  # the prefilter ran the last layer only
    both = exact.filter(pl.col("computed")).join(approx.select(*KEYS, "method", "estimate"), on=KEYS)
    err = both.with_columns((pl.col("metric") - pl.col("estimate")).abs().alias("err"))
    moved = (both["metric"] - both["corrupt_metric"]).abs().max()
    assert moved > 1e-2  # patching a query or key does change the metric here
    fixed = err.filter(pl.col("method") == "atp*")
    plain = err.filter(pl.col("method") == "atp")
    assert len(fixed) == len(plain) > 0
    assert fixed["err"].max() < 1e-4
    assert plain["err"].max() > 1e-3  # the plain linearisation through the softmax is not exact


def test_planted_head_is_found_by_patching_and_ranked_first_by_attribution():
    """The hand-built model reads only head HEAD: restoring it recovers the clean metric
    exactly, every other head nothing, and attribution ranks it first."""
    model, _tok, head = build_one_head_model("llama")
    assert head == HEAD
    pairs = short_pairs(n=3, length=8, span=(2, 3), seed=1)
    # Answers: the clean prompt's token at the span against the corrupted one's.
    pairs = [Pair(p.pair_id, p.task, p.source, p.kind, p.depth, p.n_closed, p.clean_ids, p.corrupt_ids,
                  int(p.clean_ids[2]), int(p.corrupt_ids[2]), p.span, (), ()) for p in pairs]
    kw = dict(kinds=["head"], directions=["denoising"], corruptions=["counterfactual"], noise_scale=3.0,
              noise_samples=1, seed=0)
    exact = sweep(model, pairs, window=1, batch_size=32, **kw)
    planted = exact.filter((pl.col("layer") == HEAD[0]) & (pl.col("head") == HEAD[1]))
    others = exact.filter((pl.col("layer") != HEAD[0]) | (pl.col("head") != HEAD[1]))
    assert (planted["clean_metric"] - planted["corrupt_metric"]).abs().min() > 0.1
    assert (planted["normalised"] - 1).abs().max() < 1e-4
    assert others["normalised"].abs().max() < 1e-4
    approx = estimate(model, pairs, batch_size=3, **kw)
    top = top_settings(approx, 1)
    assert top == {("head", HEAD[0], HEAD[1], 0)}
