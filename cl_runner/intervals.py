"""Confidence intervals over seeds: a scenario's mean, and the difference between two scenarios, paired by seed
(common random numbers) or not. Student-t intervals, as scipy.stats computes them."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
METHOD = "Student t"


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval; `low`/`high` are NaN where n < 2 (no interval is possible)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0  # False when there is no interval (NaN compares false)


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean +- t(1 - alpha/2, n - 1) * s / sqrt(n), s the sample standard deviation (ddof 1)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of b - a over seeds where both ran with the same seed (`a[i]`, `b[i]` share seed i): the
    seed-to-seed luck both scenarios share cancels, so the interval is narrower than the unpaired one."""
    return mean_interval(np.asarray(b, dtype=float) - np.asarray(a, dtype=float), confidence)


def unpaired_difference(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean(b) - mean(a) with Welch's interval (unequal variances, Welch-Satterthwaite degrees of freedom),
    as if the two scenarios had drawn independently."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(y.mean() - x.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Interval(diff, math.nan, math.nan, min(len(x), len(y)))
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return Interval(diff, diff, diff, min(len(x), len(y)))
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, dof) * se)
    return Interval(diff, diff - half, diff + half, min(len(x), len(y)))
