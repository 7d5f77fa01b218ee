"""Checker for lesson 11: the replacement step of inpainting."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.diffusion.editing import replace_known
from diffuse_edu.diffusion.forward_process import q_sample
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare

_SCHEDULE = cosine_schedule(1000)


def _case_data(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x_prev, known, noise = (torch.randn(2, 1, 4, 6, generator=g).to(dtype) for _ in range(3))
    mask = torch.zeros(1, 1, 4, 6, dtype=dtype)
    mask[..., :2, :] = 1  # the top half is known
    return x_prev, known, mask, noise


def _case(t_prev: int, seed: int, dtype=torch.float32) -> Callable:
    def case(fn: Callable) -> None:
        x_prev, known, mask, noise = _case_data(seed, dtype)
        want = replace_known(x_prev, known, mask, t_prev, _SCHEDULE, noise)
        noised = q_sample(known, max(t_prev, 0), _SCHEDULE, noise)
        mistakes = [
            Mistake("the known region was pasted in clean: at t_prev > 0 it must carry the same noise level as "
                    "x_prev, q_sample(known, t_prev, schedule, noise).", mask * known + (1 - mask) * x_prev),
            Mistake("the mask is inverted: 1 marks the known pixels, which come from `known`.",
                    (1 - mask) * noised + mask * x_prev),
            Mistake("the generated region was replaced too: keep x_prev where the mask is 0.", noised.expand_as(x_prev)),
        ]
        if t_prev == 0:
            mistakes.append(Mistake("at t_prev = 0 the known image goes back in without noise, so that the "
                                    "result keeps it exactly.", mask * q_sample(known, 1, _SCHEDULE, noise)
                                    + (1 - mask) * x_prev))
        before = x_prev.clone()
        got = fn(x_prev, known.clone(), mask.clone(), t_prev, _SCHEDULE, noise.clone())
        if not torch.equal(x_prev, before):
            raise Mismatch("replace_known changed the caller's x_prev in place; return a new tensor.")
        compare(got, want, what=f"replace_known at t_prev = {t_prev} ({dtype})", mistakes=mistakes)
    return case


def _exact(fn: Callable) -> None:
    x_prev, known, mask, noise = _case_data(5)
    got = fn(x_prev, known, mask, 0, _SCHEDULE, noise)
    if isinstance(got, torch.Tensor) and got.shape == known.shape and not torch.equal(got[..., :2, :], known[..., :2, :]):
        raise Mismatch("at t_prev = 0 the known pixels must come back exactly (bit for bit): select them with "
                       "the mask rather than mixing with arithmetic that can round.")


REPLACE_KNOWN = Checker(
    "replace_known", replace_known, [_case(500, 0), _case(37, 1, torch.float64), _case(0, 2), _exact],
    hints=("Where the mask is 1 the sample should look like the known image would at this step of the reverse "
           "process; where it is 0, leave the model's sample alone.",
           "Noise the known image to t_prev with the noise you are given (lesson 01), except at t_prev = 0; then "
           "pick, pixel by pixel, that or x_prev according to the mask (torch.where keeps values exact)."),
    see="lesson 11, section 2: the known region noised to t_prev, the known image itself at t_prev = 0",
)
