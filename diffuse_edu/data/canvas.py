"""Images made from the data for lesson 12: other brightnesses, other canvases, aspect-ratio
buckets.

* :func:`with_brightness` gives each image a global brightness offset, so that a data set holds
  very dark and very bright images (the test of zero terminal SNR, Lin et al. 2024).
* :func:`place` puts each image on a wider canvas at a random horizontal position, and
  :func:`side_by_side` puts two images next to each other: one and two subjects, to check a
  subject counter on.
* :class:`Buckets` holds training images of several shapes, one tensor per shape; every batch is
  drawn from one bucket (aspect-ratio bucketing, as NovelAI described for Stable Diffusion), so a
  network sees wide canvases with one subject and learns that a wide canvas need not hold two.

Images are in [-1, 1] with the background at -1, shape (N, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def with_brightness(images: Tensor, offsets: Tensor, *, contrast: float = 0.5) -> Tensor:
    """contrast * images + offset per image, clamped to [-1, 1]: the same strokes on a darker or
    brighter canvas. Shapes: images (N, C, H, W), offsets (N,) -> (N, C, H, W)."""
    return (contrast * images + offsets.to(images.dtype).reshape(-1, 1, 1, 1)).clamp(-1, 1)


def place(images: Tensor, width: int, *, generator: torch.Generator | None = None,
          background: float = -1.0) -> Tensor:
    """Each image on a canvas ``width`` pixels wide, at a random horizontal offset.

    Shapes: (N, C, H, W) with W <= width -> (N, C, H, width)."""
    n, c, h, w = images.shape
    if w > width:
        raise ValueError(f"A canvas {width} wide cannot hold images {w} wide.")
    canvas = images.new_full((n, c, h, width), background)
    offsets = torch.randint(0, width - w + 1, (n,), generator=generator).tolist()
    for i, x in enumerate(offsets):
        canvas[i, :, :, x:x + w] = images[i]
    return canvas


def side_by_side(left: Tensor, right: Tensor) -> Tensor:
    """Two images next to each other on one canvas. Shapes: (N, C, H, W) twice -> (N, C, H, 2W)."""
    return torch.cat([left, right], dim=-1)


@dataclass(frozen=True, eq=False)
class Buckets:
    """Training images in buckets of one shape each; :meth:`draw` takes a batch from one bucket,
    picked with probability proportional to its size. The training loop accepts it as its data.

    The bucket of each batch is drawn on the host from ``seed`` (the host must know the shape to
    launch the step, so drawing it on a GPU would wait for the GPU); the images in it are drawn
    with the generator the loop passes. Shapes: each bucket (N_i, C, H_i, W_i).
    """

    sets: tuple[Tensor, ...]
    seed: int = 0  # the order of buckets

    def __post_init__(self) -> None:
        if not self.sets or any(s.ndim != 4 for s in self.sets):
            raise ValueError("Buckets needs one or more tensors of images (N, C, H, W).")
        if len({s.shape[1] for s in self.sets}) > 1:
            raise ValueError("Every bucket must have the same number of channels.")
        object.__setattr__(self, "_order", torch.Generator().manual_seed(self.seed))

    @property
    def device(self) -> torch.device:
        return self.sets[0].device

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [tuple(s.shape[-2:]) for s in self.sets]

    def to(self, *args, **kwargs) -> Buckets:
        return Buckets(tuple(s.to(*args, **kwargs) for s in self.sets), self.seed)

    def draw(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """``batch_size`` images of one bucket. Shapes: -> (batch_size, C, H_i, W_i)."""
        sizes = torch.tensor([len(s) for s in self.sets], dtype=torch.float)
        chosen = self.sets[int(torch.multinomial(sizes, 1, generator=self._order))]
        idx = torch.randint(0, len(chosen), (batch_size,), generator=generator,
                            device=chosen.device)
        return chosen[idx]
