"""Attention (lesson 03; cross-attention for text in lesson 09).

Scaled dot-product attention in several heads (Vaswani et al. 2017, Eq. 1 and Sec. 3.2.2), and the
two blocks a U-Net uses it in: self-attention over the positions of a feature map, and
cross-attention from those positions to a context sequence (text tokens).
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, heads: int,
                         mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v in ``heads`` heads of width d = C / heads (Vaswani et al. 2017, Eq. 1).

    Shapes: q (B, Lq, C), k and v (B, Lk, C), mask (B, Lk) bool (True = attend) -> (B, Lq, C).
    """
    if q.shape[-1] % heads:
        raise ValueError(f"{q.shape[-1]} channels do not split into {heads} heads.")
    q, k, v = (rearrange(z, "b l (h d) -> b h l d", h=heads) for z in (q, k, v))
    attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Lk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, Lq, d)
    return rearrange(out, "b h l d -> b l (h d)")


class SelfAttention(nn.Module):
    """x + W_out MHA(GroupNorm(x)) over the H * W positions. Shapes: (B, C, H, W) -> same."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.to_qkv = nn.Linear(channels, 3 * channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)  # starts as the identity: x + 0
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")  # (B, HW, C)
        q, k, v = self.to_qkv(tokens).chunk(3, dim=-1)
        out = self.to_out(multi_head_attention(q, k, v, self.heads))  # (B, HW, C)
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)


class CrossAttention(nn.Module):
    """x + W_out MHA(q = GroupNorm(x), k = v = context). Shapes: x (B, C, H, W), context (B, L, D)."""

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_kv = nn.Linear(context_dim, 2 * channels)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        _, _, h, w = x.shape
        q = self.to_q(rearrange(self.norm(x), "b c h w -> b (h w) c"))  # (B, HW, C)
        k, v = self.to_kv(context).chunk(2, dim=-1)  # (B, L, C) each
        out = self.to_out(multi_head_attention(q, k, v, self.heads, mask))
        return x + rearrange(out, "b (h w) c -> b c h w", h=h, w=w)
