"""Weight-space comparison (codeinterp.analyses.compare_weights): known answers on tiny models
of every architecture — a model against itself, a copy with one head replaced, a copy whose
norm gains and matrices were rescaled against each other, and models that differ in size."""

import copy

import polars as pl
import pytest
import torch

from archs import ARCHS, build
from codeinterp.access.architectures import adapter_for, head_out_weights, layout
from codeinterp.access.weights import norm_gain
from codeinterp.analyses.compare_weights import compare_weights
from codeinterp.errors import ConfigError

RATIOS = ("cosine", "read_overlap", "write_overlap")


def _table(a, b):
    return compare_weights(a, b, "a", "b", {"singular_vectors": 4})[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_model_against_itself_is_identical_everywhere(arch):
    model = build(arch)
    table = _table(model, copy.deepcopy(model))
    assert set(table["level"]) == {"head", "mlp", "block"}
    assert set(table["circuit"]) == {"OV", "QK", "MLP_in", "MLP_out"}
    for column in RATIOS:
        assert (table[column] - 1).abs().max() < 1e-9, column
    assert table["rel_diff"].max() < 1e-6
    lay = layout(model)
    assert table.filter(pl.col("level") == "head").height == 2 * len(lay.blocks) * lay.n_heads


def _replace_head(model, layer: int, head: int, seed: int = 1):
    """Random W_O slice and W_Q rows for one query head: its OV and QK circuits change, and
    nothing that its KV-group twins read."""
    g = torch.Generator().manual_seed(seed)
    attn = getattr(layout(model).blocks[layer], adapter_for(model).attn)
    d = layout(model).head_dim
    with torch.no_grad():
        w_o = head_out_weights(model, layer)  # a view of o_proj's weight
        w_o[head].copy_(torch.randn(w_o[head].shape, generator=g) * w_o.std())
        q = attn.q_proj.weight
        q[head * d:(head + 1) * d].copy_(torch.randn(d, q.shape[1], generator=g) * q.std())


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_a_replaced_head_and_only_it_drops(arch):
    model = build(arch)
    other = copy.deepcopy(model)
    _replace_head(other, layer=1, head=2)
    heads = _table(model, other).filter(pl.col("level") == "head")
    changed = heads.filter((pl.col("layer") == 1) & (pl.col("head") == 2))
    assert changed["cosine"].abs().max() < 0.5  # random against trained-like: far from 1
    rest = heads.filter(~((pl.col("layer") == 1) & (pl.col("head") == 2)))
    assert (rest["cosine"] - 1).abs().max() < 1e-6
    assert (rest["read_overlap"] - 1).abs().max() < 1e-6
    block = _table(model, other).filter((pl.col("level") == "block") & (pl.col("layer") == 1))
    assert block["min_head"].to_list() == [2, 2]


def _rescale_norm(norm, factor: float):
    """Multiply a norm's gain by `factor`, whatever its weight convention (g = w or g = 1 + w)."""
    width = norm.weight.shape[0]
    before = norm_gain(norm, width)
    with torch.no_grad():
        if torch.allclose(before, norm.weight.float(), atol=1e-5):
            norm.weight.mul_(factor)
            if getattr(norm, "bias", None) is not None:  # LayerNorm: the whole output scales
                norm.bias.mul_(factor)
        else:  # Gemma: gain = 1 + weight
            norm.weight.copy_(factor * (1 + norm.weight) - 1)
    assert torch.allclose(norm_gain(norm, width), factor * before, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma", "gemma3", "qwen3", "phi3", "gpt2"])
def test_norm_gains_scaled_by_2_and_matrices_by_half_compare_as_identical(arch):
    model = build(arch)
    other = copy.deepcopy(model)
    ad = adapter_for(other)
    for block in layout(other).blocks:
        attn, mlp = getattr(block, ad.attn), getattr(block, ad.mlp)
        _rescale_norm(getattr(block, ad.pre_attn_norm), 2.0)
        _rescale_norm(getattr(block, ad.pre_mlp_norm), 2.0)
        with torch.no_grad():
            if ad.qkv == "split":
                for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                    proj.weight.mul_(0.5)
            elif ad.qkv == "fused":
                attn.qkv_proj.weight.mul_(0.5)
            else:  # GPT-2's fused Conv1D
                attn.c_attn.weight.mul_(0.5)
            for name in ("gate_proj", "up_proj", "gate_up_proj", "c_fc"):
                if hasattr(mlp, name):
                    getattr(mlp, name).weight.mul_(0.5)
    table = _table(model, other)
    for column in RATIOS:
        assert (table[column] - 1).abs().max() < 1e-6, column
    assert table["rel_diff"].max() < 1e-5
    # The copy's matrices themselves are half as large: only folding makes them compare equal.
    def raw(m):
        return next(p for n, p in m.named_parameters() if ".mlp." in n and ("up" in n or "c_fc" in n))

    assert torch.allclose(raw(other), 0.5 * raw(model)) and not torch.allclose(raw(other), raw(model))


def test_models_of_other_sizes_or_kinds_are_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        _table(build("llama"), build("qwen2"))
    assert "architecture" in str(err.value) and "\n" not in str(err.value)
    from codeinterp.access.models import build_tiny_random

    small = build_tiny_random({"architecture": "llama", "n_layers": 2, "hidden_size": 64, "n_heads": 4, "n_kv_heads": 2})[0]
    wide = build_tiny_random({"architecture": "llama", "n_layers": 2, "hidden_size": 96, "n_heads": 4, "n_kv_heads": 2})[0]
    with pytest.raises(ConfigError, match="differ in head_dim|differ in hidden_size"):
        _table(small, wide)


def test_unrelated_models_are_far_apart():
    # Two random initialisations: cosines near 0 and subspace overlaps near k / D, far from 1.
    table = _table(build("llama", seed=0), build("llama", seed=1)).filter(pl.col("level") == "head")
    assert table["cosine"].abs().max() < 0.5
    assert table["read_overlap"].max() < 0.7


def test_report_section_names_the_most_changed_head(tmp_path):
    from codeinterp.report.build import Context
    from codeinterp.report.compare_weights import section

    model = build("llama")
    other = copy.deepcopy(model)
    _replace_head(other, layer=2, head=1)
    path = tmp_path / "weights.parquet"
    _table(model, other).write_parquet(path)
    ctx = Context({"seed": 0}, {})
    html = section({("a vs b", "all"): path}, ctx)
    assert "the head that changed most is L2H1" in html
    assert "rotary" in html and "trained from the" in html  # the two caveats
    assert html.count("class='finding'") == 1


def test_rule_compares_two_configured_models(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    tiny = {"architecture": "llama", "n_layers": 2, "hidden_size": 64, "n_heads": 4, "n_kv_heads": 2}
    cfg = {"models": {"m0": {"source": "tiny-random", "tiny": {**tiny, "seed": 0}},
                      "m1": {"source": "tiny-random", "tiny": {**tiny, "seed": 1}}},
           "datasets": {"mbpp": {"split": "test", "limit": 1}},
           "comparisons": {"weights": [["m0", "m1"]], "singular_vectors": 3}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = "results/comparisons/m0__m1/weights.parquet"
    proc = subprocess.run([sys.executable, "-m", "snakemake", out, "-s", str(repo / "Snakefile"), "-d", str(tmp_path),
                           "--cores", "1", "--configfile", str(tmp_path / "c.yaml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pl.read_parquet(tmp_path / out)
    assert table["singular_vectors"].max() == 3 and set(table["model_a"]) == {"m0"}
    assert table.filter(pl.col("level") == "head")["cosine"].abs().max() < 0.5  # two random initialisations


@pytest.mark.parametrize("shape", [(12, 40), (40, 12)])
def test_gram_singular_vectors_span_the_svd_subspaces(shape):
    from codeinterp.analyses.compare_weights import _dense, _overlap

    M = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(M, full_matrices=False)
    norm, left, right = _dense(M, 5)
    assert abs(norm - float(s.norm())) < 1e-9
    assert abs(_overlap(left, u[:, :5]) - 1) < 1e-9 and abs(_overlap(right, vh[:5].t()) - 1) < 1e-9


def test_cosines_near_one_keep_their_distance_from_one(tmp_path):
    from codeinterp.report.build import Context
    from codeinterp.report.compare_weights import fmt_cosine, section

    assert fmt_cosine(0.99984) == "0.999840" and fmt_cosine(0.5) == "0.5" and fmt_cosine(1.0) == "1"
    model = build("llama")
    other = copy.deepcopy(model)
    with torch.no_grad():  # a fine-tune's kind of change: every weight moves a little
        for p in other.parameters():
            p.mul_(1 + 1e-3 * torch.randn_like(p))
    path = tmp_path / "weights.parquet"
    _table(model, other).write_parquet(path)
    html = section({("a vs b", "all"): path}, Context({"seed": 0}, {}))
    finding = html.split("class='finding'>")[1].split("</p>")[0]
    assert "cosine is 1 " not in finding and "range 1 to" not in finding and "cosine 0.99" in finding
    assert "1 - cosine" in html
