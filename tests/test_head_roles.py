"""head_roles on answers known in advance: the hand-built one-head model (tests/handbuilt.py),
whose every query and key is zero (so every head attends uniformly to the causal prefix) and
whose output is carried by one head copying the prefix mean of the token vectors."""

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from codeinterp.causal.head_roles import head_measures, head_roles
from codeinterp.causal.pairs import Pair, logit_diff, make_pair_batch
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap
from handbuilt import build_one_head_model
from test_task_metrics import TEXTS, _pairs

BOOT = Bootstrap(200, 0.95, 0)


def _bracket_pairs(tok, n=24, length=16):
    """Fixed-length prompts 'aaa..' + '()' x closed + '(' x depth: the clean answer is ')', the
    counterfactual token 'a'; positions of the open and of the closed brackets recorded."""
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    close, filler = ids(")")[0], ids("a")[0]
    pairs = []
    for i in range(n):
        closed, depth = i % 5, 1 + i % 3
        body = "()" * closed + "(" * depth
        clean = "a" * (length - len(body)) + body
        start = length - len(body)
        assert len(ids(clean)) == length  # one token per character
        pairs.append(Pair(f"c{i:02d}", "brackets", "hand", ")", depth, closed, torch.tensor(ids(clean)),
                          torch.tensor(ids("(" + clean[1:])), close, filler, (0, 1),
                          tuple(range(start + 2 * closed, length)), tuple(range(start, start + 2 * closed))))
    return pairs


def test_head_attributions_add_up_to_the_logit_difference():
    model, tok, (layer, head) = build_one_head_model("llama")
    pairs = [dataclasses.replace(p, task="brackets") for p in _pairs(tok, TEXTS)]
    m = head_measures(model, pairs, 4)
    batch = make_pair_batch(pairs)
    with torch.no_grad():
        real = logit_diff(model(input_ids=batch.clean, attention_mask=batch.mask).logits, batch).numpy()
    # The parts of the linearised readout add up to it; here the norm has no bias, so it is the model's.
    np.testing.assert_allclose(m["dla"].sum((1, 2)) + m["rest"], m["logit_diff"], atol=1e-5)
    np.testing.assert_allclose(m["logit_diff"], real, atol=1e-5)
    np.testing.assert_allclose(m["dla"][:, layer, head], real, atol=1e-5)  # all of it through the planted head
    assert np.abs(np.delete(m["dla"].reshape(len(pairs), -1), layer * m["dla"].shape[2] + head, 1)).max() < 1e-6
    table = head_roles(model, pairs, 4, 2, BOOT)
    assert table.filter(pl.col("promotes")).select("layer", "head").rows() == [(layer, head)]
    assert (table["n"] == len(pairs)).all()


def test_attention_to_open_and_closed_brackets_is_the_uniform_share():
    model, tok, _ = build_one_head_model("llama")
    pairs = _bracket_pairs(tok, n=10)
    m = head_measures(model, pairs, 4)
    for i, p in enumerate(pairs):  # uniform over the 16 positions the last one sees
        np.testing.assert_allclose(m["attn_open"][i], len(p.open_positions) / p.length, atol=1e-6)
        np.testing.assert_allclose(m["attn_closed"][i], len(p.closed_positions) / p.length, atol=1e-6)


def test_head_roles_flags_the_head_that_counts_closed_pairs():
    """Along the ')' minus 'a' direction the planted head's output is about the prompt's share of
    ')' minus its share of 'a': with a fixed length it grows with the closed pairs. The prompts
    hold more 'a' than ')', so it counts without promoting the right closer (the study's "may
    not"). No other head writes anything, so none is flagged."""
    model, tok, (layer, head) = build_one_head_model("llama")
    table = head_roles(model, _bracket_pairs(tok), 8, 1, BOOT)
    row = table.filter((pl.col("layer") == layer) & (pl.col("head") == head)).row(0, named=True)
    assert row["counting"] and row["rho_n_closed_ci_low"] > 0.5
    assert not row["promotes"] and row["dla_ci_high"] < 0
    assert table.filter(pl.col("counting")).select("layer", "head").rows() == [(layer, head)]


def test_head_roles_refuses_other_tasks():
    model, tok, _ = build_one_head_model("llama")
    with pytest.raises(ConfigError, match="head_roles: pairs of task t; the counting study needs brackets"):
        head_roles(model, _pairs(tok, TEXTS), 4, 2, BOOT)


def test_chance_level_of_the_largest_rho_holds_its_family_wise_rate():
    """Heads whose outputs are noise unrelated to the count: the largest |rho| among 50 heads
    exceeds the permutation threshold in about 5% of data sets (here at most 4 of 20), while
    a head that follows the count passes it."""
    from codeinterp.causal.head_roles import max_null
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    exceed = 0
    for seed in range(20):
        x = rng.integers(0, 5, 40).astype(float)
        Y = rng.normal(size=(40, 50))
        threshold = max_null(x, Y, Bootstrap(300, 0.95, seed))
        rho = np.array([spearmanr(x, Y[:, g])[0] for g in range(50)])
        exceed += np.abs(rho).max() > threshold
        assert 0.3 < threshold < 0.7
    assert exceed <= 4
    follows = np.column_stack([x + rng.normal(scale=0.5, size=40), Y])
    assert spearmanr(x, follows[:, 0])[0] > max_null(x, follows, Bootstrap(300, 0.95, 0))


def test_the_planted_bracket_counter_is_the_counting_head_that_promotes(tmp_path):
    """tests/planted_counter.py: head L0H2 writes the still-open count and reads it directly into
    `)` over the newline; its twin L0H3 has the same z (shared KV head) but no output weights,
    so only L0H2 may be credited."""
    from codeinterp.causal.pairs import read_pairs
    from planted_counter import PLANTED_HEAD, build_counter_model, open_pairs, write_pairs

    model, tok = build_counter_model()
    pairs = read_pairs(write_pairs(open_pairs(tok, n=24), tmp_path / "pairs.parquet"))
    table = head_roles(model, pairs, 8, 3, BOOT)
    layer, head = PLANTED_HEAD
    row = table.filter((pl.col("layer") == layer) & (pl.col("head") == head)).row(0, named=True)
    assert row["counting"] and row["promotes"] and row["rho_depth_ci_low"] > 0.5
    assert table.filter(pl.col("counting") | pl.col("promotes")).select("layer", "head").rows() == [PLANTED_HEAD]
