"""Head importance by first-order Taylor scores, iterative pruning, and pruning regimes.

Taylor importance follows Michel et al. 2019 ("Are Sixteen Heads Really Better than
One?"): every head output is multiplied by a mask variable xi_h (here `keep`, applied
through `heads.head_intervention` with zero fill), and the importance of head h is the
expected absolute gradient of the loss with respect to its mask,

    I_h = mean over targets x of | d L(x) / d xi_h |,

evaluated at the current mask (ones for alive heads, zeros for pruned ones). L(x) is the
mean cross-entropy over target x's code tokens (`scoring.code_losses`), so every target
weighs the same whatever its length. As in the paper the absolute value is taken per
example, not per batch: the mask is given on the batch axis ([B, L, H], one copy per
target), so one backward of the summed per-target losses yields every target's own
gradient, and the scores do not depend on the batch size. Model parameters never
accumulate gradients: only `torch.autograd.grad(..., keep)` is asked for.

Pruned heads get NaN scores and are never ranked. Iterative pruning removes the alive
heads with the lowest scores, recomputes the scores with the new mask, and so on; its
history is a list of JSON-safe dicts (NaN scores stored as None) that can be resumed.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import polars as pl
import torch

from codeinterp.access.heads import full_mask
from codeinterp.access.scoring import Target, batches, code_losses
from codeinterp.uncertainty import Bootstrap, bootstrap_means

Head = tuple[int, int]


def head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _check_targets(targets: list[Target], batch_size: int) -> None:
    if not targets:
        raise ValueError("no targets to score")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _gradients(model, targets: list[Target], batch_size: int, alive: torch.Tensor, fill=None, pad_id: int = 0,
               per_target_grads: dict | None = None):
    """Per-target mask gradients at mask `alive`: (abs-mean scores [L, H] with NaN for pruned
    heads, signed first-order estimate of each head's removal effect [L, H], per-target losses).

    Removing head h moves its mask from 1 to 0, so to first order the loss changes by
    -dL/dxi_h: the signed estimate of the exact ablation delta is the mean over targets of
    -grad, while Michel et al.'s importance is the mean of |grad| (an estimate of mean |delta|).
    """
    _check_targets(targets, batch_size)
    alive = alive.detach().to(torch.float32)
    abs_sum = torch.zeros_like(alive, dtype=torch.float64)
    signed_sum = torch.zeros_like(alive, dtype=torch.float64)
    per_target: dict[str, float] = {}
    for b in batches(targets, batch_size, pad_id):
        n = len(b.target_ids)
        keep = alive.unsqueeze(0).expand(n, *alive.shape).clone().requires_grad_(True)
        losses = code_losses(model, b, keep, fill)
        (g,) = torch.autograd.grad(losses.sum(), keep)
        if per_target_grads is not None:
            per_target_grads.update(zip(b.target_ids, g.detach().double()))
        abs_sum += g.abs().sum(0).double()
        signed_sum -= g.sum(0).double()
        per_target.update(zip(b.target_ids, losses.detach().double().tolist()))
    scores = (abs_sum / len(targets)).to(torch.float32)
    first_order = (signed_sum / len(targets)).to(torch.float32)
    scores[alive == 0] = float("nan")
    first_order[alive == 0] = float("nan")
    return scores, first_order, dict(sorted(per_target.items()))


def taylor_scores(
    model, targets: list[Target], batch_size: int, alive: torch.Tensor | None = None, fill=None, pad_id: int = 0,
    normalize_layers: bool = False,
) -> torch.Tensor:
    """First-order Taylor importance of every head, [L, H] float32; NaN for pruned heads.

    `alive` is a 0/1 [L, H] mask (all ones by default). With `normalize_layers`, scores are
    divided by their layer's l2 norm over alive heads, as Michel et al. do before pruning
    globally; off by default so scores stay in loss units.
    """
    if alive is None:
        alive = full_mask(model)
    scores, _, _ = _gradients(model, targets, batch_size, alive, fill, pad_id)
    if normalize_layers:
        norms = torch.nan_to_num(scores, nan=0.0).norm(dim=1, keepdim=True)
        scores = scores / torch.where(norms > 0, norms, torch.ones_like(norms))
    return scores


TARGET_SCORES_SCHEMA = {"layer": pl.Int64, "head": pl.Int64, "target_id": pl.Utf8, "taylor": pl.Float64,
                        "first_order": pl.Float64}


def taylor_target_scores(model, targets: list[Target], batch_size: int, fill=None, pad_id: int = 0) -> pl.DataFrame:
    """Each target's own Taylor score |dL/dmask| and first-order estimate -dL/dmask of every
    head of the unpruned model (long: layer, head, target_id), so that rankings by Taylor
    score can be bootstrapped over targets like the exact ablation deltas."""
    grads: dict = {}
    _gradients(model, targets, batch_size, full_mask(model), fill, pad_id, per_target_grads=grads)
    n_layers, n_heads = full_mask(model).shape
    rows = [(l, h, tid, float(g[l, h].abs()), float(-g[l, h]))
            for tid, g in sorted(grads.items()) for l in range(n_layers) for h in range(n_heads)]
    layer, head, tid, taylor, first = (list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])
    return pl.DataFrame({"layer": layer, "head": head, "target_id": tid, "taylor": taylor, "first_order": first},
                        schema=TARGET_SCORES_SCHEMA).sort("layer", "head", "target_id")


@torch.no_grad()
def target_losses(model, targets: list[Target], batch_size: int, keep: torch.Tensor | None = None, fill=None,
                  pad_id: int = 0) -> dict[str, float]:
    """Each target's mean code-token CE under head mask `keep`, by target id (sorted)."""
    _check_targets(targets, batch_size)
    out: dict[str, float] = {}
    for b in batches(targets, batch_size, pad_id):
        out.update(zip(b.target_ids, code_losses(model, b, keep, fill).double().tolist()))
    return dict(sorted(out.items()))


def mean_loss(model, targets: list[Target], batch_size: int, keep: torch.Tensor | None = None, fill=None, pad_id: int = 0) -> float:
    """Mean over targets of the per-target mean code-token CE, under head mask `keep`."""
    losses = target_losses(model, targets, batch_size, keep, fill, pad_id)
    return sum(losses.values()) / len(losses)


def _ranked(scores: np.ndarray, descending: bool) -> list[Head]:
    """Finite-scored heads ordered by score, ties broken by (layer, head)."""
    n_heads = scores.shape[1]
    items = [(float(scores[l, h]), l, h) for l in range(scores.shape[0]) for h in range(n_heads) if np.isfinite(scores[l, h])]
    items.sort(key=lambda t: ((-t[0] if descending else t[0]), t[1], t[2]))
    return [(l, h) for _, l, h in items]


def _to_json_scores(scores: torch.Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in scores.tolist()]


def _from_json_scores(scores) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in scores], dtype=np.float64)


def _alive_list(alive: torch.Tensor) -> list[list[int]]:
    return [[int(l), int(h)] for l, h in torch.nonzero(alive > 0).tolist()]


def taylor_pruning(
    model,
    targets: list[Target],
    batch_size: int,
    iterations: int,
    prune_per_iter: int,
    history: list[dict] | None = None,
    on_step: Callable[[list[dict]], None] | None = None,
    fill=None,
    pad_id: int = 0,
) -> list[dict]:
    """Iterative Taylor pruning; returns the history (row 0 = unpruned model, then one row per iteration).

    Row i >= 1 holds the heads pruned at that step (lowest scores among alive heads, ties
    by (layer, head)), the heads still alive, the mean loss with the new mask and each
    target's loss (`target_losses`), the [L][H] scores the decision was made from (None for
    already-pruned heads) and the signed first-order estimates of removing each head at
    that point (`first_order`, mean over targets of -dL/dxi). Given an
    earlier `history`, the alive set is rebuilt from its last row and only the missing
    iterations up to `iterations` are computed; `on_step(history)` runs after every new
    row (including row 0 when starting fresh) so the caller can persist it. Stops early
    once no head is left.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if prune_per_iter < 1:
        raise ValueError(f"prune_per_iter must be >= 1, got {prune_per_iter}")
    _check_targets(targets, batch_size)
    shape = tuple(full_mask(model).shape)
    hist = [dict(r) for r in history] if history else []
    if hist:
        for i, row in enumerate(hist):
            if row.get("iteration") != i:
                raise ValueError(f"pruning history row {i} has iteration {row.get('iteration')!r}; expected {i}")
        alive = torch.zeros(shape)
        for l, h in hist[-1]["alive"]:
            if not (0 <= l < shape[0] and 0 <= h < shape[1]):
                raise ValueError(f"pruning history names head L{l}H{h}, outside this model's {shape[0]}x{shape[1]} heads")
            alive[l, h] = 1.0
    else:
        alive = torch.ones(shape)
    if hist and (len(hist) > iterations or int(alive.sum()) == 0):
        return hist

    scores, first_order, losses = _gradients(model, targets, batch_size, alive, fill, pad_id)
    if not hist:
        hist.append({"iteration": 0, "pruned": [], "alive": _alive_list(alive), "loss": _mean(losses),
                     "target_losses": losses, "scores": None, "first_order": None})
        if on_step:
            on_step(hist)
    while len(hist) <= iterations and int(alive.sum()) > 0:
        step = _ranked(scores.numpy(), descending=False)[:prune_per_iter]
        used, used_first_order = scores, first_order
        for l, h in step:
            alive[l, h] = 0.0
        if int(alive.sum()) > 0:
            scores, first_order, losses = _gradients(model, targets, batch_size, alive, fill, pad_id)
        else:
            scores = first_order = torch.full(shape, float("nan"))
            losses = target_losses(model, targets, batch_size, alive, fill, pad_id)
        hist.append({
            "iteration": len(hist),
            "pruned": [[l, h] for l, h in step],
            "alive": _alive_list(alive),
            "loss": _mean(losses),
            "target_losses": losses,
            "scores": _to_json_scores(used),
            "first_order": _to_json_scores(used_first_order),
        })
        if on_step:
            on_step(hist)
    return hist


def _mean(losses: dict[str, float]) -> float:
    return sum(losses.values()) / len(losses)


def history_frame(history: list[dict], boot: Bootstrap | None = None) -> pl.DataFrame:
    """One row per pruning iteration: totals, mean loss over targets with its bootstrap
    interval (over targets), the number of targets, and the heads pruned at that step."""
    boot = boot or Bootstrap()
    rows, total = [], 0
    for r in history:
        total += len(r["pruned"])
        losses = np.array(list(r.get("target_losses", {}).values()), dtype=np.float64)
        _, low, high = bootstrap_means(losses, boot)
        rows.append({
            "iteration": int(r["iteration"]),
            "n_pruned_total": total,
            "n_alive": len(r["alive"]),
            "loss": float(r["loss"]),
            "ci_low": float(low[0]),
            "ci_high": float(high[0]),
            "n_targets": len(losses),
            "pruned": [head_name(l, h) for l, h in r["pruned"]],
        })
    schema = {"iteration": pl.Int64, "n_pruned_total": pl.Int64, "n_alive": pl.Int64, "loss": pl.Float64,
              "ci_low": pl.Float64, "ci_high": pl.Float64, "n_targets": pl.Int64, "pruned": pl.List(pl.Utf8)}
    return pl.DataFrame(rows, schema=schema)


# What each Taylor-versus-exact pair compares: an estimate against the exact quantity it estimates.
TAYLOR_PAIRS = (
    ("importance", "taylor", "abs_delta", "Taylor score: mean over targets of |dL/dmask|",
     "mean over targets of |delta|"),
    ("signed", "first_order", "delta", "first-order estimate: mean over targets of -dL/dmask",
     "mean over targets of delta"),
)
TAYLOR_HEADS_SCHEMA = {"layer": pl.Int64, "head": pl.Int64, "taylor": pl.Float64, "abs_delta": pl.Float64,
                       "first_order": pl.Float64, "delta": pl.Float64, "n_targets": pl.Int64}


def taylor_vs_exact_tables(history: list[dict], deltas: pl.DataFrame, ks=(5, 10, 20)) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Like with like: the Taylor score against mean |delta|, the signed first-order estimate
    against the signed mean delta, from the unpruned model's gradients (history row 1) and
    the per-target exact deltas of one ablation kind (the kind Taylor's mask used).

    Returns (summary: one row per pair with the agreement statistics, heads: one row per head).
    """
    if len(history) < 2 or deltas.is_empty():
        return pl.DataFrame(schema={"pair": pl.Utf8}), pl.DataFrame(schema=TAYLOR_HEADS_SCHEMA)
    kinds = deltas["ablation"].unique().to_list()
    if len(kinds) != 1:
        raise ValueError(f"deltas mix ablation kinds {sorted(kinds)}: pass one kind")
    per_head = deltas.group_by("layer", "head").agg(
        pl.col("delta").abs().mean().alias("abs_delta"), pl.col("delta").mean(), pl.len().alias("n_targets"),
    ).sort("layer", "head")
    taylor = _from_json_scores(history[1]["scores"])
    first_order = _from_json_scores(history[1]["first_order"])
    L, H = taylor.shape
    heads = pl.DataFrame({
        "layer": [l for l in range(L) for _ in range(H)], "head": list(range(H)) * L,
        "taylor": taylor.ravel(), "first_order": first_order.ravel(),
    }).join(per_head, on=["layer", "head"], how="left").select(list(TAYLOR_HEADS_SCHEMA)).cast(TAYLOR_HEADS_SCHEMA)
    rows = []
    for pair, est, exact, est_text, exact_text in TAYLOR_PAIRS:
        e = heads[est].to_numpy().reshape(L, H)
        x = heads[exact].fill_null(np.nan).to_numpy().reshape(L, H)
        rows.append({"pair": pair, "ablation": kinds[0], "estimate": est_text, "exact": exact_text,
                     "n_targets": int(per_head["n_targets"].min()),
                     **{k: float(v) for k, v in taylor_vs_exact(e, x, ks).items()}})
    return pl.DataFrame(rows), heads


def taylor_vs_exact(taylor: np.ndarray, exact: np.ndarray, ks=(5, 10, 20)) -> dict:
    """Agreement between Taylor scores and exact ablation deltas (both: larger = more important).

    Heads where either value is not finite (e.g. pruned) are left out. Returns Spearman and
    Kendall (tau-b) correlations with p-values, the number of heads compared, and for each
    k <= that number `top{k}_overlap`: the fraction of the k heads with the largest exact
    delta that are also among the k with the largest Taylor score (ties by (layer, head)).
    """
    from scipy import stats

    taylor = np.asarray(taylor, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    if taylor.shape != exact.shape or taylor.ndim != 2:
        raise ValueError(f"taylor {taylor.shape} and exact {exact.shape} must be the same [L, H] shape")
    ok = np.isfinite(taylor) & np.isfinite(exact)
    n = int(ok.sum())
    t, e = taylor[ok], exact[ok]
    out: dict = {"n_heads": n}
    if n >= 2:
        sp = stats.spearmanr(t, e)
        kt = stats.kendalltau(t, e)
        out.update(spearman=float(sp.statistic), spearman_p=float(sp.pvalue), kendall=float(kt.statistic), kendall_p=float(kt.pvalue))
    else:
        out.update(spearman=float("nan"), spearman_p=float("nan"), kendall=float("nan"), kendall_p=float("nan"))
    tm = np.where(ok, taylor, np.nan)
    em = np.where(ok, exact, np.nan)
    t_rank, e_rank = _ranked(tm, descending=True), _ranked(em, descending=True)
    for k in ks:
        if 1 <= k <= n:
            out[f"top{k}_overlap"] = len(set(t_rank[:k]) & set(e_rank[:k])) / k
    return out


def regime_heads(delta: np.ndarray, regime: dict, history: list[dict] | None = None) -> list[Head]:
    """Heads a pruning regime removes.

    - `{"kind": "top_k", "k": k}`: the k heads with the largest exact delta (most important first);
    - `{"kind": "bottom_fraction", "fraction": f}`: the floor(f * n) heads with the smallest delta;
    - `{"kind": "taylor", "iteration": i}`: every head pruned in Taylor iterations 1..i, in order;
    - `{"kind": "random", "k": k, "seed": s}`: k heads drawn uniformly without replacement (control).

    Delta ranks use finite values only; ties go by (layer, head).
    """
    delta = np.asarray(delta, dtype=np.float64)
    if delta.ndim != 2:
        raise ValueError(f"pruning regime {regime!r}: delta must be [L, H], got shape {delta.shape}")
    kind = regime.get("kind") if isinstance(regime, dict) else None
    n_total = delta.size

    def bad(msg):
        return ValueError(f"pruning regime {regime!r}: {msg}")

    def int_field(name, upper):
        v = regime.get(name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise bad(f"`{name}` must be an integer, got {v!r}")
        if not 0 <= v <= upper:
            raise bad(f"`{name}` = {v} is outside [0, {upper}]")
        return int(v)

    if kind == "top_k":
        ranked = _ranked(delta, descending=True)
        return ranked[: int_field("k", len(ranked))]
    if kind == "bottom_fraction":
        f = regime.get("fraction")
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f <= 1:
            raise bad(f"`fraction` must be a number in [0, 1], got {f!r}")
        ranked = _ranked(delta, descending=False)
        return ranked[: int(math.floor(f * len(ranked) + 1e-9))]
    if kind == "taylor":
        if not history:
            raise bad("needs a Taylor pruning history, and none was given")
        it = int_field("iteration", len(history) - 1)
        return [(int(l), int(h)) for r in history[1 : it + 1] for l, h in r["pruned"]]
    if kind == "random":
        k = int_field("k", n_total)
        seed = regime.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise bad(f"`seed` must be an integer, got {seed!r}")
        picks = np.random.default_rng(int(seed)).choice(n_total, size=k, replace=False)
        return sorted((int(i) // delta.shape[1], int(i) % delta.shape[1]) for i in picks)
    raise bad("`kind` must be one of top_k, bottom_fraction, taylor, random")
