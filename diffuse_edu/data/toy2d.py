"""Points in the plane for lesson 02: moons, a swiss roll, a ring of Gaussians, and mode counts."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def moons(n: int, *, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaved half circles, centred and scaled to unit spread. Shapes: (n, 2)."""
    which = torch.randint(0, 2, (n,), generator=generator)
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    x = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    x = torch.where(which[:, None] == 0, x, torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], dim=1))
    x = x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return ((x - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 0.75).float()


def swiss_roll(n: int, *, noise: float = 0.03, generator: torch.Generator | None = None) -> Tensor:
    """A 2-D spiral (the swiss roll seen from its end), scaled to unit spread. Shapes: (n, 2)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    angle = 1.5 * math.pi * (1 + 2 * u)
    x = torch.stack([angle * torch.cos(angle), angle * torch.sin(angle)], dim=1) / (3 * math.pi)
    x = x + noise * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return (x / 0.6).float()


def gaussian_ring(
    n: int, *, modes: int = 8, radius: float = 2.0, std: float = 0.05,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A mixture of ``modes`` Gaussians evenly spaced on a circle. Shapes: (n, 2)."""
    return gaussian_ring_with_modes(n, modes=modes, radius=radius, std=std, generator=generator)[0]


def gaussian_ring_with_modes(
    n: int, *, modes: int = 8, radius: float = 2.0, std: float = 0.05,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Samples of :func:`gaussian_ring` and the mode centres. Shapes: (n, 2), (modes, 2)."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    centres = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    which = torch.randint(0, modes, (n,), generator=generator)
    x = centres[which] + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.float(), centres.float()


def mode_coverage(samples: Tensor, centres: Tensor, *, radius: float) -> Tensor:
    """How many samples lie within ``radius`` of each centre. Shapes: (n, d), (K, d) -> (K,)
    int64."""
    dist = torch.cdist(samples.float(), centres.float())  # (n, K)
    nearest = dist.argmin(dim=1)
    close = dist.gather(1, nearest[:, None])[:, 0] <= radius
    return torch.bincount(nearest[close], minlength=centres.shape[0])
