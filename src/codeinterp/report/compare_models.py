"""Report sections of the functional comparison (compare_models) and of the head union (head_union)."""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import polars as pl

from codeinterp.report.charts import ci, finding, fmt, table

CATEGORY_COLOURS = {"both": "#2b6cb0", "neither": "#eeeeee"}


def overlap_finding(r: dict, names: tuple[str, str]) -> str:
    n = (f"n = {fmt(r['n_targets_a'])} targets" if r["resampling"] == "paired" else
         f"n = {fmt(r['n_targets_a'])} and {fmt(r['n_targets_b'])} targets")
    what = f"top {fmt(r['k'])} heads by {html.escape(r['ranking'])} on {html.escape(r['dataset'])}"
    if r["grids_match"]:
        return (f"{what}: Jaccard {ci(r['jaccard'], r['jaccard_ci_low'], r['jaccard_ci_high'])}, Spearman ρ over all "
                f"heads {ci(r['spearman'], r['spearman_ci_low'], r['spearman_ci_high'])} ({r['resampling']} bootstrap "
                f"over {n}).")
    return (f"{what}: the head grids differ, so heads are compared by where they sit: depth overlap "
            f"{ci(r['depth_overlap'], r['depth_overlap_ci_low'], r['depth_overlap_ci_high'])} (1 = the same share "
            f"of top heads in each tenth of depth; {r['resampling']} bootstrap over {n}).")


def _categories(heads: pl.DataFrame, names: tuple[str, str]) -> alt.Chart:
    one = heads.filter(pl.col("model") == names[0]).select("layer", "head", "category", "top_k_frequency")
    domain = ["both", f"only {names[0]}", f"only {names[1]}", "neither"]
    colours = [CATEGORY_COLOURS["both"], "#dd6b20", "#38a169", CATEGORY_COLOURS["neither"]]
    return alt.Chart(one).mark_rect().encode(
        x="head:O", y=alt.Y("layer:O", sort="descending"),
        color=alt.Color("category:N", scale=alt.Scale(domain=domain, range=colours)),
        tooltip=["layer", "head", "category"],
    ).properties(width=max(120, 22 * (int(one["head"].max()) + 1)), height=max(120, 9 * (int(one["layer"].max()) + 1)))


def _depths(heads: pl.DataFrame) -> alt.Chart:
    top = heads.filter(pl.col("in_top_k")).select("model", "layer", "head", "depth", "score")
    return alt.Chart(top).mark_tick(thickness=2, size=18).encode(
        x=alt.X("depth:Q", scale=alt.Scale(domain=[0, 1]), title="relative depth (block centre / blocks)"),
        y="model:N", tooltip=["model", "layer", "head", alt.Tooltip("score:Q", format=".3g")],
    ).properties(width=420, height=80)


def _lens(lens: pl.DataFrame, dataset: str) -> alt.Chart:
    df = lens.filter((pl.col("dataset") == dataset) & (pl.col("lens") == "logit") & (pl.col("split") == "all"))
    df = df.select("model", "layer", "depth", "cross_entropy", "cross_entropy_ci_low", "cross_entropy_ci_high",
                   "n_targets").with_columns(pl.col("cross_entropy_ci_low").fill_nan(pl.col("cross_entropy")),
                                             pl.col("cross_entropy_ci_high").fill_nan(pl.col("cross_entropy")))
    lo, hi = float(df["cross_entropy_ci_low"].min()), float(df["cross_entropy_ci_high"].max())
    scale = alt.Scale(type="log", domain=[lo, hi], nice=False) if 0 < lo < hi else alt.Scale(zero=False)
    base = alt.Chart(df).encode(x=alt.X("depth:Q", title="relative depth (layer / blocks)"), color="model:N")
    return (base.mark_area(opacity=0.15).encode(y=alt.Y("cross_entropy_ci_low:Q", scale=scale,
                                                         title="logit-lens cross-entropy (nats, log)"),
                                                y2="cross_entropy_ci_high:Q")
            + base.mark_line(point=True).encode(y="cross_entropy:Q", tooltip=["model", "layer", "n_targets",
                                                                               alt.Tooltip("cross_entropy:Q", format=".3g")])
            ).properties(title=f"{dataset}: logit lens on relative depth", width=420, height=220)


def _ci_columns(df: pl.DataFrame) -> pl.DataFrame:
    for c in [c for c in df.columns if f"{c}_ci_low" in df.columns]:
        df = df.with_columns(pl.Series(c, [ci(m, lo, hi) for m, lo, hi in df.select(c, f"{c}_ci_low", f"{c}_ci_high").iter_rows()]))
        df = df.drop(f"{c}_ci_low", f"{c}_ci_high")
    return df


def _pair(pair: str, path: str, ctx) -> list[str]:
    names = tuple(pair.split(" vs "))
    side = {kind: ctx.side(f"compare_{kind}").get((pair, "all")) for kind in ("heads", "lens", "pass_at_k", "circuits")}
    overlap = pl.read_parquet(path)
    parts = [f"<h3>{html.escape(pair)}</h3>"]
    if overlap.is_empty():
        parts.append("<p>No dataset with targets for both models: no head ranking to compare.</p>")
    for r in overlap.iter_rows(named=True):
        parts.append(finding(overlap_finding(r, names)))
    if len(overlap):
        parts.append(table(_ci_columns(overlap)))
    heads = pl.read_parquet(side["heads"]) if side["heads"] else pl.DataFrame()
    for (d, ranking), one in (heads.group_by("dataset", "ranking", maintain_order=True) if len(heads) else []):
        grids = bool(overlap.filter((pl.col("dataset") == d) & (pl.col("ranking") == ranking))["grids_match"][0])
        chart = _categories(one, names) if grids else _depths(one)
        parts.append(ctx.charts.add(chart.properties(title=f"{d}, top heads by {ranking}")))
    lens = pl.read_parquet(side["lens"]) if side["lens"] else pl.DataFrame()
    for d in sorted(lens["dataset"].unique().to_list()) if len(lens) else []:
        parts.append(ctx.charts.add(_lens(lens, d)))
    passes = pl.read_parquet(side["pass_at_k"]) if side["pass_at_k"] else pl.DataFrame()
    if len(passes):
        parts.append("<p>pass@k side by side (95% bootstrap interval over problems):</p>" + table(_ci_columns(passes)))
    circuits = pl.read_parquet(side["circuits"]) if side["circuits"] else pl.DataFrame()
    if len(circuits):
        parts.append("<p>Circuits of the generated tasks: edges each model's chosen circuit keeps, and those both keep "
                     "(only where the two component graphs have the same nodes).</p>" + table(circuits))
        svgs = ctx.side("circuit_svg")
        for d in circuits["dataset"].to_list():
            drawn = [f"<div class='chart'><p>{html.escape(m)} / {html.escape(d)}</p>{Path(svgs[(m, d)]).read_text()}</div>"
                     for m in names if (m, d) in svgs]
            parts.append("<div style='display:flex;gap:1em;overflow:auto'>" + "".join(drawn) + "</div>")
    return parts


def section(files: dict, ctx) -> str:
    parts = ["<p>Which heads matter in each model, compared: the top k by exact ablation (mean over targets of the "
             "loss rise when the head is removed) and by Taylor score (mean |∂L/∂mask|). Jaccard and Spearman need "
             "the same head grid; across architectures the comparison is by relative depth. Intervals resample "
             "targets (paired when both models have the same targets). Layers are compared as a fraction of depth.</p>"]
    for (pair, _), path in sorted(files.items()):
        parts.extend(_pair(pair, path, ctx))
    return "".join(parts)


def union_finding(model: str, df: pl.DataFrame) -> str:
    heads = df.unique(["layer", "head"]).sort("layer", "head")
    counts = {c: int((heads["category"] == c).sum()) for c in ("all", "one", "some", "none")}
    sizes = df.group_by("dataset", maintain_order=True).agg(pl.col("n_targets").first())
    n = ", ".join(f"{html.escape(d)} {fmt(t)}" for d, t in sizes.iter_rows())
    return (f"{html.escape(model)}: of the top {fmt(int(df['k'][0]))} heads of each of {fmt(int(df['n_datasets'][0]))} "
            f"benchmarks, {fmt(counts['all'])} are in every one, {fmt(counts['some'])} in some, {fmt(counts['one'])} "
            f"in one only ({fmt(len(heads))} heads in all; targets per dataset: {n}).")


def union_section(files: dict, ctx) -> str:
    parts = ["<p>Per model, the top k heads by exact ablation on each benchmark: which matter for all, which for one "
             "only. Frequency: the share of bootstrap resamples of a dataset's targets in which the head is in that "
             "dataset's top k (a stable member is near 1).</p>"]
    for (model, _), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{html.escape(model)}</h3>")
        if df.is_empty():
            parts.append("<p>No targets.</p>")
            continue
        parts.append(finding(union_finding(model, df)))
        heads = df.unique(["layer", "head"]).sort("layer", "head")
        heat = alt.Chart(heads.select("layer", "head", "n_datasets_in_top_k", "datasets_in_top_k")).mark_rect().encode(
            x="head:O", y=alt.Y("layer:O", sort="descending"),
            color=alt.Color("n_datasets_in_top_k:O", title="benchmarks with the head in the top k",
                            scale=alt.Scale(scheme="blues")),
            tooltip=["layer", "head", "datasets_in_top_k"],
        ).properties(title="in how many benchmarks' top k", width=max(120, 22 * (int(heads["head"].max()) + 1)),
                     height=max(120, 9 * (int(heads["layer"].max()) + 1)))
        sets = (heads.filter(pl.col("n_datasets_in_top_k") > 0).group_by("datasets_in_top_k").len()
                .sort("len", "datasets_in_top_k", descending=[True, False]))
        bars = alt.Chart(sets).mark_bar().encode(
            x=alt.X("len:Q", title="heads", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("datasets_in_top_k:N", sort="-x", title="in the top k of exactly"),
            tooltip=["datasets_in_top_k", "len"]).properties(title="intersections (upset-style)", width=260)
        parts.append(ctx.charts.add(alt.hconcat(heat, bars)))
        shared = df.filter(pl.col("category") == "all").select("dataset", "layer", "head", "score", "rank",
                                                               "top_k_frequency", "n_targets")
        if len(shared):
            parts.append("<p>Heads in the top k of every benchmark:</p>" + table(shared))
    return "".join(parts)
