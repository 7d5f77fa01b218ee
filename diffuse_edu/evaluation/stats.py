"""Student's t distribution, for the verdicts every lesson composes (lesson 02 on).

A claim compared over a few training seeds is judged by a t-test (Student 1908): with 3 seeds the
estimate of the spread has 2 degrees of freedom, and the 97.5% point is 4.30, not the normal's 1.96.
Two arms measured on different units are compared by Welch's test (Welch 1947), whose degrees of
freedom come from the Welch-Satterthwaite equation. Plain ``math``, so that no lesson needs scipy;
``tests/test_stats.py`` checks it against scipy.stats.
"""

from __future__ import annotations

import math


def _continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                          -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1]."""
    if not (a > 0 and b > 0):
        raise ValueError(f"betainc needs a > 0 and b > 0, got a = {a}, b = {b}.")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                 + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (df = inf: the normal)."""
    if not df > 0:
        raise ValueError(f"Student's t needs positive degrees of freedom, got {df}.")
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_critical(df: float, *, alpha: float = 0.05) -> float:
    """The two-sided critical value: P(|T| >= value) = ``alpha`` (df = 2, alpha = 0.05: 4.303)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}.")
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > alpha:  # bracket the value, then halve the bracket
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > alpha else (lo, mid)
        if hi - lo < 1e-12 * hi:
            break
    return 0.5 * (lo + hi)


def welch_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """The Welch-Satterthwaite degrees of freedom of the difference of two means. An arm of one
    value (a fixed reference: a base model, a chance level) adds no variance and no term."""
    terms = [(v / n, n - 1) for v, n in ((var_a, n_a), (var_b, n_b)) if n > 1]
    total = sum(share for share, _ in terms)
    below = sum(share**2 / dof for share, dof in terms)
    if below == 0.0:  # no spread at all: the degrees of freedom of the units there are
        return float(max(sum(dof for _, dof in terms), 1))
    return total**2 / below
