"""Report section of the `probes` stage: what each property's best probe finds, accuracy per
layer against its controls, and whether removing the probe's direction costs the model more
than removing a random one."""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl

from codeinterp.report.charts import ci, finding, fmt, table

SERIES = {
    "probe": "probe (trained model)",
    "control": "control task (trained model)",
    "random_init": "probe (random-init model)",
    "majority": "majority class",
}


def section(files: dict, ctx) -> str:
    """`files`: (model, dataset) -> probes.parquet; projection.parquet is read beside it."""
    parts = ["<p>Linear probes on the residual stream at each code token's own position, per layer: logistic "
             "regression for categories, ridge for bracket depth and indentation (accuracy of the rounded "
             "prediction), cross-validated with folds grouped by problem. Selectivity is accuracy minus the "
             "accuracy of the same probe on the control task of Hewitt and Liang (2019), a fixed random label per "
             "token type; the random-init model is the same architecture untrained. ast_node keeps the most "
             "frequent node types and folds the rest into \"other\". Intervals: 95% bootstrap over problems.</p>"]
    for (m, d), path in sorted(files.items()):
        results = pl.read_parquet(path)
        proj_path = Path(path).with_name("projection.parquet")
        projection = pl.read_parquet(proj_path) if proj_path.exists() else pl.DataFrame()
        parts.append(f"<h3>{ctx.about(m, d)}</h3>")
        if not len(results):
            parts.append("<p>No property could be probed (fewer than two problems or one label).</p>")
            continue
        parts.append(finding(html.escape(findings(results, projection))))
        parts.append(ctx.charts.add(accuracy_chart(results, f"{m} / {d}")))
        if len(projection):
            parts.append("<p>Projection test at each property's best layer: the probe's weight vectors "
                         "(orthonormalised, rank r) projected out of the residual stream at every position; change in "
                         "next-token loss (nats) on the positions where the property matters, against random "
                         "subspaces of the same rank (mean, sd over draws). Excess = probe change minus random change, "
                         "per target.</p>")
            parts.append(table(projection_table(projection)))
    return "".join(parts)


def _at(results: pl.DataFrame, family: str, prop: str, layer: int) -> dict | None:
    hit = results.filter((pl.col("family") == family) & (pl.col("property") == prop) & (pl.col("layer") == layer))
    return hit.row(0, named=True) if len(hit) else None


def findings(results: pl.DataFrame, projection: pl.DataFrame) -> str:
    """One sentence per property, from the data."""
    out = []
    trained = results.filter(pl.col("family") == "trained")
    for prop in sorted(trained["property"].unique().to_list()):
        g = trained.filter(pl.col("property") == prop).sort(["selectivity", "layer"], descending=[True, False])
        best = g.row(0, named=True)
        text = (f"{prop}: most selective at layer {best['layer']}, selectivity "
                f"{ci(best['selectivity'], best['selectivity_ci_low'], best['selectivity_ci_high'])} (accuracy "
                f"{fmt(best['accuracy'])}, control {fmt(best['control_accuracy'])}, majority "
                f"{fmt(best['majority_accuracy'])}")
        rnd = _at(results, "random_init", prop, best["layer"])
        if rnd is not None:
            text += f", random-init model {fmt(rnd['accuracy'])}"
        text += f"; n = {fmt(best['n_tokens'])} tokens, {fmt(best['n_problems'])} problems)"
        p = projection.filter(pl.col("property") == prop) if len(projection) else projection
        if len(p):
            r = p.row(0, named=True)
            lo, hi = r["excess_ci_low"], r["excess_ci_high"]
            if lo == lo and hi == hi and lo > 0:  # NaN-safe: no interval, no claim
                verdict = "hurts more than a random subspace"
            elif lo == lo and hi == hi and hi < 0:
                verdict = "hurts less than a random subspace"
            else:
                verdict = "is not distinguishable from a random subspace"
            text += (f"; projecting its rank-{r['rank']} direction out {verdict} (loss change "
                     f"{ci(r['loss_change'], r['loss_change_ci_low'], r['loss_change_ci_high'])} vs "
                     f"{fmt(r['random_loss_change'])} random, on {fmt(r['n_tokens'])} positions of "
                     f"{fmt(r['n_targets'])} targets)")
        out.append(text)
    return ". ".join(out) + "."


def accuracy_frame(results: pl.DataFrame) -> pl.DataFrame:
    """Long frame: property, layer, series, accuracy, ci_low, ci_high."""
    cols = ["property", "layer"]
    trained = results.filter(pl.col("family") == "trained")
    parts = [
        trained.select(*cols, pl.lit(SERIES["probe"]).alias("series"), "accuracy",
                       pl.col("accuracy_ci_low").alias("ci_low"), pl.col("accuracy_ci_high").alias("ci_high")),
        trained.select(*cols, pl.lit(SERIES["control"]).alias("series"), pl.col("control_accuracy").alias("accuracy"),
                       pl.lit(None, pl.Float64).alias("ci_low"), pl.lit(None, pl.Float64).alias("ci_high")),
        trained.select(*cols, pl.lit(SERIES["majority"]).alias("series"), pl.col("majority_accuracy").alias("accuracy"),
                       pl.lit(None, pl.Float64).alias("ci_low"), pl.lit(None, pl.Float64).alias("ci_high")),
        results.filter(pl.col("family") == "random_init").select(
            *cols, pl.lit(SERIES["random_init"]).alias("series"), "accuracy",
            pl.col("accuracy_ci_low").alias("ci_low"), pl.col("accuracy_ci_high").alias("ci_high")),
    ]
    return pl.concat(parts).with_columns(pl.col("ci_low").fill_nan(None), pl.col("ci_high").fill_nan(None)).sort(
        "property", "series", "layer")


def accuracy_chart(results: pl.DataFrame, title: str) -> alt.FacetChart:
    df = accuracy_frame(results)
    color = alt.Color("series:N", title=None, sort=list(SERIES.values()),
                      scale=alt.Scale(domain=list(SERIES.values()), range=["#3b74c4", "#d95f02", "#7570b3", "#999999"]))
    base = alt.Chart().encode(x=alt.X("layer:Q", title="residual layer", axis=alt.Axis(tickMinStep=1, format="d")),
                              color=color)
    band = base.transform_filter("isValid(datum.ci_low)").mark_area(opacity=0.2).encode(
        y=alt.Y("ci_low:Q", title="held-out accuracy", scale=alt.Scale(domain=[0, 1])), y2="ci_high:Q")
    line = base.mark_line(point=True).encode(
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        strokeDash=alt.condition(f"datum.series == '{SERIES['majority']}'", alt.value([4, 3]), alt.value([1, 0])),
        tooltip=["property", "layer", "series", alt.Tooltip("accuracy:Q", format=".3g"),
                 alt.Tooltip("ci_low:Q", format=".3g"), alt.Tooltip("ci_high:Q", format=".3g")])
    return alt.layer(band, line, data=df).properties(width=260, height=170).facet(
        facet=alt.Facet("property:N", title=None), columns=3, title=title)


def projection_table(projection: pl.DataFrame) -> pl.DataFrame:
    rows = []
    for r in projection.sort("property").iter_rows(named=True):
        rows.append({
            "property": r["property"], "layer": r["layer"], "rank": r["rank"], "positions": r["n_tokens"],
            "targets": r["n_targets"], "base loss": fmt(r["base_loss"]),
            "loss change": ci(r["loss_change"], r["loss_change_ci_low"], r["loss_change_ci_high"]),
            "random change (mean ± sd)": f"{fmt(r['random_loss_change'])} ± {fmt(r['random_loss_change_sd'])} "
                                         f"({fmt(r['n_random'])} draws)",
            "excess": ci(r["excess"], r["excess_ci_low"], r["excess_ci_high"]),
        })
    return pl.DataFrame(rows)
