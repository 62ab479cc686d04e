"""Report section of circuit discovery: the faithfulness-versus-size curve, the chosen circuit
drawn, and its strongest edges."""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl

from codeinterp.report.charts import ci, finding, fmt, table


def section(files: dict, ctx) -> str:
    svgs, edge_files = ctx.side("circuit_svg"), ctx.inputs("circuit_edges")
    parts = ["<p>EAP-IG (edge attribution patching with integrated gradients) scores every edge of the component "
             "graph (embeddings, heads, MLPs, logits); circuits keep the highest-scoring edges that lie on a path "
             "from the input to the logits. Each circuit is then run exactly, with every other edge carrying the "
             "corrupted prompt's value: faithfulness is its logit difference over the full model's, 0 for the "
             "corrupted run and 1 for the clean run (95% bootstrap interval over pairs). The chosen circuit is the "
             "smallest that reaches the configured faithfulness.</p>"]
    for (m, d), path in sorted(files.items()):
        curve = pl.read_parquet(path)
        parts.append(f"<h3>{html.escape(m)} / {html.escape(d)}</h3>")
        if curve.is_empty():
            continue
        c = curve.filter(pl.col("chosen")).row(0, named=True)
        total = int(curve["edges"].max())
        reach = ("reaches" if c["reaches_target"] else "does NOT reach; the best circuit tried is shown")
        parts.append(finding(
            f"A circuit of {fmt(c['edges'])} of {fmt(total)} edges has faithfulness "
            f"{ci(c['faithfulness'], c['faithfulness_ci_low'], c['faithfulness_ci_high'])} on n = {fmt(c['n'])} pairs; "
            f"it {reach} the target {fmt(c['target'])}."))
        shown = curve.filter(pl.col("edges") > 0).with_columns(
            pl.col("faithfulness_ci_low").fill_nan(pl.col("faithfulness")),
            pl.col("faithfulness_ci_high").fill_nan(pl.col("faithfulness")))
        base = alt.Chart(shown).encode(x=alt.X("edges:Q", scale=alt.Scale(type="log"), title="edges in the circuit"))
        chart = (base.mark_area(opacity=0.2).encode(y=alt.Y("faithfulness_ci_low:Q", title="faithfulness"),
                                                     y2="faithfulness_ci_high:Q")
                 + base.mark_line(point=True).encode(y="faithfulness:Q",
                                                      tooltip=["edges", alt.Tooltip("faithfulness:Q", format=".3g")])
                 + alt.Chart(pl.DataFrame({"edges": [max(c["edges"], 1)]})).mark_rule(strokeDash=[4, 3]).encode(x="edges:Q"))
        parts.append(ctx.charts.add(chart.properties(width=420, height=220)))
        if (m, d) in svgs:
            parts.append(f"<div class='chart'>{Path(svgs[(m, d)]).read_text()}</div>")
        if (m, d) in edge_files:
            edges = pl.read_parquet(edge_files[(m, d)]).filter(pl.col("in_circuit")).head(15)
            parts.append(table(edges.select("upstream", "downstream", "score", "rank", "n")))
    return "".join(parts)
