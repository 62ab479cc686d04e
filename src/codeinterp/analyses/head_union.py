"""Heads that matter across benchmarks, for one model (rule head_union).

Per benchmark dataset the top k heads by the configured ablation (mean over targets of the
loss rise when the head is removed); per head, in how many datasets it is in the top k, and
which: `all` (every dataset), `one` (one only), `some`, `none`. How stable each membership
is: `top_k_frequency`, the share of bootstrap resamples of that dataset's targets in which
the head is in the top k (NaN below the bootstrap's minimum number of targets).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from codeinterp.analyses.compare_models import Scores, top_k
from codeinterp.uncertainty import MIN_UNITS, Bootstrap

SCHEMA = {"dataset": pl.Utf8, "layer": pl.Int64, "head": pl.Int64, "score": pl.Float64, "rank": pl.Int64,
          "in_top_k": pl.Boolean, "top_k_frequency": pl.Float64, "n_targets": pl.Int64, "k": pl.Int64,
          "n_datasets_in_top_k": pl.Int64, "n_datasets": pl.Int64, "category": pl.Utf8, "datasets_in_top_k": pl.Utf8}


def top_k_frequency(s: Scores, k: int, boot: Bootstrap) -> np.ndarray:
    n, width = s.matrix.shape
    if n < MIN_UNITS:
        return np.full(width, np.nan)
    rng = np.random.default_rng(boot.seed)
    counts = np.zeros(width)
    for rows in rng.integers(0, n, size=(boot.resamples, n)):
        counts[top_k(s.matrix[rows].mean(0), k)] += 1
    return counts / boot.resamples


def head_union(scores: dict[str, Scores], k: int, boot: Bootstrap) -> pl.DataFrame:
    """One row per (dataset, head); datasets without targets are left out (and not counted)."""
    scores = {d: s for d, s in sorted(scores.items()) if s.target_ids}
    if not scores:
        return pl.DataFrame(schema=SCHEMA)
    grids = {s.grid() for s in scores.values()}
    if len(grids) > 1:
        raise ValueError(f"head grids differ between datasets: {sorted(grids)}")
    width = next(iter(scores.values())).matrix.shape[1]
    k = min(k, width)
    member, frames = {}, []
    for d, s in scores.items():
        mean = s.matrix.mean(0)
        order = top_k(mean, width)
        rank = np.empty(width, dtype=np.int64)
        rank[order] = np.arange(width)
        member[d] = rank < k
        frames.append(pl.DataFrame({
            "dataset": d, "layer": np.arange(width) // s.n_heads, "head": np.arange(width) % s.n_heads,
            "score": mean, "rank": rank, "in_top_k": member[d], "top_k_frequency": top_k_frequency(s, k, boot),
            "n_targets": len(s.target_ids), "k": k}))
    names = list(scores)
    count = np.sum([member[d] for d in names], axis=0)
    which = [",".join(d for d in names if member[d][i]) for i in range(width)]
    category = np.where(count == len(names), "all", np.where(count == 1, "one", np.where(count == 0, "none", "some")))
    per_head = pl.DataFrame({"layer": np.arange(width) // next(iter(scores.values())).n_heads,
                             "head": np.arange(width) % next(iter(scores.values())).n_heads,
                             "n_datasets_in_top_k": count, "n_datasets": len(names), "category": category,
                             "datasets_in_top_k": which})
    out = pl.concat(frames).join(per_head, on=["layer", "head"], how="left", maintain_order="left")
    return out.select([pl.col(c).cast(t) for c, t in SCHEMA.items()]).sort("dataset", "layer", "head")


def union_from_files(model_dir: str, deltas: dict[str, str], rank_by: str, k: int, boot: Bootstrap) -> pl.DataFrame:
    """head_union over the per-target ablation deltas of each dataset (the `rank_by` kind)."""
    from codeinterp.access.models import read_facts

    facts = read_facts(model_dir)
    scores = {d: Scores(pl.read_parquet(p).filter(pl.col("ablation") == rank_by), "delta", facts.n_layers,
                        facts.n_heads) for d, p in deltas.items()}
    return head_union(scores, k, boot)
