"""Charts and number formatting for the HTML report.

Scales are chosen so that structure stays visible: losses on a log axis (removing every
head multiplies the loss, which would flatten the start of a knockout curve on a linear
one), lens statistics in separate panels with their own symlog axes (the embeddings' layer
is often an order of magnitude above the rest), and heatmap colours saturating at a robust
extent (one outlier head must not wash out the other 269).
"""

from __future__ import annotations

import html
import json
import math

import altair as alt
import numpy as np
import polars as pl

__all__ = ["fmt", "ci", "table", "Charts", "lens_chart", "heatmap", "curve", "scatter", "points"]


def fmt(value) -> str:
    """Counts as integers, other numbers to 3 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def ci(mean, low, high) -> str:
    """`mean (95% CI low to high)` formatted for reading; `–` where the quantity is undefined
    (e.g. a Jaccard between different head grids), which is not a missing interval."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{fmt(mean)} (no interval: fewer than 5 targets or problems)"
    return f"{fmt(mean)} (95% CI {fmt(low)} to {fmt(high)})"


def finding(text: str) -> str:
    """The sentence of finding that opens a section (already escaped HTML)."""
    return f"<p class='finding'>{text}</p>"


def table(df: pl.DataFrame, max_rows: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for r in df.head(max_rows).iter_rows() if max_rows else df.iter_rows():
        rows.append("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>")
    more = f"<p class='note'>{len(df) - max_rows} more rows in the Parquet file.</p>" if max_rows and len(df) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


MAX_CHART_ROWS = 100_000


class Charts:
    """Collects chart specs; each is embedded by id and rendered by the inlined vega-embed."""

    def __init__(self):
        self.specs: list[tuple[str, dict]] = []

    def add(self, chart: alt.TopLevelMixin) -> str:
        cid = f"chart{len(self.specs)}"
        # altair stops at 5,000 rows; a real model's chart can hold more (SmolLM2's attribution
        # scatter: 5,620), and a report that stops is worse than a larger page.
        with alt.data_transformers.enable("default", max_rows=MAX_CHART_ROWS):
            self.specs.append((cid, chart.to_dict()))
        return f'<div class="chart" id="{cid}"></div>'

    def script(self) -> str:
        import vl_convert as vlc

        bundle = vlc.javascript_bundle().replace("</script", "<\\/script")
        calls = "\n".join(
            f"vegaEmbed('#{cid}', {json.dumps(spec)}, {{actions: false}});" for cid, spec in self.specs
        )
        return f"<script>{bundle}</script>\n<script>{calls}</script>"


LENS_STATISTICS = {
    "cross_entropy": "cross-entropy of the true token (nats)",
    "entropy": "entropy (nats)",
    "kl_to_final": "KL to the output (nats)",
    "top1_accuracy": "top-1 accuracy",
}


def _lens_scale(stat: str, low: pl.Series, high: pl.Series) -> alt.Scale:
    """Fractions on [0, 1]; nats and ranks on a log axis spanning the data (the embeddings' layer
    can sit an order of magnitude above the rest), symlog when the data touch zero (KL at the
    output, rank 0), with its linear region set by the smallest positive value so that small
    KLs (a tuned lens near the output) are not flattened onto zero."""
    if stat in ("top1_accuracy", "top1_agreement"):
        return alt.Scale(domain=[0, 1])
    values = pl.concat([low, high]).drop_nulls().drop_nans()
    if not len(values):
        return alt.Scale(zero=False)
    lo, hi = float(values.min()), float(values.max())
    if lo > 0 and hi > lo:
        return alt.Scale(type="log", domain=[lo, hi], nice=False)
    positive = values.filter(values > 0)
    constant = float(positive.min()) if len(positive) else 1.0
    return alt.Scale(type="symlog", constant=constant, domain=[min(lo, 0.0), max(hi, 1e-9)], nice=False)


def lens_chart(layers: pl.DataFrame, title: str, statistics: dict[str, str] | None = None,
               color: str | None = None) -> alt.VConcatChart:
    """One panel per statistic (two per row), mean over targets with its bootstrap band; with
    `color`, one curve per value of that column (e.g. lens, segment or outcome) on shared axes."""
    statistics = statistics or LENS_STATISTICS
    panels = []
    for stat, label in statistics.items():
        df = layers.select("layer", *([color] if color else []), pl.col(stat).cast(pl.Float64).alias("value"),
                           pl.col(f"{stat}_ci_low").fill_nan(pl.col(stat)).alias("low"),
                           pl.col(f"{stat}_ci_high").fill_nan(pl.col(stat)).alias("high"))
        scale = _lens_scale(stat, df["low"], df["high"])
        enc = {"color": alt.Color(f"{color}:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=400))} if color else {}
        base = alt.Chart(df).encode(x=alt.X("layer:Q", title="layer (0 = embeddings)",
                                            axis=alt.Axis(tickMinStep=1, format="d")), **enc)
        band = base.mark_area(opacity=0.2, clip=True).encode(y=alt.Y("low:Q", scale=scale, title=label), y2="high:Q")
        line = base.mark_line(point=True, clip=True).encode(
            y=alt.Y("value:Q", scale=scale),
            tooltip=["layer", *([color] if color else []), alt.Tooltip("value:Q", format=".3g"),
                     alt.Tooltip("low:Q", format=".3g"), alt.Tooltip("high:Q", format=".3g")])
        panels.append((band + line).properties(width=360, height=170, title=label))
    rows = [alt.hconcat(*panels[i : i + 2]) for i in range(0, len(panels), 2)]
    return alt.vconcat(*rows).properties(title=title)


def robust_extent(values: np.ndarray) -> float:
    """Colour extent: the 99th percentile of |value|, so that one outlier does not set the scale."""
    finite = np.abs(values[np.isfinite(values)])
    if not len(finite):
        return 1e-9
    return max(float(np.quantile(finite, 0.99)), 1e-9)


def heatmap(matrix: pl.DataFrame, title: str, legend: str = "Δ loss (nats)") -> alt.Chart:
    extent = robust_extent(matrix["delta"].to_numpy())
    df = matrix.select("layer", "head", "delta", "ci_low", "ci_high", "excludes_zero")
    n_heads, n_layers = int(df["head"].max()) + 1, int(df["layer"].max()) + 1
    base = alt.Chart(df).encode(x=alt.X("head:O"), y=alt.Y("layer:O", sort="descending"))
    rect = base.mark_rect().encode(
        color=alt.Color("delta:Q", title=legend,
                        scale=alt.Scale(scheme="redblue", domain=[-extent, extent], reverse=True, clamp=True)),
        tooltip=["layer", "head", alt.Tooltip("delta:Q", format=".3g"), alt.Tooltip("ci_low:Q", format=".3g"),
                 alt.Tooltip("ci_high:Q", format=".3g"), "excludes_zero"],
    )
    # A dot marks the heads whose interval excludes zero.
    dots = base.transform_filter("datum.excludes_zero").mark_point(shape="circle", size=12, filled=True, color="black")
    return (rect + dots).properties(title=title, width=max(120, 22 * n_heads), height=max(120, 9 * n_layers))


def curve(df: pl.DataFrame, x: str, title: str, x_title: str, y_title: str, color: str | None = None,
          log: bool = True) -> alt.LayerChart:
    """A mean curve with its bootstrap band (columns `loss`, `ci_low`, `ci_high`)."""
    # No interval (one target): the band collapses onto the curve.
    df = df.with_columns(pl.col("ci_low").fill_nan(pl.col("loss")), pl.col("ci_high").fill_nan(pl.col("loss")))
    lo, hi = float(df["ci_low"].min()), float(df["ci_high"].max())
    # The axis spans the data: a log axis from 1 would flatten losses that all lie near 5.
    scale = alt.Scale(type="log", domain=[lo, hi], nice=False) if log and lo > 0 and hi > lo else alt.Scale(zero=False)
    enc = {"color": f"{color}:N"} if color else {}
    base = alt.Chart(df).encode(x=alt.X(f"{x}:Q", title=x_title, axis=alt.Axis(tickMinStep=1, format="d")), **enc)
    band = base.mark_area(opacity=0.2, clip=True).encode(y=alt.Y("ci_low:Q", scale=scale, title=y_title), y2="ci_high:Q")
    line = base.mark_line(point=len(df) < 80, clip=True).encode(
        y=alt.Y("loss:Q", scale=scale),
        tooltip=[x, alt.Tooltip("loss:Q", format=".3g"), alt.Tooltip("ci_low:Q", format=".3g"),
                 alt.Tooltip("ci_high:Q", format=".3g")] + ([color] if color else []))
    return (band + line).properties(title=title, width=420, height=220)


def scatter(df: pl.DataFrame, x: str, y: str, title: str, x_title: str, y_title: str) -> alt.Chart:
    return (alt.Chart(df.select("layer", "head", x, y)).mark_circle()
            .encode(x=alt.X(f"{x}:Q", title=x_title), y=alt.Y(f"{y}:Q", title=y_title),
                    tooltip=["layer", "head", alt.Tooltip(f"{x}:Q", format=".3g"), alt.Tooltip(f"{y}:Q", format=".3g")])
            .properties(title=title, width=300, height=220))


def points(df: pl.DataFrame, title: str) -> alt.LayerChart:
    """pass@1 per pruning regime with its interval over problems."""
    base = alt.Chart(df).encode(x=alt.X("n_removed:Q", title="heads removed", axis=alt.Axis(tickMinStep=1, format="d")),
                                color="regime:N")
    rule = base.mark_rule().encode(y=alt.Y("pass@1_ci_low:Q", scale=alt.Scale(domain=[0, 1]), title="pass@1"),
                                   y2="pass@1_ci_high:Q")
    dot = base.mark_point(filled=True, size=80).encode(
        y="pass@1:Q", tooltip=["regime", "n_removed", alt.Tooltip("pass@1:Q", format=".3g")])
    return (rule + dot).properties(title=title, width=360, height=220)
