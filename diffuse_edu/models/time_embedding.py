"""Telling the network the time step (lesson 04).

A denoiser must know how noisy its input is. The time step t becomes a vector of sines and
cosines at geometrically spaced frequencies (Vaswani et al. 2017, Sec. 3.5; used for diffusion by
Ho et al. 2020, App. B), which an MLP turns into the embedding each residual block receives::

    e(t) = [sin(t w_0), ..., sin(t w_{h-1}), cos(t w_0), ..., cos(t w_{h-1})],
    w_i = max_period ** (-i / h),  h = dim // 2.

The residual blocks inject it by scale-and-shift of their normalised features ("adaptive group
norm", Dhariwal & Nichol 2021, Sec. 3): h <- GroupNorm(h) * (1 + scale(e)) + shift(e).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, *, max_period: float = 10_000.0) -> Tensor:
    """Sines then cosines of t at ``dim // 2`` frequencies from 1 to 1 / max_period.

    Shapes: t (B,) integer or float -> (B, dim) float32; an odd ``dim`` ends with a zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (B, 2 * half)
    return nn.functional.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """t -> sinusoidal features -> MLP -> the embedding vector the blocks are conditioned on.

    ``features(t, dim)`` makes the features (:func:`sinusoidal_embedding`, or a learner's).
    Shapes: t (B,) -> (B, dim).
    """

    def __init__(self, dim: int, *, frequency_dim: int | None = None):
        super().__init__()
        self.features: Callable[..., Tensor] = sinusoidal_embedding
        self.frequency_dim = frequency_dim or dim
        self.mlp = nn.Sequential(nn.Linear(self.frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.features(t, self.frequency_dim))


def scale_shift(block: ScaleShift, h: Tensor, emb: Tensor) -> Tensor:
    """Scale-and-shift modulation (lesson 04; Dhariwal & Nichol 2021, Sec. 3; Perez et al. 2018):
    (scale, shift) = block.proj(emb), one pair per channel, then h * (1 + scale) + shift.

    Shapes: h (B, C, H, W), emb (B, D) -> (B, C, H, W).
    """
    scale, shift = block.proj(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
    return h * (1 + scale) + shift


class ScaleShift(nn.Module):
    """Modulate normalised features with an embedding: h * (1 + scale) + shift.

    The projection starts at zero, so a fresh block ignores the embedding until training says
    otherwise. ``forward_fn(block, h, emb)`` computes it (:func:`scale_shift`, or a learner's).
    Shapes: h (B, C, H, W), emb (B, D) -> (B, C, H, W).
    """

    def __init__(self, emb_dim: int, channels: int):
        super().__init__()
        self.forward_fn: Callable[..., Tensor] = scale_shift
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * channels))
        nn.init.zeros_(self.proj[1].weight)
        nn.init.zeros_(self.proj[1].bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return self.forward_fn(self, h, emb)
