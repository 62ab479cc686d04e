"""The `report` stage: one self-contained HTML file (Vega scripts inlined, no network needed).

Inputs arrive as a mapping "model|dataset|kind" -> file, so each analysis adds its charts
by registering a section builder for its kind in `SECTIONS`. Every section opens with a
sentence of finding computed from the data, with the number of targets (or problems) it
averages over and a bootstrap interval, then says where the targets come from.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path

import polars as pl
import yaml

from codeinterp.access.models import read_facts
from codeinterp.report import (activations, circuit, compare_models, compare_weights, failure, finetune, lens, patching,
                               probes, representation, tasks)
from codeinterp.report.charts import Charts, ci, curve, finding, fmt, heatmap, points, scatter, table
from codeinterp.uncertainty import Bootstrap, pass_at_k_summary

LIVECODEBENCH_NOTE = "public tests only (LiveCodeBench's hidden tests are not distributed)"


class Context:
    """What every section needs: charts, bootstrap settings and what each dataset's targets are."""

    def __init__(self, config: dict, targets: dict):
        self.charts = Charts()
        self.boot = Bootstrap.from_config(config)
        self.config = config
        self.targets = {k: pl.read_parquet(p) for k, p in targets.items()}
        self.side_inputs: dict[str, dict] = {}
        self.all_inputs: dict[str, dict] = {}

    def inputs(self, kind: str) -> dict:
        """(model, dataset) -> path of every input of `kind`, for sections that combine kinds."""
        return self.all_inputs.get(kind, {})

    def side(self, kind: str) -> dict:
        """(model, dataset) -> path of an input that feeds another section (e.g. the token table)."""
        return self.side_inputs.get(kind, {})

    def about(self, model: str, dataset: str) -> str:
        """`model / dataset: n targets (origin, span), N scored tokens`."""
        name = f"{html.escape(model)} / {html.escape(dataset)}"
        t = self.targets.get((model, dataset))
        if t is None or not len(t):
            return f"{name}: no targets"
        origins = ", ".join(sorted(t["origin"].unique().to_list()))
        if "outcome" in t.columns and t["outcome"].is_in(["passed", "failed"]).any():
            counts = t.group_by("outcome").len().sort("outcome")
            origins += ": " + ", ".join(f"{fmt(n)} {o}" for o, n in counts.iter_rows())
        span = ", ".join(sorted(t["scored"].unique().to_list())) if "scored" in t.columns else "all code"
        tokens = int((t["code_end"] - t["code_start"]).sum())
        mode = ", ".join(sorted(t["mode"].unique().to_list())) if "mode" in t.columns else \
            self.config.get("generation", {}).get("mode", "code")
        if "chat" in t.columns:
            mode += ", " + ", ".join("chat template" if c else "completion" for c in sorted(t["chat"].unique().to_list()))
        return (f"{name}: {fmt(len(t))} targets ({html.escape(origins)}; scored span: {html.escape(span)}; "
                f"prompt mode {html.escape(mode)}), {fmt(tokens)} scored tokens")


def _stacked(files: dict, column: str) -> pl.DataFrame | None:
    """All non-empty tables of one kind, concatenated; None when every one is empty."""
    frames = [f for f in (pl.read_parquet(p) for _, p in sorted(files.items())) if column in f.columns and len(f)]
    return pl.concat(frames, how="diagonal") if frames else None


def _pass_at_k(files: dict, ctx: Context) -> str:
    rows, findings = [], []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        summary = pass_at_k_summary(df, ctx.boot) if len(df) else pl.DataFrame()
        n = df["n"].unique().sort().to_list() if len(df) else []
        row = {"model": m, "dataset": d, "problems": len(df),
               "samples per problem": "–" if not n else (str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"),
               "tests": LIVECODEBENCH_NOTE if d.startswith("livecodebench") else "all"}
        for c in summary.columns if len(summary) else []:
            row[c] = summary[c][0]
        rows.append(_ci_text(pl.DataFrame([row])))
        if "pass@1" in summary.columns:
            s = summary.row(0, named=True)
            note = f"; {LIVECODEBENCH_NOTE}" if d.startswith("livecodebench") else ""
            findings.append(f"{html.escape(m)} solves {fmt(int(df['c'].gt(0).sum()))} of {fmt(len(df))} "
                            f"{html.escape(d)} problems; pass@1 = {ci(s['pass@1'], s['pass@1_ci_low'], s['pass@1_ci_high'])} "
                            f"over n = {fmt(len(df))} problems{note}.")
    return "".join(finding(f) for f in findings) + table(pl.concat(rows, how="diagonal"))


def _verdicts(files: dict, ctx: Context) -> str:
    frames = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        frames.append(df.group_by("status", "isolation").len().with_columns(model=pl.lit(m), dataset=pl.lit(d)))
    both = pl.concat(frames)
    counts = both.pivot(on="status", index=["model", "dataset", "isolation"], values="len").fill_null(0)
    total = int(both["len"].sum())
    passed = int(both.filter(pl.col("status") == "passed")["len"].sum())
    text = (f"{fmt(passed)} of {fmt(total)} samples passed; a pass needs the harness's own evidence that every "
            "test ran (a program that exits early is not passed).")
    return finding(text) + "<p>Samples per outcome in the sandbox, and the isolation used.</p>" + table(counts.sort("model", "dataset"))


def _heads(files: dict, ctx: Context) -> str:
    parts = ["<p>Change in the mean code-token cross-entropy when one head is removed (red: the loss rises, the head "
             "helps), mean over targets with a 95% bootstrap interval. Dots mark heads whose interval excludes zero; "
             "colours saturate at the 99th percentile of |Δ|.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{ctx.about(m, d)}</h3>")
        for kind in sorted(df["ablation"].unique()) if len(df) else []:
            one = df.filter(pl.col("ablation") == kind)
            parts.append(finding(_headsfinding(one, kind)))
            parts.append(ctx.charts.add(heatmap(one, f"{m} / {d}: {kind} ablation")))
            top = one.sort("delta", descending=True).head(8).select(
                "ablation", "layer", "head", pl.col("delta").alias("Δ loss"), "ci_low", "ci_high",
                pl.col("excludes_zero").alias("CI excludes 0"), "n_targets")
            parts.append(table(top))
    return "".join(parts)


def _headsfinding(one: pl.DataFrame, kind: str) -> str:
    n_heads, n = len(one), int(one["n_targets"].max())
    sure = one.filter(pl.col("excludes_zero"))
    best = one.sort("delta", descending=True).row(0, named=True)
    head = f"L{best['layer']}H{best['head']}"
    if one["ci_low"].is_nan().all():
        return (f"With n = {fmt(n)} targets no interval is given (at least 5 are needed), so no head can be told "
                f"apart from zero; largest mean Δ: {head}, {fmt(best['delta'])} nats.")
    if not len(sure):
        return (f"No head's 95% interval excludes zero under {kind} ablation with n = {fmt(n)} targets: the ranking "
                f"is not distinguishable from noise (largest mean Δ: {head}, {ci(best['delta'], best['ci_low'], best['ci_high'])}).")
    up = int((sure["delta"] > 0).sum())
    best = sure.sort(pl.col("delta").abs(), descending=True).row(0, named=True)
    head = f"L{best['layer']}H{best['head']}"
    return (f"{fmt(len(sure))} of {fmt(n_heads)} heads have a 95% interval that excludes zero under {kind} ablation "
            f"(n = {fmt(n)} targets; {fmt(up)} of them raise the loss when removed); the largest effect is {head}, "
            f"Δ = {ci(best['delta'], best['ci_low'], best['ci_high'])} nats.")


def _knockout(files: dict, ctx: Context) -> str:
    parts = ["<p>Loss as heads are removed cumulatively, most or least important first (by the ranking's own "
             "ablation), with a 95% bootstrap band over targets; log scale.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{ctx.about(m, d)}</h3>")
        if not len(df):
            continue
        if "ci_low" not in df.columns:
            df = df.with_columns(pl.col("loss").alias("ci_low"), pl.col("loss").alias("ci_high"))
        base = df.filter(pl.col("k") == 0).row(0, named=True)
        steps = sorted(df["k"].unique().to_list())
        k = steps[min(1, len(steps) - 1)]
        heads = "head" if k == 1 else "heads"
        at = {o: df.filter((pl.col("order") == o) & (pl.col("k") == k)).row(0, named=True) for o in ("most_first", "least_first")}
        parts.append(finding(
            f"Removing the {fmt(k)} most important {heads} takes the loss from {fmt(base['loss'])} to "
            f"{ci(at['most_first']['loss'], at['most_first']['ci_low'], at['most_first']['ci_high'])}; the {fmt(k)} least "
            f"important, to {ci(at['least_first']['loss'], at['least_first']['ci_low'], at['least_first']['ci_high'])} "
            f"(n = {fmt(base['n_targets'])} targets)."))
        parts.append(ctx.charts.add(curve(df.select("order", "k", "loss", "ci_low", "ci_high"), "k", f"{m} / {d}",
                                          "heads removed", "loss (nats)", color="order")))
    return "".join(parts)


def _taylor(files: dict, ctx: Context) -> str:
    parts = ["<p>Loss after each iteration of first-order Taylor pruning, with a 95% bootstrap band over targets.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{ctx.about(m, d)}</h3>")
        if not len(df):
            continue
        first, last = df.row(0, named=True), df.row(len(df) - 1, named=True)
        parts.append(finding(
            f"After {fmt(last['iteration'])} iterations ({fmt(last['n_pruned_total'])} heads pruned) the loss is "
            f"{ci(last['loss'], last['ci_low'], last['ci_high'])} against {fmt(first['loss'])} unpruned "
            f"(n = {fmt(last['n_targets'])} targets)."))
        parts.append(ctx.charts.add(curve(df.select("n_pruned_total", "loss", "ci_low", "ci_high"), "n_pruned_total",
                                          f"{m} / {d}", "heads pruned", "loss (nats)")))
    return "".join(parts)


def _taylor_vs_exact(files: dict, ctx: Context) -> str:
    df = _stacked(files, "pair")
    if df is None:
        return "<p>No targets: nothing compared.</p>"
    findings = []
    for r in df.iter_rows(named=True):
        findings.append(f"{html.escape(r['model'])} / {html.escape(r['dataset'])}, {html.escape(r['pair'])}: "
                        f"{html.escape(r['estimate'])} against {html.escape(r['exact'])}: Spearman ρ = {fmt(r['spearman'])} "
                        f"over {fmt(r['n_heads'])} heads (n = {fmt(r['n_targets'])} targets).")
    intro = ("<p>Like with like. <b>importance</b>: Michel et al.'s Taylor score, the mean over targets of |∂L/∂mask|, "
             "estimates the mean over targets of |Δ| (the absolute exact ablation effect per target). <b>signed</b>: the "
             "first-order estimate of removing a head, the mean over targets of −∂L/∂mask, estimates the signed mean Δ. "
             "Both use the ranking's own ablation (zero, or the head's mean output).</p>")
    cols = [c for c in ("model", "dataset", "pair", "ablation", "n_heads", "n_targets", "spearman", "kendall",
                        "top5_overlap", "top10_overlap", "top20_overlap") if c in df.columns]
    return intro + "".join(finding(f) for f in findings) + table(df.select(cols))


def _taylor_scatter(files: dict, ctx: Context) -> str:
    parts = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path).drop_nulls().filter(pl.col("taylor").is_not_nan())
        if len(df):
            parts.append(ctx.charts.add(scatter(df, "abs_delta", "taylor", f"{m} / {d}: importance", "mean |Δ|", "Taylor score")))
            parts.append(ctx.charts.add(scatter(df, "delta", "first_order", f"{m} / {d}: signed", "mean Δ",
                                                "first-order estimate")))
    return "".join(parts)


def _pruned_eval(files: dict, ctx: Context) -> str:
    parts = ["<p>pass@k after regenerating with heads removed, per regime, with a 95% bootstrap interval over "
             "problems. Regime <code>none</code> is the unpruned model.</p>"]
    tables = []
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        tables.append(df)
        if "pass@1" in df.columns and len(df):
            base = df.filter(pl.col("regime") == "none")
            worst = df.filter(pl.col("regime") != "none").sort("pass@1").head(1)
            if len(base) and len(worst):
                b, w = base.row(0, named=True), worst.row(0, named=True)
                parts.append(finding(
                    f"{html.escape(m)} / {html.escape(d)}: pass@1 {ci(b['pass@1'], b['pass@1_ci_low'], b['pass@1_ci_high'])} "
                    f"unpruned; lowest under {html.escape(w['regime'])}: {ci(w['pass@1'], w['pass@1_ci_low'], w['pass@1_ci_high'])} "
                    f"(n = {fmt(w['n_problems'])} problems)."))
            parts.append(ctx.charts.add(points(df, f"{m} / {d}")))
    if tables:
        parts.append(table(_ci_text(pl.concat(tables, how="diagonal").drop("heads", "ablation", strict=False))))
    return "".join(parts)


def _ci_text(df: pl.DataFrame) -> pl.DataFrame:
    """Each `x`, `x_ci_low`, `x_ci_high` triple as one readable column `x (95% CI)`."""
    for c in [c for c in df.columns if f"{c}_ci_low" in df.columns]:
        text = [ci(m, lo, hi) if m is not None else "–" for m, lo, hi in df.select(c, f"{c}_ci_low", f"{c}_ci_high").iter_rows()]
        df = df.with_columns(pl.Series(c, text)).drop(f"{c}_ci_low", f"{c}_ci_high")
    return df


def _subsets(files: dict, ctx: Context) -> str:
    df = _stacked(files, "method")
    if df is None:
        return "<p>No targets: no search.</p>"
    findings = []
    for (m, d), g in df.group_by("model", "dataset", maintain_order=True):
        best = g.sort("loss").row(0, named=True)
        findings.append(f"{html.escape(m)} / {html.escape(d)}: removing k = {fmt(best['k'])} heads costs least with the "
                        f"{html.escape(best['method'])} set: loss {ci(best['loss'], best['ci_low'], best['ci_high'])} "
                        f"(n = {fmt(best['n_targets'])} targets).")
    return ("<p>Loss with k heads removed: the CMA-ES set against ranked sets.</p>" + "".join(finding(f) for f in findings)
            + table(df))


SIDE_INPUTS = ("tokens", "probe_projection", "circuit_svg", "circuit_edges", "attribution_patching", "finetune_training",
               "finetune_record", "compare_heads", "compare_lens", "compare_pass_at_k", "compare_circuits")

SECTIONS = {
    "finetune_heldout": ("Fine-tuned variants", finetune.section),
    "pass_at_k": ("pass@k", _pass_at_k),
    "verdicts": ("Verdicts", _verdicts),
    "activations": ("Activation cache and token labels", lambda files, ctx: activations.section(files, ctx, ctx.side("tokens"))),
    "lens_layers": ("Layer lens", lens.section),
    "tuned_training": (None, lens.training_section),
    "probes": ("Probes: what the residual stream encodes about code", probes.section),
    "representation_map": ("Representation maps", representation.section),
    "failure_probe": ("Predicting failure from internal states", failure.section),
    "head_matrix": ("Attention heads: exact single-head ablation", _heads),
    "knockout": ("Knockout curves", _knockout),
    "taylor_history": ("Taylor pruning", _taylor),
    "taylor_vs_exact": ("Taylor scores versus exact ablation", _taylor_vs_exact),
    "taylor_vs_exact_heads": (None, _taylor_scatter),
    "pruned_eval": ("Pruned models", _pruned_eval),
    "subset_compare": ("Head subsets (CMA-ES)", _subsets),
    "task_accuracy": ("Generated tasks: accuracy", tasks.accuracy_section),
    "task_lens": ("Generated tasks: from which layer the answer is right", tasks.lens_section),
    "sublayer_ablation": ("Generated tasks: attention versus MLP", tasks.sublayer_section),
    "head_roles": ("Brackets: heads that count", tasks.roles_section),
    "bracket_study": ("The closing-bracket study, model by model", tasks.study_section),
    "activation_patching": ("Activation patching", patching.section),
    "attribution_vs_exact": ("Attribution patching against exact patching", patching.attribution_section),
    "circuit_curve": ("Circuits (EAP-IG, verified by edge patching)", circuit.section),
    "compare_weights": ("Comparing models: weights head by head", compare_weights.section),
    "compare_models": ("Comparing models: the heads and layers that matter", compare_models.section),
    "head_union": ("Heads that matter across benchmarks", compare_models.union_section),
}

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}.chart{display:inline-block;margin:.5em}.circuit svg{max-width:100%;height:auto}
.finding{background:#eef5ff;border-left:4px solid #3b74c4;padding:.5em .8em}.note{color:#666;font-size:.9em}
nav ol{columns:2}h3{font-size:1em;font-weight:600;margin-top:1.5em}
"""


def build_report(inputs: dict[str, str], config: dict, out_path: str) -> None:
    by_kind: dict[str, dict] = defaultdict(dict)
    for key, path in inputs.items():
        if key.count("|") == 2:
            m, d, kind = key.split("|")
            by_kind[kind][(m, d)] = path
    ctx = Context(config, by_kind.pop("targets", {}))
    ctx.all_inputs = {k: dict(v) for k, v in by_kind.items()}
    if by_kind.get("head_roles"):  # the study's summary reads the head-role, lens and sublayer tables
        by_kind["bracket_study"] = dict(by_kind["head_roles"])
    for kind in SIDE_INPUTS:
        ctx.side_inputs[kind] = by_kind.pop(kind, {})
    facts = [{"model": Path(p).name, **_readable(read_facts(p).__dict__)} for p in _as_list(inputs.get("models", []))]
    sections = [("models", "Models", table(pl.DataFrame(facts)))]
    for kind, (title, builder) in SECTIONS.items():
        if by_kind.get(kind):
            body = builder(by_kind[kind], ctx)
            if title is None and sections:  # continues the previous section
                sections[-1] = (sections[-1][0], sections[-1][1], sections[-1][2] + body)
            else:
                sections.append((kind, title, body))
    sections.append(("configuration", "Configuration", "<pre>" + html.escape(yaml.safe_dump(config, sort_keys=True)) + "</pre>"))
    title = html.escape(config.get("report", {}).get("title", "codeinterp report"))
    toc = "<nav><h2>Contents</h2><ol>" + "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t, _ in sections) + "</ol></nav>"
    body = "".join(f"<section id='{a}'><h2>{html.escape(t)}</h2>{b}</section>" for a, t, b in sections)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{STYLE}</style></head>"
            f"<body><h1>{title}</h1>{toc}{body}{ctx.charts.script()}</body></html>")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(out)


def _readable(facts: dict) -> dict:
    """Per-layer lists as counts (`sliding_attention ×15, full_attention ×3`), not 18 cells' worth."""
    out = {}
    for k, v in facts.items():
        if isinstance(v, list):
            counts = {x: v.count(x) for x in dict.fromkeys(v)}
            v = ", ".join(f"{x} ×{n}" for x, n in counts.items())
        out[k] = v
    return out


def _as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)
