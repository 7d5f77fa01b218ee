"""A new subject made from the data (lesson 13): one writer's slanted, bold digits.

DreamBooth (Ruiz et al. 2023) teaches a model a subject from a handful of its photos. Here the
subject is made from the data with a fixed transform, so that a measurement can tell it apart:
a few digits of one class, sheared to lean right (:func:`shear`) and drawn with a wider pen
(:func:`bolder`). :func:`~diffuse_edu.evaluation.probes.slant` and
:func:`~diffuse_edu.evaluation.probes.ink_share` then measure how much of the subject a sample has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuse_edu.data.images import ImageSet


def shear(images: Tensor, slant: float) -> Tensor:
    """Each image leaned right by ``slant`` pixels per pixel of height (its top moves right, its
    bottom left), the background filling in. Shapes: (N, C, H, W) -> (N, C, H, W)."""
    n, _, h, w = images.shape
    theta = images.new_tensor([[1.0, slant * h / w, 0.0], [0.0, 1.0, 0.0]]).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) - 1


def bolder(images: Tensor) -> Tensor:
    """Strokes one pixel wider: each pixel the brighter of itself and its left neighbour.
    Shapes: like images."""
    left = F.pad(images, (1, 0), value=-1.0)[..., :-1]
    return torch.maximum(images, left)


def make_subject(data: ImageSet, digit: int, n: int, *, slant: float = 0.45,
                 generator: torch.Generator | None = None) -> Tensor:
    """``n`` images of class ``digit``, sheared by ``slant`` and bolder: the subject to teach.
    Shapes: -> (n, C, H, W)."""
    pool = data.images[data.labels == digit]
    if len(pool) < n:
        raise ValueError(f"The data hold {len(pool)} images of class {digit}; the subject needs "
                         f"{n}.")
    chosen = pool[torch.randperm(len(pool), generator=generator)[:n].to(pool.device)]
    return bolder(shear(chosen, slant))
