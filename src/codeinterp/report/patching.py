"""Report sections of activation patching and of its attribution estimate."""

from __future__ import annotations

import html

import altair as alt
import polars as pl

from codeinterp.report.charts import ci, finding, fmt, table

SITE_NAMES = {"resid": "residual stream", "attn": "attention output", "mlp": "MLP output", "head": "head output",
              "head_q": "head query", "head_k": "head key"}
KEYS = ["pair_id", "corruption", "direction", "site", "layer", "head", "position"]


def _label(token: str, from_end: int) -> str:
    shown = (token or "").replace("\n", "⏎").replace(" ", "·") or "∅"
    return f"{from_end}: {shown}"


def _group(df: pl.DataFrame) -> tuple[str, int, int]:
    """The (source, depth) group with most pairs: its positions line up, so its tokens label the axis."""
    sizes = (df.filter((pl.col("source") != "all") & (pl.col("site") == "resid"))
             .group_by("source", "depth").agg(pl.col("n").max()).sort(["n", "source", "depth"], descending=[True, False, False]))
    r = sizes.row(0, named=True)
    return r["source"], r["depth"], r["n"]


def _heatmap(cells: pl.DataFrame, title: str) -> alt.Chart:
    # Positions before the first one any layer responds to carry no information: leave them out.
    live = cells.filter(pl.col("normalised").abs() > 1e-6)
    if len(live):
        cells = cells.filter(pl.col("from_end") >= int(live["from_end"].min()) - 1)
    extent = max(float(cells["normalised"].abs().quantile(0.99) or 0), 1e-6)
    order = cells.sort("from_end")["label"].unique(maintain_order=True).to_list()
    return alt.Chart(cells).mark_rect().encode(
        x=alt.X("label:N", sort=order, title="position from the end: clean token"),
        y=alt.Y("layer:O", sort="descending"),
        color=alt.Color("normalised:Q", title="recovered", scale=alt.Scale(scheme="redblue", reverse=True,
                                                                         domain=[-extent, extent], clamp=True)),
        tooltip=["layer", "label", "n", alt.Tooltip("normalised:Q", format=".3g"),
                 alt.Tooltip("normalised_ci_low:Q", format=".3g"), alt.Tooltip("normalised_ci_high:Q", format=".3g")],
    ).properties(title=title, width=max(160, 26 * len(order)), height=220)


def section(files: dict, ctx) -> str:
    parts = ["<p>Exact activation patching. <em>Denoising</em> runs the corrupted input and restores one site from the "
             "clean run; <em>noising</em> runs the clean input and writes one site from the corrupted run. The metric is "
             "the logit difference between the two answer tokens, normalised per pair so that the clean run is 1 and the "
             "corrupted run 0; cells show the mean over pairs (95% bootstrap interval in the tooltip). Positions are "
             "counted from the end of the prompt; the heatmaps show the largest group of pairs that share a layout, "
             "labelled with its tokens. Positions before the pairs' differing span are identical in both runs and are "
             "filled without a forward.</p>"]
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path).filter(pl.col("level") == "group")
        parts.append(f"<h3>{html.escape(m)} / {html.escape(d)}</h3>")
        if df.is_empty():
            continue
        source, depth, n = _group(df)
        cf = df.filter((pl.col("corruption") == "counterfactual") & (pl.col("direction") == "denoising"))
        if cf.is_empty():
            cf = df.filter(pl.col("direction") == "denoising")
        pooled = cf.filter(pl.col("source") == "all")
        parts.append(finding(_sentence(pooled)))
        mine = cf.filter((pl.col("source") == source) & (pl.col("depth") == depth)).with_columns(
            pl.struct("token", "from_end").map_elements(lambda r: _label(r["token"], r["from_end"]),
                                                        return_dtype=pl.Utf8).alias("label"))
        charts = [_heatmap(mine.filter(pl.col("site") == site), f"{SITE_NAMES[site]}: {source}, depth {depth} (n = {fmt(n)})")
                  for site in ("resid", "attn", "mlp") if (mine["site"] == site).any()]
        if charts:
            parts.append(ctx.charts.add(alt.vconcat(*charts)))
        heads = pooled.filter(pl.col("site") == "head")
        if len(heads):
            from codeinterp.report.charts import heatmap

            matrix = heads.select("layer", "head", pl.col("normalised").alias("delta"),
                                  pl.col("normalised_ci_low").alias("ci_low"), pl.col("normalised_ci_high").alias("ci_high"),
                                  ((pl.col("normalised_ci_low") > 0) | (pl.col("normalised_ci_high") < 0)).alias("excludes_zero"))
            parts.append(ctx.charts.add(heatmap(matrix, f"{m} / {d}: head outputs restored (all pairs)", "recovered")))
        # Effect: what a setting recovers (denoising) or destroys (noising) of the clean difference.
        effect = pl.when(pl.col("direction") == "denoising").then(pl.col("normalised")).otherwise(1 - pl.col("normalised"))
        top = (df.filter(pl.col("source") == "all").with_columns(effect.alias("effect"))
               .sort(["corruption", "direction", "site", "effect"], descending=[False, False, False, True])
               .group_by("corruption", "direction", "site", maintain_order=True).head(3)
               .select("corruption", "direction", "site", "layer", "head", "from_end", "token", "n", "normalised",
                       "normalised_ci_low", "normalised_ci_high"))
        parts.append("<p>The three strongest settings per corruption, direction and site (all pairs; denoising: most "
                     "recovered, noising: most destroyed):</p>" + table(top))
    return "".join(parts)


def _sentence(pooled: pl.DataFrame) -> str:
    resid = pooled.filter(pl.col("site") == "resid")
    if resid.is_empty():
        best = pooled.sort("normalised", descending=True).row(0, named=True)
        return (f"The strongest site, {best['site']} at layer {best['layer']}, recovers "
                f"{ci(best['normalised'], best['normalised_ci_low'], best['normalised_ci_high'])} (n = {fmt(best['n'])}).")
    last = resid.filter(pl.col("from_end") == -1).sort("layer")
    # The earliest layer from which restoring the last position alone recovers most of the effect.
    enough = last.filter(pl.col("normalised") >= 0.5)
    text = ""
    if len(enough):
        r = enough.row(0, named=True)
        text = (f"Restoring the residual stream at the last position recovers at least half of the clean logit "
                f"difference from layer {r['layer']} on ({ci(r['normalised'], r['normalised_ci_low'], r['normalised_ci_high'])}, "
                f"n = {fmt(r['n'])} pairs)")
    else:
        text = "Restoring the last position's residual stream alone recovers less than half at every layer"
    parts = [text]
    for site in ("attn", "mlp", "head"):
        rows = pooled.filter(pl.col("site") == site)
        if len(rows):
            b = rows.sort("normalised", descending=True).row(0, named=True)
            where = f"head L{b['layer']}H{b['head']}" if site == "head" else f"layer {b['layer']}, position {b['from_end']}"
            parts.append(f"the strongest {SITE_NAMES[site]} ({where}) recovers "
                         f"{ci(b['normalised'], b['normalised_ci_low'], b['normalised_ci_high'])}")
    return "; ".join(parts) + " (counterfactual prompts, denoising)."


def attribution_section(files: dict, ctx) -> str:
    parts = ["<p>Attribution patching estimates every patching effect above from two forwards and one backward. How "
             "far to trust it: Spearman's ρ between the estimated and the exact normalised effects over all (pair, "
             "setting) rows, its mean over pairs with a 95% bootstrap interval (resampling pairs), and the share of "
             "the exact top-k settings that the estimate also puts in its top k. Method <em>atp</em> is the plain "
             "first-order estimate; <em>atp*</em> (query and key sites only) recomputes the patched head's softmax "
             "exactly (AtP*'s QK fix; GradDrop is not implemented).</p>"]
    estimates, exacts = ctx.side("attribution_patching"), ctx.inputs("activation_patching")
    for (m, d), path in sorted(files.items()):
        df = pl.read_parquet(path)
        parts.append(f"<h3>{html.escape(m)} / {html.escape(d)}</h3>")
        if df.is_empty():
            continue
        cf = df.filter(pl.col("corruption") == "counterfactual") if (df["corruption"] == "counterfactual").any() else df
        lo, hi = cf.sort("spearman").row(0, named=True), cf.sort("spearman").row(-1, named=True)
        parts.append(finding(
            f"Over n = {fmt(int(cf['n_pairs'].max()))} pairs the estimate's rank correlation with exact patching "
            f"ranges from {fmt(lo['spearman'])} ({lo['site']}, {lo['direction']}) to {fmt(hi['spearman'])} "
            f"({hi['site']}, {hi['direction']}); top-{fmt(int(cf['top_k'].max()))} recall from "
            f"{fmt(float(cf['top_k_recall'].min()))} to {fmt(float(cf['top_k_recall'].max()))}."))
        df = df.with_columns(pl.concat_str("site", pl.lit(" "), "method").alias("site_method"))
        chart = alt.Chart(df).mark_bar().encode(
            x=alt.X("spearman:Q", scale=alt.Scale(domain=[-1, 1]), title="Spearman ρ (estimate vs exact)"),
            y=alt.Y("site_method:N", title="site, method"), color="direction:N", yOffset="direction:N",
            tooltip=["corruption", "direction", "site", "method", alt.Tooltip("spearman:Q", format=".3g"),
                     "top_k_recall"],
        ).properties(width=360, height=140).facet(column="corruption:N")
        parts.append(ctx.charts.add(chart))
        if (m, d) in estimates and (m, d) in exacts:
            parts.append(ctx.charts.add(_scatter(exacts[(m, d)], estimates[(m, d)], f"{m} / {d}")))
        parts.append(table(df.select("corruption", "direction", "site", "method", "spearman", "per_pair_spearman",
                                     "per_pair_spearman_ci_low", "per_pair_spearman_ci_high", "top_k", "top_k_recall",
                                     "n_pairs")))
    return "".join(parts)


def _scatter(exact_path, estimate_path, title: str, limit: int = 4000) -> alt.Chart:
    """Estimated against exact normalised effect, one point per (pair, setting), counterfactual
    denoising; at most `limit` points, shared evenly by the sites and methods (the first rows of
    each in file order: deterministic)."""
    exact = pl.read_parquet(exact_path).filter((pl.col("level") == "pair") & pl.col("computed"))
    approx = pl.read_parquet(estimate_path)
    both = (exact.select(*KEYS, pl.col("normalised").alias("exact"))
            .join(approx.select(*KEYS, "method", pl.col("normalised").alias("estimate")), on=KEYS)
            .filter((pl.col("corruption") == "counterfactual") & (pl.col("direction") == "denoising"))
            .drop_nans())
    groups = max(1, both.select("site", "method").n_unique())
    both = both.group_by("site", "method", maintain_order=True).head(max(1, limit // groups))
    return alt.Chart(both).mark_circle(size=12, opacity=0.5).encode(
        x=alt.X("exact:Q", title="exact (normalised)"), y=alt.Y("estimate:Q", title="estimate (normalised)"),
        color="method:N", tooltip=["site", "method", "layer", "head", "position", alt.Tooltip("exact:Q", format=".3g"),
                                   alt.Tooltip("estimate:Q", format=".3g")],
    ).properties(width=200, height=200, title=f"{title}: estimate against exact (counterfactual, denoising)").facet(
        column="site:N")
