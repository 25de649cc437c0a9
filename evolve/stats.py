"""The few distributions the study's statistics need, in plain Python (no scipy dependency).

- Student's t: the upper tail P(T > t) with `df` degrees of freedom, from the regularized incomplete beta
  function, P(T > t) = I_x(df / 2, 1 / 2) / 2 with x = df / (df + t^2) for t >= 0 (continued fraction,
  modified Lentz; accurate to ~1e-12), and its quantile by bisection on that tail.
- Holm's step-down adjustment of p-values: it keeps the chance of any false rejection among k tests at
  alpha whatever their dependence (the k candidates of a study share one base hyp's retrains).
- The expected maximum of n independent standard normals: the best of n noise draws, in sd units,
  E = integral of x n phi(x) Phi(x)^(n-1) dx (Simpson's rule on [-12, 12]).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

__all__ = ["betainc", "t_sf", "t_ppf", "holm", "expected_max_normal"]

_EPS = 1e-15
_TINY = 1e-300


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converging for x < (a+1)/(a+b+2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x={x} must be in [0, 1]")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df > 0 degrees of freedom (the one-sided p-value of t)."""
    if df <= 0:
        raise ValueError(f"t_sf: df={df} must be > 0")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@lru_cache(maxsize=256)  # the study asks the same few critical values again and again
def t_ppf(q: float, df: float) -> float:
    """The t value with P(T <= t) = q (0 < q < 1): e.g. t_ppf(0.95, 4) = 2.1318, the one-sided 5% critical value."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf: q={q} must be in (0, 1)")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    target = 1.0 - q
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > target:  # the tail falls as t grows: bracket, then bisect
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_sf(mid, df) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the input's order: reject test i at level alpha when its value <= alpha.

    Sorted ascending p_(1) <= ... <= p_(k), the adjusted p_(j) = max over i <= j of min(1, (k - i + 1) p_(i)).
    NaN (a test that could not be made) stays NaN and does not count towards k."""
    valid = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    k, out, running = len(valid), [math.nan] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (k - rank) * p))
        out[i] = running
    return out


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def expected_max_normal(n: int, steps: int = 4000) -> float:
    """E[max of n independent N(0, 1)]: 0 for n = 1, 1/sqrt(pi) = 0.5642 for 2, 1.5388 for 10 (nan for n < 1)."""
    if n < 1:
        return math.nan
    if n == 1:
        return 0.0
    lo, hi = -12.0, 12.0
    h = (hi - lo) / steps

    def f(x: float) -> float:
        return x * n * _phi(x) * _Phi(x) ** (n - 1)
    total = f(lo) + f(hi) + sum((4 if j % 2 else 2) * f(lo + j * h) for j in range(1, steps))
    return total * h / 3.0
