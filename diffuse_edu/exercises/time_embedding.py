"""Checkers for lesson 04: sinusoidal time embeddings, and scale-and-shift modulation by them."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, run_naming_crashes
from diffuse_edu.models.time_embedding import ScaleShift, scale_shift, sinusoidal_embedding


def _variants(t: torch.Tensor, dim: int) -> list[Mistake]:
    half = dim // 2
    i = torch.arange(half)
    tf = t.float()[:, None]
    f = torch.exp(-math.log(10_000.0) * i / half)
    f_1000 = torch.exp(-math.log(1_000.0) * i / half)
    f_from_1 = torch.exp(-math.log(10_000.0) * (i + 1) / half)
    sin, cos = torch.sin(tf * f), torch.cos(tf * f)
    interleaved = torch.stack([sin, cos], dim=-1).reshape(t.shape[0], 2 * half)
    f_dim = torch.exp(-math.log(10_000.0) * i / dim)
    f_inv = torch.exp(math.log(10_000.0) * i / half)
    f_to_end = torch.exp(-math.log(10_000.0) * i / max(half - 1, 1))
    return [
        *(
            [
                Mistake(
                    "the exponent divides i by dim / 2 - 1 (frequencies from 1 all the way to "
                    "1/max_period, as torch.linspace(0, 1, ...) gives); the lesson's w_i = "
                    "max_period ** (-i / (dim / 2)) stops one step short of 1/max_period.",
                    torch.cat([torch.sin(tf * f_to_end), torch.cos(tf * f_to_end)], 1),
                )
            ]
            if half > 1
            else []
        ),
        Mistake(
            "sines and cosines are swapped: the first dim/2 columns are the sines.",
            torch.cat([cos, sin], 1),
        ),
        Mistake(
            "sines and cosines are interleaved; put all sines first, then all cosines.", interleaved
        ),
        Mistake(
            "the frequency exponent divides by dim; divide i by dim / 2 (the number of "
            "frequencies).",
            torch.cat([torch.sin(tf * f_dim), torch.cos(tf * f_dim)], 1),
        ),
        Mistake(
            "the frequencies grow; they must fall from 1 to 1/max_period: w_i = max_period ** "
            "(-i / h).",
            torch.cat([torch.sin(tf * f_inv), torch.cos(tf * f_inv)], 1),
        ),
        Mistake(
            "t was divided by T or scaled: use the raw step t in the angles t * w_i.",
            torch.cat([torch.sin(tf / 1000 * f), torch.cos(tf / 1000 * f)], 1),
        ),
        Mistake(
            "the base is 10,000 (max_period, Vaswani et al. 2017), not 1,000.",
            torch.cat([torch.sin(tf * f_1000), torch.cos(tf * f_1000)], 1),
        ),
        Mistake(
            "the angles are t * w_i radians: no factor 2 pi.",
            torch.cat([torch.sin(2 * math.pi * tf * f), torch.cos(2 * math.pi * tf * f)], 1),
            atol=1e-2,
        ),
        Mistake(
            "the first frequency must be 1 (i runs from 0 to dim/2 - 1, not from 1).",
            torch.cat([torch.sin(tf * f_from_1), torch.cos(tf * f_from_1)], 1),
        ),
    ]


def _values(fn: Callable) -> None:
    t = torch.tensor([0, 1, 10, 250, 999])
    want = sinusoidal_embedding(t, 16)
    compare(fn(t.clone(), 16), want, what="sinusoidal_embedding(t = [0, 1, 10, 250, 999], dim = "
                                          "16)",
            mistakes=_variants(t, 16))


def _t_zero(fn: Callable) -> None:
    got = fn(torch.tensor([0]), 8)
    want = torch.tensor([[0.0] * 4 + [1.0] * 4])
    compare(got, want, what="sinusoidal_embedding(t = 0, dim = 8), which is sin(0) = 0 then "
                            "cos(0) = 1")


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
            what="sinusoidal_embedding of float t = [0.5, 12.25] (continuous noise levels, lesson "
                 "07)")


SINUSOIDAL_EMBEDDING = Checker(
    "sinusoidal_embedding", sinusoidal_embedding, [_values, _t_zero, _odd_dim, _float_t],
    hints=(
        ('The frequencies form a geometric sequence that falls from 1 to 1/max_period, one '
         'frequency per sine-cosine pair.'),
        ('Build the angles as a (B, dim // 2) table, t as a column times the frequencies as a row; '
         'sines fill the first half, cosines the second, and an odd dim gets one zero column at '
         'the end.'),
    ),
    see="lesson 04, section 1: sines then cosines of t at geometric frequencies",
)


# ----------------------------------------------------------------------------- scale and shift
def _modulated(block: ScaleShift, h: torch.Tensor, emb: torch.Tensor, kind: str) -> torch.Tensor:
    out = block.proj(torch.nn.functional.silu(emb) if kind == "double_silu" else emb)
    if kind == "interleaved":
        scale, shift = out.reshape(out.shape[0], -1, 2).unbind(-1)
    else:
        scale, shift = out.chunk(2, dim=1)
    scale, shift = scale[:, :, None, None], shift[:, :, None, None]
    return {
        "double_silu": h * (1 + scale) + shift,
        "no_one": h * scale + shift,
        "swapped": h * (1 + shift) + scale,
        "interleaved": h * (1 + scale) + shift,
        "shift_first": (h + shift) * (1 + scale),
        "scale_only": h * (1 + scale),
        "activated": torch.nn.functional.silu(h * (1 + scale) + shift),
        "shift_only": h + shift,
    }[kind]


def _unprojected(block: ScaleShift, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    scale, shift = emb.chunk(2, dim=1)
    return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def _batch_split(block: ScaleShift, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    scale, shift = block.proj(emb).chunk(2, dim=0)
    return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def _scale_shift_case(seed: int, fresh: bool = False) -> Callable:
    def case(fn: Callable) -> None:
        from diffuse_edu.exercises.unet import randomised

        block = ScaleShift(6, 4)
        if not fresh:
            randomised(block, seed)
        g = torch.Generator().manual_seed(seed)
        h, emb = torch.randn(3, 4, 2, 5, generator=g), torch.randn(3, 6, generator=g)
        what = "scale_shift(block, h of shape (3, 4, 2, 5), emb of shape (3, 6))" + (
            " with a freshly built block (its projection is zero)" if fresh else "")
        with torch.no_grad():
            want = scale_shift(block, h, emb)
            h_before = h.clone()
            crashes = [
                (
                    lambda: _unprojected(block, h, emb),
                    ("the embedding goes through block.proj first (emb_dim -> "
                     "2C): its raw features are not the scale and the shift."),
                ),
                (
                    lambda: _batch_split(block, h, emb),
                    ("the projection's output was split along the batch; split "
                     "it along the channels, chunk(2, dim=1)."),
                ),
            ]
            try:
                # the caller's own h
                got = run_naming_crashes(lambda: fn(block, h, emb.clone()), what, crashes)
            except RuntimeError as e:
                if "size" in str(e):
                    raise Mismatch(f"{what} failed with a shape error "
                                   f"({str(e).splitlines()[0][:100]}): scale and shift are (B, "
                                   "C); give them two trailing axes, (B, C, 1, 1), to broadcast "
                                   "over the pixels.") from None
                raise
            kinds = {"no_one": "h * scale + shift wipes the features out while the projection is "
                               "still near zero: use h * (1 + scale) + shift, so that a fresh "
                               "block leaves h unchanged.",
                     "swapped": "scale and shift are swapped: the first C outputs of block.proj "
                                "are the scale, the next C the shift.",
                     "interleaved": "the projection's output splits into two halves (scale, then "
                                    "shift) with chunk(2, dim=1), not into interleaved pairs.",
                     "shift_first": "the shift is added before scaling: scale h first, then add "
                                    "the shift.",
                     "scale_only": "the shift is missing: h * (1 + scale) + shift.",
                     "shift_only": "the scale is missing: only the shift was added; "
                                   "scale-and-shift multiplies h by (1 + scale) too, so that t "
                                   "can also change how strongly each channel speaks.",
                     "double_silu": "SiLU ran on the embedding twice: block.proj already starts "
                                    "with a SiLU.",
                     "activated": "an activation was applied to the result; scale_shift returns h "
                                  "* (1 + scale) + shift as it is (the residual block applies "
                                  "SiLU next)."}
            mistakes = (
                []
                if fresh
                else [Mistake(m, _modulated(block, h, emb, k)) for k, m in kinds.items()]
            )
        if not torch.equal(h, h_before):
            raise Mismatch("scale_shift changed the caller's h in place (mul_ or add_ on h); the "
                           "residual block may still need it: return a new tensor.")
        compare(got, want, what=what, mistakes=mistakes,
                otherwise="a fresh block must return h unchanged: that is why the scale enters as "
                          "1 + scale."
                if fresh else None)
    return case


SCALE_SHIFT = Checker(
    "scale_shift",
    scale_shift,
    [_scale_shift_case(0), _scale_shift_case(1), _scale_shift_case(2, fresh=True)],
    hints=(
        ("block.proj turns the embedding into two numbers per channel; one multiplies the "
         "features, the other is added, and a fresh block (its projection is zero) must leave h "
         "as it is."),
        ("Split the projection's 2C outputs into halves (scale first), shape each (B, C, 1, 1) "
         "so it broadcasts over the pixels, and scale by 1 + scale before adding the shift."),
    ),
    see="lesson 04, section 3: h * (1 + scale) + shift, one pair per channel from the embedding",
)
