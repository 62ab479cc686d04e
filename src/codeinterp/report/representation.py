"""Report section of the representation maps: interactive 2-D maps of code tokens per layer,
coloured by a chosen code label, opened by a sentence computed from the separation table
(summary.parquet beside points.parquet)."""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl

from codeinterp.analyses.representation import COLOURINGS
from codeinterp.report.charts import ci, finding, fmt

INTRO = ("<p>Code tokens' residual stream at a few layers, mapped to two dimensions (PCA: the two directions of "
         "largest variance; UMAP where enabled). One seeded sample of tokens, stratified by lexical category, is the "
         "same in every panel. Choose the colouring below a chart; hover a point for its token and line of code. How "
         "well a label separates: a 15-nearest-neighbour classifier on the 2-D coordinates, folds grouped by problem, "
         "against the share of the most common label, and the silhouette of the labels in the map.</p>")


def _sentence(summary: pl.DataFrame, method: str) -> str:
    rows = summary.filter((pl.col("method") == method) & (pl.col("colouring") == "lexical")).sort("layer")
    if rows.is_empty():
        return ""
    last = rows.row(-1, named=True)
    first = rows.row(0, named=True)
    variance = (f"the first two principal components hold {fmt(100 * last['explained_variance_2d'])}% of the "
                f"variance; " if last["explained_variance_2d"] is not None else "")
    acc = lambda r: ci(r["knn_accuracy"], r["knn_ci_low"], r["knn_ci_high"]) if r["knn_accuracy"] is not None else "–"
    return (f"At the last mapped layer ({fmt(last['layer'])}, {method.upper()}), {variance}a k-NN on the map predicts "
            f"the lexical category of held-out problems' tokens with accuracy {acc(last)} against "
            f"{fmt(last['majority_share'])} for the most common category (silhouette {fmt(last['silhouette'])}); "
            f"at layer {fmt(first['layer'])}: {acc(first)} (n = {fmt(last['n_points'])} tokens of "
            f"{fmt(last['n_problems'])} problems, {fmt(last['n_labels'])} categories).")


def _chart(points: pl.DataFrame, title: str) -> alt.FacetChart:
    colour_by = alt.param(name="colour_by", value="lexical",
                          bind=alt.binding_select(options=list(COLOURINGS), name="colour by "))
    df = points.select("layer", "x", "y", "target_id", "position", *COLOURINGS,
                       pl.col("token_text").str.replace_all("\n", "⏎").str.replace_all(" ", "·").alias("token"),
                       pl.col("code_line").fill_null(""))
    return (alt.Chart(df).transform_fold(list(COLOURINGS), as_=["colouring", "label"])
            .transform_filter("datum.colouring == colour_by")
            .mark_circle(size=14, opacity=0.7)
            .encode(x=alt.X("x:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(labels=False, ticks=False)),
                    y=alt.Y("y:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(labels=False, ticks=False)),
                    color=alt.Color("label:N", title="label", scale=alt.Scale(scheme="tableau20")),
                    tooltip=["token:N", "code_line:N", *COLOURINGS, "target_id:N", "position:Q"])
            .properties(width=260, height=240)
            .facet(column=alt.Column("layer:O", title="layer (0 = embeddings)"))
            .resolve_scale(x="independent", y="independent")
            .add_params(colour_by)
            .properties(title=title))


def section(files: dict, ctx) -> str:
    """`files`: (model, dataset) -> representation/points.parquet (summary.parquet beside it)."""
    parts = [INTRO]
    for (m, d), path in sorted(files.items()):
        points = pl.read_parquet(path)
        summary = pl.read_parquet(Path(path).with_name("summary.parquet"))
        parts.append(f"<h3>{html.escape(m)} / {html.escape(d)}</h3>")
        if points.is_empty():
            parts.append("<p>No cached code tokens to map.</p>")
            continue
        for method in sorted(points["method"].unique().to_list(), key=lambda x: (x != "pca", x)):
            parts.append(finding(html.escape(_sentence(summary, method))))
            parts.append(ctx.charts.add(_chart(points.filter(pl.col("method") == method), f"{m} / {d}: {method}")))
    return "".join(parts)
