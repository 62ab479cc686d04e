import numpy as np
import polars as pl
import pytest

from codeinterp.analyses import representation as rep
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import write_parquet

BOOT = Bootstrap(resamples=200, confidence=0.95, seed=0)


def token_frame(labels, n_problems=10, seed=0):
    """A token table of code tokens, labels in the given order, spread over problems."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    problem = np.arange(n) % n_problems
    return pl.DataFrame({
        "target_id": [f"t{p:02d}" for p in problem], "problem_id": [f"p{p:02d}" for p in problem],
        "position": np.arange(n, dtype=np.int64), "token_text": [f"tok{i}" for i in range(n)],
        "code_line": [f"line {i}" for i in range(n)], "in_code": [True] * n, "lexical": list(labels),
        "depth_total": rng.integers(0, 5, size=n), "indent_level": rng.integers(0, 4, size=n),
    })


def planted_clusters(n=400, d=32, seed=0):
    """Two lexical categories whose residuals sit around two centres 8 noise-SDs apart."""
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(n) < 0.5, "keyword", "identifier")
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=(n, d)) + np.outer((labels == "keyword") * 8.0, direction)
    points = rep.code_tokens(token_frame(labels), token_frame(labels).select("target_id", "position"))
    return points, x.astype(np.float32)


def test_planted_clusters_separate_in_the_pca_map():
    points, x = planted_clusters()
    table, summary = rep.maps(points, lambda layer: x, [3], ["pca"], seed=0, boot=BOOT)
    lex = summary.filter(pl.col("colouring") == "lexical").row(0, named=True)
    assert lex["silhouette"] > 0.5
    assert lex["knn_accuracy"] > 0.95 and lex["knn_accuracy"] > lex["majority_share"] + 0.3
    assert lex["knn_ci_low"] <= lex["knn_accuracy"] <= lex["knn_ci_high"]
    assert lex["n_points"] == 400 and lex["n_problems"] == 10
    # Bracket depth was drawn independently of the residuals: no better than chance.
    depth = summary.filter(pl.col("colouring") == "bracket_depth").row(0, named=True)
    assert depth["silhouette"] < 0.1 and depth["knn_accuracy"] < depth["majority_share"] + 0.15
    assert table.columns[:4] == ["layer", "method", "target_id", "position"]
    assert {"x", "y", "token_text", "code_line", "lexical", "bracket_depth", "indent"} <= set(table.columns)
    assert len(table) == 400 and 0 < lex["explained_variance_2d"] <= 1


def test_noise_does_not_separate():
    rng = np.random.default_rng(1)
    labels = np.where(rng.random(400) < 0.5, "keyword", "identifier")
    frame = token_frame(labels)
    points = rep.code_tokens(frame, frame)
    _, summary = rep.maps(points, lambda layer: rng.normal(size=(400, 32)), [0], ["pca"], seed=0, boot=BOOT)
    lex = summary.filter(pl.col("colouring") == "lexical").row(0, named=True)
    assert abs(lex["silhouette"]) < 0.1 and abs(lex["knn_accuracy"] - 0.5) < 0.1


def test_sample_is_stratified_and_seeded():
    labels = ["identifier"] * 500 + ["operator"] * 300 + ["keyword"] * 150 + ["number"] * 50
    frame = token_frame(labels)
    got = rep.stratified_sample(frame, "lexical", 101, seed=7)
    assert len(got) == 101
    counts = dict(got["lexical"].value_counts().iter_rows())
    for label in set(labels):
        share = labels.count(label) * 101 / len(labels)
        assert np.floor(share) <= counts[label] <= np.ceil(share)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    assert rep.stratified_sample(shuffled, "lexical", 101, seed=7).equals(got)
    assert not rep.stratified_sample(frame, "lexical", 101, seed=8).equals(got)
    assert len(rep.stratified_sample(frame, "lexical", 5000, seed=7)) == 1000


def test_tables_are_byte_identical(tmp_path):
    points, x = planted_clusters(n=200)
    paths = []
    for run in range(2):
        table, summary = rep.maps(points, lambda layer: x + layer, [0, 2], ["pca"], seed=0, boot=BOOT)
        for name, df in (("points", table), ("summary", summary)):
            paths.append(tmp_path / f"{name}{run}.parquet")
            write_parquet(df, paths[-1])
    assert paths[0].read_bytes() == paths[2].read_bytes() and paths[1].read_bytes() == paths[3].read_bytes()


def test_code_tokens_keeps_cached_code_tokens_and_buckets_labels():
    frame = token_frame(["keyword", "identifier", "operator", "number"]).with_columns(
        in_code=pl.Series([True, True, False, True]), depth_total=pl.Series([0, 4, 1, None]),
        indent_level=pl.Series([None, 1, 2, 3]))
    cached = frame.filter(pl.col("position") != 1).select("target_id", "position")
    got = rep.code_tokens(frame, cached)
    assert got["position"].to_list() == [0, 3]  # 1 is not cached, 2 is not code
    assert got["bracket_depth"].to_list() == ["0", "n/a"] and got["indent"].to_list() == ["n/a", "3+"]
    with pytest.raises(ConfigError, match="no 'lexical' column"):
        rep.code_tokens(frame.drop("lexical"), cached)


def test_settings_are_checked():
    assert rep.check_settings(None, ["pca"], list(range(31))) == [0, 15, 30]
    assert rep.check_settings([4, 2, 4], ["pca", "umap"], list(range(6))) == [2, 4]
    with pytest.raises(ConfigError, match="representation_map.layers: layer 9"):
        rep.check_settings([9], ["pca"], list(range(6)))
    with pytest.raises(ConfigError, match="representation_map.methods"):
        rep.check_settings(None, ["tsne"], list(range(6)))
    with pytest.raises(ConfigError, match="add resid to activations.sites"):
        rep.resid_layers(["head.0", "mlp.1"])
    assert rep.resid_layers(["resid.0", "resid.2", "resid.1", "attn.0"]) == [0, 1, 2]


@pytest.mark.slow
def test_umap_separates_planted_clusters_reproducibly():
    points, x = planted_clusters(n=300)
    first, summary = rep.maps(points, lambda layer: x, [1], ["umap"], seed=0, boot=BOOT)
    again, _ = rep.maps(points, lambda layer: x, [1], ["umap"], seed=0, boot=BOOT)
    lex = summary.filter(pl.col("colouring") == "lexical").row(0, named=True)
    assert lex["silhouette"] > 0.5 and lex["explained_variance_2d"] is None
    assert first.equals(again)


def test_report_section_opens_with_the_measured_separation(tmp_path):
    from codeinterp.report import representation as section
    from codeinterp.report.charts import Charts

    class Ctx:
        charts = Charts()

    points, x = planted_clusters()
    table, summary = rep.maps(points, lambda layer: x * (1 + layer), [0, 4], ["pca"], seed=0, boot=BOOT)
    write_parquet(table, tmp_path / "points.parquet")
    write_parquet(summary, tmp_path / "summary.parquet")
    html = section.section({("tiny", "mbpp"): str(tmp_path / "points.parquet")}, Ctx())
    last = summary.filter((pl.col("layer") == 4) & (pl.col("colouring") == "lexical")).row(0, named=True)
    assert f"accuracy {last['knn_accuracy']:.3g} (95% CI" in html and "n = 400 tokens of 10 problems" in html
    spec = Ctx.charts.specs[0][1]
    assert spec["params"][0]["name"] == "colour_by" and len(Ctx.charts.specs) == 1


def test_umap_of_repeated_vectors_is_the_same_in_every_process():
    # Layer 0 holds token embeddings, repeated for every repeated token: UMAP's spectral start
    # then varied from process to process (a seeded run differed from the next one).
    import subprocess
    import sys

    code = ("import hashlib, numpy as np\n"
            "from codeinterp.analyses.representation import project\n"
            "base = np.random.default_rng(0).normal(size=(60, 32)).astype(np.float32)\n"
            "x = base[np.random.default_rng(1).integers(0, 60, size=624)]\n"
            "xy, _ = project(x, 'umap', 0)\n"
            "assert np.array_equal(xy[np.all(x == x[0], axis=1)], np.repeat(xy[:1], int(np.all(x == x[0], axis=1).sum()), 0))\n"
            "print(hashlib.sha256(xy.tobytes()).hexdigest())\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    assert runs[0].stdout.split()[-1] == runs[1].stdout.split()[-1]
