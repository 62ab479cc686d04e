"""Attribution patching (rule attribution_patching): the first-order estimate of every exact
patching effect from two forwards and one backward (Nanda 2023; Syed et al. 2023).

Denoising: patched metric ~ M(corrupt) + (a_clean - a_corrupt) . dM/da at the corrupted run;
noising: M(clean) + (a_corrupt - a_clean) . dM/da at the clean run. Sites and normalisation
are those of `codeinterp.causal.patching`, so the estimate and the exact value compare row by
row. The head site is the head's output z (the input of the output projection): no softmax
lies between a patch of z and z itself, so the estimate needs no saturation fix there.

AtP* (Kramar et al. 2024, arXiv 2403.00745), implemented: the QK fix for the query and key
sites (`head_q`: one query head at one position; `head_k`: one KV head at one position).
Method `atp` is the plain first-order estimate (q' - q) . dM/dq; method `atp*` recomputes
the patched head's attention softmax exactly (`access.attention.query_fix`, `key_fix`) and
linearises only from the attention probabilities on: sum_t (A'_t - A_t) . dM/dA_t, with
dM/dA = dM/dz V^T read from the head output's gradient. A saturated softmax, whose gradient is
~0 although a patched key would move it, is thus no longer a false negative. Not implemented:
GradDrop (AtP*'s second part, a backward per layer with that layer's gradient dropped, against
cancellation between direct and indirect effects), and any fix for saturation in *downstream*
heads' softmax: that error stays in both methods, and `compare` measures it against the exact
patching.

`compare` puts the estimate beside the exact patching: per site kind, direction and
corruption, Spearman's rank correlation over (pair, setting) rows and the recall of the
exact top-k settings (by mean |effect| over pairs) among the estimate's top k.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from scipy.stats import spearmanr

from contextlib import ExitStack

from codeinterp.access.attention import key_fix, probe, query_fix, value_grad
from codeinterp.access.hooks import edit_site, site_names
from codeinterp.causal.pairs import PairBatch, logit_diff, pair_batches
from codeinterp.causal.patching import QK, embedding_noise
from codeinterp.uncertainty import Bootstrap, bootstrap_means


def _grads(model, batch: PairBatch, ids, noise, names, qk: bool = False):
    """Site values and dM/d(site) at one run (M summed over pairs: rows do not interact); with
    `qk`, also every layer's attention call (queries, keys and their gradients)."""
    kept: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(v):
            v.retain_grad()
            kept[name] = v
            return v
        return fn

    with ExitStack() as stack, torch.enable_grad():
        if noise is not None:
            stack.enter_context(edit_site(model, "resid.0", lambda v: v + noise.to(v.dtype)))
        # Frozen weights: the embeddings become a leaf that needs a gradient, so every site does.
        stack.enter_context(edit_site(model, "resid.0", lambda v: v.detach().requires_grad_(True)))
        for n in names:
            stack.enter_context(edit_site(model, n, keep(n)))
        calls = stack.enter_context(probe(model, keep_grad=True)) if qk else {}
        metric = logit_diff(model(input_ids=ids, attention_mask=batch.mask).logits, batch)
        metric.sum().backward()
    values = {n: v.detach() for n, v in kept.items()}
    grads = {n: v.grad.detach() for n, v in kept.items()}
    for layer, c in calls.items():
        values[f"head_q.{layer}"], grads[f"head_q.{layer}"] = c.query.detach(), c.query.grad.detach()
        values[f"head_k.{layer}"], grads[f"head_k.{layer}"] = c.key.detach(), c.key.grad.detach()
    detached = {layer: type(c)(c.query.detach(), c.key.detach(), c.value.detach(), c.mask.detach(), c.scaling,
                               c.softcap, c.weights.detach()) for layer, c in calls.items()}
    return values, grads, metric.detach(), detached


def estimate(model, pairs, *, kinds, directions, corruptions, noise_scale: float, noise_samples: int, seed: int,
             batch_size: int, pad_id: int = 0, qk_fix: bool = True) -> pl.DataFrame:
    """Per pair and setting: the estimated raw and normalised metric (same keys as the exact
    sweep, plus `method`: atp, and atp* for head_q/head_k when `qk_fix`)."""
    model.requires_grad_(False)
    qk_kinds = [k for k in kinds if k in QK]
    hooked = [k for k in kinds if k not in QK]
    # The QK fix reads dM/dA from the head outputs' gradient.
    names = site_names(model, tuple(hooked + (["head"] if qk_kinds and "head" not in hooked else [])))
    rows = []
    for batch in pair_batches(pairs, batch_size, pad_id, progress="attribution_patching"):
        for corruption in corruptions:
            noises = [None] if corruption == "counterfactual" else list(
                embedding_noise(model, batch, noise_scale, noise_samples, seed))
            for sample, noise in enumerate(noises):
                bad_ids = batch.clean if noise is not None else batch.corrupt
                clean_v, clean_g, clean_m, clean_c = _grads(model, batch, batch.clean, None, names, bool(qk_kinds))
                bad_v, bad_g, bad_m, bad_c = _grads(model, batch, bad_ids, noise, names, bool(qk_kinds))
                for direction in directions:
                    if direction == "denoising":
                        src, tgt, grad, base, calls = clean_v, bad_v, bad_g, bad_m, bad_c
                    else:
                        src, tgt, grad, base, calls = bad_v, clean_v, clean_g, clean_m, clean_c
                    ctx = (batch, corruption, sample, direction, base, clean_m, bad_m)
                    for name in site_names(model, tuple(hooked)):
                        kind, layer = name.split(".")
                        delta = ((src[name] - tgt[name]) * grad[name])
                        if kind == "head":
                            rows.extend(_head_rows(*ctx, int(layer), delta.sum(dim=(1, 3))))  # [B, H]
                        else:
                            rows.extend(_position_rows(*ctx, kind, int(layer), delta.sum(-1)))  # [B, T]
                    for layer, call in sorted(calls.items()):
                        rows.extend(_qk_rows(model, ctx, qk_kinds, layer, call, src, tgt, grad, qk_fix))
    table = pl.DataFrame(rows)
    keys = ["pair_id", "corruption", "direction", "site", "layer", "head", "position", "method"]
    return table.group_by(keys, maintain_order=True).agg(
        pl.col("source", "depth", "from_end").first(), pl.col("estimate", "normalised").mean())


def _qk_rows(model, ctx, qk_kinds, layer, call, src, tgt, grad, qk_fix):
    rows = []
    grad_a = value_grad(call, grad[f"head.{layer}"]) if qk_fix else None
    for kind in qk_kinds:
        name = f"{kind}.{layer}"
        effects = {"atp": ((src[name] - tgt[name]) * grad[name]).sum(-1).float()}  # [B, heads, T]
        if qk_fix:
            fix = query_fix if kind == "head_q" else key_fix
            effects["atp*"] = fix(call, src[name], grad_a)
        for method, effect in effects.items():
            rows.extend(_position_rows(*ctx, kind, layer, effect, method=method))
    return rows


def _norm(value, clean, bad):
    gap = clean - bad
    return float((value - bad) / gap) if abs(float(gap)) > 1e-6 else float("nan")


def _position_rows(batch, corruption, sample, direction, base, clean_m, bad_m, kind, layer, effect, method="atp"):
    """`effect`: [B, T] (one row per position) or [B, heads, T] (head_q, head_k)."""
    rows = []
    per_head = effect.dim() == 3
    for i, p in enumerate(batch.pairs):
        for h in range(effect.shape[1] if per_head else 1):
            for t in range(p.length):
                value = float(base[i] + (effect[i, h, t] if per_head else effect[i, t]))
                rows.append({"pair_id": p.pair_id, "source": p.source, "depth": p.depth, "corruption": corruption,
                             "sample": sample, "direction": direction, "site": kind, "layer": layer,
                             "head": h if per_head else -1, "position": t, "from_end": t - p.length, "method": method,
                             "estimate": value, "normalised": _norm(value, clean_m[i], bad_m[i])})
    return rows


def _head_rows(batch, corruption, sample, direction, base, clean_m, bad_m, layer, effect):
    rows = []
    for i, p in enumerate(batch.pairs):
        for h in range(effect.shape[1]):
            value = float(base[i] + effect[i, h])
            rows.append({"pair_id": p.pair_id, "source": p.source, "depth": p.depth, "corruption": corruption,
                         "sample": sample, "direction": direction, "site": "head", "layer": layer, "head": h,
                         "position": -1, "from_end": 0, "method": "atp", "estimate": value,
                         "normalised": _norm(value, clean_m[i], bad_m[i])})
    return rows


def top_settings(approx: pl.DataFrame, k: int, method: str = "atp") -> set:
    """The k settings per site kind with the largest mean |estimated effect| over pairs, as
    (site, layer, head, from_end): the prefilter for `patching.sweep(only=...)`, which then
    verifies them exactly. Effect: normalised (denoising) or 1 - normalised (noising)."""
    best = {m: m for m in approx["method"].unique()}.get(method, "atp")
    effect = pl.when(pl.col("direction") == "denoising").then(pl.col("normalised")).otherwise(1 - pl.col("normalised"))
    ranked = (approx.filter(pl.col("method") == best).with_columns(effect.abs().alias("effect")).drop_nans("effect")
              .group_by("site", "layer", "head", "from_end").agg(pl.col("effect").mean())
              .sort(["site", "effect", "layer", "head", "from_end"], descending=[False, True, False, False, False])
              .group_by("site", maintain_order=True).head(k))
    return set(ranked.select("site", "layer", "head", "from_end").rows())


def compare(exact: pl.DataFrame, approx: pl.DataFrame, top_k: int, boot: Bootstrap) -> pl.DataFrame:
    """Per (corruption, direction, site, method): Spearman rho over the (pair, setting) rows
    present in both, with a bootstrap interval over pairs, and top-k recall of settings."""
    keys = ["pair_id", "corruption", "direction", "site", "layer", "head", "position"]
    exact = exact.filter(pl.col("computed")) if "computed" in exact.columns else exact
    # A join's row order is not fixed (threads): sorted, so that sums and ties come out the same every run.
    joined = exact.select(*keys, pl.col("normalised").alias("exact")).join(
        approx.select(*keys, "method", pl.col("normalised").alias("approx")), on=keys, how="inner").drop_nans()
    joined = joined.sort("corruption", "direction", "site", "method", "pair_id", "layer", "head", "position")
    out = []
    for key, part in joined.group_by(["corruption", "direction", "site", "method"], maintain_order=True):
        pair_ids = sorted(part["pair_id"].unique().to_list())
        rho = _rho(part)
        per_pair = np.array([[_rho(part.filter(pl.col("pair_id") == p))] for p in pair_ids])
        per_pair = per_pair[~np.isnan(per_pair[:, 0])]
        mean, low, high = bootstrap_means(per_pair, boot) if len(per_pair) else (np.array([np.nan]),) * 3
        settings = part.group_by("layer", "head", "position", maintain_order=True).agg(
            pl.col("exact").abs().mean(), pl.col("approx").abs().mean())
        k = min(top_k, len(settings))
        top_exact, top_approx = (set(settings.sort([c, "layer", "head", "position"], descending=[True, False, False, False])
                                     .head(k).select("layer", "head", "position").rows()) for c in ("exact", "approx"))
        out.append(dict(zip(["corruption", "direction", "site", "method"], key)) | {
            "spearman": rho, "per_pair_spearman": float(mean[0]), "per_pair_spearman_ci_low": float(low[0]),
            "per_pair_spearman_ci_high": float(high[0]), "n_pairs": len(pair_ids), "n_rows": len(part),
            "top_k": k, "top_k_recall": len(top_exact & top_approx) / k if k else float("nan")})
    return pl.DataFrame(out)


def _rho(part: pl.DataFrame) -> float:
    if len(part) < 3 or part["exact"].n_unique() < 2 or part["approx"].n_unique() < 2:
        return float("nan")
    return float(spearmanr(part["exact"].to_numpy(), part["approx"].to_numpy()).statistic)
