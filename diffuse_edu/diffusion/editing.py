"""Editing images with a trained diffusion model (lesson 11).

* **SDEdit** (Meng et al. 2022): noise a guide image to t0 = strength * T with q(x_t0 | x_0), then
  run the reverse process from t0. Low strength keeps the guide; high strength keeps only its
  coarse layout, up to ignoring it at strength 1.
* **Inpainting by replacement** (Song et al. 2021b, App. I.2): at every step, the known region of
  x_{t_prev} is replaced by the known image noised to t_prev, so only the unknown region is
  generated; the last step puts the known pixels back exactly.
* **RePaint** (Lugmayr et al. 2022, Alg. 1): the same, with each step repeated ``resample`` times:
  after the step the sample is noised forward again (q(x_t | x_{t_prev}), :func:`q_forward`) and
  the step redone, so that the generated region has time to agree with the known one.

Inversion-based edits use :func:`diffuse_edu.diffusion.samplers.invert_ddim` with one condition
and :func:`sample_ddim` with another.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.diffusion.denoisers import Denoiser, as_denoiser
from diffuse_edu.diffusion.forward_process import q_forward, q_sample
from diffuse_edu.diffusion.samplers import ddim_move, ddim_step, sample_ddim, timesteps
from diffuse_edu.diffusion.schedules import NoiseSchedule


def _noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


@torch.no_grad()
def sdedit(model: Callable, guide: Tensor, schedule: NoiseSchedule | None, *, strength: float,
           steps: int, cond: object = None, eta: float = 0.0, clip: float | None = None,
           generator: torch.Generator | None = None, step: Callable | None = None) -> Tensor:
    """SDEdit: ``guide`` noised to t0 = strength * T, then DDIM from t0 in about strength * steps
    steps (the step size of a full ``steps``-step run); ``step`` is :func:`ddim_step` or lesson 07's
    learner's. ``schedule`` None: the denoiser's own. Shapes: guide (B, ...) -> like guide."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength is a share of the noise levels in (0, 1], got {strength}.")
    schedule = schedule if schedule is not None else getattr(model, "schedule", None)
    if schedule is None:
        raise ValueError("sdedit noises the guide to strength * T of a noise schedule and got "
                         "none: pass the model's schedule (ck.schedule), or a Denoiser that "
                         "carries it.")
    t0 = max(1, round(strength * schedule.T))
    x = q_sample(guide, t0, schedule, _noise(guide, generator))
    return sample_ddim(model, x, schedule, steps=max(1, round(strength * steps)), eta=eta,
                       cond=cond, clip=clip, generator=generator, t_max=t0, step=step)


def replace_known(x_prev: Tensor, known: Tensor, mask: Tensor, t_prev: int, schedule: NoiseSchedule,
                  noise: Tensor) -> Tensor:
    """The replacement step (lesson 11): where ``mask`` is 1, x_{t_prev} becomes the known image at
    the same noise level, q_sample(known, t_prev, noise); at t_prev = 0 the known image itself, so
    that the result keeps it exactly. Where ``mask`` is 0, x_prev is kept.

    Shapes: x_prev, known, noise (B, C, H, W); mask broadcastable, values 0 or 1 -> like x_prev.
    """
    known_t = known if t_prev == 0 else q_sample(known, t_prev, schedule, noise)
    return torch.where(mask.bool(), known_t, x_prev)


def repaint_step(denoiser: Denoiser, x_t: Tensor, t: int, t_prev: int, known: Tensor, mask: Tensor,
                 schedule: NoiseSchedule, resample: int, noise: Callable[[], Tensor],
                 cond: object = None, *,
                 eta: float = 1.0, step: Callable = ddim_step,
                 replace: Callable = replace_known) -> Tensor:
    """One step of inpainting, x_t -> x_{t_prev}, tried ``resample`` times (RePaint, Lugmayr et al.
    2022, Alg. 1; lesson 11's exercise). Each try: the denoiser's estimates at x_t, an ancestral
    DDIM step to t_prev (``eta`` = 1), the known region put back at t_prev (:func:`replace_known`);
    between tries the result jumps back to t with q(x_t | x_{t_prev}) (:func:`q_forward`). The last
    step (t_prev = 0) runs once: with nothing to jump back to, a repeat would denoise the finished
    image as if it were still noisy. ``noise()`` returns fresh standard noise like x_t; ``step`` is
    :func:`ddim_step` or lesson 07's learner's. Shapes: x_t, known (B, C, H, W), mask broadcastable.
    """
    tries = resample if t_prev > 0 else 1
    for r in range(tries):
        x_prev = ddim_move(denoiser, x_t, t, t_prev, schedule, cond=cond, eta=eta,
                           noise=noise() if eta else None, step=step)
        x_prev = replace(x_prev, known, mask, t_prev, schedule, noise())
        if r < tries - 1:
            x_t = q_forward(x_prev, t_prev, t, schedule, noise())
    return x_prev


@torch.no_grad()
def inpaint(model: Callable, known: Tensor, mask: Tensor, schedule: NoiseSchedule, *, steps: int,
            resample: int = 1, cond: object = None, eta: float = 1.0, clip: float | None = None,
            generator: torch.Generator | None = None, replace: Callable = replace_known,
            step: Callable = ddim_step, repaint: Callable | None = None) -> Tensor:
    """Fill the region where ``mask`` is 0 so that it agrees with ``known`` where ``mask`` is 1.

    ``resample`` = 1 is the replacement method; more is RePaint's resampling (:func:`repaint_step`).
    Network evaluations: (steps - 1) * resample + 1. Where ``mask`` is 1 the result equals
    ``known`` exactly. ``replace`` is the replacement step and ``step`` the DDIM step (the
    library's, or a learner's); ``repaint`` a whole step with the signature of
    :func:`repaint_step` (lesson 11's learner's; it then takes the place of eta, step and replace).
    Shapes: known (B, C, H, W); mask broadcastable to it, values 0 or 1 -> like known.
    """
    if resample < 1:
        raise ValueError(f"resample counts the tries per step, at least 1, got {resample}.")
    denoiser = as_denoiser(model, schedule, clip=clip)
    repaint = repaint or functools.partial(repaint_step, eta=eta, step=step, replace=replace)
    ts = timesteps(schedule, steps)
    x = _noise(known, generator)
    for t, t_prev in zip(ts[:-1], ts[1:]):
        x = repaint(denoiser, x, t, t_prev, known, mask, schedule, resample,
                    lambda: _noise(known, generator), cond)
    return x
