"""Image sets in one format, the built-in ones, and the scale switch (lesson 00).

Built in (no download, used at quick scale): :func:`load_digits` (scikit-learn's 1,797 8x8
handwritten digits, shown at 16x16) and :func:`load_photos` (its two sample photos). The staged
sets of :mod:`diffuse_edu.data.staged` return the same :class:`ImageSet`: images in [-1, 1],
shape (N, C, H, W). :func:`course_images` is the one place that says which set a scale uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ImageSet:
    """Images with their labels.

    Shapes: images (N, C, H, W) float32 in [-1, 1]; labels (N,) int64.
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return self.images.shape[0]

DIGIT_CLASSES = tuple(str(i) for i in range(10))
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")

# ----------------------------------------------------------------------------- helpers
def to_unit_range(x: Tensor | np.ndarray, max_value: float = 255.0) -> Tensor:
    """Map pixel values in [0, max_value] to float32 in [-1, 1]."""
    x = x if isinstance(x,
                        Tensor) else torch.from_numpy(np.array(x))  # copy: inputs may be read-only
    return x.to(torch.float32) / max_value * 2.0 - 1.0


def to_uint8(x: Tensor) -> np.ndarray:
    """Images in [-1, 1], (N, C, H, W), to uint8 (N, H, W) for one channel or (N, H, W, C)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return (x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)).numpy()


def resize(images: Tensor, size: int) -> Tensor:
    """Resize square images to ``size`` (bilinear, antialiased when shrinking).

    Shapes: (N, C, H, W) -> (N, C, size, size).
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < images.shape[-1])


# ----------------------------------------------------------------------------- built-in sets
#: The last this-many digits form the held-out split (sklearn's digits come with no split).
DIGITS_TEST = 297


def load_digits(split: str = "all", *, size: int = 16) -> ImageSet:
    """scikit-learn's 8x8 digits (values 0..16), upsampled to ``size`` x ``size``.

    ``split``: "all" (1,797), "train" (all but the last :data:`DIGITS_TEST`) or "test" (those).
    """
    from sklearn.datasets import load_digits as sk_digits

    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}.")
    raw = sk_digits()
    images = torch.as_tensor(raw.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(raw.target, dtype=torch.int64)
    part = {"all": slice(None), "train": slice(None, -DIGITS_TEST),
            "test": slice(-DIGITS_TEST, None)}[split]
    return ImageSet(images[part].clamp(0, 1) * 2 - 1, labels[part], DIGIT_CLASSES, "digits")


def load_photos(*, size: int = 64) -> ImageSet:
    """scikit-learn's two sample photos, centre-cropped to a square and resized.

    Shapes: images (2, 3, size, size).
    """
    from sklearn.datasets import load_sample_images

    raw = load_sample_images()
    crops = []
    for img in raw.images:  # (H, W, 3) uint8
        h, w, _ = img.shape
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        crop = to_unit_range(img[top:top + s, left:left + s]).permute(2, 0, 1)[None]  # (1, 3, s, s)
        crops.append(resize(crop, size))
    names = tuple(Path(f).stem for f in raw.filenames)
    return ImageSet(torch.cat(crops), torch.arange(len(crops)), names, "photos")
