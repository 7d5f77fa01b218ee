"""Measuring images (lessons 03 and 06).

So far: how much of an image's energy sits at high spatial frequencies, a measure of fine detail
used to tell a sharp denoiser from a blurry one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def radial_frequency(h: int, w: int, *, device: torch.device | None = None) -> Tensor:
    """|f| of each 2-D FFT bin, as a share of the Nyquist frequency (0 .. sqrt(2)). Shapes: (h, w)."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.fftfreq(w, device=device)[None, :]
    return torch.sqrt(fx**2 + fy**2) / 0.5


def high_frequency_energy(images: Tensor, *, cutoff: float = 0.5) -> Tensor:
    """Mean spectral energy per image above ``cutoff`` x Nyquist, after removing each image's mean.

    Shapes: images (N, C, H, W) -> (N,).
    """
    x = images.float() - images.float().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2 / (x.shape[-1] * x.shape[-2])  # (N, C, H, W)
    mask = radial_frequency(*x.shape[-2:], device=x.device) > cutoff
    return (power * mask).sum(dim=(-3, -2, -1)) / x.shape[-3]
