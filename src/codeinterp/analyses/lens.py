"""The `layer_lens` stage: logit-lens and tuned-lens statistics per layer on the scored tokens.

The lens (a map from a residual state to logits) is kept apart from the statistics computed
on its output, as tuned-lens does. Layer l is the residual stream after l blocks (site
`resid.{l}` of `codeinterp.access.hooks`: l = 0 is the embeddings, l = n the last block's
output before the final norm); every lens reads it through the model's own readout (final
norm, unembedding, softcapping), so at l = n the logit lens is the model's output.

Rows carry `lens` (logit | tuned) and `split` (all | heldout): the logit lens on every target,
and both lenses on the targets of the problems held out from tuned-lens training, so that the
two are compared on the same tokens. The tuned lens at the last layer is the identity.
"""

from __future__ import annotations

import polars as pl
import torch

from codeinterp.access.architectures import layout
from codeinterp.access.hooks import capture
from codeinterp.access.scoring import Batch, Target, batches
from codeinterp.uncertainty import Bootstrap, summarise_columns

TOKEN_SCHEMA = {
    "target_id": pl.Utf8,
    "lens": pl.Utf8,
    "split": pl.Utf8,
    "layer": pl.Int64,
    "position": pl.Int64,  # index of the scored token (predicted from position - 1)
    "token_id": pl.Int64,
    "entropy": pl.Float64,
    "cross_entropy": pl.Float64,
    "rank": pl.Int64,  # rank of the true token under the lens (0 = top)
    "top1_correct": pl.Boolean,
    "top1_agree": pl.Boolean,  # the lens's argmax is the model output's argmax
    "kl_to_final": pl.Float64,
}
STATISTICS = ["entropy", "cross_entropy", "rank", "top1_accuracy", "top1_agreement", "kl_to_final"]
GROUPS = ["lens", "split", "segment", "outcome", "layer"]


def statistics(logits: torch.Tensor, labels: torch.Tensor, final_logp: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Entropy (nats), cross-entropy and rank of the true token, top-1 hit, and, given the
    output distribution, KL(final || lens) and agreement of the two argmaxes."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    true = logits.gather(-1, labels[:, None])
    out = {
        "entropy": -(logp.exp() * logp).sum(-1),
        "cross_entropy": -logp.gather(-1, labels[:, None])[:, 0],
        "rank": (logits > true).sum(-1),
        "top1_correct": logits.argmax(-1) == labels,
    }
    if final_logp is not None:
        out["top1_agree"] = logits.argmax(-1) == final_logp.argmax(-1)
        out["kl_to_final"] = (final_logp.exp() * (final_logp - logp)).sum(-1)
    return out


def _frame(batch: Batch, keep: torch.Tensor, layer: int, lens: str, split: str, stats: dict) -> pl.DataFrame:
    owners = batch.owner[keep].tolist()
    return pl.DataFrame(
        {
            "target_id": [batch.target_ids[i] for i in owners],
            "lens": [lens] * len(owners), "split": [split] * len(owners), "layer": [layer] * len(owners),
            "position": (batch.positions[keep] + 1).tolist(), "token_id": batch.labels[keep].tolist(),
            **{k: v.tolist() for k, v in stats.items()},
        },
        schema=TOKEN_SCHEMA,
    )


@torch.inference_mode()
def lens_batch(model, batch: Batch, translators: dict | None = None, heldout: set[str] | None = None) -> pl.DataFrame:
    """Token rows for one batch: the logit lens everywhere; with translators, both lenses on
    the held-out targets' tokens (the tuned lens at its trained layers and the last one)."""
    readout = layout(model).logits
    n = len(layout(model).blocks)
    names = [f"resid.{l}" for l in range(n + 1)]
    with capture(model, names, select=lambda v: v[batch.rows, batch.positions]) as got:
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    resid = {l: got[f"resid.{l}"][0] for l in range(n + 1)}
    final_logp = torch.log_softmax(readout(resid[n]), -1)
    every = torch.ones(len(batch.labels), dtype=torch.bool)
    held = torch.tensor([batch.target_ids[i] in (heldout or set()) for i in batch.owner.tolist()], dtype=torch.bool)
    frames = []
    for layer in range(n + 1):
        logit_stats = statistics(readout(resid[layer]), batch.labels, final_logp)
        frames.append(_frame(batch, every, layer, "logit", "all", logit_stats))
        if translators is None or not held.any():
            continue
        frames.append(_frame(batch, held, layer, "logit", "heldout", {k: v[held] for k, v in logit_stats.items()}))
        if layer == n or layer in translators:
            h = resid[layer][held]
            tuned = translators[layer](h) if layer in translators and layer != n else h
            frames.append(_frame(batch, held, layer, "tuned", "heldout",
                                 statistics(readout(tuned), batch.labels[held], final_logp[held])))
    return pl.concat(frames)


def layer_lens(model, targets: list[Target], batch_size: int, pad_id: int = 0, translators: dict | None = None,
               heldout: set[str] | None = None) -> pl.DataFrame:
    """Per-token lens statistics for every layer, sorted for byte-identical output."""
    frames = [lens_batch(model, b, translators, heldout) for b in batches(targets, batch_size, pad_id)]
    if not frames:
        return pl.DataFrame(schema=TOKEN_SCHEMA)
    return pl.concat(frames).sort("target_id", "lens", "split", "layer", "position")


def label_segments(tokens: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """Add `segment` (code: the token lies in the extracted code [all_start, all_end); reasoning:
    in [answer_start, all_start); other: elsewhere) and the target's `outcome`. Without the
    columns to tell them apart every token is segment "all" / outcome "all"."""
    cols = set(table.columns)
    has_code = {"all_start", "all_end"} <= cols
    meta = table.select(
        "target_id",
        *([pl.col("all_start").alias("_a0"), pl.col("all_end").alias("_a1")] if has_code else []),
        *([pl.col("answer_start").alias("_ans")] if has_code and "answer_start" in cols else []),
        (pl.col("outcome").fill_null("all") if "outcome" in cols else pl.lit("all")).alias("outcome"),
    )
    out = tokens.join(meta, on="target_id", how="left", maintain_order="left")
    pos = pl.col("position")
    if not has_code:
        segment = pl.lit("all")
    else:
        in_code = (pos >= pl.col("_a0")) & (pos < pl.col("_a1"))
        segment = pl.when(in_code).then(pl.lit("code"))
        if "_ans" in out.columns:
            segment = segment.when((pos >= pl.col("_ans")) & (pos < pl.col("_a0"))).then(pl.lit("reasoning"))
        segment = segment.otherwise(pl.lit("other"))
    return out.with_columns(segment.alias("segment")).drop([c for c in ("_a0", "_a1", "_ans") if c in out.columns])


def per_target(tokens: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Each target's mean over its tokens, per group: a target weighs the same whatever its length."""
    return tokens.group_by("target_id", *by).agg(
        pl.col("entropy").mean(), pl.col("cross_entropy").mean(), pl.col("rank").cast(pl.Float64).mean(),
        pl.col("top1_correct").cast(pl.Float64).mean().alias("top1_accuracy"),
        pl.col("top1_agree").cast(pl.Float64).mean().alias("top1_agreement"), pl.col("kl_to_final").mean(),
        pl.len().alias("n_tokens"),
    )


def layer_table(tokens: pl.DataFrame, boot: Bootstrap) -> pl.DataFrame:
    """Per (lens, split, segment, outcome, layer): means over targets of each target's mean, with
    bootstrap intervals over targets, n_targets and n_tokens. Segment / outcome "all" pools them;
    a breakdown is added only for a column with more than one value (else it repeats "all")."""
    if not len(tokens):
        return pl.DataFrame()
    pooled = {"segment": pl.lit("all"), "outcome": pl.lit("all")}
    views = [tokens.with_columns(**pooled)]
    many = [c for c in ("segment", "outcome") if tokens[c].n_unique() > 1]
    for c in many:
        views.append(tokens.with_columns(**{k: v for k, v in pooled.items() if k != c}))
    if len(many) == 2:
        views.append(tokens)
    frames = []
    for view in views:
        means = per_target(view, GROUPS)
        # Each curve has its own targets (held-out ones, passed ones, those with reasoning tokens),
        # and the bootstrap needs every layer of a curve to have the same targets: one call per curve.
        for key, curve in means.group_by(GROUPS[:-1], maintain_order=True):
            s = summarise_columns(curve, "target_id", ["layer"], STATISTICS, boot)
            n_tok = curve.group_by("layer").agg(pl.col("n_tokens").sum().cast(pl.Int64))
            frames.append(s.rename({"n": "n_targets"}).join(n_tok, on="layer", how="left").with_columns(
                *[pl.lit(v).alias(c) for c, v in zip(GROUPS[:-1], key)]))
    return pl.concat(frames, how="diagonal").select(*GROUPS, pl.exclude(GROUPS)).sort(GROUPS)


def layer_summary(tokens: pl.DataFrame) -> pl.DataFrame:
    """Per layer (one lens and split): means over targets of each target's mean over its tokens."""
    means = per_target(tokens, ["layer"])
    return means.group_by("layer").agg(*[pl.col(s).mean() for s in STATISTICS], pl.len().alias("n_targets")).sort("layer")
