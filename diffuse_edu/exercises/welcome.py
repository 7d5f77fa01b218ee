"""Checker for lesson 00's warm-up exercise: pixels to the model's range [-1, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.data import to_unit_range
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare


def _pixels() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 1, 4, 5), generator=g, dtype=torch.uint8)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255  # both ends of the range are present
    return x


def _values(fn: Callable) -> None:
    x = _pixels()
    want, xf = to_unit_range(x), x.float()  # before fn runs: it might change x in place
    mistakes = [
        Mistake("values lie in [0, 1]: after dividing by 255, multiply by 2 and subtract 1.",
                xf / 255),
        Mistake("divided by 256 (x / 256 * 2 - 1, or (x - 128) / 128, which is the same): the "
                "brightest pixel (255) must map to exactly 1.0, so the step between pixel values "
                "is 2 / 255.",
                xf / 256 * 2 - 1),
        Mistake("values lie in [-0.5, 0.5]: that is x / 255 - 0.5; scale by 2 as well.",
                xf / 255 - 0.5),
        Mistake("the sign is flipped: black (0) must map to -1 and white (255) to +1.",
                1 - xf / 255 * 2),
        Mistake("values lie in [0, 2]: after dividing by 127.5, subtract 1.", xf / 127.5),
        Mistake("you used floor division (//), which keeps whole numbers only: divide with /, so "
                "the values stay continuous.", torch.div(xf, 127.5, rounding_mode="floor") - 1),
        Mistake("you standardised the batch (zero mean, unit std); the course maps pixels by a "
                "fixed rule, so that a pixel value means the same in every batch: 0 -> -1, 255 -> "
                "+1.", (xf - xf.mean()) / xf.std()),
    ]
    got = fn(x.clone())
    if isinstance(got, torch.Tensor) and got.dtype == torch.uint8:
        raise Mismatch("to_unit_range returned uint8: convert to float32 before dividing "
                       "(integer arithmetic truncates, and -1 does not exist in uint8).")
    if isinstance(got, torch.Tensor) and got.is_floating_point() and got.dtype != torch.float32:
        raise Mismatch(f"to_unit_range returned {got.dtype}; the course's images are float32, the "
                       "dtype of the models' weights: convert with .float() (not .double() or "
                       ".half()).")
    compare(got, want, what="to_unit_range(uint8 pixels)", mistakes=mistakes)


def _ends(fn: Callable) -> None:
    got = fn(torch.tensor([0, 255], dtype=torch.uint8))
    if not isinstance(got, torch.Tensor) or got.tolist() != [-1.0, 1.0]:
        raise Mismatch(f"to_unit_range([0, 255]) gave {got!r}; expected tensor([-1., 1.]).")


def _input_unchanged(fn: Callable) -> None:
    x = _pixels()
    before = x.clone()
    fn(x)
    if not torch.equal(x, before):
        raise Mismatch("to_unit_range changed its input in place: compute a new tensor instead.")


TO_UNIT_RANGE = Checker(
    "to_unit_range", to_unit_range, [_values, _ends, _input_unchanged],
    hints=(
        'The pixels are integers from 0 to 255; the model wants float32 values centred on 0.',
        ('Two affine maps in a row: one takes 0..255 to 0..1, the next takes 0..1 to -1..1. Build '
         'a new tensor; leave the input as it was.'),
    ),
    see="lesson 00, section 3: pixels 0..max_value map linearly onto [-1, 1]",
)
