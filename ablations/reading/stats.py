"""Statistics over seeds, all from scipy.stats: t intervals, Welch / paired t-tests, differences with
their intervals, TOST equivalence, intervals of the share of a gain (Fieller; bootstrap with many seeds),
and the change of a difference or a share between two independent studies (e.g. two model scales).

Values come keyed by seed. Two settings "pair up" when they ran the same seeds: a seed fixes both
the initialization and the data order (the loader's batch at step s is a function of (seed, s)),
so the seed-matched difference removes that shared noise and the paired t-test applies. Otherwise
the settings are compared with Welch's t-test (unequal variances).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05  # differences with p >= ALPHA are marked "not significant" in the report
PAIRED, WELCH = "paired t", "Welch t"
DELTA = "delta method"  # a share's standard error to first order (`share_estimate`)
BOOTSTRAP_RESAMPLES = 9999
# Below this many seeds a bootstrap of the share is not a 95% interval (3 seeds give 10 distinct
# resamples, each all-one-seed one with probability 3.7% > 2.5%): Fieller's interval is used instead.
BOOTSTRAP_MIN_SEEDS = 10
BOOTSTRAP_SEED = 0  # the report is a pure function of the run directories


@dataclass(frozen=True)
class Stat:
    """Mean, sample std and the 95% Student-t interval of the mean over seeds (None with one seed)."""

    mean: float
    std: float | None
    n: int
    ci95_low: float | None = None
    ci95_high: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        if not values:
            return None
        mean = statistics.fmean(values)
        if len(values) < 2:
            return cls(mean, None, 1)
        std = statistics.stdev(values)
        if std == 0:  # identical values: scipy's interval is undefined (nan) at zero scale
            return cls(mean, 0.0, len(values), mean, mean)
        sem = std / math.sqrt(len(values))
        low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=sem)
        return cls(mean, std, len(values), float(low), float(high))


@dataclass(frozen=True)
class Comparison:
    """A two-sided t-test of two settings' values: its p-value and which test it was."""

    p: float
    test: str

    @property
    def significant(self) -> bool:
        return self.p < ALPHA


def bh_adjusted(ps: list[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values of one family of tests (scipy.stats.false_discovery_control),
    in the order given."""
    return [float(p) for p in stats.false_discovery_control(ps)] if ps else []


def pairs(a: dict[int, float], b: dict[int, float]) -> bool:
    """Whether two settings ran the same seeds (at least 2), so their values pair up seed by seed."""
    return len(a) >= 2 and a.keys() == b.keys()


def compare(a: dict[int, float], b: dict[int, float]) -> Comparison | None:
    """Paired t-test when the seeds pair up, else Welch's; None with fewer than 2 seeds on a side.

    Identical samples (a setting compared with itself, or zero variance) have no p-value: None.
    """
    if len(a) < 2 or len(b) < 2:
        return None
    with warnings.catch_warnings():
        # scipy warns of precision loss when the samples (or the paired differences) are nearly
        # constant; the p-value it then returns (0 or 1) is the right limit.
        warnings.simplefilter("ignore", RuntimeWarning)
        if pairs(a, b):
            seeds = sorted(a)
            result, test = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]), PAIRED
        else:
            result, test = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False), WELCH
    p = float(result.pvalue)
    return None if math.isnan(p) else Comparison(p, test)


def share_ci(adamw: dict[int, float], run: dict[int, float],
             full: dict[int, float]) -> tuple[tuple[float, float] | None, str]:
    """The 95% interval of the share of the gain and its method: Fieller's with fewer than
    BOOTSTRAP_MIN_SEEDS seeds in any setting, else the percentile bootstrap."""
    if min(len(adamw), len(run), len(full)) < BOOTSTRAP_MIN_SEEDS:
        return share_fieller(adamw, run, full), "fieller"
    return share_interval(adamw, run, full), "bootstrap"


def share_interval(adamw: dict[int, float], run: dict[int, float],
                   full: dict[int, float]) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of (L_adamw − L_run) / (L_adamw − L_full) over seeds.

    Seeds are resampled jointly (one index for all three settings) when they pair up, else each
    setting is resampled on its own. None with fewer than 2 seeds in any of the three.
    """
    if min(len(adamw), len(run), len(full)) < 2:
        return None

    def share(a: np.ndarray, r: np.ndarray, f: np.ndarray, axis: int = -1) -> np.ndarray:
        gain = a.mean(axis=axis) - f.mean(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (a.mean(axis=axis) - r.mean(axis=axis)) / gain

    paired = pairs(adamw, run) and pairs(adamw, full)
    seeds = sorted(adamw)
    samples = ([np.array([d[s] for s in seeds]) for d in (adamw, run, full)] if paired
               else [np.array(list(d.values())) for d in (adamw, run, full)])
    result = stats.bootstrap(samples, share, paired=paired, vectorized=True, confidence_level=CONFIDENCE,
                             n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                             rng=np.random.default_rng(BOOTSTRAP_SEED))
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        return None  # a resample with no gain at all (L_adamw = L_full): the ratio has no interval
    return float(low), float(high)


@dataclass(frozen=True)
class Difference:
    """An estimate over seeds, mean(a) − mean(b) (or a share of a gain, `share_estimate`): its standard
    error, degrees of freedom, 95% t interval, two-sided t-test of zero, and the test it came from."""

    diff: float
    se: float
    df: float
    test: str

    @property
    def ci95(self) -> tuple[float, float]:
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, self.df)) * self.se
        return self.diff - half, self.diff + half

    @property
    def p(self) -> float:
        """Two-sided p-value of "the difference is 0" (the paired or Welch t-test it came from)."""
        if self.se == 0:
            return 1.0 if self.diff == 0 else 0.0
        return float(2 * stats.t.sf(abs(self.diff) / self.se, self.df))

    def tost(self, margin: float) -> float:
        """The p-value of two one-sided t-tests (TOST) that the difference lies within ±margin: the
        larger of the tests of "diff <= −margin" and "diff >= +margin". Below ALPHA the two settings are
        equivalent within the margin (the 90% interval of the difference lies inside it)."""
        if margin <= 0:
            raise ValueError(f"an equivalence margin must be positive, got {margin}")
        if self.se == 0:  # identical differences on every seed: inside or outside the margin for sure
            return 0.0 if abs(self.diff) < margin else 1.0
        above_lower = stats.t.sf((self.diff + margin) / self.se, self.df)  # H0: diff <= -margin
        below_upper = stats.t.cdf((self.diff - margin) / self.se, self.df)  # H0: diff >= +margin
        return float(max(above_lower, below_upper))


def difference(a: dict[int, float], b: dict[int, float]) -> Difference | None:
    """Paired (seed-matched differences) when the seeds pair up, else Welch (Welch–Satterthwaite df).
    None with fewer than 2 seeds on a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    if pairs(a, b):
        diffs = [a[s] - b[s] for s in sorted(a)]
        return Difference(statistics.fmean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)),
                          len(diffs) - 1, PAIRED)
    va, vb = statistics.variance(a.values()) / len(a), statistics.variance(b.values()) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    return Difference(statistics.fmean(a.values()) - statistics.fmean(b.values()), se, df, WELCH)


def change(a: Difference, b: Difference) -> Difference:
    """b − a for estimates from two independent studies (other models, other runs: nothing pairs across
    them): standard errors add in quadrature, df by Welch–Satterthwaite from each estimate's own df."""
    va, vb = a.se**2, b.se**2
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / a.df + vb**2 / b.df) if se > 0 else a.df + b.df
    return Difference(b.diff - a.diff, se, df, WELCH)


def tost(a: dict[int, float], b: dict[int, float], margin: float) -> float | None:
    """The TOST p-value that mean(a) − mean(b) lies within ±margin (`Difference.tost`); None where no
    test applies (fewer than 2 seeds on a side)."""
    d = difference(a, b)
    return None if d is None else d.tost(margin)


@dataclass(frozen=True)
class ShareMoments:
    """The share's numerator N and denominator D (mean gains), their (co)variances and the df."""

    num: float
    den: float
    v_nn: float
    v_dd: float
    v_nd: float
    df: int


def share_moments(adamw: dict[int, float], run: dict[int, float],
                   full: dict[int, float]) -> ShareMoments | None:
    """With paired seeds from the per-seed gains (df n − 1), else from each setting's own variance (A is in
    both gains: v_ND = var(A)/n_A; df the smallest n − 1, conservative). None below 2 seeds anywhere."""
    if min(len(adamw), len(run), len(full)) < 2:
        return None
    if pairs(adamw, run) and pairs(adamw, full):
        seeds = sorted(adamw)
        n_gain = np.array([adamw[s] - run[s] for s in seeds])
        d_gain = np.array([adamw[s] - full[s] for s in seeds])
        cov = np.cov(n_gain, d_gain) / len(seeds)
        return ShareMoments(float(n_gain.mean()), float(d_gain.mean()), float(cov[0, 0]), float(cov[1, 1]),
                             float(cov[0, 1]), len(seeds) - 1)
    va, vr, vf = (statistics.variance(d.values()) / len(d) for d in (adamw, run, full))
    mean_a = statistics.fmean(adamw.values())
    return ShareMoments(mean_a - statistics.fmean(run.values()), mean_a - statistics.fmean(full.values()),
                         va + vr, va + vf, va, min(len(adamw), len(run), len(full)) - 1)


def share_fieller(adamw: dict[int, float], run: dict[int, float],
                  full: dict[int, float]) -> tuple[float, float] | None:
    """95% Fieller interval of the share of the gain, (mean A − mean R) / (mean A − mean F)
    (`fieller_interval` of the settings' `share_moments`)."""
    return fieller_interval(share_moments(adamw, run, full))


def fieller_interval(m: ShareMoments | None) -> tuple[float, float] | None:
    """95% Fieller interval of the ratio N/D of `m`'s mean gains.

    The set of ratios ρ the data cannot reject: (N − ρD)² <= t² (v_NN − 2ρ v_ND + ρ² v_DD), with N, D
    the mean gains and v their (co)variances. None when the interval is unbounded (the full gain D is not
    distinguishable from 0) or without moments.
    """
    if m is None:
        return None
    t2 = float(stats.t.ppf(0.5 + CONFIDENCE / 2, m.df)) ** 2
    a, b, c = m.den**2 - t2 * m.v_dd, m.num * m.den - t2 * m.v_nd, m.num**2 - t2 * m.v_nn
    disc = b * b - a * c
    if a <= 0 or disc < 0:
        return None
    root = math.sqrt(disc)
    return float((b - root) / a), float((b + root) / a)


def share_estimate(adamw: dict[int, float], run: dict[int, float],
                   full: dict[int, float]) -> Difference | None:
    """The share N/D with its delta-method standard error (`delta_share` of the settings' moments)."""
    return delta_share(share_moments(adamw, run, full))


def delta_share(m: ShareMoments | None) -> Difference | None:
    """The share N/D with its delta-method standard error, sqrt(v_NN − 2ρ v_ND + ρ² v_DD) / |D|, for
    comparing shares between studies (`change`). First order only, so None wherever Fieller's interval is
    unbounded (the full gain not distinguishable from 0): there the ratio has no usable standard error."""
    if fieller_interval(m) is None:
        return None
    rho = m.num / m.den
    var = max(m.v_nn - 2 * rho * m.v_nd + rho**2 * m.v_dd, 0.0)
    return Difference(rho, math.sqrt(var) / abs(m.den), m.df, DELTA)
