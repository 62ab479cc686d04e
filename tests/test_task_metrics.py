"""Task accuracy, task lens, sublayer ablation and head roles on answers known in advance."""

import numpy as np
import polars as pl
import pytest
import torch

from archs import ARCHS, build
from codeinterp.access.architectures import layout
from codeinterp.causal.head_roles import head_measures, head_roles
from codeinterp.causal.pairs import logit_diff, make_pair_batch
from codeinterp.causal.sublayer import sublayer_ablation
from codeinterp.causal.task_metrics import first_confident_layer, task_accuracy, task_lens
from codeinterp.uncertainty import Bootstrap
from handbuilt import build_one_head_model
from test_circuit import TEXTS, _pairs

BOOT = Bootstrap(100, 0.95, 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_linearised_norm_parts_add_up(arch):
    lay = layout(build(arch))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, lay.final_norm.weight.shape[0], generator=g) * 3
    part = torch.randn(x.shape, generator=g)
    bias = lay.final_norm.bias if getattr(lay.final_norm, "bias", None) is not None else 0
    with torch.no_grad():
        whole = lay.frozen_norm(x, part) + lay.frozen_norm(x, x - part)
        torch.testing.assert_close(whole, lay.final_norm(x) - bias, atol=1e-5, rtol=1e-5)


def test_last_lens_layer_is_the_output():
    model, tok, _ = build_one_head_model("llama")
    pairs = _pairs(tok, TEXTS)
    acc = task_accuracy(model, pairs, 4, BOOT)
    lens = task_lens(model, pairs, 4, BOOT)
    n = len(layout(model).blocks)
    out = acc.filter((pl.col("level") == "group") & (pl.col("prompt") == "clean") & (pl.col("source") == "all"))
    last = lens.filter((pl.col("layer") == n) & (pl.col("depth") == -1))
    assert abs(out["logit_diff"][0] - last["logit_diff"][0]) < 1e-5
    assert out["top1"][0] == last["top1"][0]
    # Below the planted head's layer nothing reads the prompt: every token scores 0, the lens is flat.
    assert lens.filter((pl.col("layer") <= 1) & (pl.col("depth") == -1))["logit_diff"].abs().max() < 1e-6
    assert first_confident_layer(lens, 0.5) in (None, n)  # nothing below the planted head's output can be right


def test_sublayer_ablation_finds_the_planted_attention():
    model, tok, (layer, head) = build_one_head_model("llama")
    pairs = _pairs(tok, TEXTS)
    table = sublayer_ablation(model, pairs, ["zero"], 6, BOOT)
    per = table.filter(pl.col("layer") >= 0)
    planted = per.filter((pl.col("half") == "attn") & (pl.col("layer") == layer)).row(0, named=True)
    assert abs(planted["logit_diff"]) < 1e-5 and abs(planted["delta"] + planted["intact"]) < 1e-5
    others = per.filter((pl.col("half") != "attn") | (pl.col("layer") != layer))
    assert others["delta"].abs().max() < 1e-6
    diff = table.filter(pl.col("half") == "attn - mlp").row(0, named=True)
    assert diff["delta_ci_low"] > 0  # attention matters more, with an interval


def test_head_attributions_add_up_and_name_the_planted_head():
    model, tok, (layer, head) = build_one_head_model("llama")
    pairs = _pairs(tok, TEXTS)
    m = head_measures(model, pairs, 4)
    batch = make_pair_batch(pairs)
    with torch.no_grad():
        real = logit_diff(model(input_ids=batch.clean, attention_mask=batch.mask).logits, batch).numpy()
    np.testing.assert_allclose(m["dla"].sum((1, 2)) + m["rest"], real, atol=1e-5)
    np.testing.assert_allclose(m["dla"][:, layer, head], real, atol=1e-5)  # all of it through the planted head
    table = head_roles(model, pairs, 4, 2, BOOT)
    promotes = table.filter(pl.col("promotes")).select("layer", "head").rows()
    assert promotes == [(layer, head)]


def test_a_random_model_is_consistent_on_generated_pairs():
    model = build("qwen2")
    from codeinterp.access.models import byte_tokenizer
    from codeinterp.benchmarks.counterfactual import generate
    from codeinterp.benchmarks.task_pairs import tokenise_pairs
    from codeinterp.causal.pairs import read_pairs
    import tempfile, pathlib

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "p.parquet"
        tokenise_pairs(generate({"benchmark": "brackets", "pairs": 3, "max_depth": 3, "seed": 0}, "data"),
                       byte_tokenizer()).write_parquet(path)
        pairs = read_pairs(path)
    acc = task_accuracy(model, pairs, 4, BOOT)
    per = acc.filter(pl.col("level") == "pair")
    assert len(per) == 2 * len(pairs) and per["rank"].min() >= 0
    roles = head_roles(model, pairs, 4, 3, BOOT)
    assert len(roles) == len(layout(model).blocks) * layout(model).n_heads and (roles["n"] == len(pairs)).all()


def test_head_roles_flags_the_head_that_counts_closed_pairs():
    """The hand-built head averages the prompt's token vectors and the unembedding scores a token
    by its match with that average, so along the `)` direction its output grows with the number
    of `)` already in the prompt: with a fixed prompt length it counts the closed pairs."""
    from codeinterp.causal.pairs import Pair

    model, tok, (layer, head) = build_one_head_model("llama")
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    close, filler = ids(")")[0], ids("a")[0]
    pairs = []
    for i in range(24):
        closed, depth = i % 5, 1 + i % 3
        body = "()" * closed + "(" * depth
        clean = "a" * (16 - len(body)) + body
        corrupt = "(" + clean[1:]
        pairs.append(Pair(f"c{i}", "brackets", "hand", ")", depth, closed, torch.tensor(ids(clean)),
                          torch.tensor(ids(corrupt)), close, filler, (0, 1), (), ()))
    table = head_roles(model, pairs, 8, 1, BOOT)
    row = table.filter((pl.col("layer") == layer) & (pl.col("head") == head)).row(0, named=True)
    assert row["counting"] and row["rho_n_closed_ci_low"] > 0.5
    assert table.filter(pl.col("counting")).select("layer", "head").rows() == [(layer, head)]
