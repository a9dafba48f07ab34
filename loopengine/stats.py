"""The statistics behind a verdict: means, pooled noise, Welch's t, and the Student-t
distribution.

Written out here (a few dozen lines) rather than pulled in from scipy: the engine needs
one distribution and one test, and an agent calls ``loopengine run`` thousands of times,
so start-up time and the dependency tree matter more than breadth.

The Student-t CDF goes through the regularized incomplete beta function, evaluated with
the modified Lentz continued fraction (Numerical Recipes, 3rd ed., 6.4); its quantile is
found by bisection, which is slow only by the standards of a tight loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 500


def mean(xs: Sequence[float]) -> float:
    if xs and all(x == xs[0] for x in xs):
        return float(xs[0])  # exactly: fsum(n * [x]) / n can differ from x in the last bit
    return math.fsum(xs) / len(xs)


def sum_of_squares(xs: Sequence[float]) -> float:
    """The sum of squared deviations from the mean; exactly 0 when all values are equal.

    The values are shifted by the first one before squaring, so identical scores give 0
    (not 1e-32) and a large common offset loses no precision.
    """
    if len(xs) < 2:
        return 0.0
    shifted = [x - xs[0] for x in xs]
    m = math.fsum(shifted) / len(shifted)
    return math.fsum((d - m) ** 2 for d in shifted)


def variance(xs: Sequence[float]) -> float:
    """The sample variance (n - 1 in the denominator); 0 for a single value."""
    if len(xs) < 2:
        return 0.0
    return sum_of_squares(xs) / (len(xs) - 1)


def stdev(xs: Sequence[float]) -> float:
    return math.sqrt(variance(xs))


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast only below the mean of the distribution.
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                    -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    return h  # not converged to 1e-15 after 500 terms: still far better than we need


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (``inf``: the normal)."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t: the ``t`` with ``t_cdf(t, df) == p``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf: p must be in (0, 1), got {p}")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class Pool:
    """Noise pooled over groups measured by one evaluation: the sum of each group's squared
    deviations from its own mean, and the degrees of freedom (a group of n adds n - 1).

    Pooling within groups is right whatever the groups' means are: the baseline's runs and
    each candidate's runs are all the evaluation's noise around different true values.
    """

    ss: float = 0.0
    df: int = 0

    @classmethod
    def of(cls, xs: Sequence[float]) -> Pool:
        return cls(sum_of_squares(xs), max(len(xs) - 1, 0))

    def __add__(self, other: Pool) -> Pool:
        return Pool(self.ss + other.ss, self.df + other.df)

    @property
    def variance(self) -> float | None:
        return self.ss / self.df if self.df else None


def z_of_t(t: float, df: float) -> float:
    """The normal deviate with the same one-sided tail as Student's ``t`` at ``df``.

    A statistic whose noise is estimated is t- rather than normally distributed; mapped
    through its own distribution onto the normal scale, it can be tested with boundaries
    made for a known noise.  Capped at +-8.3 (tails below 1e-16 are all alike).
    """
    if math.isinf(df):
        return max(min(t, _Z_CAP), -_Z_CAP)
    if t == 0.0 or math.isnan(t):
        return 0.0 if t == 0.0 else math.nan
    # The tail itself (not 1 - cdf), so that small tails keep their precision.
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t)) if math.isfinite(t) else 0.0
    z = _Z_CAP if tail <= 1e-16 else -NormalDist().inv_cdf(tail)
    return z if t > 0 else -z


_Z_CAP = 8.3


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b), its standard error and the degrees of freedom for a t test."""

    estimate: float
    se: float
    df: float

    def lower(self, alpha: float) -> float:
        """The one-sided ``1 - alpha`` lower confidence bound of the difference."""
        return self.estimate - self._margin(alpha)

    def upper(self, alpha: float) -> float:
        return self.estimate + self._margin(alpha)

    def _margin(self, alpha: float) -> float:
        return 0.0 if self.se == 0.0 else t_ppf(1.0 - alpha, self.df) * self.se

    def p_greater(self, threshold: float) -> float:
        """One-sided p-value of the null "the true difference is at most ``threshold``"."""
        if self.se == 0.0:
            return 0.0 if self.estimate > threshold else 1.0
        return 1.0 - t_cdf((self.estimate - threshold) / self.se, self.df)


def welch(a: Sequence[float], b: Sequence[float]) -> Difference | None:
    """Welch's unequal-variance t for mean(a) - mean(b); None without any variance estimate.

    A side with a single value has no variance of its own; it borrows the other side's
    (both sides are measured by the same evaluation, so their noise is alike), with the
    other side's degrees of freedom.
    """
    na, nb = len(a), len(b)
    if na == 0 or nb == 0 or (na < 2 and nb < 2):
        return None
    estimate = mean(a) - mean(b)
    if na < 2 or nb < 2:
        other = b if na < 2 else a
        var = variance(other)
        return Difference(estimate, math.sqrt(var * (1 / na + 1 / nb)), len(other) - 1.0)
    va, vb = variance(a) / na, variance(b) / nb
    se2 = va + vb
    if se2 == 0.0:
        return Difference(estimate, 0.0, float(na + nb - 2))
    # Welch–Satterthwaite; a side with zero variance contributes nothing to the sum.
    df = se2 * se2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    return Difference(estimate, math.sqrt(se2), df)
