"""Low-rank adaptation, LoRA (lesson 13; Hu et al. 2021).

A trained layer's weight W stays frozen; next to it two small layers learn a low-rank change:
A maps the input down to r numbers (r is the rank, far below the layer's width) and B maps them back
up. The adapted layer computes

    y = W x + (alpha / r) * B(A(x)),

with B starting at zero, so that a fresh adapter changes nothing, and A random (Hu et al. 2021,
Sec. 4.1). Only A and B train: r (d_in + d_out) numbers per layer instead of d_in d_out. For a
convolution, A is a convolution with the base's kernel, stride and padding into r channels and B a 1
x 1 convolution out of them. **Merging** adds the change to the frozen weight, W <- W + (alpha / r)
B A, so that the adapted network runs at the base's cost; **unmerging** takes it off again.

The learner writes :func:`lora_forward` and :func:`lora_delta`; :func:`use_lora_pieces` makes every
adapter of a model run the learner's versions (merge and unmerge use the delta).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def lora_forward(layer: LoRALinear | LoRAConv2d, x: Tensor) -> Tensor:
    """The adapted layer's output (lesson 13): the frozen base layer's, plus (alpha / r) times the
    low-rank path B(A(x)); a merged layer's base weight already holds the change.

    Shapes: x as the base layer takes it -> as the base layer returns.
    """
    out = layer.base(x)
    if layer.merged:
        return out
    return out + layer.scale * layer.lora_B(layer.lora_A(x))


def lora_delta(layer: LoRALinear | LoRAConv2d) -> Tensor:
    """The change the adapter makes to the base weight, (alpha / r) B A (lesson 13): for a linear
    layer the product of B's (d_out, r) and A's (r, d_in) weights; for a convolution, B's 1 x 1
    kernel (C_out, r) times A's kernels (r, C_in, k, k) summed over the r channels.

    Shapes: -> like ``layer.base.weight``.
    """
    a, b = layer.lora_A.weight, layer.lora_B.weight
    if isinstance(layer, LoRAConv2d):
        return layer.scale * torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
    return layer.scale * (b @ a)


class _LoRA(nn.Module):
    """What both adapters share: the frozen base, the scale, merging and unmerging."""

    base: nn.Module
    lora_A: nn.Module
    lora_B: nn.Module

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"A LoRA rank is at least 1, got {rank}.")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.merged = False
        self.forward_fn: Callable[..., Tensor] = lora_forward
        self.delta_fn: Callable[..., Tensor] = lora_delta

    def _init(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear's default
        # (Hu et al.: random)
        nn.init.zeros_(self.lora_B.weight)  # a fresh adapter changes nothing

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fn(self, x)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + delta: the adapted layer at the base layer's cost."""
        if not self.merged:
            self.base.weight += self.delta_fn(self).to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - delta: the base weight back (up to rounding in its dtype)."""
        if self.merged:
            self.base.weight -= self.delta_fn(self).to(self.base.weight.dtype)
            self.merged = False


class LoRALinear(_LoRA):
    """A frozen nn.Linear with a rank-r adapter. Shapes: (..., d_in) -> (..., d_out)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base, rank, alpha)
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        self._init()


class LoRAConv2d(_LoRA):
    """A frozen nn.Conv2d with a rank-r adapter: A a convolution with the base's kernel, stride and
    padding into r channels, B a 1 x 1 convolution. Shapes: (B, C_in, H, W) -> as the base's
    output."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float):
        super().__init__(base, rank, alpha)
        if base.groups != 1:
            raise ValueError("LoRA for grouped convolutions is not supported here.")
        self.lora_A = nn.Conv2d(base.in_channels, rank, base.kernel_size, stride=base.stride,
                                padding=base.padding, dilation=base.dilation, bias=False)
        self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        self._init()


#: Names (last part) of the layers :func:`inject_lora` adapts by default in the course's networks:
#: the residual blocks' convolutions and the attention blocks' projections.
DEFAULT_TARGETS = ("conv1", "conv2", "to_qkv", "to_q", "to_kv", "to_out")


def inject_lora(model: nn.Module, *, rank: int, alpha: float | None = None,
                targets: tuple[str, ...] = DEFAULT_TARGETS) -> list[str]:
    """Replace every nn.Linear and nn.Conv2d of ``model`` whose name ends in one of ``targets`` by
    an adapter of ``rank`` (alpha defaults to the rank: scale 1), and freeze everything else.
    Returns the names adapted. Train with ``train(..., trainable=is_lora)``.
    """
    adapted = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if child_name not in targets or isinstance(module, _LoRA):
                continue
            if isinstance(child, nn.Linear):
                setattr(module, child_name,
                        LoRALinear(child, rank, alpha if alpha is not None else rank))
            elif isinstance(child, nn.Conv2d):
                setattr(module, child_name,
                        LoRAConv2d(child, rank, alpha if alpha is not None else rank))
            else:
                continue
            adapted.append(full)
    if not adapted:
        raise ValueError(f"No nn.Linear or nn.Conv2d named one of {targets} in the model: nothing "
                         "to adapt.")
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora(name))
    return adapted


def is_lora(name: str) -> bool:
    """Whether a parameter name belongs to an adapter (the filter ``train(trainable=...)``
    takes)."""
    return ".lora_A." in name or ".lora_B." in name or name.startswith(("lora_A.", "lora_B."))


def adapters(model: nn.Module) -> list[_LoRA]:
    return [m for m in model.modules() if isinstance(m, _LoRA)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters' weights: what a LoRA file ships (a few per cent of the model)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if is_lora(k)}


def load_lora(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Load adapter weights saved by :func:`lora_state_dict` into a model with the same adapters."""
    own = {k for k in model.state_dict() if is_lora(k)}
    if set(state) != own:
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        raise ValueError(f"The adapter weights do not fit this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}): inject_lora with the same targets and "
                         "rank first.")
    model.load_state_dict(state, strict=False)


def merge_lora(model: nn.Module) -> int:
    """Merge every adapter into its base weight; returns how many."""
    for m in adapters(model):
        m.merge()
    return len(adapters(model))


def unmerge_lora(model: nn.Module) -> int:
    """Take every adapter's change off its base weight again; returns how many."""
    for m in adapters(model):
        m.unmerge()
    return len(adapters(model))


def use_lora_pieces(model: nn.Module, *, forward: Callable | None = None,
                    delta: Callable | None = None) -> int:
    """Make every adapter of ``model`` run a learner's ``forward(layer, x)`` and
    ``delta(layer)``."""
    found = adapters(model)
    for m in found:
        if forward is not None:
            m.forward_fn = forward
        if delta is not None:
            m.delta_fn = delta
    return len(found)
