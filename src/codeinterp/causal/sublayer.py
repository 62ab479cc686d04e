"""Zero and mean ablation of each layer's attention output and MLP output (rule sublayer_ablation).

A half (`attn.{l}` or `mlp.{l}`: what it adds to the residual stream) is replaced at every
position by zero or by its mean over the task's clean prompts (every real position of every
pair, computed in a first pass), and the clean logit difference (clean minus counterfactual
answer token, last position) is read again. Blocks below the ablated layer are untouched, so
the ablated runs start from the intact run's residual stream at that layer (`BlockRunner`), with
every ablation of one layer on the batch axis, and only the last positions go through the
unembedding. That fast path is compared with the model's own forward (`edit_site`) on the first
batch of every run, and a disagreement stops the run (`RunnerMismatch`).

Per (ablation, half, layer): the mean change `delta` (negative: the half was needed), the
ablated and intact logit differences, and `fraction` = mean delta / mean intact, each with a
seeded bootstrap interval over pairs (the fraction's from the same resamples as a ratio of
means, never a mean of per-pair ratios, which explode near a zero logit difference). Summary
rows (`layer` = -1): the summed |delta| over layers of attention and of the MLPs, and their
paired difference `attn - mlp` (positive: attention matters more).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from codeinterp.access.architectures import BlockRunner, RunnerMismatch, layout
from codeinterp.access.hooks import capture, edit_site, site_names
from codeinterp.causal.pairs import Pair, PairBatch, logit_diff, pair_batches
from codeinterp.uncertainty import MIN_UNITS, Bootstrap, summarise_columns

HALVES = ("attn", "mlp")


@dataclass(frozen=True)
class Ablation:
    half: str  # attn | mlp
    layer: int
    kind: str  # zero | mean

    @property
    def site(self) -> str:
        return f"{self.half}.{self.layer}"


@torch.no_grad()
def site_means(model, pairs: list[Pair], names: list[str], batch_size: int, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Each site's mean [D] over the clean prompts' real positions (padding excluded), float32."""
    total: dict[str, torch.Tensor] = {}
    count = 0
    for batch in pair_batches(pairs, batch_size, pad_id, progress="sublayer_ablation means"):
        real = batch.mask.bool()
        with capture(model, names, select=lambda v: v[real].float().sum(0)) as got:
            model(input_ids=batch.clean, attention_mask=batch.mask)
        for name in names:
            total[name] = total.get(name, 0) + got[name][0]
        count += int(real.sum())
    return {k: v / max(count, 1) for k, v in total.items()}


def _fill(name: str, ablations: list[Ablation], B: int, means: dict[str, torch.Tensor]):
    """A hook fn writing, in copy r of the batch, zero or the mean where ablations[r] ablates `name`."""
    def fn(value):
        value = value.clone()
        for r, a in enumerate(ablations):
            if a.site == name:
                rows = slice(r * B, (r + 1) * B)
                value[rows] = 0 if a.kind == "zero" else means[name].to(value.dtype)
        return value
    return fn


class Ablator:
    """One batch of pairs: the intact run's residual stream and logit difference, and ablated
    runs of one layer at a time started from it."""

    def __init__(self, model, batch: PairBatch, means: dict[str, torch.Tensor]):
        self.model, self.batch, self.means = model, batch, means
        self.lay = layout(model)
        self.n = len(self.lay.blocks)
        self.runner = BlockRunner(model, batch.mask)
        with torch.no_grad(), capture(model, [f"resid.{l}" for l in range(self.n)]) as got:
            logits = model(input_ids=batch.clean, attention_mask=batch.mask).logits
        self.resid = [got[f"resid.{l}"][0] for l in range(self.n)]
        self.intact = logit_diff(logits, batch)

    @torch.no_grad()
    def run(self, ablations: list[Ablation]) -> torch.Tensor:
        """[len(ablations), B] logit differences; all ablations of one call share a layer."""
        layer = ablations[0].layer
        if any(a.layer != layer for a in ablations):
            raise ValueError("one call ablates one layer")
        B, R = len(self.batch), len(ablations)
        resid = self.resid[layer].repeat(R, 1, 1)
        with ExitStack() as stack:
            for name in sorted({a.site for a in ablations}):
                stack.enter_context(edit_site(self.model, name, _fill(name, ablations, B, self.means)))
            final = self.runner.run(resid, layer)
        return self._diff(final, R)

    def _diff(self, final: torch.Tensor, R: int) -> torch.Tensor:
        B = len(self.batch)
        logits = self.lay.logits(final[torch.arange(R * B), self.batch.last.repeat(R)])
        rows = torch.arange(R * B)
        diff = logits[rows, self.batch.clean_token.repeat(R)] - logits[rows, self.batch.corrupt_token.repeat(R)]
        return diff.view(R, B)

    @torch.no_grad()
    def check(self, ablations: list[Ablation]) -> None:
        """Stop unless the fast path is the model: the intact run from the embeddings, and each
        given ablation, agree with the model's own forward."""
        _close(self._diff(self.runner.run(self.resid[0].clone(), 0), 1)[0], self.intact, "the intact run")
        for a in ablations:
            fast = self.run([a])[0]
            with edit_site(self.model, a.site, _fill(a.site, [a], len(self.batch), self.means)):
                slow = logit_diff(self.model(input_ids=self.batch.clean, attention_mask=self.batch.mask).logits,
                                  self.batch)
            _close(fast, slow, f"{a.kind} ablation of {a.site}")


def _close(fast: torch.Tensor, slow: torch.Tensor, what: str, rtol: float = 1e-3) -> None:
    err = float((fast.float() - slow.float()).abs().max())
    if not err <= rtol * float(slow.abs().max().clamp_min(1.0)):
        raise RunnerMismatch(f"sublayer_ablation: {what} through the block runner differs from the model's forward "
                             f"by {err:.2e}; refusing to report ablation effects")


def ablate(model, pairs: list[Pair], kinds: list[str], batch_size: int, pad_id: int = 0,
           check_first: bool = True) -> pl.DataFrame:
    """One row per (pair, ablation): the ablated and intact logit differences and their change."""
    n = len(layout(model).blocks)
    names = site_names(model, HALVES)
    means = site_means(model, pairs, names, batch_size, pad_id) if "mean" in kinds else {}
    rows = []
    checked = not check_first
    for batch in pair_batches(pairs, batch_size, pad_id, progress="sublayer_ablation"):
        ablator = Ablator(model, batch, means)
        if not checked:
            ablator.check([Ablation("attn", 0, kinds[0]), Ablation("mlp", n - 1, kinds[-1])])
            checked = True
        base = ablator.intact
        for layer in range(n):
            group = [Ablation(half, layer, kind) for half in HALVES for kind in kinds]
            for a, ld in zip(group, ablator.run(group)):
                for i, p in enumerate(batch.pairs):
                    rows.append({"pair_id": p.pair_id, "source": p.source, "kind": p.kind, "depth": p.depth,
                                 "ablation": a.kind, "half": a.half, "layer": layer, "logit_diff": float(ld[i]),
                                 "delta": float(ld[i] - base[i]), "intact": float(base[i])})
    return pl.DataFrame(rows)


def ratio_interval(num: np.ndarray, den: np.ndarray, boot: Bootstrap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """mean(num[:, g]) / mean(den) over pairs [n], with a percentile interval from the resampled
    pairs (the same draws as `bootstrap_means`); NaN below MIN_UNITS pairs."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    n, g = num.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num.mean(0) / den.mean() if n else np.full(g, np.nan)
        if n < MIN_UNITS:
            return ratio, np.full(g, np.nan), np.full(g, np.nan)
        idx = np.random.default_rng(boot.seed).integers(0, n, size=(boot.resamples, n))
        draws = num[idx].mean(1) / den[idx].mean(1)[:, None]  # [resamples, g]
    alpha = (1 - boot.confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha], axis=0)
    return ratio, low, high


def _fractions(per: pl.DataFrame, table: pl.DataFrame, boot: Bootstrap) -> pl.DataFrame:
    key = pl.format("{}|{}|{}", "ablation", "half", "layer").alias("key")
    wide = per.with_columns(key).pivot(on="key", index="pair_id", values="delta", sort_columns=False)
    intact = per.group_by("pair_id").agg(pl.col("intact").first())
    wide = wide.join(intact, on="pair_id", how="left", maintain_order="left")
    cols = table.select(key)["key"].to_list()
    frac, low, high = ratio_interval(wide.select(cols).to_numpy(), wide["intact"].to_numpy(), boot)
    return table.with_columns(pl.Series("fraction", frac), pl.Series("fraction_ci_low", low),
                              pl.Series("fraction_ci_high", high))


def summarise(per: pl.DataFrame, boot: Bootstrap) -> pl.DataFrame:
    """Per-layer rows with intervals over pairs, then the attention-versus-MLP summary rows."""
    by = ["ablation", "half", "layer"]
    table = _fractions(per, summarise_columns(per, "pair_id", by, ["delta", "logit_diff", "intact"], boot), boot)
    total = per.group_by("pair_id", "ablation", "half").agg(pl.col("delta").abs().sum().alias("delta"))
    diff = total.pivot(on="half", index=["pair_id", "ablation"], values="delta").with_columns(
        (pl.col("attn") - pl.col("mlp")).alias("delta"), pl.lit("attn - mlp").alias("half"))
    parts = [table]
    for part in (total, diff.select("pair_id", "ablation", "half", "delta")):
        part = part.with_columns(pl.lit(-1).alias("layer"))
        parts.append(summarise_columns(part, "pair_id", by, ["delta"], boot))
    return pl.concat(parts, how="diagonal_relaxed").sort(by)


def sublayer_ablation(model, pairs: list[Pair], kinds: list[str], batch_size: int, boot: Bootstrap,
                      pad_id: int = 0) -> pl.DataFrame:
    """The rule's table: `summarise(ablate(...))`."""
    return summarise(ablate(model, pairs, list(kinds), batch_size, pad_id), boot)
