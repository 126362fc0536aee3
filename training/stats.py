"""Statistics for benchmark tables: confidence intervals and paired tests, as plain functions.

The unit of evaluation is one (passage, seed) pair: the adapted accuracy of one template on
one passage under one seed. Every agent of a benchmark is evaluated on the same units, so
agents are compared *paired*, unit by unit, which removes the large passage-to-passage
variation (some passages are easy for every template) from the comparison.

- :func:`mean_ci`: the mean of the units with a Student-t 95% interval;
- :func:`paired_bootstrap`: the mean difference between two agents on the same units, with
  a percentile bootstrap interval and a two-sided bootstrap p-value (seeded);
- :func:`sign_test`: an exact two-sided sign test (binomial) on the same pairs;
- :func:`spread`: mean, standard deviation and range of repeated measurements.

Why a t-interval for a mean and a bootstrap for a difference: a benchmark table has few units
per agent (6-30 on a CPU). A percentile bootstrap of a mean under-covers at such sizes (it
behaves like a normal interval with the sample standard deviation and no small-sample
correction), while the t-interval is exact for normal data and, by the central limit
theorem, close for means of bounded scores. For the *difference* of two agents the question
is "is it zero?", and the bootstrap answers it without assuming anything about the shape of
the differences, which are often lumpy (many exact ties at 0 when both templates score the
same on a passage). The sign test is the assumption-free check beside it: it only asks how
often one agent beat the other, so a few large differences cannot carry it.

No SciPy: the t quantile is computed from the closed-form Student-t distribution function
for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "Interval",
    "PairedBootstrap",
    "SignTest",
    "Spread",
    "mean_ci",
    "paired_bootstrap",
    "sign_test",
    "spread",
    "t_quantile",
]


class Interval(NamedTuple):
    """A mean with a two-sided confidence interval over ``n`` units."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


class PairedBootstrap(NamedTuple):
    """Mean of ``a - b`` over paired units, its bootstrap interval and two-sided p-value."""

    mean_diff: float
    low: float
    high: float
    p_value: float
    n: int
    resamples: int

    @property
    def within_noise(self) -> bool:
        """True when the interval of the difference contains 0."""
        return self.low <= 0.0 <= self.high


class SignTest(NamedTuple):
    """Pairs where ``a`` beat ``b`` (wins), lost (losses), tied; exact two-sided p-value."""

    wins: int
    losses: int
    ties: int
    p_value: float


class Spread(NamedTuple):
    """Mean, sample standard deviation (ddof=1), minimum and maximum of repeated values."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    @property
    def range(self) -> float:
        return self.high - self.low


def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4).

    >>> round(_t_central_mass(12.706204736, 1), 6)  # the 95% point of t with 1 df
    0.95
    """
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        # (2/pi) * (theta + sin(theta) * (cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ...)), df >= 3
        total = term = math.cos(theta) if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2.0 / math.pi * (theta + s * total)
    # sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), df >= 2
    total = term = 1.0
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return s * total


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Found by bisection on the angle ``atan(t / sqrt(df))``, where the distribution function
    is monotone and bounded, to float precision.

    >>> round(t_quantile(0.975, 1), 3), round(t_quantile(0.975, 4), 3)  # tables: 12.706, 2.776
    (12.706, 2.776)
    >>> round(t_quantile(0.025, 9), 3)
    -2.262
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be strictly between 0 and 1, got {p}")
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be a whole number >= 1, got {df}")
    df = int(df)
    if p == 0.5:
        return 0.0
    mass = abs(2.0 * p - 1.0)  # central mass between -t and t
    lo, hi = 0.0, math.pi / 2.0
    for _ in range(80):  # the angle's bracket shrinks to ~1e-24
        mid = (lo + hi) / 2.0
        if _t_central_mass(math.sqrt(df) * math.tan(mid), df) < mass:
            lo = mid
        else:
            hi = mid
    t = math.sqrt(df) * math.tan((lo + hi) / 2.0)
    return t if p > 0.5 else -t


def _as_array(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{what}: no values given")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: values must be finite, got {arr.tolist()}")
    return arr


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean with a Student-t confidence interval: ``mean +- t * sd / sqrt(n)``.

    One value gives a NaN interval (no spread can be estimated from one unit). Identical
    values give a zero-width interval: no variation was *observed*, which on a handful of
    passages is not the same as certainty; read the unit count beside it.

    >>> mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])  # 3 +- 2.776445 * 1.581139 / sqrt(5)
    Interval(mean=3.0, low=1.036756..., high=4.963243..., n=5)
    >>> mean_ci([0.5]).low
    nan
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    arr = _as_array(values, "mean_ci")
    mean = float(arr.mean())
    n = int(arr.size)
    if n == 1:
        return Interval(mean, float("nan"), float("nan"), 1)
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sem
    return Interval(mean, mean - half, mean + half, n)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedBootstrap:
    """Paired bootstrap of the mean difference ``mean(a - b)`` over the same units.

    Units (pairs) are resampled with replacement ``resamples`` times. The interval is the
    percentile interval of the resampled means (NumPy's linear quantiles). The two-sided
    p-value tests "mean difference = 0" by the shifted bootstrap: the share of resampled
    means, centred on the observed mean, at least as far from 0 as the observed mean, with
    the +1 correction so that it is never exactly 0 (Davison & Hinkley 1997, section 4.4):
    ``p = (1 + #{|m* - mean| >= |mean|}) / (1 + resamples)``.

    Args:
        a, b: scores of two agents on the same units, in the same order.
        resamples: bootstrap resamples (10,000 gives p-values to about +-0.005).
        seed: the generator's seed; the result is a function of (a, b, resamples, seed).
        confidence: coverage of the interval.

    >>> r = paired_bootstrap([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])  # every pair +0.25
    >>> r.mean_diff, r.low, r.high, r.within_noise, r.p_value == 1 / 10_001
    (0.25, 0.25, 0.25, False, True)
    """
    x = _as_array(a, "paired_bootstrap a")
    y = _as_array(b, "paired_bootstrap b")
    if x.shape != y.shape:
        raise ValueError(f"paired_bootstrap: a and b must pair up, got {x.size} and {y.size} units")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    d = x - y  # (n,)
    n = int(d.size)
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)  # (B,)
    chunk = max(1, 1_000_000 // n)  # keep the (chunk, n) index matrix around 8 MB
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))  # (chunk, n)
        means[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    # 1e-12: resampled means that equal the observed one up to float rounding count as "as far".
    extreme = int(np.count_nonzero(np.abs(means - observed) >= abs(observed) - 1e-12))
    p_value = (1 + extreme) / (1 + resamples)
    # Clip: the quantiles of identical means can differ from ``observed`` in the last bit.
    low, high = min(float(low), observed), max(float(high), observed)
    return PairedBootstrap(observed, low, high, p_value, n, resamples)


def sign_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> SignTest:
    """Exact two-sided sign test: how often ``a`` beat ``b`` on the same units.

    Ties are dropped; of the ``n = wins + losses`` remaining pairs, the number of wins is
    Binomial(n, 1/2) when neither agent is better, and ``p = min(1, 2 * P(X <= min(wins,
    losses)))``. No pair left (all ties) gives p = 1.

    >>> sign_test([1, 1, 1, 1, 1, 0, 0.5, 0.5], [0, 0, 0, 0, 0, 1, 0.5, 0.5])
    SignTest(wins=5, losses=1, ties=2, p_value=0.21875)
    """
    x = _as_array(a, "sign_test a")
    y = _as_array(b, "sign_test b")
    if x.shape != y.shape:
        raise ValueError(f"sign_test: a and b must pair up, got {x.size} and {y.size} units")
    wins = int(np.count_nonzero(x > y))
    losses = int(np.count_nonzero(x < y))
    ties = int(x.size) - wins - losses
    n = wins + losses
    if n == 0:
        return SignTest(wins, losses, ties, 1.0)
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return SignTest(wins, losses, ties, min(1.0, 2.0 * tail))


def spread(values: Sequence[float] | np.ndarray) -> Spread:
    """Mean, sample standard deviation, minimum and maximum (std is NaN for one value).

    >>> s = spread([0.2, 0.4, 0.3])  # std: sqrt((0.01 + 0.01 + 0) / 2) = 0.1
    >>> round(s.mean, 6), round(s.std, 6), s.low, s.high, round(s.range, 6)
    (0.3, 0.1, 0.2, 0.4, 0.2)
    """
    arr = _as_array(values, "spread")
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return Spread(float(arr.mean()), std, float(arr.min()), float(arr.max()), int(arr.size))


def detectable_difference(sd: float, n: int, *, confidence: float = 0.95,
                          power: float = 0.8) -> float:
    """The smallest true mean difference a paired two-sided t-test over ``n`` units detects
    with probability ``power`` at level ``1 - confidence``, when the paired differences have
    standard deviation ``sd``: ``(t_{1-alpha/2} + t_{power}) * sd / sqrt(n)``, n - 1 df.

    The usual approximation to the noncentral-t power (accurate to a few percent for
    n >= 5); with n < 2 nothing can be detected (infinity).

    >>> round(detectable_difference(0.2, 10), 3)  # (2.262 + 0.883) * 0.2 / sqrt(10)
    0.199
    >>> detectable_difference(0.2, 1)
    inf
    """
    if n < 2:
        return math.inf
    alpha = 1.0 - confidence
    k = t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)
    return k * sd / math.sqrt(n)


def units_needed(sd: float, difference: float, *, confidence: float = 0.95,
                 power: float = 0.8, limit: int = 100_000) -> int | None:
    """How many paired units make ``difference`` detectable (``detectable_difference`` at or
    below it); None when it would take more than ``limit`` (or the difference is 0).

    >>> units_needed(0.2, 0.199)
    10
    >>> units_needed(0.0, 0.05)  # no spread: two units already show it
    2
    """
    difference = abs(difference)
    if sd == 0.0:
        return 2 if difference > 0 else None
    if difference == 0.0:
        return None
    def enough(n: int) -> bool:
        return detectable_difference(sd, n, confidence=confidence, power=power) <= difference

    hi = 2
    while not enough(hi):  # the detectable difference falls as n grows: double, then bisect
        if hi >= limit:
            return None
        hi = min(2 * hi, limit)
    lo = max(2, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
