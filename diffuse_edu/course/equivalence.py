"""Equivalence claims (lesson 15): "these per-seed differences lie within +-margin of zero".

The signed differences are judged, never their absolute values: |d| is positive whatever the
truth, so its mean is biased away from zero and its interval says nothing about the sign. The
claim holds when the whole Student's t interval of the mean difference lies inside (-margin,
margin) (two one-sided tests, Schuirmann 1987, at level alpha each side); it does not hold when
the interval lies wholly outside the margin, on either side; else the spread leaves it open.
"""

from __future__ import annotations

import math

import torch

from diffuse_edu.course.report import Verdict
from diffuse_edu.evaluation import stats


def within_margin(differences: object, margin: float, *, alpha: float = 0.05) -> Verdict:
    """Do the signed ``differences`` (one per seed; e.g. a sampler's distance minus the data's
    own) lie within +-``margin`` of zero? "holds", "does not hold" or "inconclusive (within the
    spread)", printed with the interval of the mean difference in the differences' own sign.
    """
    d = torch.as_tensor(differences, dtype=torch.float64).flatten()
    if d.numel() < 2:
        raise ValueError("within_margin needs at least two seeds: one run gives no spread.")
    if not torch.isfinite(d).all():
        raise ValueError(f"within_margin got a value that is not finite ({d.tolist()}).")
    if margin <= 0:
        raise ValueError(f"the margin must be positive, got {margin}.")
    n, mean = d.numel(), d.mean().item()
    se = d.std().item() / n**0.5
    # two one-sided tests at alpha each: the (1 - 2 alpha) interval inside the margin
    half = stats.t_critical(n - 1, alpha=2 * alpha) * se
    low, high = mean - half, mean + half
    if -margin < low and high < margin:
        word = "holds"
    elif low > margin or high < -margin:
        word = "does not hold"
    else:
        word = "inconclusive (within the spread)"
    t = (margin - abs(mean)) / se if se > 0 else (math.inf if abs(mean) < margin else -math.inf)
    interval = f"{1 - 2 * alpha:.0%} interval {low:+.3g} to {high:+.3g} against +-{margin:.3g}"
    return Verdict(word, test="two one-sided t-tests", df=n - 1, t=t, statistic=interval)
