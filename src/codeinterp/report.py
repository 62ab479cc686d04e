"""The `report` stage: one self-contained HTML file (Vega scripts inlined, no network needed).

Inputs arrive as a mapping "model|dataset|kind" -> file, so each analysis adds its charts
by registering a section builder for its kind in `SECTIONS`.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path

import altair as alt
import polars as pl
import yaml

from .models import read_facts


def _table(df: pl.DataFrame, float_digits: int = 3) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for r in df.iter_rows():
        cells = []
        for v in r:
            if isinstance(v, float):
                v = f"{v:.{float_digits}f}"
            elif isinstance(v, list):
                v = ", ".join(map(str, v))
            cells.append(f"<td>{html.escape('' if v is None else str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class Charts:
    """Collects chart specs; each is embedded by id and rendered by the inlined vega-embed."""

    def __init__(self):
        self.specs: list[tuple[str, dict]] = []

    def add(self, chart: alt.TopLevelMixin) -> str:
        cid = f"chart{len(self.specs)}"
        self.specs.append((cid, chart.to_dict()))
        return f'<div class="chart" id="{cid}"></div>'

    def script(self) -> str:
        import vl_convert as vlc

        bundle = vlc.javascript_bundle().replace("</script", "<\\/script")
        calls = "\n".join(
            f"vegaEmbed('#{cid}', {json.dumps(spec)}, {{actions: false}});" for cid, spec in self.specs
        )
        return f"<script>{bundle}</script>\n<script>{calls}</script>"


def lens_chart(layers: pl.DataFrame, title: str) -> alt.Chart:
    long = layers.select("layer", "entropy", "cross_entropy").unpivot(
        index="layer", variable_name="statistic", value_name="nats"
    )
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(x=alt.X("layer:Q", title="layer (0 = embeddings)"), y=alt.Y("nats:Q"), color="statistic:N",
                tooltip=["layer", "statistic", alt.Tooltip("nats:Q", format=".3f")])
        .properties(title=title, width=420, height=220)
    )


def _section_pass_at_k(files: dict, charts: Charts) -> str:
    frames = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        cols = [c for c in df.columns if c.startswith("pass@")]
        summary = df.select([pl.col(c).mean() for c in cols]) if len(df) else pl.DataFrame()
        frames.append(pl.DataFrame({"model": [m], "dataset": [d], "problems": [len(df)]}).hstack(summary) if len(df) else
                      pl.DataFrame({"model": [m], "dataset": [d], "problems": [0]}))
    return "<h2>pass@k</h2>" + _table(pl.concat(frames, how="diagonal"))


def _section_verdicts(files: dict, charts: Charts) -> str:
    frames = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        frames.append(df.group_by("status", "isolation").len().with_columns(model=pl.lit(m), dataset=pl.lit(d)))
    table = pl.concat(frames).pivot(on="status", index=["model", "dataset", "isolation"], values="len").fill_null(0)
    return "<h2>Verdicts</h2><p>Samples per outcome in the sandbox, and the isolation used.</p>" + _table(table.sort("model", "dataset"))


def _section_lens(files: dict, charts: Charts) -> str:
    parts = ["<h2>Layer lens</h2><p>Logit-lens entropy and cross-entropy (nats) on code tokens, per layer; "
             "the last layer is the model's own output.</p>"]
    for (m, d), path in sorted(files.items()):
        layers = pl.read_parquet(path)
        if len(layers):
            parts.append(charts.add(lens_chart(layers, f"{m} / {d}")))
        else:
            parts.append(f"<p>{html.escape(m)} / {html.escape(d)}: no targets.</p>")
    return "".join(parts)


def _heatmap(matrix: pl.DataFrame, title: str) -> alt.Chart:
    extent = max(abs(matrix["delta"].min()), abs(matrix["delta"].max()), 1e-9)
    return (
        alt.Chart(matrix.select("layer", "head", "delta"))
        .mark_rect()
        .encode(
            x=alt.X("head:O"), y=alt.Y("layer:O", sort="descending"),
            color=alt.Color("delta:Q", scale=alt.Scale(scheme="redblue", domain=[-extent, extent], reverse=True),
                            title="Δ loss"),
            tooltip=["layer", "head", alt.Tooltip("delta:Q", format=".4f")],
        )
        .properties(title=title, width=max(120, 22 * (matrix["head"].max() + 1)), height=max(120, 9 * (matrix["layer"].max() + 1)))
    )


def _section_heads(files: dict, charts: Charts) -> str:
    parts = ["<h2>Attention heads: exact single-head ablation</h2><p>Change in mean code-token cross-entropy "
             "when one head is removed (red: the loss rises, the head helps).</p>"]
    tops = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        for kind in sorted(df["ablation"].unique()) if len(df) else []:
            one = df.filter(pl.col("ablation") == kind)
            parts.append(charts.add(_heatmap(one, f"{m} / {d}: {kind} ablation")))
            tops.append(one.sort("delta", descending=True).head(5).select("model", "dataset", "ablation", "layer", "head", "delta"))
    if tops:
        parts.append("<h3>Top heads</h3>" + _table(pl.concat(tops), 4))
    return "".join(parts)


def _line(df: pl.DataFrame, x: str, y: str, color: str | None, title: str, x_title: str, y_title: str) -> alt.Chart:
    enc = dict(x=alt.X(f"{x}:Q", title=x_title), y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=False)),
               tooltip=[x, alt.Tooltip(f"{y}:Q", format=".4f")])
    if color:
        enc["color"] = f"{color}:N"
    return alt.Chart(df).mark_line(point=len(df) < 60).encode(**enc).properties(title=title, width=420, height=220)


def _section_knockout(files: dict, charts: Charts) -> str:
    parts = ["<h2>Knockout curves</h2><p>Loss as heads are removed cumulatively in order of ablation importance.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        if len(df):
            parts.append(charts.add(_line(df.select("order", "k", "loss"), "k", "loss", "order", f"{m} / {d}", "heads removed", "loss")))
    return "".join(parts)


def _section_taylor(files: dict, charts: Charts) -> str:
    parts = ["<h2>Taylor pruning</h2><p>Loss after each iteration of first-order Taylor pruning.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        if len(df):
            parts.append(charts.add(_line(df.select("n_pruned_total", "loss"), "n_pruned_total", "loss", None,
                                          f"{m} / {d}", "heads pruned", "loss")))
    return "".join(parts)


def _stacked_table(files: dict, heading: str, digits: int) -> str:
    """One table of all models and datasets, or nothing when every file is empty."""
    frames = [f for f in (pl.read_parquet(p) for _, p in sorted(files.items())) if len(f)]
    return heading + _table(pl.concat(frames, how="diagonal"), digits) if frames else ""


def _section_taylor_vs_exact(files: dict, charts: Charts) -> str:
    return _stacked_table(files, "<h2>Taylor scores versus exact ablation</h2><p>How far the cheap estimate can be "
                          "trusted: rank correlations and top-k overlap.</p>", 3)


def _section_taylor_scatter(files: dict, charts: Charts) -> str:
    parts = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path).drop_nulls().filter(pl.col("taylor").is_not_nan())
        if len(df):
            chart = (alt.Chart(df.select("layer", "head", "taylor", "exact")).mark_circle()
                     .encode(x=alt.X("exact:Q", title="exact Δ loss"), y=alt.Y("taylor:Q", title="Taylor score"),
                             tooltip=["layer", "head", "exact", "taylor"])
                     .properties(title=f"{m} / {d}", width=300, height=220))
            parts.append(charts.add(chart))
    return "".join(parts)


def _section_pruned_eval(files: dict, charts: Charts) -> str:
    parts = ["<h2>Pruned models</h2><p>pass@k after regenerating with heads removed, per regime.</p>"]
    tables = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        tables.append(df)
        if "pass@1" in df.columns and len(df):
            chart = (alt.Chart(df.select("regime", "n_removed", "pass@1")).mark_point(filled=True, size=80)
                     .encode(x=alt.X("n_removed:Q", title="heads removed"), y=alt.Y("pass@1:Q", scale=alt.Scale(domain=[0, 1])),
                             color="regime:N", tooltip=["regime", "n_removed", "pass@1"])
                     .properties(title=f"{m} / {d}", width=360, height=220))
            parts.append(charts.add(chart))
    if tables:
        parts.append(_table(pl.concat(tables, how="diagonal").drop("heads"), 3))
    return "".join(parts)


def _section_subsets(files: dict, charts: Charts) -> str:
    return _stacked_table(files, "<h2>Head subsets (CMA-ES)</h2><p>Loss with k heads removed: the CMA-ES set "
                          "against ranked sets.</p>", 4)


SECTIONS = {
    "pass_at_k": _section_pass_at_k,
    "verdicts": _section_verdicts,
    "lens_layers": _section_lens,
    "head_matrix": _section_heads,
    "knockout": _section_knockout,
    "taylor_history": _section_taylor,
    "taylor_vs_exact": _section_taylor_vs_exact,
    "taylor_vs_exact_heads": _section_taylor_scatter,
    "pruned_eval": _section_pruned_eval,
    "subset_compare": _section_subsets,
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}.chart{display:inline-block;margin:.5em}
"""


def build_report(inputs: dict[str, str], config: dict, out_path: str) -> None:
    by_kind: dict[str, dict] = defaultdict(dict)
    for key, path in inputs.items():
        if key.count("|") == 2:
            m, d, kind = key.split("|")
            by_kind[kind][(m, d)] = path
    charts = Charts()
    facts = [{"model": Path(p).name, **read_facts(p).__dict__} for p in _as_list(inputs.get("models", []))]
    body = [f"<h1>{html.escape(config.get('report', {}).get('title', 'codeinterp report'))}</h1>"]
    body.append("<h2>Models</h2>" + _table(pl.DataFrame(facts)))
    for kind, builder in SECTIONS.items():
        if by_kind.get(kind):
            body.append(builder(by_kind[kind], charts))
    body.append("<h2>Configuration</h2><pre>" + html.escape(yaml.safe_dump(config, sort_keys=True)) + "</pre>")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>codeinterp report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}{charts.script()}</body></html>"
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(out)


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
