"""What a network is trained to do: one objective per target, each giving a loss per example.

Every objective draws a noise level and noise for a batch of clean images (``draw``, or given),
builds the noisy input,
calls ``model(x_in, t_in, cond)`` and returns the squared error against its target, averaged per
example (shape (B,)), with the noise level drawn (for the loss-by-t plots). The training loop
(:func:`diffuse_edu.training.loop.train`) runs any of them.

* :class:`DiffusionObjective` (Ho et al. 2020, Alg. 1): t ~ U{1..T} (or continuous in [1, T]),
  x_t = sqrt(ab) x0 + sqrt(1 - ab) eps; the target is eps, x0 or v (Salimans & Ho 2022, Sec. 4).
  On the same network output, the three losses differ by closed-form weights:
  ||x0_hat - x0||^2 = ||eps_hat - eps||^2 / SNR and ||v_hat - v||^2 = ||eps_hat - eps||^2 / ab.
* :class:`FlowMatching` (rectified flow, Liu et al. 2023; Lipman et al. 2023): the flow's time
  tau ~ U(0, 1) or logit-normal (Esser et al. 2024), x_tau = (1 - tau) x0 + tau eps, target the
  velocity u = eps - x0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse_edu.diffusion.forward_process import mix
from diffuse_edu.diffusion.prediction import Target, as_target, target_of
from diffuse_edu.diffusion.schedules import NoiseSchedule


def per_example_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per example, in float32 at least (bfloat16 outputs are upcast).

    Shapes: (B, ...) -> (B,).
    """
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return (pred.to(dtype) - target.to(dtype)).square().flatten(1).mean(1)


def given_or_drawn(draw: Callable, x0: Tensor, generator: torch.Generator | None, t: Tensor | None,
                   eps: Tensor | None) -> tuple[Tensor, Tensor]:
    """(t, eps): the ones given, the others from ``draw(x0, generator)`` (an objective's
    ``draw``)."""
    if t is not None and eps is not None:
        return t, eps
    t_drawn, eps_drawn = draw(x0, generator)
    return (t_drawn if t is None else t), (eps_drawn if eps is None else eps)


@dataclass(frozen=True, eq=False)
class DiffusionObjective:
    """Denoising on Ho et al.'s variance-preserving x_t, predicting ``target``."""

    schedule: NoiseSchedule
    target: Target = Target.EPS  # EPS, X0 or V
    continuous: bool = False  # draw t from U(1, T) (fractional steps) instead of U{1..T}

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", as_target(self.target))

    @property
    def t_max(self) -> float:
        """The largest noise level drawn, in the units of the returned t (steps)."""
        return float(self.schedule.T)

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Noise levels t (B,) and noise eps (like x0), on x0's device."""
        b, T = x0.shape[0], self.schedule.T
        if self.continuous:
            t = 1 + (T - 1) * torch.rand(b, generator=generator, device=x0.device)
        else:
            t = torch.randint(1, T + 1, (b,), generator=generator, device=x0.device)
        return t, torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """alpha_bar at t, shaped (B, 1, ..., 1) like ``like``."""
        if t.dtype.is_floating_point:
            ab = self.schedule.alpha_bar_at(t).to(like.dtype)
            return ab.reshape(ab.shape + (1,) * (like.ndim - 1))
        return self.schedule.at(self.schedule.alpha_bar, t, like)

    def __call__(self, model: Callable, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(loss per example (B,), t (B,)); t and eps are drawn unless given."""
        t, eps = given_or_drawn(self.draw, x0, generator, t, eps)
        ab = self.alpha_bar(t, x0)
        x_t = mix(x0, eps, ab)
        return per_example_mse(model(x_t, t, cond), target_of(self.target, x0, eps, ab)), t


def uniform_times(n: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """n flow times tau ~ U(0, 1) (Liu et al. 2023). Shapes: (n,)."""
    return torch.rand(n, generator=generator, device=device)


def logit_normal_times(n: int, *, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None, mean: float = 0.0,
                       std: float = 1.0) -> Tensor:
    """n flow times tau = sigmoid(z), z ~ N(mean, std^2) (Esser et al. 2024, Eq. 19; SD3 uses mean
    0, std 1): more training at middle times, where predicting the velocity is hardest. Shapes:
    (n,)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def flow_matching_loss(model: Callable, x0: Tensor, tau: Tensor, eps: Tensor, cond: object = None,
                       *, time_scale: float = 1000.0) -> Tensor:
    """The rectified-flow loss per example (Liu et al. 2023, Eq. 1; Lipman et al. 2023), lesson 12.

    The flow's time runs from tau = 0, the data, to tau = 1, the noise: x_tau = (1 - tau) x0 + tau
    eps, whose velocity u = dx_tau / dtau = eps - x0 the network learns, seeing t = tau *
    time_scale. Shapes: x0, eps (B, ...), tau (B,) -> (B,).
    """
    tau_ = tau.to(x0.dtype).reshape((-1,) + (1,) * (x0.ndim - 1))  # (B, 1, ..., 1)
    x_tau = (1 - tau_) * x0 + tau_ * eps
    return per_example_mse(model(x_tau, tau * time_scale, cond), eps - x0)


@dataclass(frozen=True, eq=False)
class FlowMatching:
    """Rectified flow: straight paths from data (tau = 0) to noise (tau = 1), velocity u = eps - x0.

    ``times`` draws the training times (:func:`uniform_times`, :func:`logit_normal_times`, or any
    ``times(n, generator=, device=)``); ``loss`` computes the loss per example
    (:func:`flow_matching_loss`, or lesson 12's learner's, same signature).
    """

    time_scale: float = 1000.0  # the network sees t = tau * time_scale (the range
    # a time embedding expects)
    times: Callable[..., Tensor] = uniform_times
    loss: Callable[..., Tensor] = flow_matching_loss
    target = Target.FLOW

    @property
    def t_max(self) -> float:
        return 1.0

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Times tau (B,) and noise eps (like x0), on x0's device."""
        tau = self.times(x0.shape[0], generator=generator, device=x0.device)
        return tau, torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def __call__(self, model: Callable, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(loss per example (B,), tau (B,)); tau and eps are drawn unless given (``t`` is tau
        here)."""
        t, eps = given_or_drawn(self.draw, x0, generator, t, eps)
        if self.loss is flow_matching_loss:
            return flow_matching_loss(model, x0, t, eps, cond, time_scale=self.time_scale), t
        if cond is not None:
            raise ValueError("A learner's flow-matching loss takes no conditions.")
        return self.loss(model, x0, t, eps), t


def eps_loss(model: Callable, x0: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule,
             cond: object = None) -> Tensor:
    """Mean squared error between eps and model(x_t, t) (Ho et al. 2020, Eq. 14), lesson 02.

    Shapes: x0 (B, ...), t (B,), eps like x0 -> a scalar.
    """
    return DiffusionObjective(schedule)(model, x0, cond=cond, t=t, eps=eps)[0].mean()
