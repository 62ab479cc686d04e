import numpy as np
import polars as pl
import pytest
import torch

from codeinterp.analyses import lens
from codeinterp.analyses import tuned_lens as tl
from codeinterp.access.scoring import Target, targets_from_frame
from codeinterp.benchmarks.targets import make_target, token_span
from codeinterp.uncertainty import Bootstrap


def targets_for(tok):
    rows = [
        make_target(tok, "a", "<|im_start|>user\nadd<|im_end|>\n", "def add(a, b):\n    return a + b\n", "```"),
        make_target(tok, "b", "x = ", "[1, (2, 3)]"),
    ]
    return targets_from_frame(pl.DataFrame(rows))


def test_last_layer_equals_model_output(tiny):
    model, tok = tiny
    targets = targets_for(tok)
    tokens = lens.layer_lens(model, targets, batch_size=2, pad_id=tok.pad_token_id)
    assert set(tokens["lens"]) == {"logit"} and set(tokens["split"]) == {"all"}
    n_layers = model.config.num_hidden_layers
    assert sorted(tokens["layer"].unique()) == list(range(n_layers + 1))
    for t in targets:
        ids = torch.tensor([t.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, t.code_start - 1 : t.code_end - 1].float()
        logp = torch.log_softmax(logits, -1)
        want_ce = -logp.gather(-1, ids[0, t.code_start : t.code_end, None])[:, 0]
        want_h = -(logp.exp() * logp).sum(-1)
        got = tokens.filter((pl.col("target_id") == t.target_id) & (pl.col("layer") == n_layers)).sort("position")
        assert got["position"].to_list() == list(range(t.code_start, t.code_end))
        assert got["cross_entropy"].to_list() == pytest.approx(want_ce.tolist(), abs=1e-4)
        assert got["entropy"].to_list() == pytest.approx(want_h.tolist(), abs=1e-4)
        assert got["kl_to_final"].abs().max() < 1e-5
        assert got["top1_agree"].all()
        assert got["rank"].to_list() == (logp > logp.gather(-1, ids[0, t.code_start : t.code_end, None])).sum(-1).tolist()


def test_intermediate_layer_uses_final_norm(tiny_models):
    model, tok = tiny_models["llama"]
    t = targets_for(tok)[1]
    tokens = lens.layer_lens(model, [t], batch_size=1)
    ids = torch.tensor([t.input_ids])
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, t.code_start - 1 : t.code_end - 1]
        logp = torch.log_softmax(model.lm_head(model.model.norm(h)).float(), -1)
    want = -logp.gather(-1, ids[0, t.code_start : t.code_end, None])[:, 0]
    got = tokens.filter(pl.col("layer") == 1).sort("position")["cross_entropy"].to_list()
    assert got == pytest.approx(want.tolist(), abs=1e-4)


def test_summary_is_mean_of_target_means():
    tokens = pl.DataFrame({
        "target_id": ["a", "a", "a", "b"], "layer": [0, 0, 0, 0], "position": [1, 2, 3, 1], "token_id": [0] * 4,
        "entropy": [1.0, 2.0, 3.0, 10.0], "cross_entropy": [0.0] * 4, "rank": [0, 4, 2, 0],
        "top1_correct": [True, False, False, True], "top1_agree": [True] * 4, "kl_to_final": [0.0] * 4,
    })
    s = lens.layer_summary(tokens)
    assert s["entropy"].to_list() == [pytest.approx(6.0)]
    assert s["top1_accuracy"].to_list() == [pytest.approx((1 / 3 + 1) / 2)]
    assert s["rank"].to_list() == [pytest.approx((2 + 0) / 2)]


def test_token_span_maps_characters_to_tokens():
    offsets = [(0, 3), (3, 5), (5, 9), (9, 10)]
    assert token_span(offsets, 3, 9) == (1, 3)
    with pytest.raises(ValueError):
        token_span(offsets, 20, 30)


def test_code_span_tokens_decode_to_the_code(tiny):
    _, tok = tiny
    row = make_target(tok, "x", "<|im_start|>assistant\n```python\n", "def f():\n    return 1\n", "```")
    assert tok.decode(row["input_ids"][row["code_start"] : row["code_end"]]) == "def f():\n    return 1\n"


def test_tuned_rows_on_heldout_targets_only(tiny_models):
    model, tok = tiny_models["llama"]
    targets = targets_for(tok)
    n = model.config.num_hidden_layers
    d = model.config.hidden_size
    moved = tl.Translator(d)
    with torch.no_grad():
        moved.linear.bias.fill_(0.5)
    translators = {0: tl.Translator(d), 1: moved}  # layer 0: the identity; layer 2 untrained
    tokens = lens.layer_lens(model, targets, 2, tok.pad_token_id, translators, heldout={"b"})
    tuned = tokens.filter(pl.col("lens") == "tuned")
    assert set(tuned["target_id"]) == {"b"} and set(tuned["split"]) == {"heldout"}
    assert sorted(tuned["layer"].unique()) == [0, 1, n]
    held = tokens.filter((pl.col("lens") == "logit") & (pl.col("split") == "heldout"))
    assert set(held["target_id"]) == {"b"} and sorted(held["layer"].unique()) == list(range(n + 1))
    every = tokens.filter((pl.col("split") == "all") & (pl.col("target_id") == "b")).drop("split")
    assert held.drop("split").equals(every)
    stats = ["entropy", "cross_entropy", "rank", "kl_to_final"]
    for layer, same in ((0, True), (1, False), (n, True)):
        a = tuned.filter(pl.col("layer") == layer).select(stats)
        b = held.filter(pl.col("layer") == layer).select(stats)
        close = a["rank"].equals(b["rank"]) and bool(np.allclose(a.drop("rank").to_numpy(), b.drop("rank").to_numpy(), atol=1e-5))
        assert close is same, layer
    assert tuned.filter(pl.col("layer") == n)["kl_to_final"].abs().max() < 1e-5
    again = lens.layer_lens(model, targets, 2, tok.pad_token_id, translators, heldout={"b"})
    assert again.equals(tokens)


def test_segments_and_outcomes():
    tokens = pl.DataFrame({"target_id": ["a"] * 4 + ["b"], "position": [3, 5, 6, 9, 5]})
    table = pl.DataFrame({"target_id": ["a", "b"], "answer_start": [4, 2], "all_start": [6, 3], "all_end": [9, 7],
                          "outcome": ["passed", "failed"]})
    got = lens.label_segments(tokens, table)
    assert got["segment"].to_list() == ["other", "reasoning", "code", "other", "code"]
    assert got["outcome"].to_list() == ["passed"] * 4 + ["failed"]
    bare = lens.label_segments(tokens, table.drop("answer_start", "outcome"))
    assert bare["segment"].to_list() == ["other", "other", "code", "other", "code"]
    assert set(bare["outcome"]) == {"all"}


def synthetic_tokens(n_targets=6):
    """Targets whose code tokens have entropy 1 and reasoning tokens entropy 3; passed targets
    have cross-entropy 0, failed 2."""
    rows = []
    for i in range(n_targets):
        outcome = "passed" if i % 2 else "failed"
        for pos, seg in enumerate(["reasoning", "code", "code", "code"]):
            rows.append({"target_id": f"t{i}", "lens": "logit", "split": "all", "layer": 0, "position": pos,
                         "token_id": 0, "entropy": 1.0 if seg == "code" else 3.0,
                         "cross_entropy": 0.0 if outcome == "passed" else 2.0, "rank": 0, "top1_correct": True,
                         "top1_agree": True, "kl_to_final": 0.0, "segment": seg, "outcome": outcome})
    return pl.DataFrame(rows)


def test_layer_table_per_segment_and_outcome():
    table = lens.layer_table(synthetic_tokens(), Bootstrap(200, 0.95, 0))

    def one(segment, outcome):
        return table.filter((pl.col("segment") == segment) & (pl.col("outcome") == outcome)).row(0, named=True)

    assert one("all", "all")["entropy"] == pytest.approx(1.5) and one("all", "all")["n_targets"] == 6
    assert one("all", "all")["n_tokens"] == 24
    assert one("code", "all")["entropy"] == pytest.approx(1.0) and one("code", "all")["n_tokens"] == 18
    assert one("reasoning", "all")["entropy"] == pytest.approx(3.0)
    assert one("all", "passed")["cross_entropy"] == pytest.approx(0.0) and one("all", "passed")["n_targets"] == 3
    assert one("all", "failed")["cross_entropy"] == pytest.approx(2.0)
    assert one("code", "failed")["n_tokens"] == 9
    assert len(table) == 1 + 2 + 2 + 4
    single = lens.layer_table(synthetic_tokens().with_columns(segment=pl.lit("code"), outcome=pl.lit("all")),
                              Bootstrap(200, 0.95, 0))
    assert single[["segment", "outcome"]].rows() == [("all", "all")]


def layer_rows(lens_name, split, kl, n=6, segment="all", outcome="all"):
    """A layer table curve with the given KL per layer (other statistics fixed)."""
    rows = []
    for layer, k in enumerate(kl):
        row = {"lens": lens_name, "split": split, "segment": segment, "outcome": outcome, "layer": layer,
               "n_targets": n, "n_tokens": 10 * n, "n_scored_tokens": 60, "target_origin": "canonical",
               "scored_span": "body"}
        for stat, v in {"entropy": 2.0, "cross_entropy": 5.0 - layer, "rank": 3.0, "top1_accuracy": 0.5,
                        "top1_agreement": 0.5, "kl_to_final": k}.items():
            row.update({stat: v, f"{stat}_ci_low": v * 0.9, f"{stat}_ci_high": v * 1.1})
        rows.append(row)
    return pl.DataFrame(rows)


class FakeContext:
    def __init__(self):
        from codeinterp.report.charts import Charts

        self.charts = Charts()

    def about(self, m, d):
        return f"{m} / {d}"


def test_report_names_layers_where_the_tuned_lens_is_worse(tmp_path):
    from codeinterp.report import lens as section

    logit = layer_rows("logit", "heldout", [4.0, 2.0, 1.0, 0.0])
    good = layer_rows("tuned", "heldout", [1.0, 0.1, 0.05, 0.0])
    bad = layer_rows("tuned", "heldout", [1.0, 3.0, 0.05, 0.0])
    assert "every one of the 3 trained layers" in section.tuned_finding(logit, good)
    assert "from layer 1" in section.tuned_finding(logit, good)  # 0.1 <= a tenth of 4
    text = section.tuned_finding(logit, bad)
    assert "NOT below" in text and "1 of 3" in text and "layers 1" in text
    table = pl.concat([layer_rows("logit", "all", [4.0, 2.0, 1.0, 0.0]), logit, bad,
                       layer_rows("logit", "all", [4.0, 2.0, 1.0, 0.0], n=3, outcome="passed"),
                       layer_rows("logit", "all", [3.0, 2.0, 1.0, 0.0], n=3, outcome="failed")])
    table.write_parquet(tmp_path / "layers.parquet")
    ctx = FakeContext()
    html = section.section({("m", "d"): tmp_path / "layers.parquet"}, ctx)
    assert "NOT below" in html and "per outcome" in html and "per segment" not in html
    assert "Cross-entropy of the true token goes from 5 nats" in html
    assert len(ctx.charts.specs) == 2


def test_report_training_table(tmp_path):
    from codeinterp.report import lens as section
    from codeinterp.analyses.tuned_lens import training_summary

    rows = []
    for p in range(6):
        for split in ("train", "heldout"):
            for layer in (0, 1):
                worse = split == "heldout" and layer == 1
                rows.append({"problem_id": f"{split}{p}", "layer": layer, "split": split,
                             "logit_kl": 1.0, "tuned_kl": 1.5 if worse else 0.25})
    summary = training_summary(pl.DataFrame(rows), Bootstrap(200, 0.95, 0))
    held = summary.filter(pl.col("split") == "heldout").sort("layer")
    assert held["tuned_below_logit"].to_list() == [True, False]
    assert held["kl_change"].to_list() == pytest.approx([-0.75, 0.5])
    assert held["n_problems"].to_list() == [6, 6]
    summary.write_parquet(tmp_path / "t.parquet")
    html = section.training_section({("m", "d"): tmp_path / "t.parquet"}, FakeContext())
    assert "above the logit lens at layers 1" in html
