"""A Diffusion Transformer (lesson 12; Peebles & Xie 2023, "DiT").

The image is cut into p x p patches, each patch becomes a token (a linear map of its p * p * C
pixels), a fixed 2-D sine-cosine position is added, and a stack of transformer blocks runs over
the tokens; a final layer maps each token back to its patch. Time (and a class label) enter every
block through **adaLN**: a small network of the conditioning vector c outputs, per block, a shift,
a scale and a gate for each of the block's two branches (self-attention and MLP)::

    x = x + gate_a * Attention(LayerNorm(x) * (1 + scale_a) + shift_a)
    x = x + gate_m * MLP(LayerNorm(x) * (1 + scale_m) + shift_m)

**adaLN-Zero** (ibid., Sec. 3.2) initialises that network's last layer, and the final layer, at
zero: every gate starts at 0, so a fresh block is the identity and a fresh DiT outputs 0; their
ablation found it trains best. ``DiTConfig.adaln_zero=False`` keeps PyTorch's default
initialisation instead (lesson 12's comparison).

The interface is the U-Net's: ``model(x, t, cond=None)`` -> a prediction shaped like x, trained by
the same :func:`~diffuse_edu.training.loop.train`. Any H and W divisible by the patch size work
(the positions are computed, not learned). Lesson 12's learner writes :func:`patchify`,
:func:`unpatchify` and :func:`dit_block`; :func:`use_dit_pieces` runs a learner's versions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from diffuse_edu.models.attention import multi_head_attention
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.time_embedding import TimeEmbedding


@dataclass(frozen=True)
class DiTConfig:
    """Everything that decides a DiT's shape; saved with every checkpoint."""

    in_channels: int = 1  # image channels in
    out_channels: int | None = None  # channels predicted (default: in_channels)
    patch: int = 2  # p: each token is a p x p patch (the FLOPs lever: tokens = H W / p^2)
    width: int = 64  # token width
    depth: int = 4  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # hidden width of each block's MLP, as a multiple of the width
    num_classes: int | None = None  # class labels; label num_classes means "none" (as the U-Net's)
    adaln_zero: bool = True  # False: default initialisation of the modulation and the final layer


def patchify(x: Tensor, p: int) -> Tensor:
    """Cut images into p x p patches, one token each, in raster order over the patch grid; a
    token's features run over the patch's rows, then its columns, then the channels (DiT's order).

    Shapes: (B, C, H, W) with H, W divisible by p -> (B, H W / p^2, p p C).
    """
    if x.shape[-1] % p or x.shape[-2] % p:
        raise ValueError(f"H and W must be divisible by the patch size {p}, got "
                         f"{tuple(x.shape[-2:])}.")
    return rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)


def unpatchify(tokens: Tensor, p: int, h: int, w: int) -> Tensor:
    """The inverse of :func:`patchify` for an image of h x w pixels.

    Shapes: (B, h w / p^2, p p C) -> (B, C, h, w).
    """
    return rearrange(tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=h // p, w=w // p, p1=p,
                     p2=p)


def position_embedding(h: int, w: int, width: int, *, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sine-cosine positions of an h x w grid of tokens (Peebles & Xie 2023, as MAE's):
    half the width encodes the row, half the column, each as sines and cosines at geometric
    frequencies. Shapes: -> (h w, width)."""
    if width % 4:
        raise ValueError(f"The token width must be divisible by 4 for 2-D positions, got {width}.")
    quarter = width // 4
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(quarter,
                                                         device=device) / quarter)  # (width/4,)
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                indexing="ij")
    parts = [f(pos.flatten()[:, None].float() * freqs) for pos in (rows, cols)
             for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=1)  # (h w, width)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x * (1 + scale) + shift, one (shift, scale) per example broadcast over the tokens.

    Shapes: x (B, N, D), shift and scale (B, D) -> (B, N, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def dit_block(block: DiTBlock, x: Tensor, c: Tensor) -> Tensor:
    """A DiT block's forward pass with adaLN (lesson 12; Peebles & Xie 2023, Fig. 3): the six
    modulation vectors from ``block.modulation(c)`` in the order (shift, scale, gate) for the
    attention branch, then for the MLP branch; each branch normalises x, modulates it, runs
    (``block.attention``, ``block.mlp``), is multiplied by its gate and added to x.

    Shapes: x (B, N, D), c (B, D) -> (B, N, D).
    """
    # (B, D) each
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = block.modulation(c).chunk(6, dim=1)
    x = x + gate_a[:, None] * block.attention(modulate(block.norm1(x), shift_a, scale_a))
    return x + gate_m[:, None] * block.mlp(modulate(block.norm2(x), shift_m, scale_m))


class TokenAttention(nn.Module):
    """Multi-head self-attention over tokens: queries, keys and values from one linear layer, then
    an output projection. Shapes: (B, N, D) -> (B, N, D)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        return self.to_out(multi_head_attention(q, k, v, self.heads))


class DiTBlock(nn.Module):
    """LayerNorm (no affine), self-attention, LayerNorm, MLP, each branch modulated and gated by c.

    ``forward_fn(block, x, c)`` computes the forward pass (:func:`dit_block`, or a learner's).
    Shapes: x (B, N, D), c (B, D) -> (B, N, D).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, zero: bool):
        super().__init__()
        self.forward_fn: Callable[..., Tensor] = dit_block
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attention = TokenAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        if zero:
            # adaLN-Zero: every gate (and shift, scale) starts at 0, so the block starts as the
            # identity
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.forward_fn(self, x, c)


class FinalLayer(nn.Module):
    """LayerNorm, adaLN shift and scale, then a linear map of each token to its patch's pixels."""

    def __init__(self, width: int, out_features: int, *, zero: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_features)
        if zero:  # adaLN-Zero: a fresh DiT outputs 0
            for layer in (self.modulation[1], self.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """The course's Diffusion Transformer: ``model(x, t, cond=None)`` -> a prediction shaped like x.

    ``patchify_fn`` and ``unpatchify_fn`` (:func:`patchify`, :func:`unpatchify`, or a learner's)
    cut the image into tokens and back. Shapes: x (B, in_channels, H, W) with H, W divisible by
    ``config.patch``; t (B,); cond a :class:`Cond` or None -> (B, out_channels, H, W).
    """

    config_class = DiTConfig  # what checkpoints rebuild it from

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.width % cfg.heads:
            raise ValueError(f"width {cfg.width} does not split into {cfg.heads} heads.")
        self.patchify_fn: Callable[..., Tensor] = patchify
        self.unpatchify_fn: Callable[..., Tensor] = unpatchify
        p, c_out = cfg.patch, cfg.out_channels or cfg.in_channels
        self.embed = nn.Linear(p * p * cfg.in_channels, cfg.width)
        self.time_emb = TimeEmbedding(cfg.width)
        self.label_emb = nn.Embedding(cfg.num_classes + 1, cfg.width) if cfg.num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(cfg.width, cfg.heads, cfg.mlp_ratio,
                                             zero=cfg.adaln_zero)
                                    for _ in range(cfg.depth))
        self.final = FinalLayer(cfg.width, p * p * c_out, zero=cfg.adaln_zero)

    def conditioning(self, t: Tensor, cond: Cond | None) -> Tensor:
        """The vector c every block is modulated by: time plus class label (if any). Shapes:
        (B, D)."""
        c = self.time_emb(t)
        if self.label_emb is not None:
            labels = cond.labels if cond is not None and cond.labels is not None else None
            if labels is None:  # unconditional: the extra "no label" class
                labels = torch.full((t.shape[0],), self.config.num_classes, device=t.device)
            c = c + self.label_emb(labels)
        return c

    def forward(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"DiT expects images of shape (B, {cfg.in_channels}, H, W), got "
                             f"{tuple(x.shape)}.")
        h, w = x.shape[-2:]
        tokens = self.embed(self.patchify_fn(x, cfg.patch))  # (B, N, D)
        tokens = tokens + position_embedding(h // cfg.patch, w // cfg.patch, cfg.width,
                                             device=x.device).to(tokens.dtype)
        c = self.conditioning(t, cond)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify_fn(self.final(tokens, c), cfg.patch, h, w)


def use_dit_pieces(model: nn.Module, *, patchify: Callable | None = None,
                   unpatchify: Callable | None = None,
                   block: Callable | None = None) -> dict[str, int]:
    """Make every :class:`DiT` in ``model`` run a learner's ``patchify(x, p)``, ``unpatchify(tokens,
    p, h, w)`` and ``block(block, x, c)``; returns how many modules use each. None leaves a
    piece."""
    counts = {}
    dits = [m for m in model.modules() if isinstance(m, DiT)]
    for name, fn in (("patchify", patchify), ("unpatchify", unpatchify)):
        if fn is not None:
            for m in dits:
                setattr(m, f"{name}_fn", fn)
            counts[name] = len(dits)
    if block is not None:
        blocks = [m for m in model.modules() if isinstance(m, DiTBlock)]
        for m in blocks:
            m.forward_fn = block
        counts["block"] = len(blocks)
    return counts

