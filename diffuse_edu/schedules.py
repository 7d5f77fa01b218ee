"""Noise schedules for the forward process (lesson 01).

Notation (used in every lesson), with the paper's time index t = 0, 1, ..., T:

* ``betas[t]``     beta_t, the variance added by step t (Ho et al. 2020, Eq. 2); ``betas[0] = 0``.
* ``alphas[t]``    alpha_t = 1 - beta_t.
* ``alpha_bar[t]`` alpha_bar_t = prod_{s<=t} alpha_s, so that
  q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (Ho et al. 2020, Eq. 4).
  ``alpha_bar[0] = 1``: x_0 is the data itself.
* ``snr[t]``       alpha_bar_t / (1 - alpha_bar_t), the signal-to-noise ratio; ``log_snr`` its log.
* ``sigma[t]``     sqrt((1 - alpha_bar_t) / alpha_bar_t), the noise level of the rescaled
  variable x_t / sqrt(alpha_bar_t) (Karras et al. 2022, Sec. 2), used by the ODE samplers.

Every array has T + 1 entries, so ``schedule.alpha_bar[t]`` reads like the paper. diffusers' index
``i`` (0..T-1) is our ``t = i + 1``: ``alphas_cumprod == alpha_bar[1:]``.

Schedules are frozen dataclasses built by pure functions and held in float64; :meth:`at` casts to
the dtype and device of the tensor they are used with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete noise schedule.

    Shapes: betas (T + 1,), float64, with betas[0] = 0.
    """

    betas: Tensor  # (T + 1,) float64: beta_t for t = 0..T, betas[0] = 0
    name: str  # label used in plots and tables

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or b.numel() < 2:
            raise ValueError("NoiseSchedule.betas must be a 1-D tensor of T + 1 values (T >= 1).")
        if b.dtype != torch.float64:
            object.__setattr__(self, "betas", b.to(torch.float64))
        if self.betas[0] != 0:
            raise ValueError("betas[0] must be 0: t = 0 is the clean data x_0.")
        if not bool(((self.betas[1:] > 0) & (self.betas[1:] <= 1)).all()):
            raise ValueError("betas[1:] must lie in (0, 1].")

    @property
    def T(self) -> int:  # noqa: N802 (the paper's name)
        """The number of noising steps."""
        return self.betas.numel() - 1

    @property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @property
    def alpha_bar(self) -> Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def snr(self) -> Tensor:
        ab = self.alpha_bar
        return ab / (1.0 - ab)  # inf at t = 0

    @property
    def log_snr(self) -> Tensor:
        return torch.log(self.snr)

    @property
    def sigma(self) -> Tensor:
        return self.snr.rsqrt()

    def at(self, values: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
        """``values[t]`` shaped to broadcast against ``like`` and cast to its dtype and device.

        Shapes: values (T + 1,), t () or (B,), like (B, ...) -> (B, 1, ..., 1) or ().
        """
        t = torch.as_tensor(t, device=values.device)
        if t.dtype.is_floating_point:
            raise TypeError(f"t must be an integer time step in 0..{self.T}, got dtype {t.dtype}.")
        if int(t.min()) < 0 or int(t.max()) > self.T:
            raise ValueError(f"t must lie in 0..{self.T}, got values in {int(t.min())}..{int(t.max())}.")
        v = values[t].to(device=like.device, dtype=like.dtype)
        return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _from_alpha_bar(alpha_bar: Tensor, name: str, max_beta: float = 1.0) -> NoiseSchedule:
    """Schedule whose cumulative products are ``alpha_bar`` (t = 1..T), betas capped at max_beta."""
    ab = torch.cat([alpha_bar.new_ones(1), alpha_bar.to(torch.float64)])
    betas = (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return NoiseSchedule(torch.cat([betas.new_zeros(1), betas]), name)


def linear_schedule(
    T: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02  # noqa: N803
) -> NoiseSchedule:
    """Betas evenly spaced from beta_start to beta_end (Ho et al. 2020, Sec. 4)."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return NoiseSchedule(torch.cat([betas.new_zeros(1), betas]), "linear")


def scaled_linear_schedule(
    T: int = 1000, *, beta_start: float = 0.00085, beta_end: float = 0.012  # noqa: N803
) -> NoiseSchedule:
    """Square roots of the betas evenly spaced: Stable Diffusion's schedule (Rombach et al. 2022)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return NoiseSchedule(torch.cat([betas.new_zeros(1), betas]), "scaled linear")


def cosine_schedule(T: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:  # noqa: N803
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s) / (1 + s)) (Nichol & Dhariwal 2021, Eq. 17).

    Betas are capped at ``max_beta`` to avoid the singularity at t = T (ibid., Sec. 3.2).
    """
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return _from_alpha_bar(f[1:] / f[0], "cosine", max_beta)


def rescale_zero_terminal_snr(schedule: NoiseSchedule) -> NoiseSchedule:
    """Shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 exactly (Lin et al. 2024, Alg. 1).

    sqrt(alpha_bar_1) is kept, sqrt(alpha_bar_T) becomes 0 and the steps between are stretched
    linearly, so x_T holds no signal at all (SNR(T) = 0) and beta_T = 1.
    """
    root = schedule.alpha_bar[1:].sqrt()  # (T,)
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    return _from_alpha_bar(root**2, f"{schedule.name} + zero-SNR")
