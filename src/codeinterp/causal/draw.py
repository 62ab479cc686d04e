"""The chosen circuit as a static SVG (graphviz's `dot`, rendered offline): nodes ranked by layer
(a layer's heads on one row, its MLP on the next), edges as wide as their |score|, blue when the
edge helps the right answer, red when it works against it; only the circuit's edges, and of a
large circuit only the strongest (`MAX_DRAWN`; the title says how many of how many)."""

from __future__ import annotations

import re

import graphviz
import polars as pl

# dot's layout time grows much faster than the edge count: a 44,371-edge circuit (SmolLM2's whole
# graph, chosen when only it reaches the faithfulness target) ran for over 13 minutes without
# finishing. The edge table keeps every edge; the drawing is for reading.
MAX_DRAWN = 120


def _layer(node: str) -> int:
    """Drawing row: the input, then per layer its heads and (one row up) its MLP, then the logits,
    so that every edge points up."""
    if node == "input":
        return -1
    if node == "logits":
        return 10**6
    m = re.match(r"(L|MLP)(\d+)", node)
    return 2 * int(m.group(2)) + (m.group(1) == "MLP")


def circuit_svg(edges: pl.DataFrame, title: str, max_drawn: int = MAX_DRAWN) -> str:
    kept = edges.filter(pl.col("in_circuit"))
    if len(kept) > max_drawn:
        kept = kept.sort(pl.col("score").abs(), descending=True, maintain_order=True).head(max_drawn)
        title += f"; the {max_drawn:,} strongest of its {len(edges.filter(pl.col('in_circuit'))):,} edges drawn"
    dot = graphviz.Digraph(graph_attr={"rankdir": "BT", "label": title, "labelloc": "t", "fontsize": "12"},
                           node_attr={"shape": "box", "fontsize": "10", "style": "rounded"})
    nodes = sorted(set(kept["upstream"]) | set(kept["downstream"]), key=lambda n: (_layer(n), n))
    for layer in sorted({_layer(n) for n in nodes}):
        with dot.subgraph() as same:
            same.attr(rank="same")
            for n in nodes:
                if _layer(n) == layer:
                    same.node(n, fillcolor="#eef3fb" if n.startswith("L") else "#fff4e0", style="rounded,filled")
    top = float(kept["score"].abs().max() or 1.0) if len(kept) else 1.0
    for r in kept.iter_rows(named=True):
        width = 0.5 + 3.5 * abs(r["score"]) / top
        dot.edge(r["upstream"], r["downstream"], penwidth=f"{width:.2f}",
                 color="#3b74c4" if r["score"] > 0 else "#c43b3b", tooltip=f"{r['score']:.3g}")
    svg = dot.pipe(format="svg").decode()
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG is inlined in HTML
