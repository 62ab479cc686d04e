"""Report sections of the generated tasks: accuracy, task lens, sublayer ablation, head roles,
and the closing-bracket study's three findings checked for each model."""

from __future__ import annotations

import html
import math

import altair as alt
import polars as pl

from codeinterp.report.charts import ci, finding, fmt, table

STUDY = ("Published study (closing parentheses in CodeLlama-7b): (1) middle-to-late layers are needed for a "
         "confident prediction; (2) attention matters more than the MLPs; (3) some heads count how many brackets "
         "are already closed, and they may or may not promote the right number of closers.")


def _name(m: str, d: str) -> str:
    return f"{html.escape(m)} / {html.escape(d)}"


def _nan_free(df: pl.DataFrame, value: str) -> pl.DataFrame:
    return df.with_columns(pl.col(f"{value}_ci_low").fill_nan(pl.col(value)),
                           pl.col(f"{value}_ci_high").fill_nan(pl.col(value)))


def accuracy_section(files: dict, ctx) -> str:
    parts = ["<p>Each pair's clean prompt and its counterfactual (one extra opener for brackets; a swapped or renamed "
             "binding for variable binding), scored at the last position: is the right answer token ranked first, and "
             "by how much does its logit beat the other answer's (right minus wrong). Intervals: 95% bootstrap over "
             "pairs.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path).filter(pl.col("level") == "group")
        parts.append(f"<h3>{_name(m, d)}</h3>")
        pooled = {r["prompt"]: r for r in df.filter(pl.col("source") == "all").iter_rows(named=True)}
        if "clean" in pooled:
            c, k = pooled["clean"], pooled.get("corrupt")
            text = (f"On n = {fmt(c['n'])} pairs the model ranks the right answer first on "
                    f"{ci(c['top1'], c['top1_ci_low'], c['top1_ci_high'])} of clean prompts (logit difference "
                    f"{ci(c['logit_diff'], c['logit_diff_ci_low'], c['logit_diff_ci_high'])})")
            if k:
                text += (f" and {ci(k['top1'], k['top1_ci_low'], k['top1_ci_high'])} of counterfactual prompts "
                         f"(logit difference {ci(k['logit_diff'], k['logit_diff_ci_low'], k['logit_diff_ci_high'])})")
            parts.append(finding(text + "."))
        by = _nan_free(df.filter(pl.col("source") != "all"), "top1")
        if len(by):
            base = alt.Chart(by).encode(x=alt.X("depth:O", title="depth (open brackets or bindings)"),
                                        xOffset="source:N", color="source:N")
            bars = base.mark_point(filled=True, size=60).encode(
                y=alt.Y("top1:Q", title="top-1 accuracy", scale=alt.Scale(domain=[0, 1])),
                tooltip=["source", "kind", "depth", "prompt", "n", alt.Tooltip("top1:Q", format=".3g")])
            err = base.mark_rule().encode(y="top1_ci_low:Q", y2="top1_ci_high:Q")
            parts.append(ctx.charts.add((err + bars).properties(width=360, height=200).facet(column="prompt:N")))
        parts.append(table(df.select("prompt", "source", "kind", "depth", "n", "top1", "logit_diff").sort(
            "prompt", "source", "depth"), max_rows=40))
    return "".join(parts)


def first_confident(lens: pl.DataFrame, threshold: float, name: str = "logit") -> int | None:
    rows = lens.filter((pl.col("lens") == name) & (pl.col("depth") == -1)).sort("layer")
    first = None
    for r in rows.iter_rows(named=True):
        low = r["top1_ci_low"]
        good = low is not None and not math.isnan(low) and low >= threshold and r["logit_diff"] > 0
        first = (r["layer"] if first is None else first) if good else None
    return first


def lens_section(files: dict, ctx) -> str:
    threshold = ctx.config.get("task_lens", {}).get("confident", 0.8)
    parts = [f"<p>The logit lens (and the tuned lens where one was trained) at the last position of each clean prompt: "
             f"the right answer's logit minus the counterfactual answer's, per layer (0 = embeddings; the last layer "
             f"is the model's output). A layer is <em>confidently right</em> when the lower 95% bound of top-1 "
             f"accuracy is at least {fmt(threshold)} and the mean logit difference is positive, from that layer to "
             f"the output.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{_name(m, d)}</h3>")
        pooled = df.filter((pl.col("depth") == -1) & (pl.col("lens") == "logit")).sort("layer")
        if not len(pooled):
            continue
        first, last = first_confident(df, threshold), pooled.row(-1, named=True)
        n_layers = int(pooled["layer"].max())
        text = (f"On n = {fmt(last['n'])} pairs the output ranks the right answer first on "
                f"{ci(last['top1'], last['top1_ci_low'], last['top1_ci_high'])}; ")
        text += (f"the logit lens is confidently right from layer {first} of {n_layers} on" if first is not None else
                 "the logit lens is not confidently right at any layer, the output included")
        parts.append(finding(text + "."))
        curves = _nan_free(df.with_columns(pl.when(pl.col("depth") == -1).then(pl.lit("all")).otherwise(
            pl.col("depth").cast(pl.Utf8)).alias("depth_label")), "logit_diff")
        base = alt.Chart(curves).encode(x=alt.X("layer:Q", axis=alt.Axis(values=list(range(n_layers + 1)) if n_layers <= 12 else None,
                                                                     tickMinStep=1, format="d")),
                                        color=alt.Color("depth_label:N", title="depth"), strokeDash="lens:N")
        band = base.mark_area(opacity=0.12).encode(y=alt.Y("logit_diff_ci_low:Q", title="logit difference (right − wrong)"),
                                                   y2="logit_diff_ci_high:Q")
        line = base.mark_line(point=True).encode(
            y="logit_diff:Q", tooltip=["lens", "depth", "layer", "n", alt.Tooltip("logit_diff:Q", format=".3g"),
                                       alt.Tooltip("top1:Q", format=".3g")])
        layers = [band, line]
        if first is not None:
            layers.append(alt.Chart(pl.DataFrame({"layer": [first]})).mark_rule(strokeDash=[4, 3], color="black")
                          .encode(x="layer:Q"))
        parts.append(ctx.charts.add(alt.layer(*layers).properties(title=f"{m} / {d}", width=460, height=240)))
    return "".join(parts)


def sublayer_numbers(df: pl.DataFrame, ablation: str = "zero") -> dict | None:
    rows = {r["half"]: r for r in df.filter((pl.col("ablation") == ablation) & (pl.col("layer") == -1)).iter_rows(named=True)}
    return rows if {"attn", "mlp", "attn - mlp"} <= set(rows) else None


def sublayer_section(files: dict, ctx) -> str:
    parts = ["<p>Each layer's attention output and MLP output replaced by zero or by its mean over the task's prompts, "
             "at every position: the change of the clean logit difference (negative: the block was needed). The "
             "summary compares the summed |change| over layers of attention and MLPs, paired over pairs.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{_name(m, d)}</h3>")
        nums = sublayer_numbers(df)
        if nums:
            diff = nums["attn - mlp"]
            verdict = ("attention matters more" if diff["delta_ci_low"] > 0 else
                       "the MLPs matter more" if diff["delta_ci_high"] < 0 else "neither is shown to matter more")
            parts.append(finding(
                f"Zero-ablating attention changes the logit difference by a summed |change| over layers of {ci(nums['attn']['delta'], nums['attn']['delta_ci_low'], nums['attn']['delta_ci_high'])} "
                f", the MLPs by {ci(nums['mlp']['delta'], nums['mlp']['delta_ci_low'], nums['mlp']['delta_ci_high'])} "
                f"(difference {ci(diff['delta'], diff['delta_ci_low'], diff['delta_ci_high'])}, n = {fmt(diff['n'])} pairs): {verdict}."))
        per = _nan_free(df.filter(pl.col("layer") >= 0), "delta")
        base = alt.Chart(per).encode(x=alt.X("layer:O"), xOffset="half:N", color="half:N")
        chart = (base.mark_rule().encode(y="delta_ci_low:Q", y2="delta_ci_high:Q") +
                 base.mark_point(filled=True).encode(y=alt.Y("delta:Q", title="Δ logit difference"),
                                                     tooltip=["ablation", "half", "layer", "n", alt.Tooltip("delta:Q", format=".3g")]))
        parts.append(ctx.charts.add(chart.properties(width=460, height=200).facet(row="ablation:N")))
    return "".join(parts)


def roles_section(files: dict, ctx) -> str:
    parts = ["<p>Per head at the last position of the clean brackets prompts: direct logit attribution (DLA) to the "
             "right closer minus the counterfactual one, through the final norm linearised at each prompt's last "
             "state; attention to the still-open openers and to the already-closed pairs; Spearman's ρ of the head's "
             "output along the right closer's unembedding with the number of closed pairs and of open brackets. A head "
             "counts when a ρ interval excludes 0 and it is among the strongest; many heads are tested, so treat single "
             "heads as candidates to verify by patching.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{_name(m, d)}</h3>")
        counting = df.filter(pl.col("counting")).sort("count_strength", descending=True)
        n = int(df["n"].max()) if len(df) else 0
        names = ", ".join(f"L{r['layer']}H{r['head']}" + (" (promotes)" if r["promotes"] else "")
                          for r in counting.iter_rows(named=True)) or "none"
        parts.append(finding(f"On n = {fmt(n)} pairs, {fmt(len(counting))} heads track a bracket count ({names}); "
                             f"{fmt(int(df['promotes'].sum()))} of {fmt(len(df))} heads promote the right closer "
                             f"directly (DLA interval above 0)."))
        matrix = df.select("layer", "head", pl.col("dla").alias("delta"), pl.col("dla_ci_low").alias("ci_low"),
                           pl.col("dla_ci_high").alias("ci_high"), pl.col("promotes").alias("excludes_zero"))
        from codeinterp.report.charts import heatmap

        parts.append(ctx.charts.add(heatmap(matrix, f"{m} / {d}: DLA (right − wrong closer)", "DLA (logits)")))
        cols = ["layer", "head", "dla", "attn_open", "attn_closed", "rho_n_closed", "rho_depth", "promotes"]
        parts.append(table(df.sort("count_strength", descending=True).select(cols).head(10)))
    return "".join(parts)


def study_section(files: dict, ctx) -> str:
    """The three findings per model, from the brackets tasks' lens, sublayer and head-role tables."""
    lens, sub = ctx.inputs("task_lens"), ctx.inputs("sublayer_ablation")
    threshold = ctx.config.get("task_lens", {}).get("confident", 0.8)
    parts = [f"<p>{STUDY} Each is checked on every brackets dataset of every model below.</p>"]
    rows = []
    for (m, d), path in sorted(files.items()):
        roles = pl.read_parquet(path)
        row = {"model": m, "dataset": d}
        if (m, d) in lens:
            lt = pl.read_parquet(lens[(m, d)])
            first, n_layers = first_confident(lt, threshold), int(lt["layer"].max())
            if first is None:
                row["1: confident from middle-to-late layers"] = "fails: never confidently right"
            elif first >= 0.4 * n_layers:
                row["1: confident from middle-to-late layers"] = f"holds: from layer {first} of {n_layers}"
            else:
                row["1: confident from middle-to-late layers"] = f"partly: already from layer {first} of {n_layers}"
        if (m, d) in sub:
            nums = sublayer_numbers(pl.read_parquet(sub[(m, d)]))
            if nums:
                diff = nums["attn - mlp"]
                what = ci(diff["delta"], diff["delta_ci_low"], diff["delta_ci_high"])
                row["2: attention over MLPs"] = (f"holds: {what}" if diff["delta_ci_low"] > 0 else
                                                 f"fails: MLPs more, {what}" if diff["delta_ci_high"] < 0 else
                                                 f"not shown: {what}")
        counting = roles.filter(pl.col("counting"))
        promoting = counting.filter(pl.col("promotes"))
        row["3: counting heads"] = (f"holds: {len(counting)} heads, {len(promoting)} promote the right closer"
                                    if len(counting) else "fails: no head tracks a count")
        rows.append(row)
    parts.append(table(pl.DataFrame(rows)))
    return "".join(parts)
