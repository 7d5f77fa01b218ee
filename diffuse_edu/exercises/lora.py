"""Checkers for lesson 13, part 1: LoRA's forward pass and the weight change that merge adds."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, compare_gradients
from diffuse_edu.models.lora import LoRAConv2d, LoRALinear, lora_delta, lora_forward


def _linear(seed: int, *, fresh: bool = False) -> LoRALinear:
    """A rank-2 adapter (alpha 6: scale 3) on a random 5 -> 7 linear layer; B random unless
    ``fresh``."""
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(5, 7), rank=2, alpha=6.0)
    if not fresh:
        with torch.no_grad():
            layer.lora_B.weight.normal_(0, 0.5)
    return layer


def _conv(seed: int) -> LoRAConv2d:
    """A rank-3 adapter (alpha 1.5: scale 0.5) on a random 3x3 convolution, 2 -> 4 channels."""
    torch.manual_seed(seed)
    layer = LoRAConv2d(nn.Conv2d(2, 4, 3, padding=1), rank=3, alpha=1.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.5)
    return layer


def _forward_mistakes(layer, x) -> list[Mistake]:
    base, low = layer.base(x), layer.lora_B(layer.lora_A(x))
    return [
        Mistake("the low-rank path is scaled by alpha alone; the scale is alpha / r "
                "(layer.scale), so that the rank can change without retuning alpha.",
                base + layer.alpha * low),
        Mistake("the scale is alpha / r, not r / alpha.", base + layer.rank / layer.alpha * low),
        Mistake("the low-rank path was divided by r alone: the scale is alpha / r (layer.scale), "
                "alpha included.", base + low / layer.rank),
        Mistake("the low-rank path must be scaled by alpha / r (layer.scale).", base + low),
        Mistake("the frozen base layer's output is missing: LoRA adds a change to what the base "
                "computes.",
                layer.scale * low),
        Mistake("the scale applies to the low-rank path only, not to the base layer's output too.",
                layer.scale * (base + low)),
        Mistake("the low-rank path is added, not subtracted.", base - layer.scale * low),
        Mistake("LoRA adds its change to the base output; it does not multiply it.",
                base * (1 + layer.scale * low)),
    ]


def _forward_case(make: Callable, shape: tuple[int, ...], seed: int) -> Callable:
    def case(fn: Callable) -> None:
        layer = make(seed)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 10))
        with torch.no_grad():
            want = lora_forward(layer, x)
            try:
                got = fn(layer, x.clone())
            except RuntimeError as e:
                if isinstance(layer, LoRAConv2d) and "dimensions" in str(e):
                    raise Mismatch(f"lora_forward on a LoRAConv2d raised RuntimeError ({e}): the "
                                   "same code must serve a convolution, whose weight is 4-D; call "
                                   "the layers themselves (layer.base(x), layer.lora_A(...), "
                                   "layer.lora_B(...)) instead of multiplying by their "
                                   "weights.") from None
                if "shape" in str(e) or "size" in str(e):
                    raise Mismatch(f"lora_forward raised RuntimeError ({e}). Call A first, on the "
                                   "input: it maps it down to r numbers (or channels); B maps "
                                   "those back up.") from None
                raise
            compare(got, want, mistakes=_forward_mistakes(layer, x),
                    what=f"lora_forward on a {type(layer).__name__} (rank {layer.rank}, alpha "
                         f"{layer.alpha:g})",
                    otherwise="does not match the adapted layer of lesson 13's Math (Hu et al. "
                              "2021, Eq. 3), and none of the usual mistakes explains it: check "
                              "what each of the two paths computes from the input, and how they "
                              "are scaled and combined.")
    return case


def _forward_fresh_is_the_base(fn: Callable) -> None:
    layer = _linear(3, fresh=True)
    x = torch.randn(4, 5)
    with torch.no_grad():
        compare(fn(layer, x), layer.base(x), what="lora_forward of a fresh adapter (B = 0) must "
                                                  "be the base layer's")


def _forward_merged(fn: Callable) -> None:
    layer = _linear(4)
    layer.merge()  # the base weight now holds the change
    x = torch.randn(3, 5)
    with torch.no_grad():
        got, want = fn(layer, x), lora_forward(layer, x)
    compare(got, want, what="lora_forward on a merged adapter", mistakes=[
        Mistake("after merge the base weight already holds the change: when layer.merged is True, "
                "return the base layer's output alone (adding the low-rank path again counts it "
                "twice).",
                want + layer.scale * layer.lora_B(layer.lora_A(x)))])


def _forward_gradients(fn: Callable) -> None:
    layer = _linear(5)
    x = torch.randn(3, 5)
    no_gradient = Mismatch("no gradient reached A or B: compute the low-rank path from the layers "
                           "themselves, without torch.no_grad(), .detach() or .data, so that "
                           "training can move them.")
    try:
        fn(layer, x).square().sum().backward()
    except RuntimeError as e:
        if "does not require grad" in str(e):
            raise no_gradient from None
        raise
    a, b = layer.lora_A.weight.grad, layer.lora_B.weight.grad
    if a is None or b is None or not (a.abs().sum() > 0 and b.abs().sum() > 0):
        raise no_gradient
    if layer.base.weight.grad is not None:
        raise Mismatch("the frozen base weight received a gradient: use the base layer as it is "
                       "(it is frozen); do not copy its weight into a new parameter.")
    # In a network the gradient must also pass through the layer to its input: the adapters of the
    # layers before this one learn from it, through the frozen base path as well as the low-rank
    # one.
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    base, low = layer.base(x), layer.lora_B(layer.lora_A(x))
    compare_gradients(
        fn(layer, x), lora_forward(layer, x),
        {"the input x": x, "A": layer.lora_A.weight, "B": layer.lora_B.weight},
        what="lora_forward's gradients (LoRA trains A and B of every adapted layer through them)",
        mistakes=[
            Mistake("the base layer's output carries no gradient (computed under torch.no_grad(), "
                    "or detached): its weight is frozen, but the gradient must still flow through "
                    "it to the input x, or the adapters of the layers before this one learn from "
                    "the low-rank path alone.", base.detach() + layer.scale * low),
            Mistake("the input of the low-rank path was detached: B(A(x)) must pass its gradient "
                    "back to x as well as to A and B, or the adapters of the layers before this "
                    "one miss it.",
                    base + layer.scale * layer.lora_B(layer.lora_A(x.detach()))),
        ])


LORA_FORWARD = Checker(
    "lora_forward",
    lora_forward,
    [
        _forward_case(_linear, (4, 5), 0),
        _forward_case(_conv, (2, 2, 6, 6), 1),
        _forward_fresh_is_the_base,
        _forward_merged,
        _forward_gradients,
    ],
    hints=(
        ("Two paths run side by side on the same input: the frozen layer, and a narrow detour "
         "through A and B whose result is added with a fixed weight."),
        ("The weight of the detour is kept on the layer (layer.scale). Think also of a layer "
         "whose change has already been folded into its weight (layer.merged)."),
    ),
    see="Hu et al. 2021, Eq. 3, in lesson 13's Math (the LoRA bullet)",
)


def _delta_mistakes(layer) -> list[Mistake]:
    a, b = layer.lora_A.weight, layer.lora_B.weight
    if isinstance(layer, LoRAConv2d):
        full = torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
    else:
        full = b @ a
    base = layer.base.weight.detach()
    extra = [Mistake("the change alone: lora_delta returns (alpha / r) B A, not the base weight "
                     "plus it.",
                     base + layer.scale * full),
             Mistake("the sign is flipped: the change is + (alpha / r) B A.", -layer.scale * full)]
    if isinstance(layer, LoRAConv2d):
        o, r = b.shape[:2]
        _, i, k, _ = a.shape
        centre = torch.zeros_like(full)
        centre[..., k // 2, k // 2] = full[..., k // 2, k // 2]
        extra += [
            Mistake(
                "the kernel's positions are transposed: the change keeps A's kernel in its "
                "(k_h, k_w) order, as the base weight stores it.",
                layer.scale * full.transpose(-1, -2),
            ),
            Mistake(
                "A's kernel was flattened with its input channels last, (k, k, in), and "
                "the product reshaped as (in, k, k): flatten A in the order it is "
                "stored (A.flatten(1) or A.reshape(r, -1)) so that the reshape puts "
                "every number back in its place.",
                layer.scale
                * (b.reshape(o, r) @ a.permute(0, 2, 3, 1).reshape(r, -1)).reshape(o, i, k, k),
            ),
            Mistake(
                "only the kernel's centre was mixed: A is a full k x k kernel, and B "
                "mixes A's r channels at every kernel position.",
                layer.scale * centre,
            ),
        ]
    return extra + [
        Mistake("the change is scaled by alpha / r (layer.scale).", full),
        Mistake("the change is scaled by alpha / r, not by alpha alone.", layer.alpha * full),
        Mistake("the scale is alpha / r, not r / alpha.", layer.rank / layer.alpha * full),
        Mistake("the change was divided by r alone: the scale is alpha / r (layer.scale), alpha "
                "included.",
                full / layer.rank),
    ]


_CONV_SHAPES = ("For a convolution B's weight is (out, r, 1, 1) and A's (r, in, k, k): the 1 x 1 "
                "kernel B mixes A's r kernels into out of them, and the change has the base "
                "weight's shape (out, in, k, k) (lesson 13, section 1's exercise text).")


def _delta_case(make: Callable, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        layer = make(seed)
        weight = layer.base.weight.detach().clone()
        with torch.no_grad():
            try:
                got = fn(layer)
            except RuntimeError as e:
                if isinstance(layer, LoRAConv2d):
                    raise Mismatch(f"lora_delta on a LoRAConv2d raised RuntimeError ({e}). "
                                   f"{_CONV_SHAPES}") from None
                if "shape" in str(e) or "size" in str(e):
                    raise Mismatch(f"lora_delta raised RuntimeError ({e}). The change has the "
                                   "base weight's shape, (out, in) for a linear layer: B's weight "
                                   "(out, r) times A's (r, in), in that order.") from None
                raise
            if (
                isinstance(layer, LoRAConv2d)
                and isinstance(got, torch.Tensor)
                and got.shape != layer.base.weight.shape
            ):
                raise Mismatch(f"lora_delta on a LoRAConv2d returned shape {tuple(got.shape)}; "
                               f"the base weight's is {tuple(layer.base.weight.shape)}. "
                               f"{_CONV_SHAPES}")
            if (
                isinstance(got, torch.Tensor)
                and got.ndim == 2
                and got.shape == layer.base.weight.shape[::-1] != layer.base.weight.shape
            ):
                raise Mismatch(f"lora_delta returned shape {tuple(got.shape)}, the base weight's "
                               "transposed: the change has the base weight's shape (out, in), B's "
                               "weight (out, r) times A's (r, in), in that order.")
            if not torch.equal(layer.base.weight, weight):
                raise Mismatch("lora_delta changed the layer's base weight (it merged the change "
                               "itself): return the change alone and leave the layer as it was; "
                               "merge() adds it, unmerge() takes it away.")
            compare(got, lora_delta(layer), mistakes=_delta_mistakes(layer),
                    what=f"lora_delta of a {type(layer).__name__} (rank {layer.rank}, alpha "
                         f"{layer.alpha:g}), base weight {tuple(layer.base.weight.shape)}")
    return case


def _merge_round_trip(fn: Callable) -> None:
    """merge (with the learner's delta) gives the unmerged output; unmerge gives the base weight
    back."""
    for make, shape in ((_linear, (4, 5)), (_conv, (2, 2, 5, 5))):
        layer = make(7)
        layer.delta_fn = fn
        x = torch.randn(*shape)
        original = layer.base.weight.detach().clone()
        with torch.no_grad():
            before = lora_forward(layer, x)
            layer.merge()
            merged = layer.base(x)
            layer.unmerge()
        compare(merged, before, what=f"the merged {type(layer).__name__}'s output (merge adds "
                                     "your lora_delta to the base weight) against the unmerged "
                                     "adapter's")
        compare(layer.base.weight.detach(), original, what="the base weight after merge and "
                                                           "unmerge", atol=1e-6)


LORA_DELTA = Checker(
    "lora_delta", lora_delta, [_delta_case(_linear, 0), _delta_case(_conv, 1), _merge_round_trip],
    hints=(("Merging folds the detour B(A(x)) into the layer's own weight: which single weight "
            "matrix, applied to x, gives the same result as the detour with its scale?"),
           ("For a convolution, B is a 1 x 1 kernel: it mixes A's r output channels into C_out "
            "channels, kernel position by kernel position. torch.einsum can say that in one "
            "line.")),
    see="lesson 13's Math, merging (Hu et al. 2021, Sec. 4.2): the change, shaped like the base "
        "weight",
)
