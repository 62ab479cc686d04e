"""Attribution patching (rule attribution_patching): the first-order estimate of every exact
patching effect from two forwards and one backward (Nanda 2023; Syed et al. 2023).

Denoising: patched metric ~ M(corrupt) + (a_clean - a_corrupt) . dM/da at the corrupted run;
noising: M(clean) + (a_corrupt - a_clean) . dM/da at the clean run. Sites and normalisation
are those of `codeinterp.causal.patching`, so the estimate and the exact value compare row by
row. The head site is the head's output z (the input of the output projection): no softmax
lies between a patch of z and z itself, so the estimate needs no saturation fix there. AtP*'s
QK fix (Kramar et al. 2024, arXiv 2403.00745) concerns patching a head's queries and keys
through its own softmax, a site this module does not offer yet; GradDrop is not implemented
either. Saturation of downstream heads' softmax is a source of error this estimate keeps, and
`compare` measures it against the exact patching.

`compare` puts the estimate beside the exact patching: per site kind, direction and
corruption, Spearman's rank correlation over (pair, setting) rows and the recall of the
exact top-k settings (by mean |effect| over pairs) among the estimate's top k.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch
from scipy.stats import spearmanr

from codeinterp.access.architectures import layout
from codeinterp.access.hooks import edit_site, site_names
from codeinterp.causal.pairs import PairBatch, logit_diff, pair_batches
from codeinterp.causal.patching import embedding_noise
from codeinterp.uncertainty import Bootstrap, bootstrap_means


def _grads(model, batch: PairBatch, ids, noise, names):
    """Site values and dM/d(site) at one run (M summed over pairs: rows do not interact)."""
    kept: dict[str, torch.Tensor] = {}

    def keep(name):
        def fn(v):
            v.retain_grad()
            kept[name] = v
            return v
        return fn

    edits = []
    if noise is not None:
        edits.append(edit_site(model, "resid.0", lambda v: v + noise.to(v.dtype)))
    # Frozen weights: the embeddings become a leaf that needs a gradient, so every site does.
    edits.append(edit_site(model, "resid.0", lambda v: v.detach().requires_grad_(True)))
    edits += [edit_site(model, n, keep(n)) for n in names]
    for e in edits:
        e.__enter__()
    try:
        with torch.enable_grad():
            metric = logit_diff(model(input_ids=ids, attention_mask=batch.mask).logits, batch)
            metric.sum().backward()
    finally:
        for e in reversed(edits):
            e.__exit__(None, None, None)
    return {n: v.detach() for n, v in kept.items()}, {n: v.grad.detach() for n, v in kept.items()}, metric.detach()


def estimate(model, pairs, *, kinds, directions, corruptions, noise_scale: float, noise_samples: int, seed: int,
             batch_size: int, pad_id: int = 0) -> pl.DataFrame:
    """Per pair and setting: the estimated raw and normalised metric (same keys as the exact sweep)."""
    lay = layout(model)
    n = len(lay.blocks)
    model.requires_grad_(False)
    names = site_names(model, tuple(k for k in kinds))
    rows = []
    for batch in pair_batches(pairs, batch_size, pad_id):
        for corruption in corruptions:
            noises = [None] if corruption == "counterfactual" else list(
                embedding_noise(model, batch, noise_scale, noise_samples, seed))
            for sample, noise in enumerate(noises):
                bad_ids = batch.clean if noise is not None else batch.corrupt
                clean_v, clean_g, clean_m = _grads(model, batch, batch.clean, None, names)
                bad_v, bad_g, bad_m = _grads(model, batch, bad_ids, noise, names)
                for direction in directions:
                    if direction == "denoising":
                        src, tgt, grad, base = clean_v, bad_v, bad_g, bad_m
                    else:
                        src, tgt, grad, base = bad_v, clean_v, clean_g, clean_m
                    for name in names:
                        kind, layer = name.split(".")
                        delta = ((src[name] - tgt[name]) * grad[name])
                        if kind == "head":
                            effect = delta.sum(dim=(1, 3))  # [B, H]
                            rows.extend(_head_rows(batch, corruption, sample, direction, int(layer), effect, base,
                                                   clean_m, bad_m))
                        else:
                            effect = delta.sum(-1)  # [B, T]
                            rows.extend(_position_rows(batch, corruption, sample, direction, kind, int(layer), effect,
                                                       base, clean_m, bad_m))
    table = pl.DataFrame(rows)
    keys = ["pair_id", "corruption", "direction", "site", "layer", "head", "position", "method"]
    return table.group_by(keys, maintain_order=True).agg(
        pl.col("source", "depth", "from_end").first(), pl.col("estimate", "normalised").mean())


def _norm(value, clean, bad):
    gap = clean - bad
    return float((value - bad) / gap) if abs(float(gap)) > 1e-6 else float("nan")


def _position_rows(batch, corruption, sample, direction, kind, layer, effect, base, clean_m, bad_m):
    rows = []
    for i, p in enumerate(batch.pairs):
        for t in range(p.length):
            value = float(base[i] + effect[i, t])
            rows.append({"pair_id": p.pair_id, "source": p.source, "depth": p.depth, "corruption": corruption,
                         "sample": sample, "direction": direction, "site": kind, "layer": layer, "head": -1,
                         "position": t, "from_end": t - p.length, "method": "atp", "estimate": value,
                         "normalised": _norm(value, clean_m[i], bad_m[i])})
    return rows


def _head_rows(batch, corruption, sample, direction, layer, effect, base, clean_m, bad_m):
    rows = []
    for i, p in enumerate(batch.pairs):
        for h in range(effect.shape[1]):
            value = float(base[i] + effect[i, h])
            rows.append({"pair_id": p.pair_id, "source": p.source, "depth": p.depth, "corruption": corruption,
                         "sample": sample, "direction": direction, "site": "head", "layer": layer, "head": h,
                         "position": -1, "from_end": 0, "method": "atp", "estimate": value,
                         "normalised": _norm(value, clean_m[i], bad_m[i])})
    return rows


def compare(exact: pl.DataFrame, approx: pl.DataFrame, top_k: int, boot: Bootstrap) -> pl.DataFrame:
    """Per (corruption, direction, site, method): Spearman rho over the (pair, setting) rows
    present in both, with a bootstrap interval over pairs, and top-k recall of settings."""
    keys = ["pair_id", "corruption", "direction", "site", "layer", "head", "position"]
    exact = exact.filter(pl.col("computed")) if "computed" in exact.columns else exact
    joined = exact.select(*keys, pl.col("normalised").alias("exact")).join(
        approx.select(*keys, "method", pl.col("normalised").alias("approx")), on=keys, how="inner").drop_nans()
    out = []
    for key, part in joined.sort("corruption", "direction", "site", "method").group_by(
            ["corruption", "direction", "site", "method"], maintain_order=True):
        pair_ids = sorted(part["pair_id"].unique().to_list())
        rho = _rho(part)
        per_pair = np.array([[_rho(part.filter(pl.col("pair_id") == p))] for p in pair_ids])
        per_pair = per_pair[~np.isnan(per_pair[:, 0])]
        mean, low, high = bootstrap_means(per_pair, boot) if len(per_pair) else (np.array([np.nan]),) * 3
        settings = part.group_by("layer", "head", "position").agg(pl.col("exact").abs().mean(), pl.col("approx").abs().mean())
        k = min(top_k, len(settings))
        top_exact = set(settings.sort("exact", descending=True).head(k).select("layer", "head", "position").rows())
        top_approx = set(settings.sort("approx", descending=True).head(k).select("layer", "head", "position").rows())
        out.append(dict(zip(["corruption", "direction", "site", "method"], key)) | {
            "spearman": rho, "per_pair_spearman": float(mean[0]), "per_pair_spearman_ci_low": float(low[0]),
            "per_pair_spearman_ci_high": float(high[0]), "n_pairs": len(pair_ids), "n_rows": len(part),
            "top_k": k, "top_k_recall": len(top_exact & top_approx) / k if k else float("nan")})
    return pl.DataFrame(out)


def _rho(part: pl.DataFrame) -> float:
    if len(part) < 3 or part["exact"].n_unique() < 2 or part["approx"].n_unique() < 2:
        return float("nan")
    return float(spearmanr(part["exact"].to_numpy(), part["approx"].to_numpy()).statistic)
