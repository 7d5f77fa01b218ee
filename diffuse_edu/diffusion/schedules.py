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

Schedules are frozen dataclasses built by pure functions and held in float64; :meth:`at` reads
them on the device and in the dtype of the tensor they are used with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete noise schedule.

    Shapes: betas (T + 1,), float64, with betas[0] = 0.

    The derived tables (``alpha_bar``, ``sigma``, ...) are computed once, in float64 on the CPU.
    :meth:`at` reads them from a copy kept on the device and in the dtype of the tensor they are
    used with, made on first use, so a training or sampling step never copies a table to the GPU
    nor reads a value back from it (no host-device synchronisation).
    """

    betas: Tensor  # (T + 1,) float64: beta_t for t = 0..T, betas[0] = 0
    name: str  # label used in plots and tables
    _on_device: dict = field(default_factory=dict, init=False,
                             repr=False)  # (id, device, dtype) -> table

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or b.numel() < 2:
            raise ValueError("NoiseSchedule.betas must be a 1-D tensor of T + 1 values (T >= 1).")
        if b.dtype != torch.float64 or b.device.type != "cpu":
            object.__setattr__(self, "betas", b.to("cpu", torch.float64))
        if self.betas[0] != 0:
            raise ValueError("betas[0] must be 0: t = 0 is the clean data x_0.")
        if not bool(((self.betas[1:] > 0) & (self.betas[1:] <= 1)).all()):
            raise ValueError("betas[1:] must lie in (0, 1].")
        for table in ("alphas", "alpha_bar", "snr", "log_snr",
                      "sigma"):  # computed now, not on first use:
            getattr(self, table)  # first use inside torch.compile would break the graph
            # (3.11's cached_property locks)

    @property
    def T(self) -> int:
        """The number of noising steps."""
        return self.betas.numel() - 1

    @cached_property
    def alphas(self) -> Tensor:
        return 1.0 - self.betas

    @cached_property
    def alpha_bar(self) -> Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def snr(self) -> Tensor:
        ab = self.alpha_bar
        return ab / (1.0 - ab)  # inf at t = 0

    @cached_property
    def log_snr(self) -> Tensor:
        return torch.log(self.snr)

    @cached_property
    def sigma(self) -> Tensor:
        return self.snr.rsqrt()

    def on(self, values: Tensor, like: Tensor) -> Tensor:
        """``values`` (one of this schedule's tables) on ``like``'s device and in its dtype,
        cached."""
        key = (id(values), like.device, like.dtype)
        hit = self._on_device.get(key)
        if hit is None or hit[0] is not values:
            hit = (values, values.to(device=like.device, dtype=like.dtype))
            self._on_device[key] = hit
        return hit[1]

    def at(self, values: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
        """``values[t]`` shaped to broadcast against ``like`` and cast to its dtype and device.

        ``t`` out of 0..T raises a clear error when it is a Python int or a CPU tensor; a tensor
        on an accelerator is not checked, since checking would wait for the device, nor is one
        inside a compiled graph (reading its values would break the graph in two).
        Shapes: values (T + 1,), t () or (B,), like (B, ...) -> (B, 1, ..., 1) or ().
        """
        table = self.on(values, like)
        if isinstance(t, Tensor):
            if t.dtype.is_floating_point:
                raise TypeError(f"t must be an integer time step in 0..{self.T}, got dtype "
                                f"{t.dtype}.")
            if t.device.type == "cpu" and not torch.compiler.is_compiling():
                self._check_range(int(t.min()), int(t.max()))
            v = table[t.to(like.device)]
        else:
            self._check_range(int(t), int(t))
            v = table[int(t)]
        return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))

    def _check_range(self, lo: int, hi: int) -> None:
        if lo < 0 or hi > self.T:
            raise ValueError(f"t must lie in 0..{self.T}, got values in {lo}..{hi}.")

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """alpha_bar at fractional steps t in [0, T]: the one conversion from time to noise level.

        Between integer steps log-sigma is interpolated linearly (as Karras et al. 2022 and
        k-diffusion do); on a segment with an infinite end (t in [0, 1], where sigma_0 = 0, and
        t in [T - 1, T] of a zero-terminal-SNR schedule, where sigma_T = inf) sqrt(alpha_bar) is
        interpolated instead. At integer t it is the table itself. Inverse: :meth:`t_at_sigma`.
        Shapes: t (B,) float -> (B,) in t's dtype, on t's device (no host-device sync).
        """
        t = t.clamp(0, self.T)
        lo = t.floor().long().clamp(0, self.T - 1)
        w = t - lo
        ls, root = self.on(self.log_sigma, t), self.on(self.alpha_bar, t).sqrt()
        finite = torch.isfinite(ls[lo]) & torch.isfinite(ls[lo + 1])
        by_log_sigma = torch.sigmoid(-2 * torch.lerp(_finite(ls[lo]), _finite(ls[lo + 1]), w))
        by_root = torch.lerp(root[lo], root[lo + 1], w).square()
        return torch.where(finite, by_log_sigma, by_root)  # sigmoid(-2 log sigma)
        # = 1 / (1 + sigma^2)

    def sigma_at(self, t: Tensor) -> Tensor:
        """The noise level sigma at fractional steps t (see :meth:`alpha_bar_at`). Shapes: like
        t."""
        ab = self.alpha_bar_at(t)
        return ((1 - ab) / ab).sqrt()

    def t_at_sigma(self, sigma: Tensor | float) -> Tensor:
        """The fractional step whose noise level is ``sigma``: the inverse of :meth:`sigma_at`.

        A Python float gives a 0-d float64 CPU tensor (host arithmetic, never waits for a device).
        Shapes: sigma () or (B,) -> like sigma, in [0, T].
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        like = sigma if sigma.is_floating_point() else sigma.double()
        ls_table, root = self.on(self.log_sigma, like), self.on(self.alpha_bar, like).sqrt()
        ls = sigma.clamp_min(0).log()
        hi = torch.searchsorted(ls_table,
                                ls.reshape(-1).contiguous()).reshape(ls.shape).clamp(1, self.T)
        lo = hi - 1
        finite = torch.isfinite(ls_table[lo]) & torch.isfinite(ls_table[hi])
        w_log = (ls - _finite(ls_table[lo])) / torch.where(finite, ls_table[hi] - ls_table[lo], 1.0)
        r = (1 + sigma.square()).rsqrt()
        w_root = (r - root[lo]) / (root[hi] - root[lo])
        w = torch.where(finite, w_log, w_root.nan_to_num(0.0)).clamp(0, 1)
        return lo + w

    @cached_property
    def log_sigma(self) -> Tensor:
        """log sigma_t = -log-SNR / 2: -inf at t = 0, +inf at t = T of a zero-terminal-SNR
        schedule."""
        return -0.5 * self.log_snr

    def same_as(self, other: NoiseSchedule | None) -> bool:
        """Whether ``other`` is this schedule (the same betas), e.g. a sampler's and a model's."""
        return other is self or (other is not None and torch.equal(self.betas, other.betas))

    @property
    def zero_terminal_snr(self) -> bool:
        """alpha_bar_T = 0: x_T holds no signal at all (Lin et al. 2024)."""
        return bool(self.alpha_bar[-1] == 0)


def _finite(x: Tensor) -> Tensor:
    """``x`` with its infinite entries set to 0 (they are masked out where they would be used)."""
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _from_alpha_bar(alpha_bar: Tensor, name: str, max_beta: float = 1.0) -> NoiseSchedule:
    """Schedule whose cumulative products are ``alpha_bar`` (t = 1..T), betas capped at max_beta."""
    ab = torch.cat([alpha_bar.new_ones(1), alpha_bar.to(torch.float64)])
    betas = (1.0 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return NoiseSchedule(torch.cat([betas.new_zeros(1), betas]), name)


def linear_schedule(
    T: int = 1000, *, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """Betas evenly spaced from beta_start to beta_end (Ho et al. 2020, Sec. 4)."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return NoiseSchedule(torch.cat([betas.new_zeros(1), betas]), "linear")


def scaled_linear_schedule(
    T: int = 1000, *, beta_start: float = 0.00085, beta_end: float = 0.012
) -> NoiseSchedule:
    """Square roots of the betas evenly spaced: Stable Diffusion's schedule
    (Rombach et al. 2022)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    return NoiseSchedule(torch.cat([betas.new_zeros(1), betas]), "scaled linear")


def cosine_schedule(T: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """alpha_bar_t = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s) / (1 + s)) (Nichol & Dhariwal 2021,
    Eq. 17).

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


def shift_snr(schedule: NoiseSchedule, factor: float) -> NoiseSchedule:
    """``schedule`` with every SNR multiplied by ``factor`` (log-SNR shifted by log factor;
    Hoogeboom et al. 2023, Sec. 3.1). How much of an image's coarse content survives the noise
    depends on how many pixels share it: a schedule made for P pixels gives P' pixels the same
    visibility of their mean after a shift by P / P'. Lesson 12 uses it to give its small images
    the signal Stable Diffusion's schedule leaves on 64 x 64 x 4 latents.
    """
    ab = schedule.alpha_bar[1:]
    shifted = ab * factor / (ab * factor + 1 - ab)
    return _from_alpha_bar(shifted, f"{schedule.name} x{factor:g} SNR")
