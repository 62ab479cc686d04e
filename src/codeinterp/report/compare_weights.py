"""Report section of the weight-space comparison: per pair, which heads and MLPs changed."""

from __future__ import annotations

import html
import math

import altair as alt
import polars as pl

from codeinterp.report.charts import finding, fmt, table

CAVEATS = ("<p class='note'>How to read these numbers: a head's OV circuit (W_V then its slice of W_O) says what "
           "it writes for what it attends to, its QK circuit (W_Q W_K<sup>T</sup>) where it attends; norm gains are "
           "folded into the matrices first, so that a rescaled norm does not read as a changed head. Cosine 1 means "
           "unchanged up to scale; relative difference is ||B − A|| / ||A||; the overlaps compare the top singular "
           "subspaces (what a circuit reads and what it writes), 1 for the same subspace. Two caveats: with rotary "
           "position embeddings W_Q W_K<sup>T</sup> is not the full bilinear form (the rotation between positions "
           "is left out), and the residual bases of two models are comparable only when one was trained from the "
           "other (a fine-tune or a distillation from the same weights): between unrelated models every cosine is "
           "near 0 whatever they compute.</p>")


def _heatmap(heads: pl.DataFrame, circuit: str) -> alt.Chart:
    df = heads.filter(pl.col("circuit") == circuit).select("layer", "head", "cosine", "rel_diff")
    # The scale spans the data (a fine-tune's cosines all lie near 1), darkest where a head changed most.
    lo = min(float(df["cosine"].min()), 0.999)
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("head:O"), y=alt.Y("layer:O", sort="descending"),
        color=alt.Color("cosine:Q", title="cosine", scale=alt.Scale(scheme="viridis", domain=[lo, 1.0], clamp=True)),
        tooltip=["layer", "head", alt.Tooltip("cosine:Q", format=".4g"), alt.Tooltip("rel_diff:Q", format=".3g")],
    ).properties(title=f"{circuit} circuit: cosine per head", width=max(120, 22 * (int(df["head"].max()) + 1)),
                 height=max(120, 9 * (int(df["layer"].max()) + 1)))


def _mlp_curve(mlp: pl.DataFrame) -> alt.Chart:
    return alt.Chart(mlp.select("layer", "circuit", "cosine")).mark_line(point=True).encode(
        x=alt.X("layer:Q", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("cosine:Q", scale=alt.Scale(zero=False)), color="circuit:N",
        tooltip=["layer", "circuit", alt.Tooltip("cosine:Q", format=".4g")],
    ).properties(title="MLP matrices: cosine per layer", width=320, height=180)


def fmt_cosine(c: float) -> str:
    """A cosine near 1 with three significant digits of its distance from 1 (0.999840, not 1):
    a fine-tune moves every head a little, and rounding to 1 would say it moved none."""
    gap = 1.0 - float(c)
    if not 0 < gap < 1e-3:
        return fmt(c)
    return f"{c:.{2 - math.floor(math.log10(gap))}f}"


def pair_finding(table_: pl.DataFrame) -> str:
    heads = table_.filter(pl.col("level") == "head")
    ov = heads.filter(pl.col("circuit") == "OV")
    worst = heads.sort("cosine", "layer", "head").row(0, named=True)
    return (f"Over n = {fmt(len(ov))} heads, the median OV cosine is {fmt_cosine(ov['cosine'].median())} "
            f"(range {fmt_cosine(ov['cosine'].min())} to {fmt_cosine(ov['cosine'].max())}); the head that changed most is "
            f"L{worst['layer']}H{worst['head']} ({worst['circuit']} cosine {fmt_cosine(worst['cosine'])}, relative "
            f"difference {fmt(worst['rel_diff'])}).")


def section(files: dict, ctx) -> str:
    parts = [CAVEATS]
    for (pair, _), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{html.escape(pair)}</h3>")
        if df.is_empty():
            parts.append("<p>No heads to compare.</p>")
            continue
        heads = df.filter(pl.col("level") == "head")
        parts.append(finding(pair_finding(df)))
        parts.append(ctx.charts.add(alt.hconcat(_heatmap(heads, "OV"), _heatmap(heads, "QK"))))
        parts.append(ctx.charts.add(_mlp_curve(df.filter(pl.col("level") == "mlp"))))
        top = (heads.sort("cosine", "layer", "head").head(10)
               .select("circuit", "layer", "head", "cosine", "rel_diff", "read_overlap", "write_overlap")
               .with_columns((1 - pl.col("cosine")).alias("1 - cosine")))
        parts.append("<p>The ten head circuits that changed most (lowest cosine):</p>" + table(top))
    return "".join(parts)
