"""A miniature CLIP (lesson 09): an image encoder and a text encoder trained to agree.

Radford et al. 2021: both towers map into one embedding space; for a batch of N image-caption
pairs the N x N cosine similarities, times a learned temperature, are trained so that each image
picks its own caption and each caption its own image (a cross-entropy over the rows and one over
the columns, ibid. Fig. 3). Captions repeat in a generated data set, so a pair whose captions
are identical counts as a match too (the target is spread over them).

The trained text tower is what conditions lesson 09's U-Net (frozen, through cross-attention), and
the cosine similarity of an image and a caption is a CLIP-style score of how well they agree
(Hessel et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse_edu.models.text import TextEncoder, TextEncoderConfig


@dataclass(frozen=True)
class MiniCLIPConfig:
    """Both towers of a miniature CLIP; saved with every checkpoint."""

    vocab: tuple[str, ...]  # the tokenizer's words (see text.build_vocab)
    max_len: int = 12  # tokens per caption
    text_width: int = 64  # the text encoder's feature width (the U-Net's context_dim)
    text_layers: int = 2  # transformer blocks
    heads: int = 4  # attention heads of the text encoder
    image_channels: int = 3
    image_size: int = 16  # the image encoder keeps positions: it flattens its last feature map
    image_widths: tuple[int, ...] = (32, 64, 128)  # channels of the conv stages (each halves H, W)
    embed_dim: int = 64  # the shared embedding space

    @property
    def text(self) -> TextEncoderConfig:
        return TextEncoderConfig(self.vocab, self.max_len, self.text_width, self.text_layers,
                                 self.heads)


class ImageEncoder(nn.Module):
    """conv stages -> flatten (where things are matters: "at the top left") -> linear.

    Shapes: (B, C, S, S) -> (B, embed_dim).
    """

    def __init__(self, cfg: MiniCLIPConfig):
        super().__init__()
        layers, width = [], cfg.image_channels
        for w in cfg.image_widths:
            layers += [nn.Conv2d(width, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
                       nn.MaxPool2d(2)]
            width = w
        side = cfg.image_size // 2 ** len(cfg.image_widths)
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(width * side * side, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class MiniCLIP(nn.Module):
    """Image and text towers with a learned temperature; ``forward`` gives the (B, B) logits."""

    config_class = MiniCLIPConfig

    def __init__(self, config: MiniCLIPConfig):
        super().__init__()
        self.config = config
        self.text = TextEncoder(config.text)
        self.image = ImageEncoder(config)
        self.text_proj = nn.Linear(config.text_width, config.embed_dim, bias=False)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # ibid., Sec. 2.5

    def embed_images(self, images: Tensor) -> Tensor:
        """Unit vectors. Shapes: (B, C, S, S) -> (B, embed_dim)."""
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (self.config.image_channels, size, size):
            raise ValueError(f"MiniCLIP expects images (B, {self.config.image_channels}, {size}, "
                             f"{size}), got {tuple(images.shape)}.")
        return F.normalize(self.image(images), dim=-1)

    def embed_texts(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Unit vectors from the ``<eos>`` features. Shapes: ids, mask (B, L) -> (B, embed_dim)."""
        return F.normalize(self.text_proj(TextEncoder.pooled(self.text(ids, mask), mask)), dim=-1)

    def forward(self, images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """Logits image i vs caption j. Shapes: images (B, C, S, S), ids and mask (B, L)
        -> (B, B)."""
        scale = self.log_temperature.clamp(max=math.log(100)).exp()  # ibid.: clipped at 100
        return scale * self.embed_images(images) @ self.embed_texts(ids, mask).T


def contrastive_loss(logits: Tensor, same: Tensor | None = None) -> Tensor:
    """Symmetric cross-entropy of image-to-text and text-to-image (Radford et al. 2021, Fig. 3).

    ``same`` (B, B) bool marks pairs whose captions are identical: the target of each row is spread
    evenly over them (default: the diagonal alone). Shapes: logits (B, B) -> ().
    """
    if same is None:
        same = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    target = same.float() / same.float().sum(1, keepdim=True)  # symmetric, so the columns' too
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

