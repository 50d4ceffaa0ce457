"""Statistics over seeds, all from scipy.stats: t intervals, Welch / paired t-tests, bootstrap ratios.

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
BOOTSTRAP_RESAMPLES = 9999
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
