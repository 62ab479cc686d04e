"""Functional comparison of two models (rule compare_models): any pair, also across architectures.

Per benchmark dataset both models were analysed on:
- **top-k overlap** of the heads that matter, by exact ablation (the configured kind: per
  target, the loss rise when the head is removed) and by Taylor score (per target |dL/dmask|):
  Jaccard of the two top-k sets and Spearman's rho over all heads, where the head grids
  match (same layers x heads); across architectures head (l, h) of one model is not head
  (l, h) of the other, so only `depth_overlap` is given there: the overlap (histogram
  intersection, 1 = same) of where the two top-k sets sit in relative depth, in ten bins.
  Intervals are a seeded bootstrap over targets, **paired** (one resample of target ids
  for both models) when both models have the same targets, independent otherwise; the
  `resampling` column says which.
- per head: its mean score, rank, whether it is in the top k, how often it is in the top k
  over the bootstrap (`top_k_frequency`), and, where grids match, whether it matters in
  both models, in one only, or in neither.
- lens curves side by side on relative depth (layer / number of blocks), pass@k side by
  side, and for the generated tasks the two circuits (edges kept by each, shared edges).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from codeinterp.uncertainty import MIN_UNITS, Bootstrap

DEPTH_BINS = 10

OVERLAP_SCHEMA = {
    "dataset": pl.Utf8, "ranking": pl.Utf8, "k": pl.Int64, "grids_match": pl.Boolean, "resampling": pl.Utf8,
    "n_targets_a": pl.Int64, "n_targets_b": pl.Int64, "jaccard": pl.Float64, "jaccard_ci_low": pl.Float64,
    "jaccard_ci_high": pl.Float64, "spearman": pl.Float64, "spearman_ci_low": pl.Float64,
    "spearman_ci_high": pl.Float64, "depth_overlap": pl.Float64, "depth_overlap_ci_low": pl.Float64,
    "depth_overlap_ci_high": pl.Float64,
}
HEADS_SCHEMA = {
    "dataset": pl.Utf8, "ranking": pl.Utf8, "model": pl.Utf8, "layer": pl.Int64, "head": pl.Int64,
    "depth": pl.Float64, "score": pl.Float64, "rank": pl.Int64, "in_top_k": pl.Boolean,
    "top_k_frequency": pl.Float64, "category": pl.Utf8,
}


class Scores:
    """Per-target head scores of one model on one dataset: matrix [targets, layers * heads]."""

    def __init__(self, long: pl.DataFrame, value: str, n_layers: int, n_heads: int):
        self.n_layers, self.n_heads = n_layers, n_heads
        if long.is_empty():
            self.target_ids, self.matrix = [], np.zeros((0, n_layers * n_heads))
            return
        wide = (long.with_columns((pl.col("layer") * n_heads + pl.col("head")).alias("_i"))
                .pivot(on="_i", index="target_id", values=value, sort_columns=True).sort("target_id"))
        self.target_ids = wide["target_id"].to_list()
        cols = [str(i) for i in range(n_layers * n_heads)]
        missing = [c for c in cols if c not in wide.columns]
        if missing and self.target_ids:
            raise ValueError(f"{value}: head {missing[0]} has no score for some targets")
        self.matrix = wide.select(cols).to_numpy().astype(np.float64)
        if np.isnan(self.matrix).any():
            raise ValueError(f"{value}: NaN scores (every head needs a score for every target)")

    @property
    def depth(self) -> np.ndarray:
        """Relative depth of each head: the centre of its block, (layer + 0.5) / n_layers."""
        return (np.repeat(np.arange(self.n_layers), self.n_heads) + 0.5) / self.n_layers

    def grid(self) -> tuple[int, int]:
        return self.n_layers, self.n_heads


def top_k(mean: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest means (ties broken by head index, stably)."""
    return np.argsort(-mean, kind="stable")[:k]


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    sx, sy = set(x.tolist()), set(y.tolist())
    return len(sx & sy) / len(sx | sy) if sx | sy else float("nan")


def depth_overlap(depth_a: np.ndarray, depth_b: np.ndarray) -> float:
    """Histogram intersection of two sets of relative depths over DEPTH_BINS bins (1 = same)."""
    edges = np.linspace(0, 1, DEPTH_BINS + 1)
    ha = np.histogram(depth_a, edges)[0] / max(len(depth_a), 1)
    hb = np.histogram(depth_b, edges)[0] / max(len(depth_b), 1)
    return float(np.minimum(ha, hb).sum())


def _statistics(ma: np.ndarray, mb: np.ndarray, a: Scores, b: Scores, k: int, match: bool) -> tuple[float, float, float]:
    ta, tb = top_k(ma, k), top_k(mb, k)
    jac = jaccard(ta, tb) if match else float("nan")
    rho = float(spearmanr(ma, mb).statistic) if match and np.ptp(ma) > 0 and np.ptp(mb) > 0 else float("nan")
    return jac, rho, depth_overlap(a.depth[ta], b.depth[tb])


def resamples(a: Scores, b: Scores, boot: Bootstrap) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """Bootstrap row indices into each model's targets: paired when the target ids agree."""
    rng = np.random.default_rng(boot.seed)
    if a.target_ids == b.target_ids:
        if len(a.target_ids) < MIN_UNITS:
            return "paired", None, None
        idx = rng.integers(0, len(a.target_ids), size=(boot.resamples, len(a.target_ids)))
        return "paired", idx, idx
    if min(len(a.target_ids), len(b.target_ids)) < MIN_UNITS:
        return "independent", None, None
    ia = rng.integers(0, len(a.target_ids), size=(boot.resamples, len(a.target_ids)))
    ib = rng.integers(0, len(b.target_ids), size=(boot.resamples, len(b.target_ids)))
    return "independent", ia, ib


def compare_scores(a: Scores, b: Scores, k: int, boot: Bootstrap) -> tuple[dict, np.ndarray, np.ndarray]:
    """Overlap statistics with intervals, and each model's top-k frequency over resamples."""
    match = a.grid() == b.grid()
    k = min(k, a.matrix.shape[1], b.matrix.shape[1])
    ma, mb = a.matrix.mean(0), b.matrix.mean(0)
    point = _statistics(ma, mb, a, b, k, match)
    how, ia, ib = resamples(a, b, boot)
    freq_a, freq_b = np.full(ma.shape, np.nan), np.full(mb.shape, np.nan)
    lows, highs = [float("nan")] * 3, [float("nan")] * 3
    if ia is not None:
        reps = []
        freq_a, freq_b = np.zeros(ma.shape), np.zeros(mb.shape)
        for ra, rb in zip(ia, ib):
            ra_mean, rb_mean = a.matrix[ra].mean(0), b.matrix[rb].mean(0)
            reps.append(_statistics(ra_mean, rb_mean, a, b, k, match))
            freq_a[top_k(ra_mean, k)] += 1
            freq_b[top_k(rb_mean, k)] += 1
        freq_a, freq_b = freq_a / len(ia), freq_b / len(ia)
        alpha = (1 - boot.confidence) / 2
        reps = np.array(reps)
        for j in range(3):
            col = reps[:, j][~np.isnan(reps[:, j])]
            if len(col):
                lows[j], highs[j] = (float(x) for x in np.quantile(col, [alpha, 1 - alpha]))
    row = {"k": k, "grids_match": match, "resampling": how, "n_targets_a": len(a.target_ids),
           "n_targets_b": len(b.target_ids)}
    for j, name in enumerate(("jaccard", "spearman", "depth_overlap")):
        row.update({name: point[j], f"{name}_ci_low": lows[j], f"{name}_ci_high": highs[j]})
    return row, freq_a, freq_b


def head_rows(s: Scores, model: str, freq: np.ndarray, in_top: np.ndarray, other_top: np.ndarray | None,
              names: tuple[str, str], first: bool) -> list[dict]:
    mean = s.matrix.mean(0)
    order = np.argsort(-mean, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    rows = []
    for i in range(len(mean)):
        if other_top is None:
            category = f"top {len(np.flatnonzero(in_top))} of {model}" if in_top[i] else "not in top k"
        elif in_top[i] and other_top[i]:
            category = "both"
        elif in_top[i] or other_top[i]:
            category = f"only {names[0] if in_top[i] == first else names[1]}"
        else:
            category = "neither"
        rows.append({"model": model, "layer": i // s.n_heads, "head": i % s.n_heads, "depth": float(s.depth[i]),
                     "score": float(mean[i]), "rank": int(rank[i]), "in_top_k": bool(in_top[i]),
                     "top_k_frequency": float(freq[i]), "category": category})
    return rows


def compare_rankings(a: Scores, b: Scores, names: tuple[str, str], dataset: str, ranking: str, k: int,
                     boot: Bootstrap) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One ranking of one dataset: (overlap row, per-head rows of both models)."""
    row, freq_a, freq_b = compare_scores(a, b, k, boot)
    overlap = pl.DataFrame([{"dataset": dataset, "ranking": ranking, **row}], schema=OVERLAP_SCHEMA)
    k = row["k"]
    top_a = np.zeros(a.matrix.shape[1], bool)
    top_a[top_k(a.matrix.mean(0), k)] = True
    top_b = np.zeros(b.matrix.shape[1], bool)
    top_b[top_k(b.matrix.mean(0), k)] = True
    match = row["grids_match"]
    rows = (head_rows(a, names[0], freq_a, top_a, top_b if match else None, names, True)
            + head_rows(b, names[1], freq_b, top_b, top_a if match else None, names, False))
    heads = pl.DataFrame([{"dataset": dataset, "ranking": ranking, **r} for r in rows], schema=HEADS_SCHEMA)
    return overlap, heads


def lens_side_by_side(curves: dict[str, pl.DataFrame], n_layers: dict[str, int]) -> pl.DataFrame:
    """The logit (and tuned) lens of each model on relative depth: layer / number of blocks."""
    frames = []
    for model, df in sorted(curves.items()):
        if df.is_empty():
            continue
        one = df.filter((pl.col("segment") == "all") & (pl.col("outcome") == "all"))
        frames.append(one.with_columns(pl.lit(model).alias("model"),
                                       (pl.col("layer") / n_layers[model]).alias("depth")))
    return pl.concat(frames, how="diagonal").sort("model", "lens", "split", "layer") if frames else pl.DataFrame()


def circuit_overlap(edges: dict[str, pl.DataFrame], names: tuple[str, str], dataset: str) -> pl.DataFrame:
    """Edges each circuit keeps, how many both keep and their Jaccard (node names must match)."""
    kept = {m: set(zip(*edges[m].filter(pl.col("in_circuit")).select("upstream", "downstream").to_dict(as_series=False).values()))
            for m in names}
    nodes = {m: set(edges[m]["upstream"].to_list()) | set(edges[m]["downstream"].to_list()) for m in names}
    same_graph = nodes[names[0]] == nodes[names[1]]
    shared = kept[names[0]] & kept[names[1]]
    union = kept[names[0]] | kept[names[1]]
    return pl.DataFrame([{
        "dataset": dataset, "same_graph": same_graph, "edges_a": len(kept[names[0]]), "edges_b": len(kept[names[1]]),
        "shared_edges": len(shared) if same_graph else None,
        "jaccard": (len(shared) / len(union) if union else float("nan")) if same_graph else None,
        "n_pairs_a": int(edges[names[0]]["n"].max()) if len(edges[names[0]]) else 0,
        "n_pairs_b": int(edges[names[1]]["n"].max()) if len(edges[names[1]]) else 0,
    }], schema={"dataset": pl.Utf8, "same_graph": pl.Boolean, "edges_a": pl.Int64, "edges_b": pl.Int64,
                "shared_edges": pl.Int64, "jaccard": pl.Float64, "n_pairs_a": pl.Int64, "n_pairs_b": pl.Int64})


def _by_kind(files: dict[str, str]) -> dict[str, dict[tuple[str, str], str]]:
    out: dict[str, dict[tuple[str, str], str]] = {}
    for key, path in files.items():
        kind, side, dataset = key.split("|")
        out.setdefault(kind, {})[(side, dataset)] = path
    return out


def _empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def compare_pair(names: tuple[str, str], model_dirs: dict[str, str], files: dict[str, str], rank_by: str, k: int,
                 boot: Bootstrap) -> dict[str, pl.DataFrame]:
    """Every table of rule compare_models from the files of `compare_models_files` ("kind|side|dataset")."""
    from codeinterp.access.models import read_facts
    from codeinterp.uncertainty import pass_at_k_summary

    facts = {side: read_facts(model_dirs[side]) for side in ("a", "b")}
    kinds = _by_kind(files)
    datasets = sorted({d for (_, d) in kinds.get("pass_at_k", {})})
    overlaps, heads = [], []
    rankings = (("deltas", rank_by, "delta", lambda df: df.filter(pl.col("ablation") == rank_by)),
                ("taylor", "taylor", "taylor", lambda df: df))
    for kind, ranking, value, select in rankings:
        for d in datasets if kind in kinds else []:
            s = {side: Scores(select(pl.read_parquet(kinds[kind][(side, d)])), value, facts[side].n_layers,
                              facts[side].n_heads) for side in ("a", "b")}
            if not (s["a"].target_ids and s["b"].target_ids):
                continue
            o, h = compare_rankings(s["a"], s["b"], names, d, ranking, k, boot)
            overlaps.append(o)
            heads.append(h)
    lens = [lens_side_by_side({names[0 if side == "a" else 1]: pl.read_parquet(p)},
                              {names[0 if side == "a" else 1]: facts[side].n_layers}).with_columns(pl.lit(d).alias("dataset"))
            for (side, d), p in sorted(kinds.get("lens", {}).items())]
    passes = []
    for (side, d), p in sorted(kinds.get("pass_at_k", {}).items()):
        per_problem = pl.read_parquet(p)
        summary = pass_at_k_summary(per_problem, boot) if len(per_problem) else pl.DataFrame()
        passes.append(pl.DataFrame({"model": [names[0 if side == "a" else 1]], "dataset": [d],
                                    "n_problems": [len(per_problem)]}).hstack(summary) if len(summary) else
                      pl.DataFrame({"model": [names[0 if side == "a" else 1]], "dataset": [d], "n_problems": [0]}))
    circuits = [circuit_overlap({names[0]: pl.read_parquet(kinds["circuit"][("a", d)]),
                                 names[1]: pl.read_parquet(kinds["circuit"][("b", d)])}, names, d)
                for d in sorted({d for (_, d) in kinds.get("circuit", {})})]
    lens = [f for f in lens if len(f)]
    return {
        "overlap": pl.concat(overlaps) if overlaps else _empty(OVERLAP_SCHEMA),
        "heads": pl.concat(heads) if heads else _empty(HEADS_SCHEMA),
        "lens": pl.concat(lens, how="diagonal").sort("dataset", "model", "lens", "split", "layer") if lens else pl.DataFrame(),
        "pass_at_k": pl.concat(passes, how="diagonal") if passes else pl.DataFrame(),
        "circuits": pl.concat(circuits) if circuits else pl.DataFrame(),
    }
