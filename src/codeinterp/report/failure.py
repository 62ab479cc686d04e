"""Report section of the failure probe: held-out AUC per layer of pass-versus-fail probes at
the prompt's end and the code's end, against the baselines."""

from __future__ import annotations

import html

import altair as alt
import polars as pl

from codeinterp.report.charts import ci, finding, fmt

INTRO = ("<p>Can the residual stream tell whether a generated sample will pass its tests? A standardised logistic "
         "regression per layer, cross-validated with folds grouped by problem, at the last prompt token (before any "
         "code is written) and at the last generated token; AUC of the held-out scores with a 95% bootstrap interval "
         "over problems. Baselines under the same protocol: prompt length alone (known at the prompt's end) and prompt "
         "length with the completion's mean token log-probability (known at the code's end). The best layer is chosen "
         "after the fact, so its AUC is optimistic; the baselines are not chosen.</p>")
POSITION_TEXT = {"prompt_end": "at the prompt's end", "code_end": "at the code's end"}
BASELINE_OF = {"prompt_end": "prompt_length", "code_end": "prompt_length+mean_logprob"}


def _sentence(table: pl.DataFrame) -> str:
    first = table.row(0, named=True)
    sizes = (f"n = {fmt(first['n_samples'])} samples of {fmt(first['n_problems'])} problems, "
             f"{fmt(first['n_passed'])} passed")
    if table["auc"].null_count() == len(table):
        return f"No AUC: {html.escape(first['note'] or 'no result')} ({sizes})."
    parts = []
    for position, baseline in BASELINE_OF.items():
        probes = table.filter((pl.col("feature") == "resid") & (pl.col("position") == position)).drop_nulls("auc")
        base = table.filter(pl.col("feature") == baseline).row(0, named=True)
        if probes.is_empty():
            continue
        best = probes.sort("auc", "layer", descending=[True, False]).row(0, named=True)
        parts.append(f"{POSITION_TEXT[position]} the best layer ({fmt(best['layer'])}) reaches AUC "
                     f"{ci(best['auc'], best['auc_ci_low'], best['auc_ci_high'])} against "
                     f"{ci(base['auc'], base['auc_ci_low'], base['auc_ci_high'])} for {baseline.replace('+', ' + ')}")
    return "Predicting pass versus fail, " + "; ".join(parts) + f" ({sizes})."


def _chart(table: pl.DataFrame, title: str) -> alt.LayerChart:
    probes = table.filter(pl.col("feature") == "resid").drop_nulls("auc").with_columns(
        pl.col("auc_ci_low").fill_null(pl.col("auc")), pl.col("auc_ci_high").fill_null(pl.col("auc")))
    bases = table.filter(pl.col("feature") != "resid").drop_nulls("auc").rename({"feature": "baseline"})
    scale = alt.Scale(domain=[0, 1])
    base = alt.Chart(probes).encode(
        x=alt.X("layer:Q", title="layer (0 = embeddings)", axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color("position:N", title="position"))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("auc_ci_low:Q", scale=scale, title="held-out AUC"),
                                              y2="auc_ci_high:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("auc:Q", scale=scale),
        tooltip=["position", "layer", alt.Tooltip("auc:Q", format=".3f"), alt.Tooltip("auc_ci_low:Q", format=".3f"),
                 alt.Tooltip("auc_ci_high:Q", format=".3f")])
    rules = alt.Chart(bases).mark_rule(strokeDash=[6, 3]).encode(
        y="auc:Q", color="position:N", tooltip=["baseline", alt.Tooltip("auc:Q", format=".3f")])
    chance = alt.Chart(pl.DataFrame({"auc": [0.5]})).mark_rule(color="gray", strokeDash=[2, 2]).encode(y="auc:Q")
    return (band + line + rules + chance).properties(title=title, width=460, height=240)


def section(files: dict, ctx) -> str:
    """`files`: (model, dataset) -> failure_probe.parquet."""
    parts = [INTRO]
    for (m, d), path in sorted(files.items()):
        table = pl.read_parquet(path)
        parts.append(f"<h3>{html.escape(m)} / {html.escape(d)}</h3>")
        if table.is_empty():
            parts.append("<p>No samples.</p>")
            continue
        parts.append(finding(_sentence(table)))
        if table["auc"].null_count() < len(table):
            parts.append(ctx.charts.add(_chart(table, f"{m} / {d}: pass versus fail")))
            parts.append("<p class='note'>Dashed lines: the baselines, coloured by the position they match; "
                         "dotted grey: chance.</p>")
    return "".join(parts)
