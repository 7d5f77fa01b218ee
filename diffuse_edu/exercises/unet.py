"""Checker for lesson 03: multi-head scaled dot-product attention."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange

from diffuse_edu.exercises import Checker, Mistake, compare
from diffuse_edu.models.attention import multi_head_attention


def _explicit(q, k, v, heads, *, scale=True, dim=-1, split="b l (h d) -> b h l d"):
    """Attention written out, with switches for the usual mistakes."""
    q, k, v = (rearrange(z, split, h=heads) for z in (q, k, v))
    logits = q @ k.transpose(-1, -2)
    if scale:
        logits = logits / q.shape[-1] ** 0.5
    out = logits.softmax(dim=dim) @ v
    return rearrange(out, "b h l d -> b l (h d)")


def _case(heads: int, lq: int, lk: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, lq, 8, generator=g), torch.randn(2, lk, 8, generator=g),
            torch.randn(2, lk, 8, generator=g), heads)


def _mistakes(q, k, v, heads) -> list[Mistake]:
    c = q.shape[-1]
    return [
        Mistake("the logits are not scaled: divide q k^T by sqrt(d), d = channels per head.",
                _explicit(q, k, v, heads, scale=False)),
        Mistake("you scaled by sqrt(C) (all channels); use sqrt(d) with d = C / heads.",
                _explicit(q * (heads ** -0.5), k, v, heads)),
        Mistake("the softmax runs over the queries; it must run over the keys (the last axis).",
                _explicit(q, k, v, heads, dim=-2)),
        Mistake("the heads interleave channels: split C as (heads, d) with heads outermost, "
                "rearrange(q, 'b l (h d) -> b h l d', h=heads).",
                _explicit(q, k, v, heads, split="b l (d h) -> b h l d")),
        Mistake("all channels form one head: split them into `heads` heads of C / heads each.",
                _explicit(q, k, v, 1)),
        Mistake("that is q k^T v without the softmax's normalisation.",
                rearrange((rearrange(q, "b l (h d) -> b h l d", h=heads)
                           @ rearrange(k, "b l (h d) -> b h l d", h=heads).transpose(-1, -2)
                           / (c // heads) ** 0.5).exp()
                          @ rearrange(v, "b l (h d) -> b h l d", h=heads), "b h l d -> b l (h d)")),
    ]


def _self_attention(fn: Callable) -> None:
    for heads in (1, 2, 4):
        q, k, v, h = _case(heads, 6, 6, heads)
        want = multi_head_attention(q, k, v, h)
        compare(fn(q.clone(), k.clone(), v.clone(), h), want, mistakes=_mistakes(q, k, v, h),
                what=f"attention over 6 positions, 8 channels, {heads} head(s)")


def _cross_attention(fn: Callable) -> None:
    q, k, v, h = _case(2, 5, 3, 11)
    want = multi_head_attention(q, k, v, h)
    compare(fn(q, k, v, h), want, mistakes=_mistakes(q, k, v, h),
            what="cross-attention: 5 queries, 3 keys and values, 2 heads (Lq != Lk)")


def _permutation(fn: Callable) -> None:
    q, k, v, h = _case(4, 7, 7, 5)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    want = fn(q, k, v, h)[:, perm]
    compare(fn(q[:, perm], k[:, perm], v[:, perm], h), want,
            what="attention with the positions permuted (the output must be permuted the same way)")


MULTI_HEAD_ATTENTION = Checker(
    "multi_head_attention", multi_head_attention, [_self_attention, _cross_attention, _permutation],
    hint="split channels into heads with rearrange(z, 'b l (h d) -> b h l d', h=heads), then "
         "softmax(q @ k^T / sqrt(d), dim=-1) @ v, and merge the heads back.",
)
