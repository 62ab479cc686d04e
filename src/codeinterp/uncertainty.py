"""Seeded percentile-bootstrap confidence intervals over targets (or problems).

Every ranking and curve the workflow reports is a mean over a handful of targets; with few
targets most differences are noise, and the tables must say so. One resampling of the
targets is drawn per bootstrap replicate and shared by every group (head, layer, step k),
so the intervals of one table come from the same resamples: paired, and byte-identical for
the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = ["Bootstrap", "bootstrap_means", "summarise_over", "summarise_columns", "pass_at_k_summary"]

# Fewest units (targets, problems) an interval is given for; below it, the tables say "no
# interval" rather than print a range that looks like evidence. With 5 units of one sign a
# sign test gives p = 0.0625, the least that is worth a reader's attention.
MIN_UNITS = 5


@dataclass(frozen=True)
class Bootstrap:
    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    @classmethod
    def from_config(cls, config: dict) -> "Bootstrap":
        b = config.get("bootstrap", {})
        return cls(int(b.get("resamples", 1000)), float(b.get("confidence", 0.95)), int(config.get("seed", 0)))


def bootstrap_means(values: np.ndarray, boot: Bootstrap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over rows (units: targets) of `values` [n, G], with a percentile interval per column.

    Returns (mean [G], low [G], high [G]). With fewer than `MIN_UNITS` units the interval is
    NaN (and so never "excludes zero"): a percentile bootstrap of two or three targets is
    just their range, and two targets of the same sign would "exclude zero" half the time
    under no effect at all. With no unit the mean is NaN too.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n, g = values.shape
    if n < MIN_UNITS:
        nan = np.full(g, np.nan)
        return (values.mean(0) if n else nan.copy()), nan, nan.copy()
    mean = values.mean(0)
    rng = np.random.default_rng(boot.seed)
    idx = rng.integers(0, n, size=(boot.resamples, n))
    # Chunks keep memory at resamples x G whatever n is.
    means = np.zeros((boot.resamples, g))
    for i in range(n):
        means += values[idx[:, i]]
    means /= n
    alpha = (1 - boot.confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0, method="linear")
    return mean, low, high


def summarise_over(df: pl.DataFrame, unit: str, by: list[str], value: str, boot: Bootstrap) -> pl.DataFrame:
    """Per group of `by`: mean of `value` over units (e.g. targets) with its bootstrap interval.

    `df` holds one row per (unit, group). Every group must have every unit: a mean over a
    different set of targets per head would not be comparable, so a gap is an error.
    Columns: by..., mean, ci_low, ci_high, n (units), excludes_zero.
    """
    if df.is_empty():
        schema = {c: df.schema[c] for c in by} | {"mean": pl.Float64, "ci_low": pl.Float64,
                                                   "ci_high": pl.Float64, "n": pl.Int64, "excludes_zero": pl.Boolean}
        return pl.DataFrame(schema=schema)
    dupes = df.group_by(unit, *by).len().filter(pl.col("len") > 1)
    if len(dupes):
        raise ValueError(f"{value}: {len(dupes)} (unit, group) pairs occur more than once")
    units = sorted(df[unit].unique().to_list())
    groups = df.select(by).unique().sort(by)
    wide = groups.join(df.select(*by, unit, value), on=by, how="left").pivot(
        on=unit, index=by, values=value, sort_columns=False
    )
    wide = groups.join(wide, on=by, how="left", maintain_order="left")
    missing = [u for u in units if u not in wide.columns]
    matrix = wide.select([pl.col(str(u)) if str(u) in wide.columns else pl.lit(None) for u in units]).to_numpy()
    if missing or np.isnan(matrix.astype(np.float64)).any():
        raise ValueError(f"{value}: some groups lack a value for some {unit}s; every group needs every {unit}")
    mean, low, high = bootstrap_means(matrix.astype(np.float64).T, boot)
    return groups.with_columns(
        pl.Series("mean", mean), pl.Series("ci_low", low), pl.Series("ci_high", high),
        pl.lit(len(units), dtype=pl.Int64).alias("n"),
        pl.Series("excludes_zero", (low > 0) | (high < 0)),
    )


def summarise_columns(df: pl.DataFrame, unit: str, by: list[str], values: list[str], boot: Bootstrap) -> pl.DataFrame:
    """`summarise_over` for several value columns at once, wide: by..., v, v_ci_low, v_ci_high
    for each v in `values`, then n (units)."""
    out = None
    for v in values:
        s = summarise_over(df, unit, by, v, boot).select(
            *by, pl.col("mean").alias(v), pl.col("ci_low").alias(f"{v}_ci_low"),
            pl.col("ci_high").alias(f"{v}_ci_high"), "n",
        )
        out = s if out is None else out.join(s.drop("n"), on=by, how="left", maintain_order="left")
    return out if out is not None else pl.DataFrame()


def pass_at_k_summary(per_problem: pl.DataFrame, boot: Bootstrap) -> pl.DataFrame:
    """Mean pass@k over problems with a bootstrap interval over problems: columns pass@k,
    pass@k_ci_low, pass@k_ci_high for each pass@k column of a per-problem table."""
    cols = {}
    for c in [c for c in per_problem.columns if c.startswith("pass@")]:
        mean, low, high = bootstrap_means(per_problem[c].drop_nulls().to_numpy(), boot)
        cols.update({c: float(mean[0]), f"{c}_ci_low": float(low[0]), f"{c}_ci_high": float(high[0])})
    return pl.DataFrame([cols]) if cols else pl.DataFrame()
