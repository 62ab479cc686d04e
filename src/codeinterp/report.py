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


SECTIONS = {
    "pass_at_k": _section_pass_at_k,
    "verdicts": _section_verdicts,
    "lens_layers": _section_lens,
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
