"""Exact activation patching and its attribution estimate, on answers known in advance."""

import json
import logging

import polars as pl
import pytest
import torch

from archs import build
from codeinterp.access.architectures import layout
from codeinterp.access.models import byte_tokenizer
from codeinterp.benchmarks.counterfactual import generate
from codeinterp.benchmarks.task_pairs import tokenise_pairs
from codeinterp.causal.attribution import compare, estimate
from codeinterp.causal.pairs import Pair, read_pairs
from codeinterp.causal.patching import sweep
from codeinterp.uncertainty import Bootstrap

KW = dict(kinds=["resid", "attn", "mlp", "head"], directions=["denoising", "noising"],
          corruptions=["counterfactual", "noise"], noise_scale=3.0, noise_samples=2, seed=0)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    table = tokenise_pairs(generate({"benchmark": "brackets", "pairs": 4, "max_depth": 4, "seed": 0}, "data"),
                           byte_tokenizer())
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    table.write_parquet(path)
    return read_pairs(path)[:6]


def test_last_residual_restores_the_source_run_exactly(pairs):
    """The metric reads only the last position of the last residual: restoring it there gives the
    clean run's metric (denoising) or the corrupted one's (noising); earlier positions of that
    layer change nothing."""
    model = build("llama")
    table = sweep(model, pairs, window=1, batch_size=16, **KW)
    n = len(layout(model).blocks)
    last = table.filter((pl.col("site") == "resid") & (pl.col("layer") == n))
    at_end = last.filter(pl.col("from_end") == -1)
    for direction, want in (("denoising", "clean_metric"), ("noising", "corrupt_metric")):
        rows = at_end.filter(pl.col("direction") == direction)
        assert len(rows) == 2 * len(pairs)
        assert (rows["metric"] - rows[want]).abs().max() < 1e-4
        other = last.filter((pl.col("from_end") != -1) & (pl.col("direction") == direction))
        target = "corrupt_metric" if direction == "denoising" else "clean_metric"
        assert (other["metric"] - other[target]).abs().max() < 1e-4
    # Positions before the differing span are filled without a forward, with the target's metric.
    skipped = table.filter(~pl.col("computed"))
    assert len(skipped) and (skipped["normalised"].drop_nans().is_in([0.0, 1.0])).all()


def test_patching_is_a_no_op_when_clean_equals_corrupted(pairs):
    model = build("qwen2")
    same = [Pair(p.pair_id, p.task, p.source, p.kind, p.depth, p.n_closed, p.clean_ids, p.clean_ids.clone(),
                 p.clean_token, p.corrupt_token, p.span, p.open_positions, p.closed_positions) for p in pairs[:3]]
    table = sweep(model, same, window=3, batch_size=16, **{**KW, "corruptions": ["counterfactual"]})
    assert (table["metric"] - table["clean_metric"]).abs().max() < 1e-4
    assert table["normalised"].is_nan().all()  # nothing to recover: no normalised value


def test_attribution_equals_exact_where_the_model_is_linear(pairs):
    """With the final norm removed the readout is linear in the last residual and in the last
    MLP's output, so the first-order estimate is exact there."""
    model = build("llama")
    model.model.norm = torch.nn.Identity()
    kw = {**KW, "kinds": ["resid", "mlp"]}
    exact = sweep(model, pairs, window=1, batch_size=16, **kw)
    approx = estimate(model, pairs, batch_size=4, **kw)
    keys = ["pair_id", "corruption", "direction", "site", "layer", "position"]
    both = exact.join(approx.select(*keys, pl.col("estimate")), on=keys)
    n = len(layout(model).blocks)
    linear = both.filter(((pl.col("site") == "resid") & (pl.col("layer") == n)) |
                         ((pl.col("site") == "mlp") & (pl.col("layer") == n - 1)))
    nonlinear = both.filter((pl.col("site") == "resid") & (pl.col("layer") == 0) & pl.col("computed"))
    assert (nonlinear["metric"] - nonlinear["estimate"]).abs().max() > 1e-3  # the test can tell
    assert len(linear) > 0
    assert (linear["metric"] - linear["estimate"]).abs().max() < 1e-3
    table = compare(exact, approx, 3, Bootstrap(100, 0.95, 0))
    assert set(table["site"]) == {"resid", "mlp"} and table["spearman"].is_between(-1, 1).all()


def test_report_sections_state_their_n_and_draw_the_scatter(tmp_path):
    """Both sections open with a finding that carries the number of pairs, and the attribution
    section plots the estimate against the exact values, AtP* beside AtP."""
    from test_attribution import short_pairs

    from codeinterp.causal.patching import summarise
    from codeinterp.report import patching as report
    from codeinterp.report.build import Context

    model = build("llama")
    pairs = short_pairs(n=5)
    kw = dict(kinds=["resid", "head_q"], directions=["denoising"], corruptions=["counterfactual"], noise_scale=3.0,
              noise_samples=1, seed=0)
    boot = Bootstrap(100, 0.95, 0)
    exact = summarise(sweep(model, pairs, window=1, batch_size=64, **kw), boot)
    approx = estimate(model, pairs, batch_size=5, **kw)
    paths = {name: tmp_path / f"{name}.parquet" for name in ("exact", "approx", "compare")}
    exact.write_parquet(paths["exact"])
    approx.write_parquet(paths["approx"])
    compare(exact.filter(pl.col("level") == "pair"), approx, 5, boot).write_parquet(paths["compare"])
    ctx = Context({"bootstrap": {"resamples": 100, "confidence": 0.95}, "seed": 0}, {})
    ctx.side_inputs = {"attribution_patching": {("m", "d"): paths["approx"]}}
    ctx.all_inputs = {"activation_patching": {("m", "d"): paths["exact"]}}
    first = report.section({("m", "d"): paths["exact"]}, ctx)
    second = report.attribution_section({("m", "d"): paths["compare"]}, ctx)
    assert "n = 5 pairs" in first and "Over n = 5 pairs" in second
    assert "<td>atp*</td>" in second
    titles = [json.dumps(spec) for _, spec in ctx.charts.specs]
    assert any("estimate against exact" in t and "atp*" in t for t in titles)
    # At most `limit` points, shared by the sites and methods (here resid/atp, head_q/atp, head_q/atp*).
    small = report._scatter(paths["exact"], paths["approx"], "m / d", limit=30).to_dict()
    points = [r for ds in small["datasets"].values() for r in ds]
    assert 0 < len(points) <= 30
    assert {(r["site"], r["method"]) for r in points} == {("resid", "atp"), ("head_q", "atp"), ("head_q", "atp*")}


def test_a_chart_of_more_than_5000_rows_is_embedded():
    """altair refuses more than 5,000 rows by default; a real model's chart can hold more."""
    import altair as alt

    from codeinterp.report.charts import Charts

    charts = Charts()
    data = pl.DataFrame({"x": list(range(6000)), "y": [float(i % 7) for i in range(6000)]})
    charts.add(alt.Chart(data).mark_point().encode(x="x:Q", y="y:Q"))
    (_, spec), = charts.specs
    assert sum(len(ds) for ds in spec["datasets"].values()) == 6000


def test_long_causal_stages_log_their_progress_with_the_time_left(pairs, caplog):
    """Patching, its estimate and the circuit stage report progress as they go (one line per
    step when there are ten or fewer), ending with every step done."""
    from codeinterp.causal.circuit import discover

    caplog.set_level(logging.INFO, logger="codeinterp")
    model = build("llama")
    sweep(model, pairs[:4], window=1, batch_size=2, kinds=["resid", "head"], directions=["denoising"],
          corruptions=["counterfactual", "noise"], noise_scale=3.0, noise_samples=2, seed=0)
    estimate(model, pairs[:4], batch_size=2, kinds=["resid"], directions=["denoising"],
             corruptions=["counterfactual"], noise_scale=3.0, noise_samples=1, seed=0)
    discover(model, pairs[:4], steps=2, target=0.8, sizes=3, batch_size=2, boot=Bootstrap(50, 0.95, 0))
    text = [r.getMessage() for r in caplog.records]

    def progress_of(name):
        return [t for t in text if t.startswith(name + ": ")]

    # 4 pairs in 2 batches x (1 counterfactual + 2 noise samples) x 1 direction x 2 sites = 12 sweeps
    sweeps = progress_of("activation_patching")
    assert sweeps[-1].startswith("activation_patching: 12/12 site sweeps (100%)") and len(sweeps) <= 12
    assert any("left" in t for t in sweeps[:-1])
    assert progress_of("attribution_patching")[-1].startswith("attribution_patching: 2/2 pair batches (100%)")
    assert progress_of("circuit EAP-IG")[-1].startswith("circuit EAP-IG: 4/4 gradient steps (100%)")
    assert progress_of("circuit patching")[-1].endswith("elapsed")
