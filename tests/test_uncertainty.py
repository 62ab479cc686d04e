"""Bootstrap intervals: known answers, determinism, and refusing means over different targets."""

import numpy as np
import polars as pl
import pytest

from codeinterp.uncertainty import Bootstrap, bootstrap_means, pass_at_k_summary, summarise_columns, summarise_over


def test_constant_values_have_a_point_interval():
    mean, low, high = bootstrap_means(np.full((7, 2), 3.5), Bootstrap(500, 0.95, 0))
    assert mean.tolist() == low.tolist() == high.tolist() == [3.5, 3.5]


def test_interval_matches_the_normal_approximation_for_many_units():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, size=400)
    mean, low, high = bootstrap_means(x, Bootstrap(4000, 0.95, 0))
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert mean[0] == pytest.approx(x.mean())
    assert low[0] == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert high[0] == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)


def test_same_seed_same_interval_other_seed_differs():
    x = np.arange(10.0)
    a = bootstrap_means(x, Bootstrap(300, 0.9, 5))
    b = bootstrap_means(x, Bootstrap(300, 0.9, 5))
    c = bootstrap_means(x, Bootstrap(300, 0.9, 6))
    assert [v.tolist() for v in a] == [v.tolist() for v in b]
    assert a[1].tolist() != c[1].tolist() or a[2].tolist() != c[2].tolist()


def test_summarise_over_groups_and_flags_zero():
    df = pl.DataFrame({
        "target_id": ["a", "b", "c", "d", "e", "f"] * 2,
        "head": [0] * 6 + [1] * 6,
        "delta": [1.0, 1.2, 0.9, 1.1, 1.0, 1.1, -0.5, 0.5, -0.4, 0.4, -0.2, 0.2],
    })
    out = summarise_over(df, "target_id", ["head"], "delta", Bootstrap(1000, 0.95, 0))
    rows = {r["head"]: r for r in out.iter_rows(named=True)}
    assert rows[0]["mean"] == pytest.approx(1.05) and rows[0]["excludes_zero"]
    assert rows[1]["mean"] == pytest.approx(0.0) and not rows[1]["excludes_zero"]
    assert rows[0]["n"] == rows[1]["n"] == 6
    assert rows[0]["ci_low"] <= 1.05 <= rows[0]["ci_high"]


def test_summarise_over_refuses_a_group_missing_a_target():
    df = pl.DataFrame({"target_id": ["a", "b", "a"], "layer": [0, 0, 1], "v": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="every group needs every target_id"):
        summarise_over(df, "target_id", ["layer"], "v", Bootstrap(100, 0.95, 0))


def test_summarise_columns_is_wide():
    df = pl.DataFrame({"t": list("abcde") * 2, "layer": [0] * 5 + [1] * 5,
                       "x": [1.0, 3.0, 2.0, 2.0, 2.0, 5.0, 7.0, 6.0, 6.0, 6.0], "y": [0.0] * 5 + [1.0] * 5})
    out = summarise_columns(df, "t", ["layer"], ["x", "y"], Bootstrap(200, 0.95, 0))
    assert out.columns == ["layer", "x", "x_ci_low", "x_ci_high", "n", "y", "y_ci_low", "y_ci_high"]
    assert out["x"].to_list() == [2.0, 6.0] and out["y"].to_list() == [0.0, 1.0]
    assert out["y_ci_low"].to_list() == out["y_ci_high"].to_list() == [0.0, 1.0]


def test_pass_at_k_summary_skips_problems_without_enough_samples():
    per_problem = pl.DataFrame({"problem_id": list("abcdefg"), "pass@1": [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, None]})
    s = pass_at_k_summary(per_problem, Bootstrap(200, 0.95, 0)).row(0, named=True)
    assert s["pass@1"] == pytest.approx(5 / 6) and s["pass@1_ci_low"] >= 0.5 and s["pass@1_ci_high"] == 1.0


def test_too_few_units_have_no_interval_and_never_exclude_zero():
    mean, low, high = bootstrap_means(np.array([[2.0, -1.0]]), Bootstrap(100, 0.95, 0))
    assert mean.tolist() == [2.0, -1.0] and np.isnan(low).all() and np.isnan(high).all()
    # Four targets of one sign are not evidence; five are the least that gets an interval.
    df = pl.DataFrame({"t": list("abcd"), "head": [0] * 4, "delta": [0.7, 0.8, 0.9, 0.75]})
    out = summarise_over(df, "t", ["head"], "delta", Bootstrap(100, 0.95, 0))
    assert out["excludes_zero"].to_list() == [False] and out["n"].to_list() == [4]
    assert not np.isnan(bootstrap_means(np.ones(5), Bootstrap(100, 0.95, 0))[1]).any()
