"""How well a model does a generated task, and from which layer (rules task_accuracy, task_lens;
sublayer_ablation lives in `codeinterp.causal.sublayer`).

Every number is the logit difference at the last position between the pair's two answer
tokens (`codeinterp.causal.pairs.logit_diff`), or whether the right one ranks first. For the
clean prompt the right token is `clean_token`; for the corrupted prompt it is `corrupt_token`,
so a model that tracks the task is right on both and its "signed" logit difference (right
minus wrong) is positive on both. Intervals: seeded bootstrap over pairs.
"""

from __future__ import annotations

import polars as pl
import torch

from codeinterp.access.architectures import RunnerMismatch, layout
from codeinterp.access.hooks import capture, site_names
from codeinterp.causal.pairs import Pair, PairBatch, last_logits, pair_batches
from codeinterp.uncertainty import Bootstrap, bootstrap_means

GROUP = ["source", "kind", "depth"]


def _meta(p: Pair) -> dict:
    return {"pair_id": p.pair_id, "source": p.source, "kind": p.kind, "depth": p.depth, "n_closed": p.n_closed}


def answer_stats(final: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row of last-position logits [B, V]: right minus wrong logit, rank of the right token
    (0 = top), whether it is the argmax, its probability."""
    final = final.float()
    rows = torch.arange(final.shape[0])
    good, bad = final[rows, right], final[rows, wrong]
    return {"logit_diff": good - bad, "rank": (final > good[:, None]).sum(-1),
            "top1": final.argmax(-1) == right, "prob": torch.softmax(final, -1)[rows, right]}


def _forward(model, ids: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    return last_logits(model(input_ids=ids, attention_mask=batch.mask).logits, batch.last)


def group_means(rows: pl.DataFrame, by: list[str], values: list[str], boot: Bootstrap) -> pl.DataFrame:
    """Per group of `by`: n (rows, i.e. pairs) and the mean of each value with its bootstrap
    interval over the group's own pairs (groups hold different pairs, unlike head tables)."""
    out = []
    for key, part in rows.sort(by).group_by(by, maintain_order=True):
        mean, low, high = bootstrap_means(part.select(values).to_numpy().astype(float), boot)
        row = dict(zip(by, key)) | {"n": len(part)}
        for j, v in enumerate(values):
            row |= {v: float(mean[j]), f"{v}_ci_low": float(low[j]), f"{v}_ci_high": float(high[j])}
        out.append(row)
    return pl.DataFrame(out)


def summarise(rows: pl.DataFrame, by: list[str], values: list[str], boot: Bootstrap) -> pl.DataFrame:
    """Group means with intervals over pairs, for every group of `by` and for all pairs of a
    task together (source/kind "all", depth -1)."""
    whole = rows.with_columns([pl.lit("all").alias(c) if rows.schema[c] == pl.Utf8 else pl.lit(-1).cast(rows.schema[c]).alias(c)
                               for c in by if c in GROUP])
    return pl.concat([group_means(rows, by, values, boot), group_means(whole, by, values, boot)], how="vertical_relaxed")


@torch.no_grad()
def task_accuracy(model, pairs: list[Pair], batch_size: int, boot: Bootstrap, pad_id: int = 0) -> pl.DataFrame:
    """One row per (pair, prompt) (`level` = pair) and the means by source, kind and depth and
    over all pairs (`level` = group; source/kind "all" and depth -1 mark the pooled rows)."""
    rows = []
    for batch in pair_batches(pairs, batch_size, pad_id, progress="task_accuracy"):
        for prompt, ids, right, wrong in (("clean", batch.clean, batch.clean_token, batch.corrupt_token),
                                          ("corrupt", batch.corrupt, batch.corrupt_token, batch.clean_token)):
            stats = answer_stats(_forward(model, ids, batch), right, wrong)
            for i, p in enumerate(batch.pairs):
                rows.append({**_meta(p), "prompt": prompt, "logit_diff": float(stats["logit_diff"][i]),
                             "rank": int(stats["rank"][i]), "top1": float(stats["top1"][i]),
                             "prob": float(stats["prob"][i])})
    per_pair = pl.DataFrame(rows)
    groups = summarise(per_pair, ["prompt", *GROUP], ["top1", "logit_diff", "prob"], boot)
    return pl.concat([per_pair.with_columns(pl.lit("pair").alias("level")),
                      groups.with_columns(pl.lit("group").alias("level"))], how="diagonal_relaxed")


@torch.no_grad()
def task_lens(model, pairs: list[Pair], batch_size: int, boot: Bootstrap, pad_id: int = 0,
              translators: dict | None = None) -> pl.DataFrame:
    """Per layer (0 = embeddings .. n = the last block's output) the logit lens (and the tuned
    lens at its trained layers) on the clean prompts: right-minus-wrong logit difference, rank
    and top-1 of the right token. The last layer's logit lens is checked against the model's
    own output on every batch."""
    lay = layout(model)
    n = len(lay.blocks)
    names = site_names(model, ("resid",))
    rows = []
    for batch in pair_batches(pairs, batch_size, pad_id, progress="task_lens"):
        idx = torch.arange(len(batch))
        with capture(model, names, select=lambda v: v[idx, batch.last]) as got:
            out = _forward(model, batch.clean, batch)
        lenses = {"logit": {l: got[f"resid.{l}"][0] for l in range(n + 1)}}
        if translators:
            lenses["tuned"] = {l: t(got[f"resid.{l}"][0].float()) for l, t in translators.items()}
            lenses["tuned"][n] = got[f"resid.{n}"][0]
        final = lay.logits(lenses["logit"][n])
        if not torch.allclose(final, out, rtol=1e-4, atol=1e-4 * float(out.abs().max().clamp_min(1))):
            raise RunnerMismatch(f"task_lens: the logit lens at layer {n} differs from the model's output "
                                 f"({float((final - out).abs().max()):.2e}); the residual sites are misread")
        for lens, by_layer in lenses.items():
            for layer, h in sorted(by_layer.items()):
                stats = answer_stats(lay.logits(h), batch.clean_token,
                                     batch.corrupt_token)
                for i, p in enumerate(batch.pairs):
                    rows.append({**_meta(p), "lens": lens, "layer": layer, "logit_diff": float(stats["logit_diff"][i]),
                                 "rank": float(stats["rank"][i]), "top1": float(stats["top1"][i])})
    per_pair = pl.DataFrame(rows)
    by = ["lens", "depth", "layer"]
    return summarise(per_pair, by, ["logit_diff", "rank", "top1"], boot).sort(by)


def first_confident_layer(lens: pl.DataFrame, threshold: float, name: str = "logit", depth: int = -1) -> int | None:
    """The first layer from which every later layer has a top-1 accuracy whose lower interval
    bound is at least `threshold` and a positive mean logit difference (None: no such layer)."""
    rows = lens.filter((pl.col("lens") == name) & (pl.col("depth") == depth)).sort("layer")
    ok = [(r["top1_ci_low"] is not None and r["top1_ci_low"] == r["top1_ci_low"] and r["top1_ci_low"] >= threshold
           and r["logit_diff"] > 0) for r in rows.iter_rows(named=True)]
    first = None
    for layer, good in zip(rows["layer"].to_list(), ok):
        if good and first is None:
            first = layer
        elif not good:
            first = None
    return first
