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
from codeinterp.causal.pairs import Pair

BOOT = Bootstrap(100, 0.95, 0)

# Pairs differing at one character; the answer tokens are the two characters there (the
# hand-built model predicts characters seen before). Shared by test_sublayer and test_head_roles.
TEXTS = [("aaaa bbbb", "aaaa bxbb"), ("abcabc ab", "abcxbc ab"), ("(( )) ((", "(( )x (("), ("xyxy yxyx", "xyxy yqyx"),
         ("0101 1010", "0101 1z10"), ("def f(): f", "def g(): f")]


def _pairs(tok, texts, task="t"):
    out = []
    for i, (clean, corrupt) in enumerate(texts):
        a, b = tok(clean, add_special_tokens=False)["input_ids"], tok(corrupt, add_special_tokens=False)["input_ids"]
        at = next(k for k in range(len(a)) if a[k] != b[k])
        out.append(Pair(f"p{i}", task, "s", ")", 1, 0, torch.tensor(a), torch.tensor(b), a[at], b[at], (at, at + 1), (), ()))
    return out


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


def test_study_summary_judges_each_finding_from_the_numbers(tmp_path):
    """Planted tables: confident from layer 4 of 6 at every depth (finding 1 holds), the MLPs
    shown to matter more (2 fails), one head counting closed pairs in a model that closes brackets
    (3 holds); then the same head in a model that never does (3 only partly holds)."""
    from types import SimpleNamespace

    from codeinterp.report.tasks import study_summary

    def lens_rows(good_from, depths=(-1, 1, 2)):
        return pl.DataFrame([{"lens": "logit", "depth": d, "layer": l, "n": 40, "logit_diff": 2.0,
                              "logit_diff_ci_low": 1.0, "logit_diff_ci_high": 3.0, "rank": 0.0,
                              "top1": 0.95 if l >= good_from else 0.2, "top1_ci_low": 0.9 if l >= good_from else 0.1,
                              "top1_ci_high": 1.0 if l >= good_from else 0.3}
                             for d in depths for l in range(7)])

    sub = pl.DataFrame([{"ablation": "zero", "half": h, "layer": -1, "n": 40, "delta": v, "delta_ci_low": v - 0.5,
                         "delta_ci_high": v + 0.5} for h, v in (("attn", 1.0), ("mlp", 3.0), ("attn - mlp", -2.0))])
    roles = pl.DataFrame({"layer": [0, 3], "head": [1, 2], "n": [40, 40], "counting": [False, True],
                          "promotes": [False, True], "count_strength": [0.1, 0.7], "dla": [0.0, 0.5],
                          "dla_ci_low": [-0.1, 0.2], "dla_ci_high": [0.1, 0.8], "rho_n_closed": [0.1, 0.7],
                          "rho_n_closed_ci_low": [-0.2, 0.5], "rho_n_closed_ci_high": [0.3, 0.85],
                          "rho_depth": [0.0, 0.1], "rho_depth_ci_low": [-0.3, -0.2], "rho_depth_ci_high": [0.3, 0.4]})
    paths = {}
    for name, df in (("good", lens_rows(4)), ("never", lens_rows(99)), ("sub", sub), ("roles", roles)):
        paths[name] = tmp_path / f"{name}.parquet"
        df.write_parquet(paths[name])
    ctx = SimpleNamespace(config={"task_lens": {"confident": 0.8}})
    page = study_summary({"head_roles": {("m", "brackets"): paths["roles"], ("weak", "brackets"): paths["roles"]},
                          "task_lens": {("m", "brackets"): paths["good"], ("weak", "brackets"): paths["never"]},
                          "sublayer_ablation": {("m", "brackets"): paths["sub"]}}, ctx)
    m, weak = page.split("<h3>m / brackets</h3>")[1].split("<h3>")[0], page.split("<h3>weak / brackets</h3>")[1]
    assert "1. middle-to-late layers needed: holds</b>: confidently right from layer 4 of 6" in m
    assert "2. attention over MLPs: fails</b>" in m and "the MLPs matter more" in m
    assert "3. counting heads: holds</b>: 1 counting heads on n = 40 pairs: L3H2: ρ with closed 0.7 (95% CI 0.5 to 0.85)" in m
    assert "1. middle-to-late layers needed: fails</b>" in weak and "3. counting heads: partly holds</b>" in weak
    assert "2. attention over MLPs:" not in weak and "<td>weak</td><td>brackets</td><td>fails</td><td>not run</td>" in weak


@pytest.mark.parametrize("n_layers", [6, 30])
def test_task_lens_section_draws_deep_and_shallow_models(tmp_path, n_layers):
    """The task-lens chart labels every layer of a shallow model and lets the axis choose for a
    deep one (SmolLM2's 30 layers once stopped the report: altair refuses values=None)."""
    from codeinterp.report.build import Context
    from codeinterp.report.tasks import lens_section

    rows = [{"lens": "logit", "depth": d, "layer": l, "n": 40, "logit_diff": 2.0, "logit_diff_ci_low": 1.0,
             "logit_diff_ci_high": 3.0, "rank": 0.0, "top1": 0.95 if l >= n_layers - 2 else 0.2,
             "top1_ci_low": 0.9 if l >= n_layers - 2 else 0.1, "top1_ci_high": 1.0}
            for d in (-1, 1) for l in range(n_layers + 1)]
    pl.DataFrame(rows).write_parquet(tmp_path / "lens.parquet")
    page = lens_section({("m", "brackets"): str(tmp_path / "lens.parquet")}, Context({}, {}))
    assert f"confidently right from layer {n_layers - 2} of {n_layers} on" in page
