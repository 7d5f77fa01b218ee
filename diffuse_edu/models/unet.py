"""A U-Net denoiser from scratch (lesson 03), conditioned on time (lesson 04).

The network follows Ho et al. 2020 (App. B) with the refinements of Dhariwal & Nichol 2021:

* residual blocks: GroupNorm -> SiLU -> 3x3 conv, twice, plus a (1x1) shortcut; the embedding
  (time, and a class label from lesson 08) enters each block by scale-and-shift;
* an encoder that halves the resolution between levels and a decoder that doubles it, with a
  **skip connection** from every encoder stage to its mirror in the decoder;
* multi-head self-attention at the low resolutions (Vaswani et al. 2017), and cross-attention to
  a context sequence (text tokens, lesson 09) where ``UNetConfig.context_dim`` is set.

A denoiser is a plain callable ``model(x, t, cond=None)`` returning a prediction shaped like x.

Lesson 03's learner writes :func:`residual_block` and :func:`unet_forward` (and lesson 04's
``scale_shift``); :func:`use_pieces` makes a built network run the learner's versions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse_edu.models.attention import CrossAttention, SelfAttention, use_attention
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.time_embedding import ScaleShift, TimeEmbedding


@dataclass(frozen=True)
class UNetConfig:
    """Everything that decides a U-Net's shape; saved with every checkpoint."""

    in_channels: int = 1  # image channels in
    out_channels: int | None = None  # channels predicted (default: in_channels)
    channels: tuple[int, ...] = (16, 32, 64)  # width per level; resolution halves between levels
    blocks_per_level: int = 1  # residual blocks per level, as many in the decoder as in the encoder
    # (the decoder has none at the lowest level, where the middle block works)
    attention_levels: tuple[int, ...] = (2,)  # levels (0 = full resolution) with self-attention
    heads: int = 4  # attention heads
    groups: int = 8  # GroupNorm groups
    dropout: float = 0.0  # dropout inside residual blocks
    skip_connections: bool = True  # False: the decoder sees only the upsampled bottleneck
    time_embedding: bool = True  # False: the network is not told t (lesson 04's ablation)
    emb_dim: int | None = None  # embedding width (default: 4 * channels[0])
    num_classes: int | None = None  # class labels (lesson 08); label num_classes means "none"
    context_dim: int | None = None  # width of a context sequence for cross-attention (lesson 09)

    @property
    def embedding_width(self) -> int:
        return self.emb_dim or 4 * self.channels[0]


def residual_block(block: ResBlock, x: Tensor, emb: Tensor | None = None) -> Tensor:
    """A residual block's forward pass (lesson 03), from its layers (He et al. 2016; Ho et al. 2020,
    App. B): GroupNorm, SiLU, conv; GroupNorm, scale-and-shift by the embedding, SiLU, dropout,
    conv; plus the shortcut of x.

    Shapes: x (B, C_in, H, W), emb (B, D) or None -> (B, C_out, H, W).
    """
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.norm2(h)
    if block.scale_shift is not None:
        h = block.scale_shift(h, emb)
    h = block.conv2(block.dropout(F.silu(h)))
    return h + block.shortcut(x)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; GroupNorm, scale-and-shift by the embedding, SiLU, conv; + shortcut.

    ``forward_fn(block, x, emb)`` computes the forward pass (:func:`residual_block`, or a
    learner's). Shapes: x (B, C_in, H, W), emb (B, D) or None -> (B, C_out, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None, groups: int, dropout: float):
        super().__init__()
        self.forward_fn: Callable[..., Tensor] = residual_block
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.scale_shift = ScaleShift(emb_dim, out_ch) if emb_dim else None
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.forward_fn(self, x, emb)


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv. Shapes: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution (nearest) then a 3x3 conv. Shapes: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.Module):
    """One residual block, optionally followed by self- and cross-attention."""

    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, emb_dim: int | None, attend: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.groups, cfg.dropout)
        self.attn = SelfAttention(out_ch, cfg.heads, cfg.groups) if attend else None
        self.cross = (CrossAttention(out_ch, cfg.context_dim, cfg.heads, cfg.groups)
                      if attend and cfg.context_dim else None)

    def forward(self, x: Tensor, emb: Tensor | None, cond: Cond | None) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None and cond is not None and cond.context is not None:
            x = self.cross(x, cond.context, cond.context_mask)
        return x


class UNet(nn.Module):
    """The course's denoiser: ``model(x, t, cond=None)`` -> a prediction shaped like x.

    Level i works at resolution H / 2**i with ``channels[i]`` features. The encoder runs
    ``blocks_per_level`` stages per level and hands its output to the decoder's level i through a
    skip connection before halving the resolution; the decoder doubles the resolution, concatenates
    the skip and runs as many stages (Ronneberger et al. 2015, Fig. 1).

    Shapes: x (B, in_channels, H, W) with H and W divisible by 2 ** (levels - 1); t (B,) integer
    steps (or float noise levels); cond a :class:`Cond` or None -> (B, out_channels, H, W).
    """

    config_class = UNetConfig  # what checkpoints rebuild it from

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        self.forward_fn: Callable[..., Tensor] = unet_forward
        ch, n = cfg.channels, cfg.blocks_per_level
        emb_dim = cfg.embedding_width if (cfg.time_embedding or cfg.num_classes) else None
        self.time_emb = TimeEmbedding(emb_dim) if cfg.time_embedding else None
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.stem = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        def stages(level: int, first_in: int) -> nn.ModuleList:
            attend = level in cfg.attention_levels
            return nn.ModuleList(Stage(first_in if i == 0 else ch[level], ch[level], cfg, emb_dim,
                                       attend)
                                 for i in range(n))

        self.encoder = nn.ModuleList(stages(i, ch[max(i - 1, 0)]) for i in range(len(ch)))
        self.downsamples = nn.ModuleList(Downsample(c) for c in ch[:-1])
        self.middle = Stage(ch[-1], ch[-1], cfg, emb_dim, attend=True)
        self.upsamples = nn.ModuleList(Upsample(c) for c in ch[1:])
        self.decoder = nn.ModuleList(
            stages(i,
                   ch[i + 1] + (ch[i] if cfg.skip_connections else 0)) for i in range(len(ch) - 1))
        self.out = nn.Sequential(nn.GroupNorm(cfg.groups, ch[0]), nn.SiLU(),
                                 nn.Conv2d(ch[0], cfg.out_channels or cfg.in_channels, 3,
                                           padding=1))

    def embed(self, t: Tensor, cond: Cond | None) -> Tensor | None:
        """The vector every residual block is modulated by: time plus class label (if any)."""
        emb = self.time_emb(t) if self.time_emb is not None else None
        if self.label_emb is not None:
            labels = cond.labels if cond is not None and cond.labels is not None else None
            if labels is None:  # unconditional: the extra "no label" class
                labels = torch.full((t.shape[0],), self.config.num_classes, device=t.device)
            lab = self.label_emb(labels)
            emb = lab if emb is None else emb + lab
        return emb

    def _check_input(self, x: Tensor) -> None:
        levels, c = len(self.config.channels), self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"UNet expects images of shape (B, {c}, H, W), got {tuple(x.shape)}.")
        if x.shape[-1] % 2 ** (levels - 1) or x.shape[-2] % 2 ** (levels - 1):
            raise ValueError(f"H and W must be divisible by {2 ** (levels - 1)} for {levels} "
                             f"levels, got {tuple(x.shape[-2:])}.")

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        self._check_input(x)
        return self.forward_fn(self, x, t, cond)


def unet_forward(unet: UNet, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
    """The U-Net's forward pass (lesson 03): stem, encoder levels (keeping each level's output for
    its skip before downsampling), middle, decoder levels from the bottom up (upsample, concatenate
    the skip after the upsampled features, run the stages), output head.

    Shapes: x (B, in_channels, H, W), t (B,) -> (B, out_channels, H, W).
    """
    emb = unet.embed(t, cond)
    h, skips = encode(unet, x, emb, cond)
    h = unet.middle(h, emb, cond)
    for level in reversed(range(len(unet.decoder))):
        h = unet.upsamples[level](h)
        if unet.config.skip_connections:
            h = torch.cat([h, skips[level]], dim=1)  # (B, C_up + C_skip, H, W)
        for block in unet.decoder[level]:
            h = block(h, emb, cond)
    return unet.out(h)


def encode(unet: UNet, x: Tensor, emb: Tensor | None,
           cond: Cond | None) -> tuple[Tensor, list[Tensor]]:
    """The stem and the encoder: the lowest-resolution features and the skip stack (one map per
    level but the last, full resolution first), as :func:`unet_forward` runs them."""
    return encoder_levels(unet, unet.stem(x), emb, cond)


def encoder_levels(unet: UNet, h: Tensor, emb: Tensor | None,
                   cond: Cond | None) -> tuple[Tensor, list[Tensor]]:
    """The encoder's levels on features ``h`` the stem made (a ControlNet-style copy adds its hint
    in between, lesson 19): the lowest-resolution features and the skip stack, as :func:`encode`."""
    skips = []
    for level, blocks in enumerate(unet.encoder):
        for block in blocks:
            h = block(h, emb, cond)
        if level < len(unet.downsamples):
            skips.append(h)
            h = unet.downsamples[level](h)
    return h, skips


def use_pieces(model: nn.Module, *, forward: Callable | None = None,
               residual_block: Callable | None = None,
               attention: Callable | None = None, attention_block: Callable | None = None,
               scale_shift: Callable | None = None,
               time_features: Callable | None = None) -> dict[str, int]:
    """Make ``model`` run a learner's pieces wherever it has them; returns how many modules use
    each.

    ``forward(unet, x, t, cond)`` for every :class:`UNet`; ``residual_block(block, x, emb)`` for
    every :class:`ResBlock`; ``attention(q, k, v, heads[, mask])`` in every attention block;
    ``attention_block(block, x)`` for every self-attention block; ``scale_shift(block, h, emb)``
    for every :class:`ScaleShift`; ``time_features(t, dim)`` (lesson 04's sinusoidal embedding) in
    every :class:`TimeEmbedding`. A piece left as None is not changed.
    """
    counts = {}
    for name, fn, kind in (("forward", forward, UNet), ("residual_block", residual_block, ResBlock),
                           ("attention_block", attention_block, SelfAttention),
                           ("scale_shift", scale_shift, ScaleShift)):
        if fn is not None:
            mods = [m for m in model.modules() if isinstance(m, kind)]
            for m in mods:
                m.forward_fn = fn
            counts[name] = len(mods)
    if attention is not None:
        counts["attention"] = use_attention(model, attention)
    if time_features is not None:
        mods = [m for m in model.modules() if isinstance(m, TimeEmbedding)]
        for m in mods:
            m.features = time_features
        counts["time_features"] = len(mods)
    return counts


def add_class(unet: UNet, *, like: int, offset: float = 0.0,
              generator: torch.Generator | None = None) -> UNet:
    """A copy of a class-conditional ``unet`` with one more class (lesson 13: a new subject).

    The new label is ``num_classes`` (the old null label's index). Its embedding starts at class
    ``like``'s, moved ``offset`` times the mean distance between two classes' embeddings in a random
    direction (drawn with ``generator``): with ``offset = 0`` the new label is ``like`` exactly;
    with an offset it is a label of its own near ``like``, as DreamBooth names its subject with a
    rare word beside the class word (Ruiz et al. 2023, Sec. 3.2), so that fine-tuning can tell the
    two apart. The null label ("no class") moves to ``num_classes + 1`` with its embedding. Every
    other weight is copied. Shapes: label embedding (n + 1, D) -> (n + 2, D).
    """
    n = unet.config.num_classes
    if n is None:
        raise ValueError("add_class needs a class-conditional U-Net (UNetConfig.num_classes set).")
    if not 0 <= like < n:
        raise ValueError(f"like must be one of the model's classes 0..{n - 1}, got {like}.")
    if not offset >= 0:
        raise ValueError("offset is a distance (in units of the spacing between classes), got "
                         f"{offset}.")
    bigger = UNet(replace(unet.config, num_classes=n + 1)).to(next(unet.parameters()).device)
    state = {k: v for k, v in unet.state_dict().items() if k != "label_emb.weight"}
    old = unet.label_emb.weight.detach()
    new = old[like].clone()
    if offset:
        spacing = torch.pdist(old[:n].float()).mean()  # the mean distance
        # between two classes' embeddings
        direction = torch.randn(old.shape[1], generator=generator).to(old)
        new += offset * spacing * direction / direction.norm()
    bigger.load_state_dict(state, strict=False)
    with torch.no_grad():
        bigger.label_emb.weight.copy_(torch.cat([old[:n], new[None], old[n:n + 1]]))
    if getattr(unet, "predicts", None) is not None:
        bigger.predicts = unet.predicts
    return bigger.train(unet.training)
