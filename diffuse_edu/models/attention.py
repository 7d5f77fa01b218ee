"""Attention (lesson 03; cross-attention for text in lesson 09).

Scaled dot-product attention in several heads (Vaswani et al. 2017, Eq. 1 and Sec. 3.2.2), and the
two blocks a U-Net uses it in: self-attention over the positions of a feature map, and
cross-attention from those positions to a context sequence (text tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, heads: int,
                         mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v in ``heads`` heads of width d = C / heads (Vaswani et al. 2017,
    Eq. 1).

    Shapes: q (B, Lq, C), k and v (B, Lk, C), mask (B, Lk) bool (True = attend) -> (B, Lq, C).
    """
    if q.shape[-1] % heads:
        raise ValueError(f"{q.shape[-1]} channels do not split into {heads} heads.")
    q, k, v = (rearrange(z, "b l (h d) -> b h l d", h=heads) for z in (q, k, v))
    attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Lk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, Lq, d)
    return rearrange(out, "b h l d -> b l (h d)")


def attention_weights(q: Tensor, k: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """The attention probabilities softmax(q k^T / sqrt(d)) per head, to look at (lesson 09).

    Shapes: q (B, Lq, C), k (B, Lk, C), mask (B, Lk) bool -> (B, heads, Lq, Lk), each row sums to 1.
    """
    q, k = (rearrange(z, "b l (h d) -> b h l d", h=heads) for z in (q, k))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, h, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1)


def attention_block(block: SelfAttention, x: Tensor) -> Tensor:
    """A self-attention block's forward pass (lesson 03): x + W_out MHA(GroupNorm(x)), the H * W
    positions as tokens, queries, keys and values from one linear layer, ``block.attend`` in
    ``block.heads`` heads. Shapes: (B, C, H, W) -> same.
    """
    _, _, h, w = x.shape
    tokens = rearrange(block.norm(x), "b c h w -> b (h w) c")  # (B, HW, C)
    q, k, v = block.to_qkv(tokens).chunk(3, dim=-1)
    out = block.to_out(block.attend(q, k, v, block.heads))  # (B, HW, C)
    return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class SelfAttention(nn.Module):
    """x + W_out MHA(GroupNorm(x)) over the H * W positions. Shapes: (B, C, H, W) -> same.

    The output projection starts at zero, so a fresh block is the identity. ``forward_fn(block, x)``
    computes the forward pass (:func:`attention_block`, or a learner's) and ``attend`` the attention
    inside it (:func:`multi_head_attention`, or a learner's: :func:`use_attention`).
    """

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.attend: Callable[..., Tensor] = multi_head_attention
        self.forward_fn: Callable[..., Tensor] = attention_block
        self.norm = nn.GroupNorm(groups, channels)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)  # starts as the identity: x + 0
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fn(self, x)


def cross_attention_block(block: CrossAttention, x: Tensor, context: Tensor,
                          mask: Tensor | None = None) -> Tensor:
    """A cross-attention block's forward pass (lesson 09's exercise): x + W_out MHA(q, k, v), the
    queries from the H * W positions of GroupNorm(x), the keys and values from the context tokens
    (``block.to_kv`` makes both), padded tokens (``mask`` False) excluded, ``block.attend`` in
    ``block.heads`` heads. Shapes: x (B, C, H, W), context (B, L, D), mask (B, L) bool -> (B, C, H,
    W).
    """
    _, _, h, w = x.shape
    q = block.to_q(rearrange(block.norm(x), "b c h w -> b (h w) c"))  # (B, HW, C)
    k, v = block.to_kv(context).chunk(2, dim=-1)  # (B, L, C) each
    out = block.to_out(block.attend(q, k, v, block.heads, mask))  # (B, HW, C)
    return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class CrossAttention(nn.Module):
    """x + W_out MHA(q = GroupNorm(x), k = v = context). Shapes: x (B, C, H, W), context (B, L, D).

    ``forward_fn(block, x, context, mask)`` computes the forward pass
    (:func:`cross_attention_block`, or a learner's: :func:`use_cross_attention_block`) and
    ``attend`` the attention inside it; with ``record`` set, the last call's weights are kept in
    ``weights`` (B, heads, H * W, L) (:func:`recorded_cross_attention`).
    """

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.attend: Callable[..., Tensor] = multi_head_attention
        self.forward_fn: Callable[..., Tensor] = cross_attention_block
        self.record, self.weights = False, None
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(context_dim, 2 * channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.record:  # the weights to look at, from the block's own layers
            q = self.to_q(rearrange(self.norm(x), "b c h w -> b (h w) c"))
            self.weights = attention_weights(q, self.to_kv(context).chunk(2, dim=-1)[0], self.heads,
                                             mask).detach()
        return self.forward_fn(self, x, context, mask)


def use_cross_attention_block(model: nn.Module, forward_fn: Callable[..., Tensor]) -> int:
    """Make every cross-attention block of ``model`` compute its forward pass with
    ``forward_fn(block, x, context, mask)`` (a learner's, lesson 09); returns how many blocks."""
    blocks = [m for m in model.modules() if isinstance(m, CrossAttention)]
    for m in blocks:
        m.forward_fn = forward_fn
    return len(blocks)


def use_attention(model: nn.Module, attend: Callable[..., Tensor]) -> int:
    """Make every attention block of ``model`` run ``attend(q, k, v, heads[, mask])``; returns how
    many.

    Self-attention calls it without a mask; cross-attention with the context's padding mask.
    """
    blocks = [m for m in model.modules() if isinstance(m, (SelfAttention, CrossAttention))]
    for m in blocks:
        m.attend = attend
    return len(blocks)


@contextmanager
def recorded_cross_attention(model: nn.Module) -> Iterator[list[CrossAttention]]:
    """Keep the attention weights of every cross-attention block of ``model`` while inside.

    Example: ``with recorded_cross_attention(unet) as blocks: unet(x, t, cond)``, then
    ``blocks[i].weights`` is (B, heads, H_i * W_i, L) for block i.
    """
    blocks = [m for m in model.modules() if isinstance(m, CrossAttention)]
    for m in blocks:
        m.record = True
    try:
        yield blocks
    finally:
        for m in blocks:
            m.record = False
