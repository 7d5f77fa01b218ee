"""Does an image show what its prompt asked for? (lesson 09)

Three judges, each blind to how the image was made:

* an **attribute classifier** (the course's :class:`~diffuse_edu.models.classifier.Classifier` with
  one group of logits per attribute: colour, shape, size, position) for one-shape prompts;
* the **CLIP-style score** of a miniature CLIP: 100 * max(cos(image, caption), 0)
  (Hessel et al. 2021, Eq. 1, with w = 100 as torchmetrics' CLIPScore);
* **colour binding** for two-shape prompts, read from the pixels: the colour found where the
  relation puts each shape ("a red circle left of a blue square": red on the left, blue on the
  right), so that a swap or a colour leaking onto both shapes is counted, not guessed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffuse_edu.data.captioned import ATTRIBUTE_GROUPS, ATTRIBUTES, palette_rgb
from diffuse_edu.models.classifier import Classifier
from diffuse_edu.models.clip import MiniCLIP


@torch.no_grad()
def predict_attributes(judge: Classifier, images: Tensor,
                       batch_size: int = 1024) -> dict[str, Tensor]:
    """The judge's reading of each image: attribute name -> (N,) index into ATTRIBUTES[name]."""
    logits = torch.cat([judge(b) for b in images.split(batch_size)])
    return {name: part.argmax(1) for name,
            part in zip(ATTRIBUTES, logits.split(ATTRIBUTE_GROUPS, dim=1))}


def attribute_accuracy(judge: Classifier, images: Tensor, wanted: Tensor) -> dict[str, float]:
    """Share of images whose attribute is the one asked for, per attribute, and for all four at
    once.

    Shapes: images (N, 3, S, S); wanted (N, 4) attribute indices (ShapeSet.objects[:, 0]).
    """
    got = predict_attributes(judge, images)
    right = torch.stack([got[name] == wanted[:, j].to(got[name].device) for j,
                         name in enumerate(ATTRIBUTES)], 1)
    return {**{name: right[:, j].float().mean().item() for j, name in enumerate(ATTRIBUTES)},
            "all": right.all(1).float().mean().item()}


@torch.no_grad()
def clip_score(model: MiniCLIP, images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """100 * max(cos(image, caption), 0) per pair. Shapes: images (B, C, S, S), ids and mask (B, L)
    -> (B,)."""
    cos = (model.embed_images(images) * model.embed_texts(ids, mask)).sum(-1)
    return 100 * cos.clamp_min(0)


def region_colour(images: Tensor, region: Tensor, *, bright: float = 0.0) -> Tensor:
    """The palette colour nearest to the mean of the bright pixels (some channel above ``bright``)
    inside ``region``; -1 where the region has none. Shapes: images (N, 3, H, W) in [-1, 1],
    region (N, H, W) bool -> (N,) index into COLOURS."""
    palette = palette_rgb(images.device)  # (K, 3) in [-1, 1]
    lit = region & (images.amax(1) > bright)  # (N, H, W)
    count = lit.sum((1, 2))
    mean = (images * lit[:, None]).sum((2, 3)) / count.clamp_min(1)[:, None]  # (N, 3)
    nearest = torch.cdist(mean, palette).argmin(1)
    return torch.where(count > 0, nearest, -1)


def colour_binding(images: Tensor, objects: Tensor, relation: Tensor) -> dict[str, float]:
    """Shares of two-shape images whose colours sit where the caption puts them.

    "bound": each half shows its own shape's colour; "swapped": the two colours trade places;
    "leaked": both halves show the same one of the two colours; "other": anything else (a colour
    missing or not asked for). Shapes: images (N, 3, H, W); objects (N, 2, 4); relation (N,) >= 0.
    """
    n, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=images.device),
                            torch.arange(w, device=images.device), indexing="ij")
    relation = relation.to(images.device)
    horizontal = (relation < 2).view(n, 1, 1)  # "left of" / "right of"
    low_half = torch.where(horizontal, xs < w / 2, ys < h / 2)  # (N, H, W): left half or top half
    first_low = (relation % 2 == 0).view(n, 1, 1)  # "left of" / "above": the first shape is there
    first = region_colour(images, low_half == first_low)
    second = region_colour(images, low_half != first_low)
    c1, c2 = objects[:, 0, 0].to(images.device), objects[:, 1, 0].to(images.device)
    bound, swapped = (first == c1) & (second == c2), (first == c2) & (second == c1)
    leaked = (first == second) & ((first == c1) | (first == c2))
    return {"bound": bound.float().mean().item(), "swapped": swapped.float().mean().item(),
            "leaked": leaked.float().mean().item(),
            "other": (~(bound | swapped | leaked)).float().mean().item()}
