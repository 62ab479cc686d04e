"""Report section of circuit discovery: the faithfulness-versus-size curve, the chosen circuit
drawn, and its strongest edges."""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl

from codeinterp.causal.draw import MAX_DRAWN
from codeinterp.report.charts import ci, finding, fmt, table

TOP = 15


def section(files: dict, ctx) -> str:
    svgs, edge_files = ctx.side("circuit_svg"), ctx.inputs("circuit_edges")
    parts = ["<p>EAP-IG (edge attribution patching with integrated gradients) scores every edge of the component "
             "graph (embeddings, every head, every MLP, the logits; each head reads its own copy of the residual stream for its "
             "queries, keys and values) from the gradients at inputs interpolated between the corrupted and the clean "
             "prompt; circuits keep the highest-scoring edges that lie on a path "
             "from the input to the logits. Each circuit is then run exactly, with every other edge carrying the "
             "corrupted prompt's value: faithfulness is its logit difference over the full model's, 0 for the "
             "corrupted run and 1 for the clean run (a ratio of means over pairs, with a 95% bootstrap interval that resamples pairs). The "
             "chosen circuit is the smallest tried that reaches the configured faithfulness; its drawing shows edges "
             "as wide as their |score|, blue when they help the right answer, red when they work against it (of a "
             f"circuit larger than {MAX_DRAWN} edges, the {MAX_DRAWN} strongest; the edge table holds all).</p>"]
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
        headless = curve.filter((pl.col("edges") > 0) & (pl.col("heads") == 0)) if "heads" in curve.columns else curve.clear()
        if len(headless):
            h = headless.sort("edges").row(-1, named=True)
            parts.append(finding(
                f"Circuits of up to {fmt(h['edges'])} edges hold no attention head (faithfulness "
                f"{fmt(h['faithfulness'])} at that size): without a head nothing moves from the differing tokens to "
                "the last position, so the strongest edges alone do not make a working circuit here."))
        shown = curve.filter(pl.col("edges") > 0).with_columns(
            pl.col("faithfulness_ci_low").fill_nan(pl.col("faithfulness")),
            pl.col("faithfulness_ci_high").fill_nan(pl.col("faithfulness")))
        decades = [10**k for k in range(len(str(max(total, 1))))]  # labels at powers of ten only: no overlap
        base = alt.Chart(shown).encode(x=alt.X("edges:Q", scale=alt.Scale(type="log"), title="edges in the circuit (log)",
                                               axis=alt.Axis(values=decades, format="~s")))
        marks = pl.DataFrame({"edges": [max(c["edges"], 1)], "target": [c["target"]]})
        chart = (base.mark_area(opacity=0.2).encode(y=alt.Y("faithfulness_ci_low:Q", title="faithfulness"),
                                                     y2="faithfulness_ci_high:Q")
                 + base.mark_line(point=True).encode(y="faithfulness:Q",
                                                      tooltip=["edges", alt.Tooltip("faithfulness:Q", format=".3g")])
                 + alt.Chart(marks).mark_rule(strokeDash=[4, 3]).encode(x="edges:Q")
                 + alt.Chart(marks).mark_rule(color="#999", strokeDash=[2, 2]).encode(y="target:Q"))
        parts.append(ctx.charts.add(chart.properties(width=420, height=220, title="faithfulness by circuit size "
                                                     "(dashed: the chosen size and the target)")))
        if (m, d) in svgs:
            parts.append(f"<div class='circuit'>{Path(svgs[(m, d)]).read_text()}</div>")
        if (m, d) in edge_files:
            edges = pl.read_parquet(edge_files[(m, d)]).sort("rank").head(TOP)
            parts.append(f"<p class='note'>The {TOP} strongest edges (score: attributed change of the logit "
                         "difference, positive when the edge helps the right answer; n pairs).</p>")
            parts.append(table(edges.select("rank", "upstream", "downstream", "score", "in_circuit", "n")))
    return "".join(parts)
