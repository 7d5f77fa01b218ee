"""Samplers: small pure functions with one signature (lesson 07).

    sample_xxx(model, x, schedule, *, steps, generator=None, callback=None, cond=None, ...)

``model(x_t, t, cond)`` predicts the noise eps; ``x`` is the starting noise x_T; ``steps`` the
number of network evaluations; ``callback(i, t, x_t)`` sees every intermediate state. No sampler
keeps hidden state or needs a set-up call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.reverse_process import predict_x0
from diffuse_edu.schedules import NoiseSchedule


def timesteps(schedule: NoiseSchedule, steps: int) -> list[int]:
    """``steps + 1`` integer time steps evenly spaced from T down to 0 (the last is 0)."""
    if not 1 <= steps <= schedule.T:
        raise ValueError(f"steps must lie in 1..{schedule.T}, got {steps}.")
    return torch.linspace(schedule.T, 0, steps + 1).round().long().tolist()


def ddim_step(x_t: Tensor, eps_hat: Tensor, t: int, t_prev: int, schedule: NoiseSchedule, *,
              eta: float = 0.0, noise: Tensor | None = None, clip: float | None = None) -> Tensor:
    """x_t -> x_{t_prev} (Song et al. 2021, "DDIM", Eq. 12 with sigma_t(eta) of Eq. 16).

    eta = 0 is deterministic; eta = 1 matches the DDPM posterior variance. ``clip`` clamps the
    implied x0 to [-clip, clip]. Shapes: x_t, eps_hat, noise (B, ...) -> like x_t.
    """
    ab = schedule.alpha_bar[t].item()
    ab_prev = schedule.alpha_bar[t_prev].item()
    x0_hat = predict_x0(x_t, eps_hat, t, schedule)
    if clip is not None:
        x0_hat = x0_hat.clamp(-clip, clip)
        eps_hat = (x_t - ab**0.5 * x0_hat) / (1 - ab) ** 0.5  # the noise consistent with the clamp
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
    x_prev = ab_prev**0.5 * x0_hat + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps_hat
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs noise: pass noise=torch.randn_like(x_t, ...).")
        x_prev = x_prev + sigma * noise
    return x_prev


@torch.no_grad()
def sample_ddim(model: Callable, x: Tensor, schedule: NoiseSchedule, *, steps: int, eta: float = 0.0,
                generator: torch.Generator | None = None, callback: Callable | None = None,
                cond: object = None, clip: float | None = None) -> Tensor:
    """DDIM from x_T in ``steps`` network evaluations (Song et al. 2021, Alg. in Sec. 4.1).

    Shapes: x (B, ...) -> like x.
    """
    ts = timesteps(schedule, steps)
    for i, (t, t_prev) in enumerate(zip(ts[:-1], ts[1:])):
        eps_hat = model(x, torch.full((x.shape[0],), t, device=x.device), cond)
        noise = (torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                 if eta > 0 else None)
        x = ddim_step(x, eps_hat, t, t_prev, schedule, eta=eta, noise=noise, clip=clip)
        if callback is not None:
            callback(i, t_prev, x)
    return x
