"""Report section: what the activation cache holds and how the token table labels the code.

Readers of the cache (probes, tuned lens, representation maps) average over these tokens, so
the section says how many there are, from which targets, which sites and dtype, and how the
code tokens split by lexical category (the probes' largest label set).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import polars as pl

from codeinterp.report.charts import finding, fmt, table


def _cache_row(model: str, dataset: str, directory: str) -> dict:
    index = json.loads((Path(directory) / "index.json").read_text())
    kinds = sorted({s.split(".")[0] for s in index["sites"]})
    size = sum((Path(directory) / s).stat().st_size for s in index["shards"])
    return {"model": model, "dataset": dataset, "tokens": index["n_rows"],
            "targets": len(index["targets"]["target_id"]), "positions": index["positions"],
            "sites": f"{len(index['sites'])} ({', '.join(kinds)})", "dtype": index["dtype"],
            "shards": len(index["shards"]), "MB": size / 1e6}


def _label_counts(tokens: pl.DataFrame) -> pl.DataFrame:
    code = tokens.filter(pl.col("in_code") & pl.col("lexical").is_not_null())
    return code.group_by("lexical").len().sort("len", "lexical", descending=[True, False])


def section(files: dict, ctx, tokens: dict) -> str:
    """`files`: (model, dataset) -> cache directory; `tokens`: (model, dataset) -> token table."""
    rows, parts = [], []
    for (m, d), directory in sorted(files.items()):
        rows.append(_cache_row(m, d, directory))
        cached = rows[-1]["tokens"]
        if (m, d) not in tokens:
            continue
        tok = pl.read_parquet(tokens[(m, d)])
        code = tok.filter(pl.col("in_code"))
        counts = _label_counts(tok)
        parts.append(f"<h3>{ctx.about(m, d)}</h3>")
        if not len(code):
            parts.append("<p>No code tokens.</p>")
            continue
        parsed = code.group_by("target_id").agg(pl.col("parse_ok").first())
        top = counts.row(0, named=True) if len(counts) else None
        text = (f"{fmt(len(code))} code tokens of {fmt(parsed.height)} targets are labelled; "
                f"{fmt(int(parsed['parse_ok'].sum()))} of {fmt(parsed.height)} targets' code parses "
                "(labels from Python's ast and tokenize; the others from tokenize only)")
        if top:
            text += (f"; the most frequent category is {html.escape(top['lexical'])} "
                     f"({fmt(100 * top['len'] / counts['len'].sum())}% of labelled code tokens)")
        if "straddles" in code.columns:
            text += f"; {fmt(100 * code['straddles'].mean())}% of code tokens straddle two categories"
        text += (f"; the cache holds {fmt(cached)} token positions (activations.positions: "
                 f"{html.escape(rows[-1]['positions'])}), which is what the probes and maps read")
        parts.append(finding(text + "."))
        parts.append(table(counts.rename({"len": "tokens"})))
    intro = ("<p>Activations cached from the model's own forward (hooks on the modules the architecture "
             "adapter names; the residual decomposition is checked on the first batch), per token of the "
             "analysis targets. The stages below read them.</p>")
    return intro + table(pl.DataFrame(rows)) + "".join(parts)
