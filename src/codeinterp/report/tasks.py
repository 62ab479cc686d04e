"""Report sections of the generated tasks: accuracy, task lens, sublayer ablation, head roles,
and the closing-bracket study's three findings checked for each model."""

from __future__ import annotations

import html
import math

import altair as alt
import polars as pl

from codeinterp.report.charts import ci, finding, fmt, heatmap, table

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
        base = alt.Chart(curves).encode(x=alt.X("layer:Q", axis=alt.Axis(values=list(range(n_layers + 1)) if n_layers <= 12 else alt.Undefined,
                                                                     tickMinStep=1, format="d")),
                                        color=alt.Color("depth_label:N", title="depth"), strokeDash="lens:N")
        band = base.mark_area(opacity=0.12).encode(y=alt.Y("logit_diff_ci_low:Q", title="logit difference (right − wrong)"),
                                                   y2="logit_diff_ci_high:Q")
        line = base.mark_line(point=True).encode(
            y="logit_diff:Q", tooltip=["lens", "depth", "layer", "n", alt.Tooltip("logit_diff:Q", format=".3g"),
                                       alt.Tooltip("top1:Q", format=".3g")])
        top = _nan_free(curves, "top1")
        top_band = alt.Chart(top).mark_area(opacity=0.12).encode(
            x="layer:Q", y=alt.Y("top1_ci_low:Q", title="top-1 accuracy", scale=alt.Scale(domain=[0, 1])),
            y2="top1_ci_high:Q", color=alt.Color("depth_label:N", title="depth"), detail="lens:N")
        top_line = alt.Chart(top).mark_line(point=True).encode(
            x="layer:Q", y="top1:Q", color=alt.Color("depth_label:N", title="depth"), strokeDash="lens:N",
            tooltip=["lens", "depth", "layer", "n", alt.Tooltip("top1:Q", format=".3g")])
        panels = [[band, line], [top_band, top_line]]
        if first is not None:  # the first confidently right layer, marked on both panels
            mark = alt.Chart(pl.DataFrame({"layer": [first]})).mark_rule(strokeDash=[4, 3], color="black").encode(x="layer:Q")
            panels = [layers + [mark] for layers in panels]
        parts.append(ctx.charts.add(alt.hconcat(*[alt.layer(*layers).properties(width=380, height=220) for layers in panels])
                                    .properties(title=f"{m} / {d}")))
        parts.append(_lens_table(pooled, first))
    return "".join(parts)


def _lens_table(pooled: pl.DataFrame, first: int | None) -> str:
    """A few layers of the pooled logit lens: the embeddings, the first confident layer and its
    neighbour below, the middle and the output."""
    n = int(pooled["layer"].max())
    keep = sorted({0, n // 2, n} | ({first, max(first - 1, 0)} if first is not None else set()))
    rows = pooled.filter(pl.col("layer").is_in(keep))
    return table(rows.select("layer", "n", "top1", "top1_ci_low", "top1_ci_high", "logit_diff", "rank"))




def sublayer_numbers(df: pl.DataFrame, ablation: str = "zero") -> dict | None:
    """The summary rows of one ablation kind: {"attn": .., "mlp": .., "attn - mlp": ..}."""
    rows = {r["half"]: r for r in df.filter((pl.col("ablation") == ablation) & (pl.col("layer") == -1)).iter_rows(named=True)}
    return rows if {"attn", "mlp", "attn - mlp"} <= set(rows) else None


def _which_matters(diff: dict) -> str:
    if diff["delta_ci_low"] is not None and diff["delta_ci_low"] > 0:
        return "attention matters more"
    if diff["delta_ci_high"] is not None and diff["delta_ci_high"] < 0:
        return "the MLPs matter more"
    return "neither is shown to matter more"


def _ci_of(row: dict, value: str) -> str:
    return ci(row[value], row[f"{value}_ci_low"], row[f"{value}_ci_high"])


def sublayer_section(files: dict, ctx) -> str:
    parts = ["<p>Each layer's attention output and MLP output replaced by zero or by its mean over the task's prompts, "
             "at every position: the change of the clean logit difference (negative: the block was needed). The "
             "summary compares the summed |change| over layers of attention and MLPs, paired over pairs.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{_name(m, d)}</h3>")
        kinds = [k for k in ("zero", "mean") if sublayer_numbers(df, k)]
        if kinds:
            nums = sublayer_numbers(df, kinds[0])
            diff = nums["attn - mlp"]
            parts.append(finding(
                f"{kinds[0].capitalize()}-ablating attention changes the logit difference by a summed |change| over "
                f"layers of {_ci_of(nums['attn'], 'delta')}, the MLPs by {_ci_of(nums['mlp'], 'delta')} (difference "
                f"{_ci_of(diff, 'delta')}, n = {fmt(diff['n'])} pairs): {_which_matters(diff)}."))
        per = _nan_free(df.filter(pl.col("layer") >= 0), "delta")
        base = alt.Chart(per).encode(x=alt.X("layer:O"), xOffset="half:N", color="half:N")
        chart = (base.mark_bar(opacity=0.7).encode(
            y=alt.Y("delta:Q", title="Δ logit difference"),
            tooltip=["ablation", "half", "layer", "n", alt.Tooltip("delta:Q", format=".3g"),
                     alt.Tooltip("fraction:Q", format=".3g")])
            + base.mark_rule(color="black").encode(y="delta_ci_low:Q", y2="delta_ci_high:Q"))
        parts.append(ctx.charts.add(chart.properties(width=460, height=180).facet(row="ablation:N")))
        summary = df.filter(pl.col("layer") == -1).select("ablation", "half", "n", "delta", "delta_ci_low", "delta_ci_high")
        parts.append(table(summary.rename({"delta": "summed |Δ| (attn − mlp: difference)"})))
    return "".join(parts)


def _head(r: dict) -> str:
    return f"L{r['layer']}H{r['head']}"


def roles_section(files: dict, ctx) -> str:
    parts = ["<p>Per head at the last position of the clean brackets prompts: direct logit attribution (DLA) to the "
             "right closer minus the counterfactual one, through the final norm linearised at each prompt's last "
             "state (a first-order reading: the norm's scale is frozen); attention to the still-open openers and to "
             "the already-closed pairs; Spearman's ρ of the head's output along the closer direction with the number "
             "of closed pairs and of open brackets. A head counts when a ρ interval excludes 0, its |ρ| exceeds the "
             "chance level of the largest |ρ| over all heads with the counts shuffled (family-wise 5%), and it is among "
             "the strongest. The test is correlational: verify single heads by patching.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{_name(m, d)}</h3>")
        counting = df.filter(pl.col("counting")).sort("count_strength", descending=True)
        n = int(df["n"].max()) if len(df) else 0
        names = ", ".join(f"{_head(r)} (ρ with closed {_ci_of(r, 'rho_n_closed')}"
                          + (", promotes" if r["promotes"] else "") + ")" for r in counting.iter_rows(named=True))
        parts.append(finding(f"On n = {fmt(n)} pairs, {fmt(len(counting))} heads track a bracket count"
                             + (f": {names}" if names else "") + f"; {fmt(int(df['promotes'].sum()))} of {fmt(len(df))} "
                             "heads promote the right closer directly (DLA interval above 0)."))
        matrix = df.select("layer", "head", pl.col("dla").alias("delta"), pl.col("dla_ci_low").alias("ci_low"),
                           pl.col("dla_ci_high").alias("ci_high"), pl.col("promotes").alias("excludes_zero"))
        parts.append(ctx.charts.add(heatmap(matrix, f"{m} / {d}: DLA (right − wrong closer)", "DLA (logits)")))
        cols = ["layer", "head", "counting", "promotes", "dla", "rho_n_closed", "rho_n_closed_ci_low",
                "rho_n_closed_ci_high", "rho_depth", "attn_open", "attn_closed"]
        shown = pl.concat([counting, df.filter(~pl.col("counting")).sort("count_strength", descending=True).head(5)])
        parts.append(table(shown.select(cols)))
    return "".join(parts)


# -- the published study's three findings ----------------------------------------------------

def _verdict_depth(lens: pl.DataFrame, threshold: float) -> tuple[str, str]:
    """Finding 1 (middle-to-late layers are needed for a confident prediction): holds when the
    pooled logit lens is first confidently right at or after a third of the depth and every depth
    becomes confident; partly when some depths never do, or only some depths are confident; fails
    when the model is never confidently right, or already is in the first third of its layers."""
    pooled = lens.filter((pl.col("lens") == "logit") & (pl.col("depth") == -1)).sort("layer")
    n_layers = int(pooled["layer"].max())
    first = first_confident(lens, threshold)
    out = pooled.row(-1, named=True)
    depths = sorted(d for d in lens["depth"].unique().to_list() if d >= 0)
    by_depth = {d: first_confident_at(lens, threshold, d) for d in depths}
    never = [d for d, f in by_depth.items() if f is None]
    if first is None:
        some = [d for d, f in by_depth.items() if f is not None]
        text = (f"the model's output ranks the right closer first on {_ci_of(out, 'top1')} of n = {fmt(out['n'])} pairs, "
                f"below the {fmt(threshold)} confidence bar at every layer")
        return ("partly holds" if some else "fails"), text + (f" (only depths {_list(some)} become confident)" if some else "")
    at = pooled.filter(pl.col("layer") == first).row(0, named=True)
    text = (f"confidently right from layer {first} of {n_layers} (top-1 {_ci_of(at, 'top1')}, logit difference "
            f"{_ci_of(at, 'logit_diff')}, n = {fmt(at['n'])} pairs)")
    if first < n_layers / 3:
        return "fails", text + ": the early layers already suffice"
    if never:
        return "partly holds", text + f", but depths {_list(never)} never become confident"
    return "holds", text


def first_confident_at(lens: pl.DataFrame, threshold: float, depth: int, name: str = "logit") -> int | None:
    return first_confident(lens.filter(pl.col("depth") == depth).with_columns(pl.lit(-1).alias("depth")), threshold, name)


def _list(xs) -> str:
    return ", ".join(str(x) for x in xs)


def _verdict_attention(sub: pl.DataFrame) -> tuple[str, str]:
    """Finding 2 (attention matters more than the MLPs): holds when the paired difference of
    summed |effect| excludes 0 upwards for every ablation kind run, partly when for some, fails
    otherwise (MLPs shown to matter more, or no difference shown)."""
    kinds = {k: sublayer_numbers(sub, k) for k in ("zero", "mean")}
    kinds = {k: v for k, v in kinds.items() if v}
    if not kinds:
        return "not tested", "no sublayer ablation summary"
    said = {k: _which_matters(v["attn - mlp"]) for k, v in kinds.items()}
    text = "; ".join(f"{k} ablation: attention {_ci_of(v['attn'], 'delta')} against MLPs {_ci_of(v['mlp'], 'delta')}, "
                     f"difference {_ci_of(v['attn - mlp'], 'delta')}: {said[k]}" for k, v in kinds.items())
    text += f" (summed |Δ logit difference| over layers, n = {fmt(next(iter(kinds.values()))['attn - mlp']['n'])} pairs)"
    wins = [k for k, s in said.items() if s == "attention matters more"]
    return ("holds" if len(wins) == len(kinds) else "partly holds" if wins else "fails"), text


def _verdict_counting(roles: pl.DataFrame) -> tuple[str, str]:
    """Finding 3 (heads count the already-closed brackets; they may or may not promote the right
    number of closers): holds when a flagged head's ρ with the closed count excludes 0, partly when
    flagged heads only track the still-open count, fails when no head is flagged."""
    n = int(roles["n"].max()) if len(roles) else 0
    counting = roles.filter(pl.col("counting")).sort("count_strength", descending=True)
    closed = counting.filter((pl.col("rho_n_closed_ci_low") > 0) | (pl.col("rho_n_closed_ci_high") < 0))
    if not len(counting):
        return "fails", f"no head's output tracks the closed or open count (n = {fmt(n)} pairs, {fmt(len(roles))} heads)"
    heads = "; ".join(f"{_head(r)}: ρ with closed {_ci_of(r, 'rho_n_closed')}, with open {_ci_of(r, 'rho_depth')}, "
                      f"DLA {_ci_of(r, 'dla')}" + (" (promotes the right closer)" if r["promotes"] else " (does not promote it)")
                      for r in counting.iter_rows(named=True))
    text = f"{fmt(len(counting))} counting heads on n = {fmt(n)} pairs: {heads}"
    return ("holds" if len(closed) else "partly holds"), text + ("" if len(closed) else "; none tracks the closed count itself")


FINDINGS = ("1. middle-to-late layers needed", "2. attention over MLPs", "3. counting heads")


def study_summary(files_by_kind: dict, ctx) -> str:
    """Per (model, brackets dataset): the first confident layer, attention versus MLPs and the
    counting heads, with each of the study's three findings judged holds / partly holds / fails
    (rules in the `_verdict_*` docstrings). `files_by_kind`: kind -> {(model, dataset): path}
    for head_roles, task_lens, sublayer_ablation (and task_accuracy, optional)."""
    threshold = ctx.config.get("task_lens", {}).get("confident", 0.8)
    roles = files_by_kind.get("head_roles", {})
    lens, sub = files_by_kind.get("task_lens", {}), files_by_kind.get("sublayer_ablation", {})
    rows, blocks = [], []
    for (m, d), path in sorted(roles.items()):
        verdicts = {FINDINGS[2]: _verdict_counting(pl.read_parquet(path))}
        if (m, d) in lens:
            lt = pl.read_parquet(lens[(m, d)])
            verdicts[FINDINGS[0]] = _verdict_depth(lt, threshold)
            out = lt.filter((pl.col("lens") == "logit") & (pl.col("depth") == -1)).sort("layer").row(-1, named=True)
            verdict, text = verdicts[FINDINGS[2]]
            if verdict == "holds" and not (out["top1_ci_low"] or 0) >= threshold:
                # Heads that follow a count in a model that does not close brackets are no mechanism of it.
                verdicts[FINDINGS[2]] = ("partly holds", text + f"; but the model itself ranks the right closer first on "
                                         f"only {_ci_of(out, 'top1')} of the pairs")
        if (m, d) in sub:
            verdicts[FINDINGS[1]] = _verdict_attention(pl.read_parquet(sub[(m, d)]))
        items = "".join(f"<li><b>{html.escape(f)}: {html.escape(verdicts[f][0])}</b>: {html.escape(verdicts[f][1])}.</li>"
                        for f in FINDINGS if f in verdicts)
        blocks.append(f"<h3>{_name(m, d)}</h3><ul>{items}</ul>")
        rows.append({"model": m, "dataset": d} | {f: verdicts[f][0] if f in verdicts else "not run" for f in FINDINGS})
    if not rows:
        return ""
    summary = pl.DataFrame(rows)
    counts = "; ".join(f"finding {f[0]} " + ", ".join(f"{v} for {fmt(k)}" for v, k in
                                                     summary.group_by(f).len().sort(f).iter_rows())
                       for f in FINDINGS)
    opening = finding(f"Across {fmt(len(rows))} model/dataset combinations ({fmt(threshold)} top-1 confidence bar): "
                      f"{html.escape(counts)}.")
    return opening + f"<p>{STUDY}</p>" + "".join(blocks) + table(summary)


def study_section(files: dict, ctx) -> str:
    """The report's `bracket_study` section: `files` are the head-role tables."""
    return study_summary({"head_roles": files, "task_lens": ctx.inputs("task_lens"),
                          "sublayer_ablation": ctx.inputs("sublayer_ablation"),
                          "task_accuracy": ctx.inputs("task_accuracy")}, ctx)
