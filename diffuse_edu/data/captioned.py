"""Images with captions (lesson 09): generated shapes with compositional captions, and digits.

**Shapes.** Each image shows one shape ("a big red circle at the top left") or two shapes and a
relation between them ("a red circle left of a blue square"), drawn anti-aliased on black. The
attributes are a colour, a shape, a size and a position (one of four quadrants). Everything is
deterministic from a seed. Three colour-shape pairs (:data:`HELD_OUT`) never occur in the
``"train"`` or ``"test"`` split; the ``"held_out"`` split has at least one of them in every image,
so a model trained on ``"train"`` meets those combinations for the first time there.

**Digits.** :func:`digit_captions` words a digit label in one of a few templates ("a handwritten
seven"), for the text-conditioned MNIST of lesson 09 at full scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuse_edu.data.staged import load_mnist

COLOURS: dict[str, tuple[float, float, float]] = {  # RGB in [0, 1]
    "red": (0.95, 0.15, 0.1), "green": (0.15, 0.85, 0.2), "blue": (0.2, 0.35, 1.0),
                                                  "yellow": (0.95, 0.9, 0.15)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "big")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
#: The attributes of one shape, in the order of :attr:`ShapeSet.objects`' last axis.
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES,
                                          "position": POSITIONS}
#: How many values each attribute takes, in the order of ATTRIBUTES (an attribute classifier's logit
#: groups).
ATTRIBUTE_GROUPS = tuple(len(v) for v in ATTRIBUTES.values())
#: Colour-shape pairs never drawn in the "train" and "test" splits (each colour and shape still is).
HELD_OUT = (("red", "triangle"), ("green", "square"), ("blue", "circle"))
SPLITS = {"train": 0, "test": 1, "held_out": 2}  # seed offsets
#: Every word a shape caption can use (the text encoder's vocabulary is built from these).
SHAPE_WORDS = ("a", "at", "the", *COLOURS, *SHAPES, *SIZES,
               *" ".join(POSITIONS + RELATIONS).split())

_RADIUS = {"small": 2.2, "big": 3.6}  # half-widths in pixels of a 16x16 image
_SUPERSAMPLE = 4  # subpixels per pixel and axis, for anti-aliased edges


@dataclass(frozen=True)
class ShapeSet:
    """Shape images with their captions and the ground truth behind each caption.

    Shapes: images (N, 3, H, W) float32 in [-1, 1]; objects (N, 2, 4) int64: colour, shape, size,
    position index of the first and second shape (-1 where an image has one shape); relation (N,)
    int64 index into :data:`RELATIONS` (-1 for one shape); masks (N, 2, H, W) bool, the pixels of
    each shape; centres (N, 2, 2) float32, each shape's centre (x, y) in pixels, where
    :func:`render` drew it.
    """

    images: Tensor
    captions: tuple[str, ...]
    objects: Tensor
    relation: Tensor
    masks: Tensor
    centres: Tensor
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def single(self) -> Tensor:
        """(N,) bool: images showing one shape."""
        return self.objects[:, 1, 0] < 0

    def subset(self, idx: Tensor) -> ShapeSet:
        """The images ``idx`` (a bool mask or indices) with everything that describes them."""
        idx = idx.nonzero().squeeze(1) if idx.dtype == torch.bool else idx
        return ShapeSet(self.images[idx], tuple(self.captions[i] for i in idx.tolist()),
                        self.objects[idx], self.relation[idx], self.masks[idx], self.centres[idx],
                        self.name)


def palette_rgb(device: torch.device | str | None = None) -> Tensor:
    """The shapes' colours in the images' range [-1, 1], in the order of :data:`COLOURS` (the
    index a colour has in :attr:`ShapeSet.objects`). Shapes: (len(COLOURS), 3)."""
    return torch.tensor(list(COLOURS.values()), device=device) * 2 - 1


def caption(objects: Tensor, relation: int) -> str:
    """The caption of one scene. Shapes: objects (2, 4) as in :class:`ShapeSet`."""
    def words(o: Tensor, with_size: bool) -> str:
        c, s, z = (ATTRIBUTES[k][int(i)] for k, i in zip(("colour", "shape", "size"), o[:3]))
        return f"a {z} {c} {s}" if with_size else f"a {c} {s}"

    if relation < 0:
        return f"{words(objects[0], True)} at the {POSITIONS[int(objects[0, 3])]}"
    return f"{words(objects[0], False)} {RELATIONS[relation]} {words(objects[1], False)}"


def make_shapes(n: int, *, size: int = 16, seed: int = 0, split: str = "train",
                two_shapes: float = 0.4) -> ShapeSet:
    """``n`` shape images of ``size`` x ``size``; a share ``two_shapes`` show two shapes and a
    relation.

    Deterministic from ``seed`` and ``split`` ("train", "test" or "held_out"; see the module).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}.")
    g = torch.Generator().manual_seed(1000 * seed + SPLITS[split])
    objects, relation = _draw_attributes(n, two_shapes, split, g)
    centres = _centres(objects, relation, size, g)  # (N, 2, 2) x, y in pixels
    chunk = max(1, 2 ** 21 // (size * _SUPERSAMPLE) ** 2)  # images per chunk: bounds the memory
    images, masks = zip(*(render(objects[lo:lo + chunk], centres[lo:lo + chunk],
                                  size) for lo in range(0, n, chunk)))
    captions = tuple(caption(o, int(r)) for o, r in zip(objects, relation))
    return ShapeSet(torch.cat(images), captions, objects, relation, torch.cat(masks), centres,
                    f"shapes_{split}")


def _held_out(colour: Tensor, shape: Tensor) -> Tensor:
    pairs = [(tuple(COLOURS).index(c), SHAPES.index(s)) for c, s in HELD_OUT]
    return torch.stack([(colour == c) & (shape == s) for c, s in pairs]).any(0)


def _draw_attributes(n: int, two_shapes: float, split: str,
                     g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Attributes per scene, redrawn until each scene fits its split (see the module)."""
    sizes = torch.tensor([len(v) for v in ATTRIBUTES.values()])
    objects = torch.full((n, 2, 4), -1, dtype=torch.long)
    relation = torch.where(torch.rand(n, generator=g) < two_shapes,
                           torch.randint(0, len(RELATIONS), (n,), generator=g), -1)
    todo = torch.ones(n, dtype=torch.bool)
    while todo.any():
        k = int(todo.sum())
        draw = (torch.rand(k, 2, 4, generator=g) * sizes).long()  # (k, 2, 4)
        second = relation[todo] >= 0
        draw[~second, 1] = -1
        while (same := second & (draw[:, 0, 0] == draw[:, 1, 0])).any():  # two shapes, two colours
            draw[same, 1, 0] = torch.randint(0, len(COLOURS), (int(same.sum()),), generator=g)
        objects[todo] = draw
        rare = _held_out(objects[:, :, 0], objects[:, :, 1]) & (objects[:, :, 0] >= 0)  # (N, 2)
        fits = rare.any(1) if split == "held_out" else ~rare.any(1)
        todo = ~fits
    return objects, relation


def _centres(objects: Tensor, relation: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Shape centres in pixels: quadrant centres for one shape, the relation's halves for two."""
    n, unit = len(objects), size / 16
    quad = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75],
                         [0.75, 0.75]])  # x, y of each position
    centres = quad[objects[:, 0, 3].clamp_min(0)].unsqueeze(1).repeat(1, 2, 1) * size  # (N, 2, 2)
    centres += (torch.rand(n, 2, 2, generator=g) - 0.5) * 1.5 * unit  # jitter
    two = relation >= 0
    # two shapes: first at the quarter the relation names, second opposite; the other axis free
    along = torch.tensor([0, 0, 1, 1])[relation.clamp_min(0)]  # 0: x (left/right),
    # 1: y (above/below)
    first_low = torch.tensor([True, False, True, False])[relation.clamp_min(0)]  # left of / above
    free = 0.3 + 0.4 * torch.rand(n, 2, generator=g)  # (N, 2) in [0.3, 0.7] of the image
    for j in range(2):
        low = first_low if j == 0 else ~first_low
        main = torch.where(low, 0.25, 0.75) + (torch.rand(n, generator=g) - 0.5) * 0.1
        xy = torch.stack([torch.where(along == 0, main, free[:, j]),
                          torch.where(along == 1, main, free[:, j])], 1)
        centres[two, j] = xy[two] * size
    objects[two, :,
            3] = ((centres[two, :, 0] >= size / 2).long() + 2 * (centres[two, :,
                                                                         1] >= size / 2).long())
    return centres


def render(objects: Tensor, centres: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Anti-aliased shapes on black, as :func:`make_shapes` draws them: objects (n, 2, 4) (colour,
    shape, size, position indices; -1 for no second shape) at centres (n, 2, 2) in pixels (x, y) ->
    images (n, 3, H, W) in [-1, 1] and each shape's mask (n, 2, H, W). Public so that a lesson can
    redraw a scene with one attribute changed at the same place (lesson 19's perfect keep)."""
    s = size * _SUPERSAMPLE
    coords = (torch.arange(s) + 0.5) / _SUPERSAMPLE  # subpixel centres in pixels
    y, x = coords.view(1, s, 1), coords.view(1, 1, s)
    palette = torch.tensor(list(COLOURS.values()))  # (4, 3)
    radii = torch.tensor([_RADIUS[z] for z in SIZES]) * size / 16
    image = torch.zeros(len(objects), 3, size, size)
    masks = torch.zeros(len(objects), 2, size, size, dtype=torch.bool)
    for j in range(2):
        o, present = objects[:, j], objects[:, j, 0] >= 0
        cx, cy = centres[:, j, 0].view(-1, 1, 1), centres[:, j, 1].view(-1, 1, 1)
        r = radii[o[:, 2].clamp_min(0)].view(-1, 1, 1)
        dx, dy = x - cx, y - cy  # (n, s, s)
        inside = torch.stack([dx ** 2 + dy ** 2 <= r ** 2,  # circle
                              # square (equal area-ish)
                              (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85),
                              # triangle, apex up
                              (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2 * 1.1)])
        cover = inside[o[:, 1].clamp_min(0), torch.arange(len(o))].float() * present.view(-1, 1, 1)
        cover = F.avg_pool2d(cover.unsqueeze(1), _SUPERSAMPLE)  # (n, 1, H, W) in [0, 1]
        colour = palette[o[:, 0].clamp_min(0)].view(-1, 3, 1, 1)
        image = image * (1 - cover) + colour * cover
        masks[:, j] = cover[:, 0] > 0.5
    return image * 2 - 1, masks


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("a handwritten {}", "the digit {}", "a picture of a {}", "a {} written by hand")
#: Every word a digit caption can use.
DIGIT_CAPTION_WORDS = (*DIGIT_WORDS, *" ".join(DIGIT_TEMPLATES).replace("{}", "").split())


@dataclass(frozen=True)
class CaptionedImages:
    """Images with one caption each and the label the caption was made from.

    Shapes: images (N, C, H, W) in [-1, 1]; labels (N,) int64.
    """

    images: Tensor
    captions: tuple[str, ...]
    labels: Tensor
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]


def captioned_mnist(split: str = "train", *, seed: int = 0) -> CaptionedImages:
    """MNIST at 32x32 with templated captions (lesson 09 at full scale; needs the staged data)."""
    digits = load_mnist(split)
    return CaptionedImages(digits.images, digit_captions(digits.labels, seed=seed), digits.labels,
                           f"captioned_mnist_{split}")


def digit_captions(labels: Tensor, *, seed: int = 0) -> tuple[str, ...]:
    """One templated caption per digit label ("a handwritten seven"), the template drawn from
    ``seed``."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, len(DIGIT_TEMPLATES), (len(labels),), generator=g)
    return tuple(DIGIT_TEMPLATES[int(k)].format(DIGIT_WORDS[int(y)]) for k, y in zip(pick, labels))
