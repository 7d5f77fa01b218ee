"""Distances between two sets of samples (lesson 15): how far a sampler's points lie from the
data's."""

from __future__ import annotations

import torch
from torch import Tensor


def energy_distance(a: Tensor, b: Tensor) -> float:
    """The energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the sets ``a`` and ``b``
    (Szekely & Rizzo 2013; the squared MMD with the distance kernel): 0 exactly when the two
    distributions agree; the within-set means leave out each point's distance to itself (the
    unbiased estimate, which may dip just below 0). Shapes: (n, D), (m, D) -> a number."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"energy_distance needs at least 2 samples in each set, got {n} and {m}.")
    cross = torch.cdist(a, b).mean()
    within_a = torch.cdist(a, a).sum() / (n * (n - 1))
    within_b = torch.cdist(b, b).sum() / (m * (m - 1))
    return float(2 * cross - within_a - within_b)
