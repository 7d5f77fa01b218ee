"""Learning to reverse the noise (lesson 02).

A network eps_hat = model(x_t, t) learns to predict the noise that was added (the loss is
:func:`diffuse_edu.diffusion.objectives.eps_loss`). One ancestral step then goes from x_t to
x_{t-1} (Ho et al. 2020, Eq. 11 and Alg. 2)::

    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_hat) / sqrt(alpha_t) + sigma_t z,

with sigma_t^2 the posterior variance beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (Eq. 7),
which is 0 at t = 1. The mean is the posterior mean of q(x_{t-1} | x_t, x_0) (Eq. 6) at the
estimate x0_hat = predict_x0(x_t, eps_hat, t). Run from t = T to 1, this step is
:func:`diffuse_edu.diffusion.samplers.sample_ddpm`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffuse_edu.diffusion.forward_process import posterior_variance
from diffuse_edu.diffusion.schedules import NoiseSchedule


def ddpm_step(x_t: Tensor, eps_hat: Tensor, t: Tensor | int, schedule: NoiseSchedule,
              noise: Tensor) -> Tensor:
    """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Eq. 11, sigma_t^2 = posterior variance).

    Needs alpha_t > 0, so not t = T of a zero-terminal-SNR schedule (use v-prediction there).
    Shapes: x_t, eps_hat, noise (B, ...), t () or (B,) in 1..T -> like x_t.
    """
    t_prev = t - 1 if isinstance(t, int) else torch.as_tensor(t) - 1
    beta = schedule.at(schedule.betas, t, x_t)
    ab = schedule.at(schedule.alpha_bar, t, x_t)
    ab_prev = schedule.at(schedule.alpha_bar, t_prev, x_t)
    mean = (x_t - beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()
    return mean + posterior_variance(ab, ab_prev).sqrt() * noise
