import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score

from codeinterp.access import models
from codeinterp.analyses import failure
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap

PASS_TOKEN, FAIL_TOKEN = 65, 66  # the token that ends the prompt decides the planted label
BOOT = Bootstrap(resamples=200, confidence=0.95, seed=0)


@pytest.fixture(scope="module")
def tiny():
    return models.build_tiny_random({"architecture": "llama", "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                     "hidden_size": 64, "seed": 0})


def planted(n_problems=16, per_problem=8, seed=0):
    """Generations and verdicts whose outcome is the prompt's last token: passed iff it is PASS_TOKEN."""
    rng = np.random.default_rng(seed)
    gens, verdicts = [], []
    for p in range(n_problems):
        for s in range(per_problem):
            passed = bool(rng.integers(0, 2))
            prompt = rng.integers(97, 123, size=rng.integers(5, 12)).tolist() + [PASS_TOKEN if passed else FAIL_TOKEN]
            gens.append({"problem_id": f"p{p:02d}", "sample_index": s, "prompt_ids": prompt,
                         "completion_ids": rng.integers(97, 123, size=rng.integers(2, 8)).tolist()})
            verdicts.append({"problem_id": f"p{p:02d}", "sample_index": s,
                             "status": "passed" if passed else ["failed", "error", "timeout"][s % 3]})
    return pl.DataFrame(gens), pl.DataFrame(verdicts)


def run(model, gens, verdicts, folds=4):
    return failure.failure_probe(model, gens, verdicts, folds=folds, batch_size=16, seed=0, boot=BOOT, pad_id=0)


def test_planted_signal_found_at_embeddings(tiny):
    model, _ = tiny
    table = run(model, *planted())
    row = table.filter((pl.col("feature") == "resid") & (pl.col("position") == "prompt_end") & (pl.col("layer") == 0))
    assert row["auc"][0] > 0.95
    assert row["auc_ci_low"][0] > 0.8 and row["auc_ci_high"][0] <= 1.0
    assert row["n_samples"][0] == 128 and row["n_problems"][0] == 16 and row["note"][0] is None
    # Prompt lengths are drawn independently of the label: the baseline has nothing to find.
    base = table.filter(pl.col("feature") == "prompt_length")
    assert abs(base["auc"][0] - 0.5) < 0.2
    assert len(table) == 2 + 2 * (model.config.num_hidden_layers + 1)


def test_shuffled_labels_stay_at_chance(tiny):
    # 128 samples, 64 per class: the AUC's standard deviation under no signal is ~0.05; the
    # tolerance is four of them per row and two for the mean over rows.
    model, _ = tiny
    gens, verdicts = planted()
    status = verdicts["status"].to_numpy().copy()
    np.random.default_rng(1).shuffle(status)
    table = run(model, gens, verdicts.with_columns(status=pl.Series(status)))
    resid = table.filter(pl.col("feature") == "resid")
    assert (resid["auc"] - 0.5).abs().max() < 0.2
    assert abs(resid["auc"].mean() - 0.5) < 0.1


def test_folds_never_split_a_problem():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(11)], 7)
    y = rng.integers(0, 2, size=len(groups))
    fold = failure.fold_ids(y, groups, 5, seed=3)
    assert set(fold.tolist()) == set(range(5))
    frame = pl.DataFrame({"g": groups, "f": fold})
    assert (frame.group_by("g").agg(pl.col("f").n_unique())["f"] == 1).all()
    assert (failure.fold_ids(y, groups, 5, seed=3) == fold).all()


def test_weighted_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=60), 1)  # rounded: ties must count one half
    y = rng.integers(0, 2, size=60)
    w = rng.integers(0, 4, size=(3, 60)).astype(float)
    got = failure.weighted_auc(scores, y, np.vstack([np.ones(60), w]))
    assert got[0] == pytest.approx(roc_auc_score(y, scores))
    for i in range(3):
        assert got[i + 1] == pytest.approx(roc_auc_score(y, scores, sample_weight=w[i]))


def test_features_match_the_models_forward(tiny):
    model, _ = tiny
    gens, verdicts = planted(n_problems=2, per_problem=3)
    samples = failure.labelled_samples(gens, verdicts)
    feats = failure.sample_features(model, samples, batch_size=4, pad_id=0)
    for i, r in enumerate(samples.iter_rows(named=True)):
        p, c = r["prompt_ids"], r["completion_ids"]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        logp = torch.log_softmax(out.logits[0].float(), -1)
        want = logp[len(p) - 1 : len(p) + len(c) - 1].gather(-1, torch.tensor(c)[:, None]).mean()
        assert feats.mean_logprob[i] == pytest.approx(float(want), abs=1e-4)
        assert feats.prompt_length[i] == len(p)
        for layer in range(model.config.num_hidden_layers):  # the last hidden state HF returns is normed
            hs = out.hidden_states[layer][0]
            np.testing.assert_allclose(feats.resid[i, 0, layer], hs[len(p) - 1].numpy(), atol=1e-5)
            np.testing.assert_allclose(feats.resid[i, 1, layer], hs[len(p) + len(c) - 1].numpy(), atol=1e-5)


def test_one_class_or_too_few_problems_give_a_note(tiny):
    model, _ = tiny
    gens, verdicts = planted(n_problems=6, per_problem=4)
    table = run(model, gens, verdicts.with_columns(status=pl.lit("failed")))
    assert table["auc"].null_count() == len(table) and "only one outcome" in table["note"][0]
    table = run(model, gens, verdicts, folds=8)
    assert table["auc"].null_count() == len(table) and "fewer than failure_probe.folds" in table["note"][0]
    assert table["n_passed"][0] == int((verdicts["status"] == "passed").sum())


def test_missing_verdict_is_refused(tiny):
    model, _ = tiny
    gens, verdicts = planted(n_problems=3, per_problem=2)
    with pytest.raises(ConfigError, match="no verdict, e.g. problem p01 sample 1"):
        run(model, gens, verdicts.filter(~((pl.col("problem_id") == "p01") & (pl.col("sample_index") == 1))))


def test_same_inputs_same_table(tiny):
    model, _ = tiny
    gens, verdicts = planted(n_problems=8, per_problem=4)
    assert run(model, gens, verdicts).equals(run(model, gens, verdicts))


def test_report_section_states_the_best_layer_and_the_baselines(tiny, tmp_path):
    from codeinterp.report import failure as section
    from codeinterp.report.charts import Charts

    class Ctx:
        charts = Charts()

    model, _ = tiny
    table = run(model, *planted())
    path = tmp_path / "failure_probe.parquet"
    table.write_parquet(path)
    html = section.section({("tiny", "mbpp"): str(path)}, Ctx())
    best = table.filter((pl.col("feature") == "resid") & (pl.col("position") == "prompt_end")).sort(
        "auc", "layer", descending=[True, False]).row(0, named=True)
    assert f"best layer ({best['layer']}) reaches AUC {best['auc']:.3g}" in html
    assert "n = 128 samples of 16 problems" in html and len(Ctx.charts.specs) == 1
    empty = run(model, *planted(n_problems=6, per_problem=4), folds=8)
    empty.write_parquet(path)
    assert "No AUC: 6 problems, fewer than failure_probe.folds" in section.section({("tiny", "mbpp"): str(path)}, Ctx())


def test_duplicate_samples_are_refused(tiny):
    model, _ = tiny
    gens, verdicts = planted(n_problems=3, per_problem=2)
    with pytest.raises(ConfigError, match="verdicts table: some"):
        run(model, gens, pl.concat([verdicts, verdicts.head(1)]))


def test_passes_in_one_problem_give_a_note(tiny):
    # Grouped folds put that problem's samples in one fold, whose training part then has no
    # pass: its constant scores pooled with the others' would make an AUC of nothing.
    model, _ = tiny
    gens, verdicts = planted(n_problems=8, per_problem=4)
    only = pl.when(pl.col("problem_id") == "p03").then(pl.col("status")).otherwise(pl.lit("failed"))
    verdicts = verdicts.with_columns(status=only)
    assert (verdicts["status"] == "passed").sum() > 0
    table = run(model, gens, verdicts)
    assert table["auc"].null_count() == len(table)
    assert "1 of 4 folds would train on one outcome only (passed samples in 1 problem(s)" in table["note"][0]
    assert table["n_problems_passed"][0] == 1
