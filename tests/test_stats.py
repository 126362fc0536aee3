"""Confidence intervals and paired tests against values worked out by hand."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from selfedit.training import stats


def test_doctests() -> None:
    result = doctest.testmod(stats, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# Two-sided 95% points of Student's t from printed tables (e.g. Abramowitz & Stegun
# table 26.10): t_{0.975, df}.
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228,
           20: 2.086, 29: 2.045, 60: 2.000, 120: 1.980}


@pytest.mark.parametrize(("df", "expected"), sorted(T_TABLE.items()))
def test_t_quantile_matches_the_printed_table(df: int, expected: float) -> None:
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-4)


def test_t_quantile_closed_forms() -> None:
    # df = 1 is the Cauchy distribution: the p quantile is tan(pi * (p - 1/2)).
    assert stats.t_quantile(0.9, 1) == pytest.approx(math.tan(math.pi * 0.4), rel=1e-12)
    # df = 2: F(t) = 1/2 + t / (2 sqrt(t^2 + 2)), so t_p = (2p - 1) sqrt(2 / (1 - (2p - 1)^2)).
    q = 2 * 0.975 - 1
    assert stats.t_quantile(0.975, 2) == pytest.approx(q * math.sqrt(2 / (1 - q * q)), rel=1e-12)
    assert stats.t_quantile(0.5, 7) == 0.0
    # Large df approaches the normal 97.5% point 1.959964.
    assert stats.t_quantile(0.975, 5000) == pytest.approx(1.959964, abs=1e-3)
    with pytest.raises(ValueError, match="df must be"):
        stats.t_quantile(0.975, 0)


def test_mean_ci_by_hand() -> None:
    # Units 0, 0.5, 1: mean 0.5; sample sd sqrt((0.25 + 0 + 0.25) / 2) = 0.5;
    # standard error 0.5 / sqrt(3) = 0.288675; t_{0.975, 2} = 4.302653;
    # half-width 4.302653 * 0.288675 = 1.242069 -> [-0.742069, 1.742069].
    ci = stats.mean_ci([0.0, 0.5, 1.0])
    assert (ci.mean, ci.n) == (0.5, 3)
    assert ci.low == pytest.approx(-0.742069, abs=1e-6)
    assert ci.high == pytest.approx(1.742069, abs=1e-6)
    assert ci.half_width == pytest.approx(1.242069, abs=1e-6)
    # Six passages with accuracies k/6 as on the embedded corpus: 1/6, 2/6, 2/6, 3/6, 0, 4/6.
    # mean = 12/36 = 1/3; deviations -1/6, 0, 0, 1/6, -1/3, 1/3: squares sum to
    # (1 + 0 + 0 + 1 + 4 + 4) / 36 = 10/36; sd = sqrt(10/36 / 5) = 0.235702;
    # se = 0.235702 / sqrt(6) = 0.096225; t_{0.975, 5} = 2.570582; half-width 0.247354.
    ci = stats.mean_ci([1 / 6, 2 / 6, 2 / 6, 3 / 6, 0.0, 4 / 6])
    assert ci.mean == pytest.approx(1 / 3)
    assert ci.half_width == pytest.approx(0.247354, abs=1e-6)
    # 90% interval of the same: t_{0.95, 5} = 2.015048; half-width 0.193898.
    assert stats.mean_ci([1 / 6, 2 / 6, 2 / 6, 3 / 6, 0.0, 4 / 6], 0.90).half_width == (
        pytest.approx(0.193898, abs=1e-6))


def test_mean_ci_edge_cases() -> None:
    same = stats.mean_ci([0.25, 0.25, 0.25])
    assert (same.low, same.high) == (0.25, 0.25)  # no observed variation: zero width
    one = stats.mean_ci([0.4])
    assert one.mean == 0.4 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="no values"):
        stats.mean_ci([])
    with pytest.raises(ValueError, match="finite"):
        stats.mean_ci([0.1, float("nan")])


def test_paired_bootstrap_by_enumeration() -> None:
    # Differences d = (1, 0, 0): a resample of 3 units draws the '1' k times, k ~ Bin(3, 1/3):
    # P(k=0) = 8/27, P(k=1) = 12/27, P(k=2) = 6/27, P(k=3) = 1/27; the resampled mean is k/3.
    # 2.5% point: P(k=0) = 0.296 > 0.025, so 0. 97.5% point: P(k<=2) = 26/27 = 0.963 < 0.975,
    # so 1. p-value: centred means k/3 - 1/3 at least 1/3 from 0 for k in {0, 2, 3}:
    # (8 + 6 + 1) / 27 = 15/27 = 0.5556.
    r = stats.paired_bootstrap([1.0, 0.5, 0.5], [0.0, 0.5, 0.5], resamples=10_000, seed=0)
    assert r.mean_diff == pytest.approx(1 / 3)
    assert (r.low, r.high) == (0.0, 1.0)
    assert r.p_value == pytest.approx(15 / 27, abs=0.02)
    assert r.within_noise and (r.n, r.resamples) == (3, 10_000)
    # d = (0, 1): resampled means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4. Centred on 1/2,
    # |m - 1/2| >= 1/2 for m in {0, 1}: p = 1/2. Interval [0, 1].
    r = stats.paired_bootstrap([0.0, 1.0], [0.0, 0.0], resamples=10_000, seed=1)
    assert (r.low, r.high) == (0.0, 1.0)
    assert r.p_value == pytest.approx(0.5, abs=0.02)


def test_paired_bootstrap_clear_difference_and_no_difference() -> None:
    # Every unit +1/6: every resample has mean 1/6; no centred resample reaches 1/6 from 0,
    # so p = (1 + 0) / (1 + 10,000).
    a = np.array([2, 3, 1, 4, 2, 5, 3, 2]) / 6
    r = stats.paired_bootstrap(a, a - 1 / 6)
    assert r.mean_diff == pytest.approx(1 / 6)
    assert r.low == pytest.approx(1 / 6) and r.high == pytest.approx(1 / 6)
    assert r.p_value == pytest.approx(1 / 10_001) and not r.within_noise
    # Identical agents: difference 0 everywhere, every resample is 'as extreme': p = 1.
    r = stats.paired_bootstrap(a, a)
    assert (r.mean_diff, r.low, r.high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert r.within_noise


def test_paired_bootstrap_is_seeded_and_checks_pairs() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(20), rng.random(20)
    assert stats.paired_bootstrap(a, b, seed=5) == stats.paired_bootstrap(a, b, seed=5)
    assert stats.paired_bootstrap(a, b, seed=5) != stats.paired_bootstrap(a, b, seed=6)
    with pytest.raises(ValueError, match="pair up"):
        stats.paired_bootstrap([0.1, 0.2], [0.1])


def test_sign_test_by_hand() -> None:
    # 5 wins, 1 loss, 2 ties: n = 6 untied pairs; P(X <= 1) for X ~ Bin(6, 1/2) is
    # (C(6,0) + C(6,1)) / 2^6 = 7/64; two-sided p = 14/64 = 0.21875.
    r = stats.sign_test([1, 1, 1, 1, 1, 0, 0.5, 0.5], [0, 0, 0, 0, 0, 1, 0.5, 0.5])
    assert r == stats.SignTest(wins=5, losses=1, ties=2, p_value=0.21875)
    # 10 wins, 0 losses: p = 2 * (1/2)^10 = 2/1024 = 0.001953125.
    assert stats.sign_test([1] * 10, [0] * 10).p_value == 0.001953125
    # 3 wins, 3 losses: 2 * P(X <= 3) = 2 * 42/64 > 1, so p = 1.
    assert stats.sign_test([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]).p_value == 1.0
    # 1 win, 7 losses: P(X <= 1) = (1 + 8) / 256 = 9/256; p = 18/256 = 0.0703125.
    assert stats.sign_test([1] + [0] * 7, [0] + [1] * 7) == stats.SignTest(1, 7, 0, 0.0703125)
    # All ties: nothing to test, p = 1.
    assert stats.sign_test([0.5, 0.5], [0.5, 0.5]) == stats.SignTest(0, 0, 2, 1.0)


def test_spread_by_hand() -> None:
    # Repeat means 0.30, 0.25, 0.35, 0.30: mean 0.30; deviations 0, -0.05, 0.05, 0;
    # sd = sqrt(0.005 / 3) = 0.040825; range 0.25 to 0.35 (width 0.10).
    s = stats.spread([0.30, 0.25, 0.35, 0.30])
    assert s.mean == pytest.approx(0.30)
    assert s.std == pytest.approx(0.040825, abs=1e-6)
    assert (s.low, s.high, s.n) == (0.25, 0.35, 4)
    assert s.range == pytest.approx(0.10)
    assert math.isnan(stats.spread([0.3]).std)


def test_detectable_difference_and_units_needed_agree() -> None:
    """The MDD falls as 1/sqrt(n); units_needed inverts it exactly (issue 12)."""
    from selfedit.training.stats import detectable_difference, units_needed

    sd = 0.18
    mdd = [detectable_difference(sd, n) for n in (5, 20, 80)]
    assert mdd[0] > mdd[1] > mdd[2]
    assert mdd[1] / mdd[2] == pytest.approx(2.0, rel=0.05)  # four times the units, half
    n = units_needed(sd, 0.05)
    assert detectable_difference(sd, n) <= 0.05 < detectable_difference(sd, n - 1)
    # Against the normal approximation (z 1.96 + 0.84) for large n.
    assert detectable_difference(sd, 400) == pytest.approx(2.80 * sd / 20, rel=0.01)
    assert units_needed(sd, 0.0) is None
