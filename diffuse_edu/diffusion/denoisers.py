"""One view of every trained network: D(x; sigma, cond) -> x0_hat (lesson 07; Karras et al. 2022).

Karras et al. (2022, Sec. 2 and Table 1) write every diffusion model as a denoiser D of the
variable x = x0 + sigma eps. A network trained on Ho et al.'s x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
sees x_t = x sqrt(ab) with ab = 1 / (1 + sigma^2), at the (fractional) step t whose noise level is
sigma; a rectified-flow network (Liu et al. 2023) sees x_s = (1 - s) x0 + s eps = x / (1 + sigma)
at s = sigma / (1 + sigma). Whatever it predicts (eps, x0, v or the flow velocity eps - x0), the
adapter turns it into x0_hat, so that every sampler runs every model.

On a GPU the adapter runs the network compiled and in bfloat16 by default (the fast path: the
same weights, about four times faster); on the CPU it calls the network as it is.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuse_edu.diffusion.prediction import Target, eps_to_x0, to_x0, x0_to_eps
from diffuse_edu.diffusion.schedules import NoiseSchedule


def sigma_to_t(sigma: float, schedule: NoiseSchedule) -> float:
    """The (fractional) time step of a noise level, interpolating log-sigma between steps 1..T.

    Host arithmetic on the schedule's CPU tables: it never waits for a device.
    """
    log_sigmas = -0.5 * schedule.log_snr[1:]  # increasing in t
    ls = torch.tensor(max(sigma, 1e-10), dtype=torch.float64).log()
    k = int(torch.searchsorted(log_sigmas, ls).clamp(1, len(log_sigmas) - 1))
    w = ((ls - log_sigmas[k - 1]) / (log_sigmas[k] - log_sigmas[k - 1])).clamp(0, 1).item()
    return k + w  # step k (index k - 1) to step k + 1 (index k)


@dataclass(frozen=True, eq=False)
class Prediction:
    """A denoiser's two estimates at one step. Shapes: both like x_t."""

    x0: Tensor  # x0_hat, the clean image
    eps: Tensor  # eps_hat, the noise in x_t


@dataclass(frozen=True, eq=False)
class Denoiser:
    """D(x; sigma, cond) -> x0_hat for a network ``model(x_in, t_in, cond)`` trained for ``target``.

    Shapes: x (B, ...) -> like x.
    """

    model: Callable  # the trained network
    schedule: NoiseSchedule | None = None  # the schedule it was trained on (None for Target.FLOW)
    target: Target = Target.EPS  # what it predicts
    clip: float | None = None  # clamp x0_hat to [-clip, clip] ("static thresholding")
    time_scale: float = 1000.0  # Target.FLOW only: the network sees t = s * time_scale
    fast: bool = True  # on a GPU, run the network compiled and in bfloat16

    def __post_init__(self) -> None:
        if self.schedule is None and self.target is not Target.FLOW:
            raise ValueError(f"A {self.target.value}-prediction model needs the schedule it was "
                             "trained on: Denoiser(model, schedule, target=...).")

    def network(self, x: Tensor) -> Callable:
        """The network to call on ``x``: the fast path on a GPU (when ``fast``), else the model."""
        if self.fast and x.is_cuda and isinstance(self.model, nn.Module):
            return fast_path(self.model)
        return self.model

    def __call__(self, x: Tensor, sigma: float, cond: object = None) -> Tensor:
        """x0_hat from x = x0 + sigma eps (Karras et al. 2022, Eq. 2 with s = 1)."""
        net, b = self.network(x), x.shape[0]
        if self.target is Target.FLOW:
            s = sigma / (1.0 + sigma)
            x_s = x / (1.0 + sigma)
            velocity = net(x_s, torch.full((b,), s * self.time_scale, device=x.device, dtype=x.dtype), cond)
            return self._clip(x_s - s * velocity)
        alpha_bar = 1.0 / (1.0 + sigma**2)
        x_t = x * alpha_bar**0.5
        t = torch.full((b,), sigma_to_t(sigma, self.schedule), device=x.device, dtype=x.dtype)
        return self._clip(to_x0(net(x_t, t, cond), self.target, x_t, alpha_bar))

    def at_step(self, x_t: Tensor, t: int, cond: object = None) -> Prediction:
        """Both estimates from x_t at an integer step t of ``schedule`` (DDIM and DDPM use this)."""
        ab = self.schedule.alpha_bar[t].item()  # a CPU table: no device sync
        if self.target is Target.FLOW:
            x0_hat = self(x_t / ab**0.5, float(self.schedule.sigma[t]), cond)
            return Prediction(x0_hat, x0_to_eps(x_t, x0_hat, ab))
        pred = self.network(x_t)(x_t, torch.full((x_t.shape[0],), t, device=x_t.device), cond)
        if self.target is Target.EPS and self.clip is None:
            return Prediction(eps_to_x0(x_t, pred, ab), pred)
        x0_hat = self._clip(to_x0(pred, self.target, x_t, ab))
        return Prediction(x0_hat, x0_to_eps(x_t, x0_hat, ab))

    def _clip(self, x0_hat: Tensor) -> Tensor:
        return x0_hat if self.clip is None else x0_hat.clamp(-self.clip, self.clip)


def as_denoiser(model: Callable, schedule: NoiseSchedule, *, clip: float | None = None) -> Denoiser:
    """``model`` itself if it is a :class:`Denoiser`, else an eps-prediction network wrapped as one.

    ``clip`` (when given) replaces the denoiser's own.
    """
    d = model if isinstance(model, Denoiser) else Denoiser(model, schedule)
    if clip is not None and clip != d.clip:
        d = Denoiser(d.model, d.schedule, d.target, clip, d.time_scale, d.fast)
    return d


_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_path(model: nn.Module, *, compile: bool = True) -> Callable:
    """``model`` compiled (torch.compile) and run under bfloat16 autocast, returning float32.

    Made once per model and kept; the weights are shared, so an EMA model that keeps training is
    sampled with its current weights. Use on CUDA; the CPU gains nothing from it.
    """
    run = _FAST.get(model)
    if run is None:
        net = torch.compile(model, dynamic=False) if compile else model

        def run(x: Tensor, t: Tensor, cond: object = None) -> Tensor:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return net(x, t, cond).float()

        _FAST[model] = run
    return run
