"""Report section of the fine-tuned variants (rule finetune): training curve and held-out loss."""

from __future__ import annotations

import html
import json
from pathlib import Path

import polars as pl

from codeinterp.report.charts import ci, curve, finding, fmt, table
from codeinterp.uncertainty import bootstrap_means


def heldout_finding(model: str, record: dict, held: pl.DataFrame, boot) -> str:
    """Held-out code loss before and after, with a paired bootstrap interval of the change."""
    s = record["settings"]
    diff = (held["variant_loss"] - held["base_loss"]).to_numpy()
    mean, low, high = bootstrap_means(diff, boot)
    before, after = float(held["base_loss"].mean()), float(held["variant_loss"].mean())
    return (f"{html.escape(model)} is {html.escape(record['base'])} after {fmt(s['steps'])} {s['method']} steps on "
            f"{fmt(len(record['train_targets']))} canonical solutions of {html.escape(s['dataset'])} "
            f"({html.escape(str(s['split']))}); its held-out code loss moved from {fmt(before)} to {fmt(after)} nats, "
            f"a change of {ci(mean[0], low[0], high[0])} (paired over n = {fmt(len(held))} held-out targets of "
            f"{html.escape(str(s['heldout_split']))}).")


def section(files: dict, ctx) -> str:
    parts = ["<p>Variants made by a short seeded training run on canonical solutions (loss: mean cross-entropy over "
             "the code tokens, as in every analysis). The held-out targets are scored with the base model and the "
             "variant; the interval is a bootstrap over those targets of the per-target change.</p>"]
    training = ctx.side("finetune_training")
    records = ctx.side("finetune_record")
    for (model, _), path in sorted(files.items()):
        held = pl.read_parquet(path)
        record = json.loads(Path(records[(model, "finetune")]).read_text())
        parts.append(f"<h3>{html.escape(model)} (from {html.escape(record['base'])})</h3>")
        parts.append(finding(heldout_finding(model, record, held, ctx.boot)))
        steps = pl.read_parquet(training[(model, "finetune")])
        band = steps.select("step", "loss", pl.col("loss").alias("ci_low"), pl.col("loss").alias("ci_high"))
        parts.append(ctx.charts.add(curve(band, "step", f"{model}: training loss (one batch per step)", "step",
                                          "code loss (nats)")))
        settings = {k: v for k, v in record["settings"].items() if v is not None}
        parts.append(table(pl.DataFrame([{"setting": k, "value": str(v)} for k, v in sorted(settings.items())])))
        worst = held.with_columns((pl.col("variant_loss") - pl.col("base_loss")).alias("change")).sort("change")
        parts.append("<p>Held-out targets, most improved first:</p>" + table(worst, max_rows=10))
    return "".join(parts)
