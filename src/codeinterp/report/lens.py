"""The report's lens section: the logit lens on every target, the tuned lens beside it on the
held-out targets, and curves per answer segment (reasoning / code) and per outcome (passed /
failed) when the targets have more than one.

`section(files, ctx)` reads the `lens_layers` tables (analyses.lens.layer_table);
`training_section(files, ctx)` continues it with the `tuned_training` tables
(analyses.tuned_lens.training_summary).
"""

from __future__ import annotations

import html

import numpy as np
import polars as pl

from codeinterp.report.charts import ci, finding, fmt, lens_chart, table

STATISTICS = {
    "cross_entropy": "cross-entropy of the true token (nats)",
    "entropy": "entropy (nats)",
    "kl_to_final": "KL to the output (nats)",
    "rank": "rank of the true token (0 = top)",
    "top1_accuracy": "top-1 accuracy",
    "top1_agreement": "top-1 agreement with the output",
}
LENS_NAMES = {("logit", "all"): "logit lens, all targets", ("logit", "heldout"): "logit lens, held-out targets",
              ("tuned", "heldout"): "tuned lens, held-out targets"}


def _curve(layers: pl.DataFrame, lens: str = "logit", split: str = "all", segment: str = "all",
           outcome: str = "all") -> pl.DataFrame:
    """One curve of the layer table (older tables without the lens columns are one curve)."""
    if "lens" not in layers.columns:
        return layers
    return layers.filter((pl.col("lens") == lens) & (pl.col("split") == split) & (pl.col("segment") == segment)
                         & (pl.col("outcome") == outcome)).sort("layer")


def _labelled(curves: list[tuple[str, pl.DataFrame]]) -> pl.DataFrame:
    """Stack curves with a `curve` label that says how many targets each averages over."""
    out = []
    for name, df in curves:
        if len(df):
            n = int(df["n_targets"].max())
            out.append(df.with_columns(pl.lit(f"{name} (n = {fmt(n)} targets)").alias("curve")))
    return pl.concat(out, how="diagonal") if out else pl.DataFrame()


def cross_entropy_finding(layers: pl.DataFrame) -> str:
    """Where the logit lens's cross-entropy falls, and where its KL to the output gets small."""
    ce = layers["cross_entropy"].to_numpy()
    last = layers.row(len(layers) - 1, named=True)
    text = (f"Cross-entropy of the true token goes from {fmt(ce[0])} nats at the embeddings to "
            f"{ci(last['cross_entropy'], last['cross_entropy_ci_low'], last['cross_entropy_ci_high'])} at the output "
            f"(n = {fmt(last['n_targets'])} targets, {fmt(last['n_scored_tokens'])} scored tokens)")
    drop = -np.diff(ce)
    if len(drop) and drop.max() > 0:
        at = int(np.argmax(drop))
        text += f"; the largest one-layer drop, {fmt(drop[at])} nats, is into layer {layers['layer'][at + 1]}"
    # Where the lens gets close to the output distribution (KL within a tenth of its largest value).
    agree = layers.filter(pl.col("kl_to_final") <= layers["kl_to_final"].max() * 0.1)
    if len(agree) and len(layers) > 2:
        text += f"; KL to the output falls below a tenth of its maximum from layer {agree['layer'][0]} on"
    return text + "."


def tuned_finding(logit: pl.DataFrame, tuned: pl.DataFrame) -> str | None:
    """Tuned against logit lens on the same held-out targets, at every trained layer; a layer
    where the tuned lens is worse is named, never hidden."""
    last = int(logit["layer"].max()) if len(logit) else None
    both = logit.join(tuned, on="layer", suffix="_tuned").filter(pl.col("layer") != last).sort("layer")
    if not len(both):
        return None
    n = int(both["n_targets"].max())
    worse = both.filter(pl.col("kl_to_final_tuned") > pl.col("kl_to_final"))["layer"].to_list()
    if worse:
        text = (f"On n = {fmt(n)} held-out targets the tuned lens's KL to the output is NOT below the logit lens's at "
                f"{fmt(len(worse))} of {fmt(len(both))} trained layers (layers {', '.join(map(str, worse))})")
    else:
        text = (f"On n = {fmt(n)} held-out targets the tuned lens's KL to the output is below the logit lens's at "
                f"every one of the {fmt(len(both))} trained layers")
    first = both.row(0, named=True)
    text += (f"; at layer {first['layer']} it is {ci(first['kl_to_final_tuned'], first['kl_to_final_ci_low_tuned'], first['kl_to_final_ci_high_tuned'])} "
             f"against {ci(first['kl_to_final'], first['kl_to_final_ci_low'], first['kl_to_final_ci_high'])} nats")
    # How early each lens gets within a tenth of the logit lens's largest KL over the trained layers
    # (not the embeddings' KL, which is often far above the rest and may not be trained).
    bar = float(both["kl_to_final"].max()) * 0.1
    close = {name: both.filter(pl.col(col) <= bar)["layer"].to_list()
             for name, col in (("logit", "kl_to_final"), ("tuned", "kl_to_final_tuned"))}
    if close["tuned"]:
        text += (f"; over the trained layers, the tuned lens's KL is within a tenth of the logit lens's largest from "
                 f"layer {close['tuned'][0]}, the "
                 + (f"logit lens's from layer {close['logit'][0]}" if close["logit"] else "logit lens's only at the output"))
    return text + "."


def _breakdown(layers: pl.DataFrame, column: str, other: str) -> pl.DataFrame | None:
    """Logit-lens curves per value of `column` (segment or outcome), when there is more than one."""
    if column not in layers.columns:
        return None
    values = sorted(v for v in layers[column].unique().to_list() if v != "all")
    if len(values) < 2:
        return None
    kw = {other: "all"}
    return _labelled([(f"{column} {v}", _curve(layers, **{column: v}, **kw)) for v in values])


def section(files: dict, ctx) -> str:
    parts = ["<p>Lenses per layer on the scored tokens: each target's mean over its tokens, then the mean over "
             "targets with a 95% bootstrap band. The logit lens reads each residual state through the model's final "
             "norm and unembedding; the tuned lens (Belrose et al. 2023) first applies a per-layer affine translator "
             "trained on other problems, and is shown on the held-out problems' targets beside the logit lens on the "
             "same targets. The last layer is the model's own output.</p>"]
    for (m, d), path in sorted(files.items()):
        layers = pl.read_parquet(path)
        parts.append(f"<h3>{ctx.about(m, d)}</h3>")
        if not len(layers):
            continue
        logit = _curve(layers)
        parts.append(finding(cross_entropy_finding(logit)))
        stats = {k: v for k, v in STATISTICS.items() if k in layers.columns}
        curves = [(LENS_NAMES[("logit", "all")], logit)]
        if "lens" in layers.columns and (layers["lens"] == "tuned").any():
            held, tuned = _curve(layers, split="heldout"), _curve(layers, lens="tuned", split="heldout")
            text = tuned_finding(held, tuned)
            if text:
                parts.append(finding(text))
            curves += [(LENS_NAMES[("logit", "heldout")], held), (LENS_NAMES[("tuned", "heldout")], tuned)]
        parts.append(ctx.charts.add(lens_chart(_labelled(curves), f"{m} / {d}", stats, color="curve")))
        for column, other in (("segment", "outcome"), ("outcome", "segment")):
            by = _breakdown(layers, column, other)
            if by is not None:
                parts.append(f"<p>Logit lens on all targets, per {column} (n per curve in its label).</p>")
                parts.append(ctx.charts.add(lens_chart(by, f"{m} / {d}: per {column}", stats, color="curve")))
    return "".join(parts)


def training_section(files: dict, ctx) -> str:
    """The tuned lens's training: KL per layer on the training and held-out problems."""
    parts = ["<h3>Tuned-lens training</h3><p>KL to the output per trained layer on the problems it was trained on "
             "and on the held-out ones: each problem's mean over its cached tokens, then the mean over problems with a "
             "95% bootstrap interval; kl_change = tuned - logit.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        if not len(df):
            continue
        held = df.filter(pl.col("split") == "heldout")
        worse = held.filter(~pl.col("tuned_below_logit"))["layer"].to_list()
        n_p, n_t = int(held["n_problems"].max()), int(held["n_tokens"].max())
        verdict = (f"the tuned lens is above the logit lens at layers {', '.join(map(str, worse))}" if worse
                   else "the tuned lens is at or below the logit lens at every trained layer")
        parts.append(finding(f"{html.escape(m)} / {html.escape(d)}: on the held-out problems (n = {fmt(n_p)} problems, "
                             f"{fmt(n_t)} tokens) {verdict}."))
        rows = [{"layer": r["layer"], "split": r["split"], "problems": r["n_problems"], "tokens": r["n_tokens"],
                 **{name: ci(r[c], r[f"{c}_ci_low"], r[f"{c}_ci_high"]) for c, name in
                    (("logit_kl", "logit lens KL"), ("tuned_kl", "tuned lens KL"), ("kl_change", "tuned - logit"))},
                 "tuned below logit": r["tuned_below_logit"]} for r in df.sort("split", "layer").iter_rows(named=True)]
        parts.append(table(pl.DataFrame(rows)))
    return "".join(parts)
