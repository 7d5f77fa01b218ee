"""Prompt-to-prompt (lesson 19; Hertz et al. 2022): edit a generated image by its prompt while
keeping its layout, by injecting the source prompt's cross-attention maps.

Sample the source prompt while recording every cross-attention block's attention probabilities
(:func:`recording_attention`); then sample the edited prompt from the same noise, each block using
the recorded probabilities in place of its own for the first part of the steps
(:func:`injecting_attention`), with the edited prompt's values. The maps decide *where* each word
acts, the values *what* it paints (Hertz et al. 2022, Sec. 3.1-3.2, Eq. 1 and Alg. 1).

Hooks work from outside on lesson 09's :class:`~diffuse_edu.models.attention.CrossAttention`
blocks (their ``forward_fn``); the U-Net is not changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from einops import rearrange
from torch import Tensor, nn

from diffuse_edu.models.attention import CrossAttention, attention_weights


def injected_cross_attention(block: CrossAttention, x: Tensor, context: Tensor,
                             mask: Tensor | None, weights: Tensor) -> Tensor:
    """A cross-attention block's forward pass with given attention probabilities (lesson 19's
    exercise; Hertz et al. 2022, Sec. 3.2): the values come from this call's ``context`` (the
    edited prompt) through ``block.to_kv``, the probabilities are ``weights`` (recorded while
    sampling the source prompt, per head, padding already at zero); the heads' outputs are joined,
    projected by ``block.to_out`` and added to x, as in the block's own forward pass.

    Shapes: x (B, C, H, W), context (B, L, D), mask (B, L) bool or None, weights (B, heads, H * W,
    L) -> (B, C, H, W).
    """
    _, _, h, w = x.shape
    _, v = block.to_kv(context).chunk(2, dim=-1)  # (B, L, C)
    v = rearrange(v, "b l (n d) -> b n l d", n=block.heads)
    out = rearrange(weights.to(v) @ v, "b n q d -> b q (n d)")  # (B, HW, C)
    return x + rearrange(block.to_out(out), "b (h w) c -> b c h w", h=h, w=w)


def cross_attention_blocks(model: nn.Module) -> list[CrossAttention]:
    """The cross-attention blocks of ``model``, in module order."""
    blocks = [m for m in model.modules() if isinstance(m, CrossAttention)]
    if not blocks:
        raise ValueError("this model has no cross-attention block: prompt-to-prompt needs a "
                         "text-conditioned U-Net (lesson 09's, UNetConfig.context_dim set).")
    return blocks


@contextmanager
def _forward_fns(blocks: list[CrossAttention], fns: list[Callable]) -> Iterator[None]:
    """Each block runs its ``fns`` entry while inside; its own forward pass is put back on leaving
    (an error included)."""
    saved = [b.forward_fn for b in blocks]
    for b, fn in zip(blocks, fns):
        b.forward_fn = fn
    try:
        yield
    finally:
        for b, own in zip(blocks, saved):
            b.forward_fn = own


@contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[list[Tensor]]]:
    """While inside, every call of each cross-attention block of ``model`` appends its attention
    probabilities (B, heads, H * W, L) to that block's list: ``with recording_attention(unet) as
    maps:`` then ``maps[i][k]`` is block i's k-th call (one per network evaluation)."""
    blocks = cross_attention_blocks(model)
    maps: list[list[Tensor]] = [[] for _ in blocks]
    saved = [b.forward_fn for b in blocks]

    def recorder(store: list[Tensor], inner: Callable) -> Callable:
        def forward(block, x, context, mask=None):
            q = block.to_q(rearrange(block.norm(x), "b c h w -> b (h w) c"))
            k = block.to_kv(context).chunk(2, dim=-1)[0]
            store.append(attention_weights(q, k, block.heads, mask).detach())
            return inner(block, x, context, mask)
        return forward

    with _forward_fns(blocks, [recorder(store, inner) for store, inner in zip(maps, saved)]):
        yield maps


@contextmanager
def injecting_attention(model: nn.Module, maps: list[list[Tensor]], share: float, *,
                        inject: Callable[..., Tensor] = injected_cross_attention,
                        cond_half: bool = False) -> Iterator[dict]:
    """While inside, each cross-attention block of ``model`` runs ``inject(block, x, context,
    mask, weights)`` with the recorded ``maps`` of its first ``share`` of calls (the first part of
    the sampling steps: every step calls each block equally often), and its own forward pass after.
    Yields a dict counting the calls that were injected and those that were not.

    ``maps`` as :func:`recording_attention` gives them, from a run with the same sampler, steps and
    batch size.

    ``cond_half``: the batch is a guided one, the conditions then as many nulls
    (:func:`~diffuse_edu.diffusion.guidance.pair_with_null`); ``inject`` runs on the first half
    only, with the first half of the maps, and the unconditional half keeps its own forward pass,
    as Hertz et al.'s code does (the null prompt's maps are not the source's words')."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share is the fraction of the steps injected, in [0, 1]; got {share}.")
    blocks = cross_attention_blocks(model)
    if len(maps) != len(blocks):
        raise ValueError(f"{len(maps)} recorded blocks for a model of {len(blocks)}: record on the "
                         "same model.")
    saved = [b.forward_fn for b in blocks]
    counts = {"injected": 0, "own": 0}

    def injector(store: list[Tensor], own: Callable) -> Callable:
        calls, until = [0], round(share * len(store))

        def forward(block, x, context, mask=None):
            k = calls[0]
            calls[0] += 1
            if k < until:
                if store[k].shape[0] != x.shape[0]:
                    raise ValueError(f"recorded maps for a batch of {store[k].shape[0]}, injected "
                                     f"into one of {x.shape[0]}: sample the edit as the source.")
                counts["injected"] += 1
                if not cond_half:
                    return inject(block, x, context, mask, store[k])
                if x.shape[0] % 2:
                    raise ValueError(f"cond_half needs a guided batch (conditions then nulls), got "
                                     f"an odd batch of {x.shape[0]}.")
                n = x.shape[0] // 2
                cond_mask, null_mask = (None, None) if mask is None else (mask[:n], mask[n:])
                return torch.cat([inject(block, x[:n], context[:n], cond_mask, store[k][:n]),
                                  own(block, x[n:], context[n:], null_mask)])
            counts["own"] += 1
            return own(block, x, context, mask)
        return forward

    with _forward_fns(blocks, [injector(store, own) for store, own in zip(maps, saved)]):
        yield counts


def colour_layout(images: Tensor, colours: Tensor, palette: Tensor, *,
                  min_pixels: int = 3) -> dict[str, Tensor]:
    """Where each asked colour's shape is, for images of several shapes told apart by colour: the
    pixels lit (some channel above 0; shapes are drawn on black, -1) whose nearest ``palette``
    colour is ``colours[:, k]`` are shape k's. Its bounding box's centre (x, y) in pixels (the
    image centre where it has none) and extent (width, height) in pixels, its area (pixels), and
    whether it is found (at least ``min_pixels`` pixels). The box, not the centroid: a triangle's
    centroid sits r/3 below its box's centre (the data draws every shape centred in its box), so a
    shape edit would move the centroid of a shape kept in place.
    Shapes: images (B, 3, H, W) in [-1, 1], colours (B, K) indices into palette, palette (P, 3) in
    [-1, 1] (lesson 09's: ``data.captioned.palette_rgb()``) -> centre (B, K, 2),
    extent (B, K, 2), area (B, K), found (B, K) bool."""
    b, _, h, w = images.shape
    pixels = rearrange(images, "b c h w -> (b h w) c")
    nearest = torch.cdist(pixels, palette.to(pixels)).argmin(1).view(b, 1, h, w)  # (B, 1, H, W)
    colours = colours.to(images.device)
    m = (images.amax(1) > 0)[:, None] & (nearest == colours[:, :, None, None])  # (B, K, H, W)
    area = m.float().sum((2, 3))  # (B, K)
    box = []
    for axis, n in ((2, w), (3, h)):  # x: any row lit in that column; y: any column in that row
        lit = m.any(axis)  # (B, K, n)
        idx = torch.arange(n, device=m.device, dtype=images.dtype)
        lo = torch.where(lit, idx, torch.full_like(idx, n)).amin(-1)
        hi = torch.where(lit, idx, torch.full_like(idx, -1)).amax(-1)
        box.append((lo, hi))
    some = area > 0
    centre = torch.stack([(lo + hi) / 2 for lo, hi in box], -1)
    centre = torch.where(some[..., None], centre,
                         torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=images.dtype,
                                      device=m.device))
    extent = torch.stack([(hi - lo + 1).clamp_min(0) for lo, hi in box], -1)
    extent = torch.where(some[..., None], extent, torch.zeros_like(extent))
    return {"centre": centre, "extent": extent, "area": area, "found": area >= min_pixels}


def colour_layout_change(a: Tensor, colours_a: Tensor, b: Tensor, colours_b: Tensor,
                         palette: Tensor, *, min_pixels: int = 3) -> dict[str, Tensor]:
    """How far each shape moved from image a to image b, each shape found by its colour in each
    image (:func:`colour_layout`; a colour edit gives shape k a new colour in b): its box centre's
    shift (pixels), its size change |log((box area_b + 1) / (box area_a + 1))| (box area: width x
    height), and whether both images show it. Shapes: a, b (B, 3, H, W); colours_a, colours_b
    (B, K); palette (P, 3) -> each (B, K).

    For two shapes (K = 2) also the colour-blind geometry, how far the *places* moved whichever
    colour sits in them: "placed" (B,), the mean shift of the two box centres under the better of
    the two matchings (shape 0 to 0 and 1 to 1, or crossed); "placed_size" (B,), the mean size
    change under that matching; and "swapped" (B,) bool, where the crossed one is better (the two
    colours traded places: colour binding, not layout)."""
    la = colour_layout(a, colours_a, palette, min_pixels=min_pixels)
    lb = colour_layout(b, colours_b, palette, min_pixels=min_pixels)

    def sizes(ea: Tensor, eb: Tensor) -> Tensor:
        return ((eb.prod(-1) + 1) / (ea.prod(-1) + 1)).log().abs()

    shift = (la["centre"] - lb["centre"]).norm(dim=-1)
    size = sizes(la["extent"], lb["extent"])
    out = {"shift": shift, "size": size, "found": la["found"] & lb["found"]}
    if shift.shape[1] == 2:
        crossed = (la["centre"] - lb["centre"].flip(1)).norm(dim=-1).mean(1)
        swapped = crossed < shift.mean(1)
        out["placed"] = torch.where(swapped, crossed, shift.mean(1))
        out["placed_size"] = torch.where(swapped, sizes(la["extent"], lb["extent"].flip(1)).mean(1),
                                         size.mean(1))
        out["swapped"] = swapped
    return out


def word_maps_locate(maps: list[list[Tensor]], positions: Tensor, centres: Tensor,
                     size: int) -> list[dict[str, Tensor]]:
    """Prompt-to-prompt's premise, measured: do two words' cross-attention maps sit on their own
    shapes? Per block, each word's map is averaged over the recorded calls (steps) and heads, of the
    first B rows (the conditional half of a guided batch, B = len(positions)); its centroid in
    image pixels is compared with the two shapes' centres.

    Shapes: maps as :func:`recording_attention` gives them (block i, call k: (B or 2B, heads,
    S * S, L)); positions (B, 2) token indices of each prompt's two words (``<bos>`` is token 0);
    centres (B, 2, 2) the two shapes' (x, y) in pixels of a ``size`` x ``size`` image -> per block
    a dict: "nearer" (B,) bool, the words' maps nearer their own shapes than crossed (sum of the
    two distances; chance 1/2); "gap" (B,) the distance between the two words' map centroids and
    "shape_gap" (B,) the distance between the shapes, in pixels (maps as far apart as the shapes
    locate them; uniform maps give 0); "centroid" (B, 2, 2); "side" the map's side S."""
    b = positions.shape[0]
    out = []
    for block in maps:
        a = torch.stack([call[:b] for call in block]).mean((0, 2))  # (B, S*S, L)
        side = int(round(a.shape[1] ** 0.5))
        pix = (torch.arange(side, dtype=a.dtype, device=a.device) + 0.5) * size / side - 0.5
        words = a.gather(2, positions.to(a.device)[:, None, :].expand(-1, a.shape[1], -1))
        words = words / words.sum(1, keepdim=True).clamp_min(1e-12)  # (B, S*S, 2)
        grid = words.view(b, side, side, 2)
        cen = torch.stack([(grid * pix[None, None, :, None]).sum((1, 2)),
                           (grid * pix[None, :, None, None]).sum((1, 2))], -1)  # (B, 2, 2)
        c = centres.to(cen)
        right = (cen - c).norm(dim=-1).sum(1)
        crossed = (cen - c.flip(1)).norm(dim=-1).sum(1)
        out.append({"nearer": right < crossed, "gap": (cen[:, 0] - cen[:, 1]).norm(dim=-1),
                    "shape_gap": (c[:, 0] - c[:, 1]).norm(dim=-1), "centroid": cen, "side": side})
    return out


__all__ = [
    "colour_layout",
    "colour_layout_change",
    "cross_attention_blocks",
    "injected_cross_attention",
    "injecting_attention",
    "recording_attention",
    "word_maps_locate",
]
