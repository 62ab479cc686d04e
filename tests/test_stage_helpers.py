"""What the workflow scripts share: resumable-state keys, id columns, per-head summaries."""

import json

import polars as pl

from codeinterp.access.scoring import Target
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import head_summary, resume_key, with_ids


class Wildcards:
    model, dataset = "m", "d"


class Smk:
    wildcards = Wildcards()


def test_resume_key_changes_with_targets_model_and_settings(tmp_path):
    (tmp_path / "facts.json").write_text(json.dumps({"n_layers": 2}))
    targets = [Target("a", (1, 2, 3, 4), 2, 4)]
    key = resume_key(targets, tmp_path, {"iterations": 2})
    assert key == resume_key(list(targets), tmp_path, {"iterations": 2})
    assert key != resume_key([Target("a", (1, 2, 3, 5), 2, 4)], tmp_path, {"iterations": 2})  # other token ids
    assert key != resume_key([Target("a", (1, 2, 3, 4), 1, 4)], tmp_path, {"iterations": 2})  # other scored span
    assert key != resume_key(targets, tmp_path, {"iterations": 3})
    (tmp_path / "facts.json").write_text(json.dumps({"n_layers": 3}))
    assert key != resume_key(targets, tmp_path, {"iterations": 2})


def test_with_ids_keeps_an_empty_table_empty():
    assert with_ids(pl.DataFrame(), Smk()).height == 0
    out = with_ids(pl.DataFrame({"x": [1, 2]}), Smk())
    assert out.columns == ["model", "dataset", "x"] and out.height == 2


def test_head_summary_says_what_it_averages():
    ids = list("abcde")
    deltas = pl.DataFrame({
        "layer": [0] * 10, "head": [0] * 5 + [1] * 5, "ablation": ["zero"] * 10, "target_id": ids * 2,
        "base_loss": [1.0, 2.0, 1.0, 2.0, 1.5] * 2, "ablated_loss": [2.0, 3.0, 2.0, 3.0, 2.5] + [1.0, 2.0, 1.0, 2.0, 1.5],
        "delta": [1.0] * 5 + [0.0] * 5,
    })
    targets = pl.DataFrame({"target_id": ids, "origin": ["canonical"] * 5, "scored": ["body"] * 5,
                            "code_start": [3, 5, 1, 1, 1], "code_end": [10, 9, 2, 2, 2]})
    out = head_summary(deltas, targets, Bootstrap(200, 0.95, 0))
    r0, r1 = out.row(0, named=True), out.row(1, named=True)
    assert (r0["delta"], r0["ci_low"], r0["ci_high"], r0["excludes_zero"]) == (1.0, 1.0, 1.0, True)
    assert (r1["delta"], r1["excludes_zero"]) == (0.0, False)
    assert r0["n_targets"] == 5 and r0["n_scored_tokens"] == 14 and r0["base_loss"] == 1.5
    assert (r0["target_origin"], r0["scored_span"]) == ("canonical", "body")
