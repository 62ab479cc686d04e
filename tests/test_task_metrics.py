"""Task accuracy and task lens on answers known in advance (sublayer ablation: test_sublayer.py;
head roles: test_head_roles.py)."""

import numpy as np
import polars as pl
import pytest
import torch

from archs import ARCHS, build
from codeinterp.access.architectures import layout
from codeinterp.causal.head_roles import head_roles
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
