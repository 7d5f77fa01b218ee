"""Checker for lesson 04: sinusoidal time embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.models.time_embedding import sinusoidal_embedding


def _variants(t: torch.Tensor, dim: int) -> list[Mistake]:
    half = dim // 2
    i = torch.arange(half)
    tf = t.float()[:, None]
    f = torch.exp(-math.log(10_000.0) * i / half)
    sin, cos = torch.sin(tf * f), torch.cos(tf * f)
    interleaved = torch.stack([sin, cos], dim=-1).reshape(t.shape[0], 2 * half)
    f_dim = torch.exp(-math.log(10_000.0) * i / dim)
    f_inv = torch.exp(math.log(10_000.0) * i / half)
    return [
        Mistake("sines and cosines are swapped: the first dim/2 columns are the sines.",
                torch.cat([cos, sin], 1)),
        Mistake("sines and cosines are interleaved; put all sines first, then all cosines.",
                interleaved),
        Mistake("the frequency exponent divides by dim; divide i by dim / 2 (the number of "
                "frequencies).", torch.cat([torch.sin(tf * f_dim), torch.cos(tf * f_dim)], 1)),
        Mistake("the frequencies grow; they must fall from 1 to 1/max_period: w_i = max_period ** (-i / h).",
                torch.cat([torch.sin(tf * f_inv), torch.cos(tf * f_inv)], 1)),
        Mistake("t was divided by T or scaled: use the raw step t in the angles t * w_i.",
                torch.cat([torch.sin(tf / 1000 * f), torch.cos(tf / 1000 * f)], 1)),
    ]


def _values(fn: Callable) -> None:
    t = torch.tensor([0, 1, 10, 250, 999])
    want = sinusoidal_embedding(t, 16)
    compare(fn(t.clone(), 16), want, what="sinusoidal_embedding(t = [0, 1, 10, 250, 999], dim = 16)",
            mistakes=_variants(t, 16))


def _t_zero(fn: Callable) -> None:
    got = fn(torch.tensor([0]), 8)
    want = torch.tensor([[0.0] * 4 + [1.0] * 4])
    compare(got, want, what="sinusoidal_embedding(t = 0, dim = 8), which is sin(0) = 0 then cos(0) = 1")


def _odd_dim(fn: Callable) -> None:
    t = torch.tensor([3, 40])
    got = fn(t, 7)
    if isinstance(got, torch.Tensor) and got.shape != (2, 7):
        raise Mismatch(f"dim = 7 gave shape {tuple(got.shape)}; an odd dim keeps 3 sines and 3 "
                       "cosines and pads one zero column at the end.")
    compare(got, sinusoidal_embedding(t, 7), what="sinusoidal_embedding with odd dim = 7")


def _float_t(fn: Callable) -> None:
    t = torch.tensor([0.5, 12.25])
    compare(fn(t, 6), sinusoidal_embedding(t, 6),
            what="sinusoidal_embedding of float t = [0.5, 12.25] (continuous noise levels, lesson 07)")


SINUSOIDAL_EMBEDDING = Checker(
    "sinusoidal_embedding", sinusoidal_embedding, [_values, _t_zero, _odd_dim, _float_t],
    hint="freqs = exp(-log(max_period) * arange(dim // 2) / (dim // 2)); angles = t[:, None] * "
         "freqs; cat([sin(angles), cos(angles)], dim=1), padded with a zero column for odd dim.",
)
