"""Differences with their intervals, TOST equivalence and the Fieller interval of a share of a gain,
against scipy's own tests and hand computations on fixed numbers."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from ablations.reading.stats import PAIRED, WELCH, difference, share_fieller, tost

A = {0: 4.81, 1: 4.79, 2: 4.83, 3: 4.80}
B = {0: 4.78, 1: 4.77, 2: 4.82, 3: 4.76}
C = {10: 4.70, 11: 4.75, 12: 4.69}  # other seeds: Welch


def test_paired_difference_is_the_t_interval_of_the_seed_differences():
    d = difference(A, B)
    diffs = [A[s] - B[s] for s in A]
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=sum(diffs) / 4, scale=stats.sem(diffs))
    assert d.test == PAIRED and d.df == 3
    assert d.ci95 == pytest.approx((low, high))
    # the interval's centre and the paired test agree with scipy
    assert stats.ttest_rel(list(A.values()), list(B.values())).statistic == pytest.approx(d.diff / d.se)


def test_welch_difference_has_welch_satterthwaite_df_and_scipys_statistic():
    d = difference(A, C)
    res = stats.ttest_ind(list(A.values()), list(C.values()), equal_var=False)
    assert d.test == WELCH and d.diff / d.se == pytest.approx(res.statistic)
    assert d.df == pytest.approx(res.df)
    assert difference({0: 1.0}, C) is None


@pytest.mark.parametrize("other", [B, C])
def test_tost_is_the_larger_of_scipys_two_one_sided_tests(other):
    margin = 0.05
    a, b = list(A.values()), list(other.values())
    if other is B:
        diffs = [A[s] - B[s] for s in A]
        lower = stats.ttest_1samp(diffs, -margin, alternative="greater").pvalue
        upper = stats.ttest_1samp(diffs, margin, alternative="less").pvalue
    else:
        lower = stats.ttest_ind(a, [x - margin for x in b], equal_var=False, alternative="greater").pvalue
        upper = stats.ttest_ind(a, [x + margin for x in b], equal_var=False, alternative="less").pvalue
    assert tost(A, other, margin) == pytest.approx(max(lower, upper))


def test_tost_verdicts_follow_the_90_percent_interval():
    """Equivalent (p < 0.05) exactly when the 90% interval of the difference lies within the margin."""
    d = difference(A, B)
    half90 = stats.t.ppf(0.95, d.df) * d.se
    inside = max(abs(d.diff - half90), abs(d.diff + half90))
    assert tost(A, B, inside * 1.01) < 0.05 < tost(A, B, inside * 0.99)
    with pytest.raises(ValueError, match="positive"):
        tost(A, B, 0.0)


def test_fieller_interval_solves_its_quadratic_and_contains_the_estimate():
    adamw = {0: 4.80, 1: 4.83, 2: 4.79, 3: 4.81}
    full = {0: 4.43, 1: 4.44, 2: 4.42, 3: 4.45}
    run = {0: 4.60, 1: 4.58, 2: 4.63, 3: 4.59}
    low, high = share_fieller(adamw, run, full)
    n = [adamw[s] - run[s] for s in adamw]
    d = [adamw[s] - full[s] for s in adamw]
    share = sum(n) / sum(d)
    assert low < share < high
    # each bound makes the Fieller statistic (N - rho D)^2 / var(N - rho D) equal t^2 (by hand)
    t2 = stats.t.ppf(0.975, 3) ** 2
    for rho in (low, high):
        z = [ni - rho * di for ni, di in zip(n, d, strict=True)]
        mean, var = sum(z) / 4, stats.tvar(z) / 4
        assert mean**2 / var == pytest.approx(t2)


def test_fieller_approaches_the_delta_method_when_the_gain_is_sharp():
    """With a denominator far from 0, Fieller's interval is the delta method's."""
    adamw = {s: 5.0 + 0.001 * (s % 3) for s in range(12)}
    full = {s: 4.0 + 0.0012 * ((s + 1) % 3) for s in range(12)}
    run = {s: 4.5 + 0.001 * ((s + 2) % 3) for s in range(12)}
    low, high = share_fieller(adamw, run, full)
    n = [adamw[s] - run[s] for s in adamw]
    d = [adamw[s] - full[s] for s in adamw]
    ratio = sum(n) / sum(d)
    z = [ni - ratio * di for ni, di in zip(n, d, strict=True)]
    se = math.sqrt(stats.tvar(z) / 12) / (sum(d) / 12)
    t = stats.t.ppf(0.975, 11)
    assert (low, high) == pytest.approx((ratio - t * se, ratio + t * se), rel=1e-3)


def test_fieller_is_unbounded_when_the_full_gain_is_not_distinguishable_from_zero():
    adamw = {0: 4.80, 1: 4.83, 2: 4.79}
    full = {0: 4.81, 1: 4.78, 2: 4.80}  # no gain to share
    run = {0: 4.70, 1: 4.72, 2: 4.71}
    assert share_fieller(adamw, run, full) is None
