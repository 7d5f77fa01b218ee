"""Checker for lesson 01's exercise: the closed form of q(x_t | x_0) (Ho et al. 2020, Eq. 4)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.diffusion.forward_process import mix, q_sample
from diffuse_edu.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    rescale_zero_terminal_snr,
)
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare

_LINEAR = linear_schedule(1000)


def _batch(t: list[int], schedule: NoiseSchedule = _LINEAR):
    """Five 1x6x8 images with their noise; W = 8 differs from B = 5 so bad broadcasting fails."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(len(t), 1, 6, 8, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    return x0, torch.tensor(t), schedule, eps


def _mistakes(x0, t, schedule: NoiseSchedule, eps) -> list[Mistake]:
    ab = schedule.alpha_bar[t.clamp(0, schedule.T)].float().reshape(-1, 1, 1, 1)
    weights = [  # (what to tell, x0's weight, the noise's weight): x_t with the wrong weights
        (("you used alpha_bar and 1 - alpha_bar as the weights; take their square roots (they are "
          "variances, the weights are standard deviations)."), ab, 1 - ab),
        (("x0's weight is alpha_bar_t, a variance; take its square root, sqrt(alpha_bar_t) (the "
          "noise's weight is right)."), ab, (1 - ab).sqrt()),
        (("the noise's weight is 1 - alpha_bar_t, a variance; take its square root, "
          "sqrt(1 - alpha_bar_t) (x0's weight is right)."), ab.sqrt(), 1 - ab),
        (("the two weights are swapped: x0 gets sqrt(alpha_bar_t), the noise gets "
          "sqrt(1 - alpha_bar_t)."), (1 - ab).sqrt(), ab.sqrt()),
        ("x0 is not scaled: the signal must shrink by sqrt(alpha_bar_t) as noise grows.",
         1, (1 - ab).sqrt()),
        ("the noise is not scaled: multiply eps by sqrt(1 - alpha_bar_t).", ab.sqrt(), 1),
        (("the noise's weight is sqrt(1 - alpha_bar_t), not 1 - sqrt(alpha_bar_t): the squares of "
          "the two weights add up to 1, so x_t keeps unit variance."), ab.sqrt(), 1 - ab.sqrt()),
        (("that is x0 + sigma_t eps (Karras et al.'s form, lesson 07), which is x_t / "
          "sqrt(alpha_bar_t): multiply it by sqrt(alpha_bar_t)."), 1, ((1 - ab) / ab).sqrt()),
    ]
    off_by_one = ("t is off by one: alpha_bar has T + 1 entries and alpha_bar[t] is the value at "
                  "step t (alpha_bar[0] = 1).")
    alphas = schedule.alphas[t.clamp(0, schedule.T)].float().reshape(-1, 1, 1, 1)
    return [Mistake(message, a * x0 + b * eps) for message, a, b in weights] + [
        Mistake(
            "you used alpha_t (one step) instead of alpha_bar_t (the product over all steps "
            "up to t).",
            mix(x0, eps, alphas),
        ),
        *(
            Mistake(off_by_one, q_sample(x0, (t + k).clamp(0, schedule.T), schedule, eps))
            for k in (-1, 1)
        ),
    ]


def _shape_and_values(fn: Callable) -> None:
    x0, t, schedule, eps = _batch([1, 10, 250, 600, 999])
    what = "q_sample(x0 of shape (5, 1, 6, 8), t = [1, 10, 250, 600, 999], linear schedule, eps)"
    want, mistakes = q_sample(x0, t, schedule, eps), _mistakes(x0, t, schedule, eps)
    compare(fn(x0.clone(), t.clone(), schedule, eps.clone()), want, what=what, mistakes=mistakes)


def _other_schedule(fn: Callable) -> None:
    x0, t, schedule, eps = _batch([3, 70, 500, 800, 990], cosine_schedule(1000))
    want, mistakes = q_sample(x0, t, schedule, eps), _mistakes(x0, t, schedule, eps)
    compare(fn(x0.clone(), t.clone(), schedule, eps.clone()), want,
            what="q_sample with the cosine schedule", mistakes=mistakes)


def _t_zero(fn: Callable) -> None:
    x0, t, schedule, eps = _batch([0, 0, 0, 0, 0])
    compare(fn(x0, t, schedule, eps), x0, what="q_sample at t = 0",
            otherwise="the result must be x0 itself (alpha_bar_0 = 1, no noise yet); index "
                      "alpha_bar with t, not t - 1 or t + 1.")


def _t_final_zero_snr(fn: Callable) -> None:
    schedule = rescale_zero_terminal_snr(linear_schedule(1000))
    x0, t, _, eps = _batch([1000] * 5, schedule)
    compare(fn(x0, t, schedule, eps), eps, what="q_sample at t = T, zero-terminal-SNR schedule",
            otherwise="alpha_bar_T = 0 here, so the result must be pure noise eps; make sure "
                      "t = T indexes the last entry.")


def _dtype(fn: Callable) -> None:
    x0, t, schedule, eps = _batch([5, 50, 500, 700, 900])
    got = fn(x0, t, schedule, eps)
    if isinstance(got, torch.Tensor) and got.dtype != torch.float32:
        raise Mismatch(f"float32 images gave a {got.dtype} result: the schedule is stored in "
                       "float64, so cast alpha_bar[t] to x0.dtype before using it.")


def _no_broadcast_trap(fn: Callable) -> None:
    x0, t, schedule, eps = _batch([1, 999, 1, 999, 1])
    x0 = x0[:4, :, :, :4].contiguous()  # B = W = 4: wrong broadcasting runs but mixes images
    eps = eps[:4, :, :, :4].contiguous()
    t = t[:4]
    compare(fn(x0, t, schedule, eps), q_sample(x0, t, schedule, eps), what="q_sample on a batch "
            "of 4 images 4 pixels wide", otherwise="alpha_bar[t] was applied along the width "
            "instead of per image: reshape it to (B, 1, 1, 1).")


Q_SAMPLE = Checker(
    "q_sample", q_sample,
    [_shape_and_values, _dtype, _t_zero, _t_final_zero_snr, _other_schedule, _no_broadcast_trap],
    hints=(
        ("The noisy image is a weighted sum of x0 and eps; both weights come from one table of the "
         "schedule, read at each image's own t."),
        ("A weight read with t has shape (B,): reshape it so that it broadcasts over (C, H, W), "
         "and cast it to x0's dtype and device (the tables are float64 on the CPU). The weights "
         "are standard deviations, not variances."),
    ),
    see="Ho et al. 2020, Eq. 4, in lesson 01, section 2: sqrt(alpha_bar_t) x0 + sqrt(1 - "
        "alpha_bar_t) eps",
)
