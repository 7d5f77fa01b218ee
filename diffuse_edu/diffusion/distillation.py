"""Progressive distillation: one student step where the teacher takes two (lesson 14; Salimans &
Ho 2022, Alg. 2).

On the student's grid of N steps, t -> t_next, the teacher (sampled with 2N steps) goes
t -> t_mid -> t_next by two deterministic DDIM steps and lands at x_next. A DDIM step from x_t
is linear in the x0 it is given, x_next = alpha_next x0 + sigma_next (x_t - alpha_t x0) / sigma_t
(alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)), so exactly one x0 makes the student's
single step land at the same point (their Eq. 8 and Alg. 2):

    x0_target = (x_next - (sigma_next / sigma_t) x_t) / (alpha_next - (sigma_next / sigma_t)
    alpha_t).

The student is trained to predict it in its own target (for a v-model,
:func:`~diffuse_edu.diffusion.prediction.x0_to_v`). Each round halves the steps; the student of one
round is the teacher of the next.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.samplers import ddim_move, ddim_step
from diffuse_edu.diffusion.schedules import NoiseSchedule


def x0_for_step(x_t: Tensor, x_next: Tensor, t: int, t_next: int,
                schedule: NoiseSchedule) -> Tensor:
    """The x0 that makes one deterministic DDIM step from x_t at t land exactly at x_next at t_next.

    Shapes: x_t, x_next (B, ...) -> like x_t.
    """
    a_t, a_n = schedule.alpha_bar[t].item() ** 0.5, schedule.alpha_bar[t_next].item() ** 0.5
    s_t, s_n = (1 - a_t**2) ** 0.5, (1 - a_n**2) ** 0.5
    ratio = s_n / s_t
    return (x_next - ratio * x_t) / (a_n - ratio * a_t)


@torch.no_grad()
def distillation_target(teacher: Denoiser, x_t: Tensor, t: int, t_mid: int, t_next: int,
                        schedule: NoiseSchedule,
                        cond: object = None, step: Callable = ddim_step) -> Tensor:
    """The x0 a student must predict at t so that its one DDIM step to t_next lands where the
    teacher's two DDIM steps, t -> t_mid -> t_next, land (Salimans & Ho 2022, Alg. 2), lesson 14.

    ``teacher`` is a :class:`Denoiser`; ``step`` the DDIM step (:func:`ddim_step` or lesson 07's).
    Shapes: x_t (B, ...) -> like x_t.
    """
    x_mid = ddim_move(teacher, x_t, t, t_mid, schedule, cond=cond, step=step)
    x_next = ddim_move(teacher, x_mid, t_mid, t_next, schedule, cond=cond, step=step)
    return x0_for_step(x_t, x_next, t, t_next, schedule)

