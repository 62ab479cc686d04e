"""Linear probes with control tasks: planted signals are found, controls stay at chance, folds
keep problems apart, the projection test reads the model's own loss, runs are byte-identical."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from archs import LAYERS, build, random_targets
from codeinterp.analyses import probe_controls as pc
from codeinterp.analyses import probes
from codeinterp.analyses.activations import ActivationCache, write_cache
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import write_parquet
from handbuilt import HEAD_DIM, N_HEADS, N_LAYERS, build_one_head_model, one_head_targets

BOOT = Bootstrap(resamples=200, seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny forwards on a shared machine: more threads only contend (9x slower measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
LEXICAL = ["identifier", "keyword", "operator"]
STAGE_LEXICAL = LEXICAL + ["bracket_close", "newline_indent"]


def token_frame(n_problems=20, per_problem=60, seed=0, n_types=150):
    """Synthetic token table: code tokens with random token types and independent labels."""
    rng = np.random.default_rng(seed)
    n = n_problems * per_problem
    problem = np.repeat(np.arange(n_problems), per_problem)
    return pl.DataFrame({
        "target_id": [f"t{p:02d}" for p in problem], "problem_id": [f"p{p:02d}" for p in problem],
        "position": np.tile(np.arange(per_problem), n_problems), "token_id": rng.integers(0, n_types, n),
        "in_code": np.ones(n, dtype=bool), "lexical": [LEXICAL[i] for i in rng.integers(0, 3, n)],
        "depth_total": rng.integers(0, 5, n), "indent_level": rng.integers(0, 3, n),
        "in_string": rng.random(n) < 0.3, "ast_node": [f"N{i}" for i in rng.integers(0, 4, n)],
    })


def planted(frame, column, dim=24, gain=4.0, seed=1):
    """Residuals where one direction per class (or one direction times the value) carries the
    label over unit noise; the other directions hold noise of very different scales, and the
    whole space is rotated so that no coordinate is special. Returns (x, directions [dim, dim])."""
    rng = np.random.default_rng(seed)
    values = frame[column].to_numpy()
    scales = rng.uniform(0.1, 10, dim)
    scales[:4] = 1.0
    z = rng.standard_normal((len(frame), dim)) * scales
    if values.dtype.kind in "iu":
        z[:, 0] += values * gain
    else:
        for i, c in enumerate(sorted(set(values.tolist()))):
            z[values == c, i] += gain
    rot = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    return (z @ rot).astype(np.float32), rot.T  # column i of rot.T: coordinate i's direction


def run(frame, x, props, folds=5):
    return probes.probe_layers(lambda l: x, [0], frame, props, folds, seed=0, boot=BOOT, family="trained")


def test_planted_category_found_control_at_chance():
    frame = token_frame()
    x, _ = planted(frame, "lexical")
    row = run(frame, x, ["lexical"]).row(0, named=True)
    assert row["accuracy"] > 0.97
    # The features say nothing about token identity: the control probe can only guess.
    assert row["control_accuracy"] < row["majority_accuracy"] + 0.1
    assert row["selectivity"] > 0.5
    assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
    assert row["selectivity_ci_low"] > 0.4
    assert (row["n_tokens"], row["n_problems"], row["n_classes"], row["folds"]) == (1200, 20, 3, 5)


def test_shuffled_labels_fall_to_majority():
    frame = token_frame()
    x, _ = planted(frame, "lexical")
    shuffled = frame.with_columns(pl.Series("lexical", np.random.default_rng(5).permutation(frame["lexical"].to_numpy())))
    row = run(shuffled, x, ["lexical"]).row(0, named=True)
    assert abs(row["accuracy"] - row["majority_accuracy"]) < 0.06
    assert row["accuracy"] < 0.45


def test_planted_ordinal_depth_r2():
    frame = token_frame()
    x, _ = planted(frame, "depth_total", gain=8.0)  # R^2 = 8^2 var(depth) / (that + 1) = 0.992
    row = run(frame, x, ["bracket_depth"]).row(0, named=True)
    assert row["kind"] == "ordinal"
    assert row["r2"] > 0.98 and row["accuracy"] > 0.9
    assert row["control_r2"] < 0.05
    assert row["selectivity"] > 0.6


def test_folds_keep_problems_apart():
    frame = token_frame(n_problems=13, per_problem=7)
    groups = frame["problem_id"].to_numpy()
    folds = probes.fold_of(groups, 4, seed=3)
    assert len(np.unique(folds)) == 4
    for f in range(4):
        assert not set(groups[folds == f]) & set(groups[folds != f])
    # More folds than problems: one problem per fold.
    assert len(np.unique(probes.fold_of(groups[:21], 5, seed=0))) == 3


def test_control_labels_are_a_function_of_token_type():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 400, 20000)
    y = rng.choice([0, 1, 2], size=20000, p=[0.6, 0.3, 0.1])
    c = probes.control_labels(ids, y, seed=7)
    for i in np.unique(ids):
        assert len(np.unique(c[ids == i])) == 1
    # Types draw from the empirical distribution: per-type label shares near 0.6 / 0.3 / 0.1.
    per_type = np.array([c[ids == i][0] for i in np.unique(ids)])
    assert np.allclose(np.bincount(per_type, minlength=3) / len(per_type), [0.6, 0.3, 0.1], atol=0.07)
    assert np.array_equal(c, probes.control_labels(ids, y, seed=7))
    assert not np.array_equal(c, probes.control_labels(ids, y, seed=8))


def test_memorised_token_identity_has_low_selectivity():
    """A label that is a function of the token type is learnt by the control too: a probe on
    one-hot token identities is accurate but not selective."""
    frame = token_frame(n_types=8)
    ids = frame["token_id"].to_numpy()
    frame = frame.with_columns(pl.Series("lexical", [LEXICAL[i % 3] for i in ids]))
    x = np.eye(8, dtype=np.float32)[ids]
    row = run(frame, x, ["lexical"]).row(0, named=True)
    assert row["accuracy"] > 0.97 and row["control_accuracy"] > 0.97
    assert abs(row["selectivity"]) < 0.03


def test_ast_node_folds_rare_classes_into_other():
    frame = token_frame().with_columns(pl.Series("ast_node", [f"N{i % 20}" for i in range(1200)]))
    _, y, classes = probes.encode(frame, "ast_node")
    assert len(classes) == probes.AST_CLASSES + 1 and "other" in classes
    assert (np.array(classes)[y] == "other").sum() == 8 * 60


def test_probe_direction_recovered_in_residual_basis():
    frame = token_frame()
    x, dirs = planted(frame, "in_string", gain=3.0)
    task = probes.Task(frame, "in_string", np.zeros(len(frame), dtype=np.int64), seed=0)
    basis = probes.probe_directions(x, task, seed=0)
    assert basis.shape == (24, 1)
    # The class means differ along dirs[:, 1] - dirs[:, 0]; the noise is anisotropic, so the
    # optimal weight is that direction whitened by the noise covariance (up to scale).
    cov = np.cov(x - np.where(frame["in_string"].to_numpy()[:, None], dirs[:, 1] * 3, dirs[:, 0] * 3).astype(np.float32),
                 rowvar=False)
    want = np.linalg.solve(cov, dirs[:, 1] - dirs[:, 0])
    cos = abs(basis[:, 0] @ want) / np.linalg.norm(want)
    assert cos > 0.95


def test_bad_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"^probes\.properties"):
        probes.check_settings({"properties": ["colour"]}, 4)
    with pytest.raises(ConfigError, match=r"^probes\.layers"):
        probes.check_settings({"layers": [5]}, 4)
    assert probes.check_settings({"layers": None}, 2) == (list(probes.PROPERTIES), [0, 1, 2])


@pytest.fixture(scope="module")
def one_head():
    return build_one_head_model("llama")


def test_removing_a_dead_direction_changes_nothing_and_the_read_subspace_everything(one_head):
    """The hand-built model's residual is [token | copy | unused]: the unused coordinates are
    exactly zero at every layer, the unembedding reads only the copy subspace."""
    model, tok, _ = one_head
    targets = one_head_targets(tok, 3)
    hidden = N_HEADS * HEAD_DIM
    base = pc.position_losses(model, targets, 2)
    tokens = pl.DataFrame({"target_id": [t.target_id for t in targets for _ in t.input_ids],
                           "position": [p for t in targets for p in range(len(t.input_ids))],
                           "in_code": [t.code_start <= p < t.code_end for t in targets for p in range(len(t.input_ids))]})
    dead = np.eye(hidden)[:, [2 * HEAD_DIM + 5]]
    row = pc.projection_test(model, targets, tokens, "lexical", N_LAYERS, dead, base, 2, 0, BOOT)
    assert row["loss_change"] == 0.0 and row["rank"] == 1
    assert row["random_loss_change"] != 0.0
    copy = np.eye(hidden)[:, HEAD_DIM : 2 * HEAD_DIM]
    row = pc.projection_test(model, targets, tokens, "lexical", N_LAYERS, copy, base, 2, 0, BOOT)
    # With the copy subspace gone every logit is 0: the loss is log(vocab) at every position.
    assert math.isclose(row["base_loss"] + row["loss_change"], math.log(model.config.vocab_size), rel_tol=1e-5)
    assert row["loss_change"] > row["random_loss_change_max"] > 0
    assert row["n_tokens"] == sum(t.code_end - t.code_start for t in targets) and row["n_targets"] == 3


def test_matter_positions_are_the_positions_before_the_token():
    tokens = pl.DataFrame({"target_id": ["a"] * 5, "position": range(5), "in_code": [True] * 5,
                           "in_string": [False, True, True, False, False],
                           "lexical": ["identifier", "bracket_open", "string", "bracket_close", "newline_indent"]})
    assert pc.matter_positions(tokens, "bracket_depth")["position"].to_list() == [2]
    assert pc.matter_positions(tokens, "indent")["position"].to_list() == [3]
    assert pc.matter_positions(tokens, "in_string")["position"].to_list() == [0, 1]


@pytest.fixture(scope="module")
def tiny():
    return build("llama")  # 3 layers; random_targets' token ids fit its vocabulary


def test_random_model_residuals_are_its_hidden_states(tiny):
    model = tiny
    fresh = pc.random_init_model(model, seed=3)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    again = pc.random_init_model(model, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), again.parameters()))
    targets = random_targets(3, lengths=(13, 24, 19))
    frame = pl.DataFrame({"target_id": ["r2", "r0", "r1", "r2"], "position": [18, 0, 7, 3]})
    got = pc.residuals_at(fresh, targets, frame, [0, 1], batch_size=2)
    by_id = {t.target_id: t for t in targets}
    for i, (tid, pos) in enumerate(frame.iter_rows()):
        with torch.no_grad():
            hs = fresh(input_ids=torch.tensor([by_id[tid].input_ids]), output_hidden_states=True).hidden_states
        for l in (0, 1):
            assert np.allclose(got[l][i], hs[l][0, pos].numpy(), atol=1e-5)


def stage_inputs(model, tmp_path):
    targets = random_targets(6, lengths=(20, 26, 23, 30))
    write_cache(model, targets, tmp_path / "cache", sites=["resid"], positions="code", dtype="float32",
                shard_tokens=50, batch_size=2)
    rng = np.random.default_rng(0)
    rows = []
    for i, t in enumerate(targets):
        for p in range(len(t.input_ids)):
            code = t.code_start <= p < t.code_end
            rows.append({"target_id": t.target_id, "problem_id": f"p{i}", "position": p, "token_id": t.input_ids[p],
                         "in_code": code, "lexical": STAGE_LEXICAL[rng.integers(5)] if code else None,
                         "depth_total": int(rng.integers(3)) if code else None,
                         "indent_level": int(rng.integers(2)) if code else None,
                         "in_string": bool(rng.random() < 0.4) if code else None,
                         "ast_node": f"N{rng.integers(3)}" if code else None})
    return targets, pl.DataFrame(rows), ActivationCache(tmp_path / "cache")


def test_stage_is_byte_identical_across_runs(tiny, tmp_path):
    model = tiny
    targets, tokens, cache = stage_inputs(model, tmp_path)
    settings = {"properties": list(probes.PROPERTIES), "layers": [1, 3], "folds": 3, "max_tokens": 1000,
                "random_model": True, "projection_test": True}
    out = []
    for k in range(2):
        table, proj = pc.run_stage(model, targets, tokens, cache, settings, 0, BOOT, 2)
        write_parquet(table, tmp_path / f"p{k}.parquet")
        write_parquet(proj, tmp_path / f"j{k}.parquet")
        out.append(((tmp_path / f"p{k}.parquet").read_bytes(), (tmp_path / f"j{k}.parquet").read_bytes()))
    assert out[0] == out[1]
    assert sorted(table["family"].unique()) == ["random_init", "trained"]
    assert len(table) == 2 * 2 * 5 and sorted(proj["property"]) == sorted(probes.PROPERTIES)
    n_code = sum(t.code_end - t.code_start for t in targets)
    assert (table["n_tokens"] == n_code).all() and (table["n_problems"] == 6).all()
    assert table["accuracy_ci_low"].is_not_null().all()
    with pytest.raises(ConfigError, match=r"^probes\.layers"):
        pc.run_stage(model, targets, tokens, cache, {**settings, "layers": [LAYERS + 1]}, 0, BOOT, 2)


def test_report_section_states_the_best_layer(tiny, tmp_path):
    from codeinterp.report.build import Context
    from codeinterp.report.probes import accuracy_frame, section

    model = tiny
    targets, tokens, cache = stage_inputs(model, tmp_path)
    settings = {"properties": ["lexical", "indent"], "layers": [0, 2], "folds": 2, "max_tokens": 1000,
                "random_model": True, "projection_test": True}
    table, proj = pc.run_stage(model, targets, tokens, cache, settings, 0, BOOT, 2)
    write_parquet(table, tmp_path / "out" / "probes.parquet")
    write_parquet(proj, tmp_path / "out" / "projection.parquet")
    ctx = Context({}, {})
    page = section({("m", "d"): str(tmp_path / "out" / "probes.parquet")}, ctx)
    best = probes.best_layers(table)
    for prop in ("lexical", "indent"):
        assert f"{prop}: most selective at layer {best[prop]}," in page
    assert "projecting its rank-" in page and page.count("<table>") == 1
    assert len(ctx.charts.specs) == 1
    # Four series per property: probe, control, majority, random-init.
    assert accuracy_frame(table).group_by("property").len()["len"].to_list() == [4 * 2, 4 * 2]


def test_position_losses_are_the_full_forward_losses(tiny):
    """Logits kept only at scored positions, batches cut after the code: the same losses as a
    full forward of each target alone."""
    model = tiny
    targets = random_targets(4, lengths=(20, 26, 23, 30))
    got = pc.position_losses(model, targets, 3)
    for t in targets:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([t.input_ids])).logits[0]
        pos = torch.arange(t.code_start - 1, t.code_end - 1)
        want = torch.nn.functional.cross_entropy(logits[pos], torch.tensor(t.input_ids[t.code_start : t.code_end]),
                                                 reduction="none")
        mine = got.filter(pl.col("target_id") == t.target_id).sort("position")
        assert mine["position"].to_list() == pos.tolist()
        assert np.allclose(mine["loss"].to_numpy(), want.numpy(), atol=1e-5)
