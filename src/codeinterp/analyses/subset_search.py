"""Which k heads can be removed together at the least cost? A CMA-ES search.

Single-head ranks (Taylor scores, exact ablation deltas) ignore interactions: the k
individually least important heads need not be the best set of k to remove. Here CMA-ES
searches a continuous relaxation: a candidate x in R^{L*H} scores every head, and the
candidate stands for the HARD subset of its k largest coordinates (ties by flat index).
Its fitness is the quantity of interest itself, the mean code-token loss over the targets
with exactly those k heads zero-ablated; the continuous part is only the search space.

Fitness is piecewise constant in x, so many candidates share a subset; a small tie-break
(`tie_break * tanh(margin)`, margin = gap between the k-th and (k+1)-th coordinates,
subtracted) prefers candidates that commit to their subset, which keeps CMA-ES from
stalling on flat fitness. It is far below any loss difference that matters (1e-6 by
default). Subset losses are cached, and the new subsets of a generation are evaluated
together: masks go on the batch axis (`heads.head_intervention` with [rows, L, H]), the
target batch tiled once per subset.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import polars as pl
import torch

from codeinterp.access.heads import full_mask, mask_from_heads
from codeinterp.analyses.pruning import Head, head_name, target_losses
from codeinterp.uncertainty import Bootstrap, bootstrap_means
from codeinterp.access.scoring import Batch, Target, batches, code_losses
from codeinterp.progress import NO_CHECKPOINT


def _tile(b: Batch, m: int) -> Batch:
    """The batch repeated m times along the batch axis (copy i holds rows i*B .. i*B+B-1)."""
    n = len(b.target_ids)
    offs = torch.arange(m).repeat_interleave(len(b.rows)) * n
    return Batch(
        b.target_ids * m,
        b.input_ids.repeat(m, 1),
        b.attention_mask.repeat(m, 1),
        b.rows.repeat(m) + offs,
        b.positions.repeat(m),
        b.labels.repeat(m),
        b.owner.repeat(m) + offs,
    )


@torch.no_grad()
def subset_losses(model, targets: list[Target], subsets: list[list[Head]], batch_size: int, fill=None, pad_id: int = 0) -> list[float]:
    """Mean loss over targets with each subset of heads removed; at most `batch_size` rows per forward."""
    if not targets:
        raise ValueError("no targets to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not subsets:
        return []
    masks = torch.stack([mask_from_heads(model, s) for s in subsets])
    totals = torch.zeros(len(subsets), dtype=torch.float64)
    for b in batches(targets, batch_size, pad_id):
        n = len(b.target_ids)
        per = max(1, batch_size // n)
        for start in range(0, len(subsets), per):
            chunk = masks[start : start + per]
            m = chunk.shape[0]
            keep = chunk.repeat_interleave(n, dim=0)
            losses = code_losses(model, _tile(b, m), keep, fill).double().view(m, n)
            totals[start : start + m] += losses.sum(1)
    return (totals / len(targets)).tolist()


def _subset_of(x: np.ndarray, k: int, n_heads: int) -> tuple[tuple[Head, ...], float]:
    """The k largest coordinates as sorted (layer, head) pairs, and the k-th/(k+1)-th gap."""
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    chosen = sorted(order[:k])
    margin = float(x[order[k - 1]] - x[order[k]]) if k < len(x) else 0.0
    return tuple((i // n_heads, i % n_heads) for i in chosen), margin


def cma_head_subset(
    model,
    targets: list[Target],
    k: int,
    batch_size: int,
    seed: int,
    max_evals: int,
    sigma0: float = 0.3,
    popsize: int | None = None,
    fill=None,
    pad_id: int = 0,
    tie_break: float = 1e-6,
    checkpoint=NO_CHECKPOINT,
) -> dict:
    """CMA-ES search for the k heads whose joint removal hurts the mean code loss least.

    Returns `{"heads": [[l, h], ...] (k, sorted), "loss": float, "evals": n, "unique_subsets": n,
    "history": [{"generation", "best_loss" (best so far), "generation_best_loss", "mean_loss",
    "evals" (cumulative candidate evaluations), "sigma"}]}`. Deterministic for a seed:
    CMA-ES is seeded with `seed + 1` (cma reads 0 as "seed from the clock") and the global
    NumPy random state it reseeds is restored afterwards. A generation is only started if
    it fits in `max_evals` (the first always runs).

    Resuming: the subset losses (the only costly part) are kept in `checkpoint` after every
    generation; a resumed run replays the seeded search from the start and finds them there,
    so it takes the same steps and returns the same result.
    """
    shape = tuple(full_mask(model).shape)
    n, n_heads = shape[0] * shape[1], shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the model's head count), got {k}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if max_evals < 1:
        raise ValueError(f"max_evals must be >= 1, got {max_evals}")
    saved = checkpoint.get("subset-losses") or []
    cache: dict[tuple[Head, ...], float] = {tuple(tuple(h) for h in s): v for s, v in saved}

    def evaluate(subsets):
        new = [s for s in dict.fromkeys(subsets) if s not in cache]
        for s, v in zip(new, subset_losses(model, targets, [list(s) for s in new], batch_size, fill, pad_id)):
            cache[s] = v
        if new:
            checkpoint.put("subset-losses", [[[list(h) for h in s], v] for s, v in cache.items()], advance=False)
        if checkpoint.progress is not None:
            checkpoint.progress.advance(resumed=not new)
        return [cache[s] for s in subsets]

    if k == n:  # nothing to search
        everything = tuple((i // n_heads, i % n_heads) for i in range(n))
        loss = evaluate([everything])[0]
        return {"heads": [list(h) for h in everything], "loss": loss, "evals": 1, "unique_subsets": 1, "history": []}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cma

        np_state = np.random.get_state()
        try:
            opts = {"seed": int(seed) + 1, "verbose": -9, "verb_log": 0, "verb_disp": 0, "tolflatfitness": 10**9}
            if popsize is not None:
                opts["popsize"] = int(popsize)
            es = cma.CMAEvolutionStrategy(np.zeros(n), float(sigma0), opts)
            checkpoint.begin(max(1, 1 + (max_evals - es.popsize) // es.popsize), "generations")
            best: tuple[float, tuple[Head, ...]] | None = None
            history = []
            generation = 0
            while not es.stop():
                if generation > 0 and es.countevals + es.popsize > max_evals:
                    break
                xs = es.ask()
                picks = [_subset_of(np.asarray(x), k, n_heads) for x in xs]
                losses = evaluate([s for s, _ in picks])
                fitness = [loss - tie_break * math.tanh(margin / max(sigma0, 1e-12)) for loss, (_, margin) in zip(losses, picks)]
                es.tell(xs, fitness)
                generation += 1
                for loss, (s, _) in zip(losses, picks):
                    if best is None or (loss, s) < best:
                        best = (loss, s)
                history.append({
                    "generation": generation,
                    "best_loss": best[0],
                    "generation_best_loss": min(losses),
                    "mean_loss": float(np.mean(losses)),
                    "evals": int(es.countevals),
                    "sigma": float(es.sigma),
                })
        finally:
            np.random.set_state(np_state)
    return {
        "heads": [list(h) for h in best[1]],
        "loss": best[0],
        "evals": int(history[-1]["evals"]),
        "unique_subsets": len(cache),
        "history": history,
    }


def compare_subsets(model, targets: list[Target], k: int, batch_size: int, sets: dict[str, list[Head]], fill=None,
                    pad_id: int = 0, boot: Bootstrap | None = None) -> pl.DataFrame:
    """Loss with each named set of k heads removed (e.g. CMA-ES, Taylor-ranked, ablation-ranked).

    Columns: method, k, loss (mean over targets), ci_low, ci_high (bootstrap over targets),
    n_targets, heads (["L{l}H{h}", ...]). Every set must hold k distinct heads. Removal is
    zero ablation, or replacement by `fill` (mean ablation) when given.
    """
    boot = boot or Bootstrap()
    shape = tuple(full_mask(model).shape)
    rows = []
    for method, heads in sets.items():
        hs = [(int(l), int(h)) for l, h in heads]
        if len(set(hs)) != len(hs) or len(hs) != k:
            raise ValueError(f"head set {method!r} has {len(set(hs))} distinct heads of {len(hs)}; expected {k} distinct")
        for l, h in hs:
            if not (0 <= l < shape[0] and 0 <= h < shape[1]):
                raise ValueError(f"head set {method!r} names L{l}H{h}, outside this model's {shape[0]}x{shape[1]} heads")
        losses = np.array(list(target_losses(model, targets, batch_size, mask_from_heads(model, hs), fill, pad_id).values()))
        loss, low, high = bootstrap_means(losses, boot)
        rows.append({"method": method, "k": k, "loss": float(loss[0]), "ci_low": float(low[0]), "ci_high": float(high[0]),
                     "n_targets": len(losses), "heads": [head_name(l, h) for l, h in sorted(hs)]})
    schema = {"method": pl.Utf8, "k": pl.Int64, "loss": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
              "n_targets": pl.Int64, "heads": pl.List(pl.Utf8)}
    return pl.DataFrame(rows, schema=schema)
