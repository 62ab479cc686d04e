"""The counting study of bracket closing (rule head_roles), per attention head.

For every head, at the last position of each clean brackets prompt:
- direct logit attribution (DLA): the head's output through its slice of the output projection,
  the final norm linearised at the pair's last residual state (`Layout.frozen_norm`) and the
  unembedding, read as the right closer's logit minus the counterfactual one's. The parts of the
  last residual state (embeddings, every head, attention biases, every MLP) add up to the logit
  difference; a head with positive DLA promotes the right closer directly.
- attention from the last position to the still-open openers and to the tokens of pairs already
  closed on the line (probability mass, eager attention's own pattern).
- counting: Spearman's correlation, over pairs, of the head's output projected on the closer
  direction (the unit vector of the clean answer token's unembedding minus the counterfactual
  one's, after the linearised norm: the head's DLA per unit of that direction's length) with
  the number of closed pairs and with the number of still-open brackets (the depth), with
  bootstrap intervals over pairs. A projection below the float resolution of the residual stream
  at that position (eps of the compute dtype x the norm of the linearised final state: the
  largest a rounding of that state can move any unit-direction projection) is rounding, not
  signal, and is read as 0: a head whose output cancels to zero in exact arithmetic (+k and -k
  terms) must not rank its rounding noise as a count.

The linearised norm is a first-order reading: the scale of the final norm is frozen at the
clean run's last residual state (as TransformerLens does with ln_final's cached scale), so
each head's part is what it adds to the logits when every other part is held fixed.
A head "tracks a count" when, for the closed or the open count, its interval excludes 0 and its
|rho| exceeds the chance level of the largest |rho| among all heads under shuffled counts
(`max_null`: many heads are tested at once), and it is among the `top_k` by |rho|; it
"promotes the right closer" when its mean DLA's interval lies above 0.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import torch
from scipy.stats import rankdata

from codeinterp.access.architectures import head_out_weights, layout
from codeinterp.access.hooks import capture
from codeinterp.causal.pairs import Pair, pair_batches
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import MIN_UNITS, Bootstrap, bootstrap_means


@torch.no_grad()
def head_measures(model, pairs: list[Pair], batch_size: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Per pair x (layer, head): dla, projection, attention to open and to closed brackets;
    plus per pair the logit difference, the DLA of everything that is not a head, depth, n_closed."""
    lay = layout(model)
    n, H = len(lay.blocks), lay.n_heads
    W = [head_out_weights(model, l).float() for l in range(n)]  # [H, d, D]
    U = lay.unembed.weight.float()
    names = [f"head.{l}" for l in range(n)] + [f"resid.{n}"]
    out = {k: [] for k in ("dla", "proj", "attn_open", "attn_closed", "logit_diff", "rest", "depth", "n_closed")}
    for batch in pair_batches(pairs, batch_size, pad_id, progress="head_roles"):
        B = len(batch)
        rows = torch.arange(B)
        with capture(model, names, select=lambda v: v[rows, batch.last]) as got:
            res = model(input_ids=batch.clean, attention_mask=batch.mask, output_attentions=True)
        final = got[f"resid.{n}"][0].float()  # [B, D]
        eps = torch.finfo(got[f"resid.{n}"][0].dtype).eps
        direction = U[batch.clean_token] - U[batch.corrupt_token]  # [B, D]
        unit = direction.norm(dim=-1).clamp_min(1e-12)  # [B]
        dla = torch.zeros(B, n, H)
        proj = torch.zeros(B, n, H)
        for l in range(n):
            z = got[f"head.{l}"][0].float()  # [B, H, d]
            parts = torch.einsum("bhd,hdk->bhk", z, W[l])  # [B, H, D]
            normed = lay.frozen_norm(final[:, None, :].expand_as(parts), parts)
            dla[:, l] = (normed * direction[:, None]).sum(-1)
            proj[:, l] = dla[:, l] / unit[:, None]
        whole_normed = lay.frozen_norm(final, final)
        whole = (whole_normed * direction).sum(-1)
        resolution = eps * whole_normed.norm(dim=-1)  # [B]
        proj = torch.where(proj.abs() <= resolution[:, None, None], torch.zeros_like(proj), proj)
        attn = torch.stack([a[rows, :, batch.last] for a in res.attentions], 1).float()  # [B, n, H, T]
        for i, p in enumerate(batch.pairs):
            out["attn_open"].append(attn[i][..., list(p.open_positions)].sum(-1).numpy())
            out["attn_closed"].append(attn[i][..., list(p.closed_positions)].sum(-1).numpy())
        out["dla"].append(dla.numpy())
        out["proj"].append(proj.numpy())
        out["logit_diff"].append(whole.numpy())
        out["rest"].append((whole - dla.sum((1, 2))).numpy())
        out["depth"].append(np.array([p.depth for p in batch.pairs]))
        out["n_closed"].append(np.array([p.n_closed for p in batch.pairs]))
    return {k: (np.concatenate(v) if k not in ("attn_open", "attn_closed") else np.stack(v)) for k, v in out.items()}


def _spearman_ci(x: np.ndarray, Y: np.ndarray, boot: Bootstrap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman rho of x [N] with each column of Y [N, G], and percentile intervals from
    resampling pairs (NaN intervals below MIN_UNITS pairs or when x is constant)."""
    def rho(xs, Ys):
        rx = rankdata(xs)
        rY = rankdata(Ys, axis=0)
        rx, rY = rx - rx.mean(), rY - rY.mean(0)
        den = np.sqrt((rx**2).sum() * (rY**2).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (rx[:, None] * rY).sum(0) / den, np.nan)

    G = Y.shape[1]
    full = rho(x, Y)
    if len(x) < MIN_UNITS or np.unique(x).size < 2:
        return full, np.full(G, np.nan), np.full(G, np.nan)
    rng = np.random.default_rng(boot.seed)
    draws = np.stack([rho(x[idx], Y[idx]) for idx in rng.integers(0, len(x), size=(boot.resamples, len(x)))])
    alpha = (1 - boot.confidence) / 2
    with warnings.catch_warnings():  # a head whose output never varies has no rho in any resample
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(draws, [alpha, 1 - alpha], axis=0)
    return full, low, high


def max_null(x: np.ndarray, Y: np.ndarray, boot: Bootstrap) -> float:
    """The `boot.confidence` quantile of max over heads of |Spearman rho| of x with the columns of
    Y when x is shuffled across pairs (`boot.resamples` seeded permutations): a |rho| above it is
    not explained by chance across all the heads tested (family-wise, Westfall and Young's
    max-statistic). NaN below MIN_UNITS pairs or when x or every column is constant."""
    def unit(r):
        r = r - r.mean(0)
        norm = np.sqrt((r**2).sum(0))
        return np.divide(r, norm, out=np.zeros_like(r), where=norm > 0)

    if len(x) < MIN_UNITS or np.unique(x).size < 2:
        return float("nan")
    rY = unit(rankdata(Y, axis=0))
    if not rY.any():
        return float("nan")
    rx = unit(rankdata(x))
    rng = np.random.default_rng(boot.seed)
    perms = np.stack([rx[rng.permutation(len(x))] for _ in range(boot.resamples)])  # [P, N]
    return float(np.quantile(np.abs(perms @ rY).max(1), boot.confidence))


def head_roles(model, pairs: list[Pair], batch_size: int, top_k: int, boot: Bootstrap, pad_id: int = 0) -> pl.DataFrame:
    """One row per (layer, head), n = pairs; see the module docstring for the columns and flags."""
    other = sorted({p.task for p in pairs} - {"brackets"})
    if other:
        raise ConfigError(f"head_roles: pairs of task {', '.join(other)}; the counting study needs brackets pairs")
    m = head_measures(model, pairs, batch_size, pad_id)
    N, n, H = m["dla"].shape
    flat = {k: m[k].reshape(N, n * H) for k in ("dla", "proj", "attn_open", "attn_closed")}
    cols = {}
    for k in ("dla", "attn_open", "attn_closed"):
        mean, low, high = bootstrap_means(flat[k], boot)
        cols |= {k: mean, f"{k}_ci_low": low, f"{k}_ci_high": high}
    for count in ("n_closed", "depth"):
        x = m[count].astype(float)
        rho, low, high = _spearman_ci(x, flat["proj"], boot)
        cols |= {f"rho_{count}": rho, f"rho_{count}_ci_low": low, f"rho_{count}_ci_high": high,
                 f"rho_{count}_null": np.full(n * H, max_null(x, flat["proj"], boot))}
    table = pl.DataFrame({"layer": np.repeat(np.arange(n), H), "head": np.tile(np.arange(H), n), **cols,
                          "n": np.full(n * H, N)})
    strength = np.nan_to_num(np.abs(np.stack([cols["rho_n_closed"], cols["rho_depth"]])), nan=0.0).max(0) \
        if N else np.zeros(n * H)
    order = np.argsort(-strength, kind="stable")
    top = np.zeros(n * H, dtype=bool)
    top[order[:top_k]] = True
    excl = np.zeros(n * H, dtype=bool)
    for count in ("n_closed", "depth"):
        lo, hi = cols[f"rho_{count}_ci_low"], cols[f"rho_{count}_ci_high"]
        beyond_chance = np.abs(np.nan_to_num(cols[f"rho_{count}"], nan=0)) > np.nan_to_num(cols[f"rho_{count}_null"], nan=np.inf)
        excl |= ((np.nan_to_num(lo, nan=0) > 0) | (np.nan_to_num(hi, nan=0) < 0)) & beyond_chance
    return table.with_columns(
        pl.Series("counting", top & excl), pl.Series("promotes", np.nan_to_num(cols["dla_ci_low"], nan=0) > 0),
        pl.Series("count_strength", strength),
        pl.lit(float(np.mean(m["logit_diff"])) if N else float("nan")).alias("mean_logit_diff"),
    )
