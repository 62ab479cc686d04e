"""Representation maps (stage `representation_map`): 2-D maps of code tokens' residual
stream at chosen layers, coloured by what the token is in the code.

Points are the code tokens of the token table (`in_code` with a lexical label) that the
activation cache holds; one seeded sample, stratified by lexical category (each category
keeps its share of the tokens, within rounding), is drawn once and mapped at every layer, so
a token is the same point in every panel. Colourings: lexical category, bracket depth and
indentation level (the last two bucketed at 3+).

Projections: PCA (centred, not scaled: the map shows the directions of largest variance as
the model has them) and UMAP (umap-learn; with a fixed random_state it runs on one thread,
recorded in the settings). Both run with one BLAS thread, so that the coordinates do not
depend on the machine's thread count.

How well a colouring separates in a map: the silhouette of its labels in the 2-D
coordinates, and the accuracy of a k-nearest-neighbour classifier on the coordinates with
folds grouped by problem (tokens of one problem are never both neighbours and test points),
against the majority label's share; its interval is a bootstrap over problems.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

from codeinterp.errors import ConfigError
from codeinterp.uncertainty import MIN_UNITS, Bootstrap

COLOURINGS = ("lexical", "bracket_depth", "indent")
METHODS = ("pca", "umap")
NEIGHBOURS = 15
UMAP_SETTINGS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean", "n_jobs": 1}
TOKEN_COLUMNS = ("target_id", "problem_id", "position", "token_text", "code_line", "in_code", "lexical",
                 "depth_total", "indent_level")


def default_layers(n_blocks: int) -> list[int]:
    """The embeddings, the middle and the last residual layer."""
    return sorted({0, n_blocks // 2, n_blocks})


def resid_layers(sites: list[str]) -> list[int]:
    layers = sorted(int(s.split(".")[1]) for s in sites if s.startswith("resid."))
    if not layers:
        raise ConfigError("activation cache has no resid sites: add resid to activations.sites for representation_map")
    return layers


def check_settings(layers, methods, cached: list[int]) -> list[int]:
    """The layers to map (one line naming the key when a setting is wrong)."""
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"representation_map.methods: unknown method {m!r} (known: {', '.join(METHODS)})")
    if layers is None:
        return default_layers(max(cached))
    missing = [l for l in layers if l not in cached]
    if missing:
        raise ConfigError(f"representation_map.layers: layer {missing[0]} is not in the activation cache "
                          f"(resid.0 to resid.{max(cached)})")
    return sorted(set(int(l) for l in layers))


def _bucket(col: str) -> pl.Expr:
    return (pl.when(pl.col(col).is_null()).then(pl.lit("n/a"))
            .when(pl.col(col) >= 3).then(pl.lit("3+"))
            .otherwise(pl.col(col).cast(pl.Utf8)))


def code_tokens(tokens: pl.DataFrame, cached_rows: pl.DataFrame) -> pl.DataFrame:
    """Code tokens with a lexical label that the cache holds, with the colouring columns."""
    missing = [c for c in TOKEN_COLUMNS if c not in tokens.columns]
    if missing:
        raise ConfigError(f"token table has no {missing[0]!r} column (run token_labels again)")
    keys = cached_rows.select(pl.col("target_id").cast(pl.Utf8), pl.col("position").cast(pl.Int64))
    frame = (tokens.select(TOKEN_COLUMNS).filter(pl.col("in_code") & pl.col("lexical").is_not_null())
             .with_columns(pl.col("target_id").cast(pl.Utf8), pl.col("position").cast(pl.Int64))
             .join(keys, on=["target_id", "position"], how="semi"))
    return frame.select("target_id", "problem_id", "position", "token_text", "code_line", "lexical",
                        _bucket("depth_total").alias("bracket_depth"), _bucket("indent_level").alias("indent"))


def stratified_sample(frame: pl.DataFrame, label: str, max_points: int, seed: int) -> pl.DataFrame:
    """At most `max_points` rows, each label keeping its share (largest remainder), drawn with
    `seed`; rows sorted by (target_id, position) so the result does not depend on input order."""
    frame = frame.sort("target_id", "position")
    if len(frame) <= max_points:
        return frame
    counts = frame[label].value_counts().sort(label)
    share = counts["count"].to_numpy() * max_points / len(frame)
    take = np.floor(share).astype(np.int64)
    extra = np.argsort(-(share - take), kind="stable")[: max_points - int(take.sum())]
    take[extra] += 1
    rng = np.random.default_rng(seed)
    labels = frame[label].to_numpy()
    keep = []
    for value, k in zip(counts[label].to_list(), take):
        where = np.nonzero(labels == value)[0]
        keep.append(rng.choice(where, size=int(k), replace=False))
    return frame[np.sort(np.concatenate(keep))]


def project(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, float | None]:
    """[N, 2] coordinates and, for PCA, the variance fraction of the two components."""
    with threadpool_limits(limits=1):
        if method == "pca":
            pca = PCA(n_components=2, svd_solver="full", random_state=seed)
            xy = pca.fit_transform(x.astype(np.float64))
            return xy, float(pca.explained_variance_ratio_.sum())
        import umap

        # Identical vectors (the embeddings of a repeated token) go in once and share one point:
        # with duplicates in its input UMAP's spectral start is not reproducible even with a
        # fixed random_state (seen on layer 0 of the tiny pipeline: two runs, two maps).
        unique, inverse = np.unique(x.astype(np.float32), axis=0, return_inverse=True)
        reducer = umap.UMAP(n_components=2, random_state=seed, **UMAP_SETTINGS)
        return reducer.fit_transform(unique).astype(np.float64)[inverse.reshape(-1)], None


def separation(xy: np.ndarray, labels: np.ndarray, groups: np.ndarray, boot: Bootstrap) -> dict:
    """Silhouette of the labels in the map, grouped-fold k-NN accuracy (interval over
    problems) and the majority label's share; None where there are too few labels or problems."""
    out = {"silhouette": None, "knn_accuracy": None, "knn_ci_low": None, "knn_ci_high": None,
           "majority_share": None, "n_labels": int(len(np.unique(labels)))}
    _, counts = np.unique(labels, return_counts=True)
    out["majority_share"] = float(counts.max() / counts.sum()) if len(counts) else None
    problems = np.unique(groups)
    if len(counts) < 2 or len(labels) <= len(counts):
        return out
    out["silhouette"] = float(silhouette_score(xy, labels, random_state=0))
    if len(problems) < 2:
        return out
    splits = list(GroupKFold(n_splits=min(5, len(problems))).split(xy, labels, groups))
    knn = KNeighborsClassifier(n_neighbors=min(NEIGHBOURS, min(len(train) for train, _ in splits)))
    pred = cross_val_predict(knn, xy, labels, cv=splits)
    correct = (pred == labels).astype(np.float64)
    out["knn_accuracy"] = float(correct.mean())
    out["knn_ci_low"], out["knn_ci_high"] = _problem_interval(correct, groups, boot)
    return out


def _problem_interval(correct: np.ndarray, groups: np.ndarray, boot: Bootstrap) -> tuple[float | None, float | None]:
    """Percentile interval of the pooled accuracy when problems are resampled."""
    problems, index = np.unique(groups, return_inverse=True)
    if len(problems) < MIN_UNITS:
        return None, None
    hits = np.bincount(index, weights=correct, minlength=len(problems))
    sizes = np.bincount(index, minlength=len(problems)).astype(np.float64)
    draws = np.random.default_rng(boot.seed).integers(0, len(problems), size=(boot.resamples, len(problems)))
    acc = hits[draws].sum(1) / sizes[draws].sum(1)
    alpha = (1 - boot.confidence) / 2
    low, high = np.quantile(acc, [alpha, 1 - alpha])
    return float(low), float(high)


def maps(points: pl.DataFrame, read, layers: list[int], methods: list[str], seed: int,
         boot: Bootstrap) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(points, summary): coordinates of every sampled token per layer and method, and per
    (layer, method, colouring) the separation measures with their sample sizes.
    `read(layer)` gives the [N, D] residuals of `points`' tokens, in order."""
    frames, rows = [], []
    if points.is_empty():
        return pl.DataFrame(), pl.DataFrame()
    groups = points["problem_id"].to_numpy()
    for layer in layers:
        x = np.asarray(read(layer), dtype=np.float32)
        for method in methods:
            xy, variance = project(x, method, seed)
            frames.append(points.with_columns(pl.lit(layer, dtype=pl.Int64).alias("layer"),
                                              pl.lit(method).alias("method"),
                                              pl.Series("x", xy[:, 0]), pl.Series("y", xy[:, 1])))
            for colouring in COLOURINGS:
                rows.append({"layer": layer, "method": method, "colouring": colouring,
                             "explained_variance_2d": variance, "n_points": len(points),
                             "n_targets": points["target_id"].n_unique(), "n_problems": len(np.unique(groups)),
                             **separation(xy, points[colouring].to_numpy(), groups, boot)})
    keys = ["layer", "method", "target_id", "position"]
    table = pl.concat(frames).select(keys + [c for c in frames[0].columns if c not in keys]).sort(keys)
    return table, pl.DataFrame(rows, schema_overrides={"explained_variance_2d": pl.Float64, "silhouette": pl.Float64,
                                                      "knn_accuracy": pl.Float64, "knn_ci_low": pl.Float64,
                                                      "knn_ci_high": pl.Float64, "majority_share": pl.Float64})
