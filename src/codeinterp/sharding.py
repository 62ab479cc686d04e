"""Splitting a stage into N shard jobs whose merged tables equal one job's, byte for byte.

A shard is a contiguous run of the stage's own batches, cut where the unsharded job would cut
them: every shard then runs exactly the forwards (same rows, same padding, same per-batch
seeds) that one job runs, and the merge only concatenates. Splitting at any other row would
change the padding or the batch shapes, and float results with them.

- generation: batches of the prompt table in order (batch b samples with seed + b, so a
  shard keeps each batch's global index);
- evaluation: samples, each judged on its own (no batch effects), in the stage's order;
- head ablation: batches of targets sorted by length (codeinterp.access.scoring.batches);
  mean ablation's fill is the mean over *all* targets, so every shard computes it in full;
- activation patching: batches of pairs in order (each shard checks its patcher against the
  model's own forward on its first batch, as one job does); the merge summarises all pairs.
"""

from __future__ import annotations

from typing import Sequence

import polars as pl

from codeinterp.errors import ConfigError


def batch_range(n_batches: int, n_shards: int, shard: int) -> range:
    """The batch indices of one shard: contiguous, sizes differing by at most one."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ConfigError(f"shards: shard {shard} of {n_shards} does not exist")
    base, extra = divmod(n_batches, n_shards)
    start = shard * base + min(shard, extra)
    return range(start, start + base + (shard < extra))


def item_range(n_items: int, batch_size: int, n_shards: int, shard: int) -> range:
    """The item indices of one shard when items are cut into batches of `batch_size` in order."""
    batches = batch_range(-(-n_items // batch_size), n_shards, shard)
    return range(min(batches.start * batch_size, n_items), min(batches.stop * batch_size, n_items))


def shard_targets(targets: Sequence, batch_size: int, n_shards: int, shard: int) -> list:
    """The targets of one shard of a sweep that batches them as codeinterp.access.scoring.batches."""
    from codeinterp.access.scoring import batch_bounds, length_order

    ordered = length_order(list(targets))
    bounds = batch_bounds(ordered, batch_size)
    mine = batch_range(len(bounds), n_shards, shard)
    if not len(mine):
        return []
    return ordered[bounds[mine.start][0] : bounds[mine.stop - 1][1]]


def concat(frames: Sequence[pl.DataFrame]) -> pl.DataFrame:
    """Shard tables in shard order, one schema (an empty shard keeps its columns)."""
    if not frames:
        raise ConfigError("shards: nothing to merge")
    schema = frames[0].schema
    wrong = [i for i, f in enumerate(frames) if f.schema != schema]
    if wrong:
        raise ConfigError(f"shards: shard {wrong[0]} has other columns than shard 0 (stale shard file?)")
    return pl.concat(frames, how="vertical")


def shard_number(text: str, n_shards: int) -> int:
    """The shard index of a `{shard}` wildcard."""
    shard = int(text)
    batch_range(0, n_shards, shard)  # refuses an index outside 0..n-1
    return shard


def merge_generations(paths: Sequence[str]) -> pl.DataFrame:
    """Shards are runs of whole batches in order: the unsharded table is their concatenation."""
    return concat([pl.read_parquet(p) for p in paths])


def merge_verdicts(paths: Sequence[str], ks: list[int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Verdicts in the stage's order, and pass@k over all of them."""
    from codeinterp.benchmarks.evaluation import pass_at_k_table

    verdicts = concat([pl.read_parquet(p) for p in paths])
    return verdicts, pass_at_k_table(verdicts, ks)


def merge_deltas(paths: Sequence[str], kinds: Sequence[str]) -> pl.DataFrame:
    """Per-target head deltas of every shard, kind by kind as one job writes them."""
    shards = concat([pl.read_parquet(p) for p in paths])
    return concat([shards.filter(pl.col("ablation") == k).sort("layer", "head", "target_id") for k in kinds])


def merge_patching(paths: Sequence[str], boot) -> pl.DataFrame:
    """Per-pair patching rows of every shard, then the summary one job writes."""
    from codeinterp.causal.patching import summarise

    frames = [f for f in (pl.read_parquet(p) for p in paths) if f.width > 2]  # a shard without pairs: ids only
    per_pair = concat(frames).drop("model", "dataset") if frames else pl.DataFrame()
    return summarise(per_pair, boot)
