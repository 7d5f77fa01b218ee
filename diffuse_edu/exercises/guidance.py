"""Checker for lesson 08: the classifier-free guidance combination."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.diffusion.guidance import guided_prediction
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare


def _pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, 1, 4, 4, generator=g)


def _values(scale: float, seed: int) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        cond, uncond = _pair(seed)
        mistakes = [
            Mistake("you extrapolated from the conditional prediction; start from the unconditional one "
                    "(then scale 1 gives the conditional model).", cond + scale * (cond - uncond)),
            Mistake("the difference points the wrong way: guidance moves from the unconditional "
                    "prediction towards, and past, the conditional one.", uncond + scale * (uncond - cond)),
            Mistake("the unconditional prediction is missing: the scale multiplies a difference of "
                    "the two predictions.", scale * cond),
            Mistake("that is an average of the two predictions; guidance extrapolates beyond the "
                    "conditional one when the scale exceeds 1.", (cond + scale * uncond) / (1 + scale)),
            Mistake("cond and uncond are swapped in your formula.", cond + scale * (uncond - cond)),
        ]
        compare(fn(cond.clone(), uncond.clone(), scale), guided_prediction(cond, uncond, scale),
                what=f"guided_prediction(cond, uncond, scale={scale})", mistakes=mistakes)
    return case


def _ends(fn: Callable) -> None:
    cond, uncond = _pair(7)
    if not torch.allclose(fn(cond.clone(), uncond.clone(), 1.0), cond, atol=1e-6):
        raise Mismatch("guided_prediction with scale 1 must return the conditional prediction itself.")
    if not torch.allclose(fn(cond.clone(), uncond.clone(), 0.0), uncond, atol=1e-6):
        raise Mismatch("guided_prediction with scale 0 must return the unconditional prediction itself.")


def _inputs_unchanged(fn: Callable) -> None:
    cond, uncond = _pair(11)
    c0, u0 = cond.clone(), uncond.clone()
    fn(cond, uncond, 4.0)
    if not (torch.equal(cond, c0) and torch.equal(uncond, u0)):
        raise Mismatch("guided_prediction changed its inputs in place (e.g. with sub_ or mul_); the "
                       "sampler still needs them: compute a new tensor.")


GUIDED_PREDICTION = Checker(
    "guided_prediction", guided_prediction,
    [_values(3.0, 0), _values(7.5, 1), _values(0.5, 2), _ends, _inputs_unchanged],
    hints=(
        'Guidance extrapolates: at scale 0 you get the unconditional prediction, at scale 1 the conditional one.',
        'The difference cond - uncond is a direction; the scale says how far to go along it. From which of the two predictions do you start?',
    ),
    see="Ho & Salimans 2022, Eq. 6, in lesson 08, section 1",
)
