"""Confidence intervals against hand-computed values and scipy's own tests."""
import math

import numpy as np
import pytest
from scipy import stats

from cl_runner.intervals import mean_interval, paired_difference, unpaired_difference


def test_the_t_interval_of_three_values_by_hand():
    # mean 2, s = 1, t(0.975, 2) = 4.302653: half-width 4.302653 / sqrt(3) = 2.484138
    interval = mean_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.half_width == pytest.approx(2.484138, abs=1e-6)
    assert (interval.low, interval.high) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)


def test_the_t_interval_equals_scipy_s():
    values = np.random.default_rng(0).normal(0.9, 0.02, size=7)
    expected = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    interval = mean_interval(values)
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high), rel=1e-12)


def test_one_value_has_no_interval():
    interval = mean_interval([0.5])
    assert interval.mean == 0.5 and interval.n == 1 and math.isnan(interval.low) and math.isnan(interval.high)
    assert not interval.excludes_zero
    assert mean_interval([]).n == 0


def test_identical_values_give_a_zero_width_interval():
    interval = mean_interval([0.25, 0.25, 0.25])
    assert interval.low == interval.high == 0.25


def test_the_paired_difference_by_hand_and_against_scipy():
    a = [0.80, 0.85, 0.90]
    b = [0.82, 0.88, 0.91]  # differences 0.02, 0.03, 0.01: mean 0.02, s 0.01
    interval = paired_difference(a, b)
    assert interval.mean == pytest.approx(0.02)
    assert interval.half_width == pytest.approx(4.302653 * 0.01 / math.sqrt(3), abs=1e-7)
    assert not interval.excludes_zero  # 0.02 +- 0.0248: three seeds cannot tell it from zero
    expected = stats.ttest_rel(b, a).confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))


def test_pairing_removes_the_luck_both_scenarios_share():
    """Seed-to-seed spread much larger than the difference: the paired interval excludes zero, Welch's does not."""
    a = [0.80, 0.85, 0.90, 0.83, 0.87]
    b = [x + 0.01 + e for x, e in zip(a, [0.001, -0.001, 0.002, 0.0, -0.002])]
    paired, unpaired = paired_difference(a, b), unpaired_difference(a, b)
    assert paired.mean == pytest.approx(unpaired.mean)
    assert paired.excludes_zero and not unpaired.excludes_zero
    assert paired.half_width < unpaired.half_width / 10


def test_the_unpaired_difference_is_welch_s_interval():
    a, b = [0.30, 0.34, 0.31, 0.36], [0.37, 0.33, 0.40]
    expected = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    interval = unpaired_difference(a, b)
    assert interval.mean == pytest.approx(np.mean(b) - np.mean(a))
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
