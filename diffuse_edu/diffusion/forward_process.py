"""The forward (noising) process of a DDPM (lesson 01).

The Markov chain adds a little Gaussian noise per step (Ho et al. 2020, Eq. 2)::

    x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t

and composes to a closed form that jumps from x_0 to any t at once (ibid., Eq. 4)::

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,   eps ~ N(0, I).

The posterior q(x_{t-1} | x_t, x_0) that the reverse process learns to imitate is Gaussian with
the mean and variance of ibid., Eq. 6-7.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from diffuse_edu.diffusion.schedules import NoiseSchedule


def q_sample(x0: Tensor, t: Tensor | int, schedule: NoiseSchedule, eps: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) with the given noise (Ho et al. 2020, Eq. 4).

    Shapes: x0 (B, ...), t () or (B,) integers in 0..T, eps like x0 -> x_t like x0.
    """
    if eps.shape != x0.shape:
        raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}.")
    return mix(x0, eps, schedule.at(schedule.alpha_bar, t, x0))


def mix(x0: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps: x_t at a given alpha_bar (the one place this
    formula is written; :func:`q_sample` reads alpha_bar from the schedule, the objectives from
    fractional steps). Shapes: x0, eps (B, ...), alpha_bar broadcastable -> like x0."""
    return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * eps


def posterior_variance(alpha_bar_t: Tensor | float, alpha_bar_s: Tensor | float) -> Tensor | float:
    """The variance of q(x_s | x_t, x_0) for an earlier step s < t:
    (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s) (Song et al. 2021, Eq. 16 with eta = 1). For
    s = t - 1 it is Ho et al.'s beta_t (1 - ab_{t-1}) / (1 - ab_t) (2020, Eq. 7), since
    ab_t / ab_{t-1} = 1 - beta_t. DDPM's step (lesson 02) and DDIM's (lesson 07) both use it.
    """
    return (1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s)


def q_step(x_prev: Tensor, t: Tensor | int, schedule: NoiseSchedule, eps: Tensor) -> Tensor:
    """One step of the Markov chain, x_{t-1} -> x_t (Ho et al. 2020, Eq. 2).

    Shapes: x_prev (B, ...), t () or (B,) in 1..T, eps like x_prev -> like x_prev.
    """
    beta = schedule.at(schedule.betas, t, x_prev)
    return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * eps


def q_forward(x_s: Tensor, s: int, t: int, schedule: NoiseSchedule, eps: Tensor) -> Tensor:
    """Jump forward from step s to a later step t: x_t ~ q(x_t | x_s), the product of the steps in
    between: sqrt(ab_t / ab_s) x_s + sqrt(1 - ab_t / ab_s) eps (RePaint's way back, lesson 11).

    Shapes: x_s (B, ...), eps like x_s -> like x_s; s <= t are Python ints.
    """
    if not 0 <= s <= t <= schedule.T:
        raise ValueError(f"q_forward needs 0 <= s <= t <= {schedule.T}, got s = {s}, t = {t}.")
    ratio = schedule.alpha_bar[t].item() / schedule.alpha_bar[s].item()
    return ratio**0.5 * x_s + (1.0 - ratio) ** 0.5 * eps


def markov_chain(
    x0: Tensor, schedule: NoiseSchedule, *, generator: torch.Generator | None = None
) -> Iterator[tuple[int, Tensor]]:
    """Yield (t, x_t) for t = 0..T by running the chain one step at a time.

    Shapes: x0 (B, ...) -> each x_t like x0.
    """
    x = x0
    yield 0, x
    for t in range(1, schedule.T + 1):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = q_step(x, t, schedule, eps)
        yield t, x


def q_posterior(
    x0: Tensor, xt: Tensor, t: Tensor | int, schedule: NoiseSchedule
) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, Eq. 6-7), for t in 1..T.

    Shapes: x0, xt (B, ...), t () or (B,) -> mean like x0, variance (B, 1, ..., 1).
    """
    checkable = isinstance(t, int) or t.device.type == "cpu"  # a device tensor
    # is not checked (no sync)
    if checkable and int(torch.as_tensor(t).min()) < 1:
        raise ValueError("q_posterior needs t >= 1: there is no step before x_0.")
    beta = schedule.at(schedule.betas, t, x0)
    alpha = 1.0 - beta
    ab = schedule.at(schedule.alpha_bar, t, x0)
    ab_prev = schedule.at(schedule.alpha_bar, t - 1, x0)
    mean = (ab_prev.sqrt() * beta * x0 + alpha.sqrt() * (1.0 - ab_prev) * xt) / (1.0 - ab)
    return mean, posterior_variance(ab, ab_prev)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation between a and b over all their elements (a scalar tensor)."""
    a = a.flatten().to(torch.float64)
    b = b.flatten().to(torch.float64)
    a, b = a - a.mean(), b - b.mean()
    return (a @ b) / (a.norm() * b.norm()).clamp_min(1e-300)
