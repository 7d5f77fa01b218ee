"""Looking inside a network: shapes through it, parameter and FLOP counts (lesson 03)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ShapeRow:
    """One module's call during a forward pass."""

    name: str  # the module's path inside the model, e.g. "encoder.1.0.res"
    kind: str  # its class
    shape: tuple[int, ...]  # the shape of its output
    params: int  # parameters it owns (itself and its children)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shape_table(model: nn.Module, *inputs, kinds: tuple[type, ...] = ()) -> list[ShapeRow]:
    """Run ``model(*inputs)`` and record each call of a module of one of ``kinds`` (in call order).

    With no ``kinds``, the model's direct children and their children are recorded.
    """
    rows, hooks = [], []
    for name, module in model.named_modules():
        wanted = isinstance(module, kinds) if kinds else 1 <= name.count(".") + 1 <= 2 and name
        if not wanted:
            continue

        def hook(mod, args, out, name=name):
            rows.append(ShapeRow(name, type(mod).__name__, tuple(out.shape), count_parameters(mod)))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return rows


def format_shape_table(rows: list[ShapeRow]) -> str:
    """The rows as an aligned text table."""
    width = max(len(r.name) for r in rows)
    lines = [f"{'module':<{width}}  {'kind':<15} {'output shape':<20} {'params':>9}"]
    lines += [f"{r.name:<{width}}  {r.kind:<15} {str(r.shape):<20} {r.params:>9,}" for r in rows]
    return "\n".join(lines)


def count_flops(model: nn.Module, *inputs) -> int:
    """Floating-point operations of one forward pass (torch's FLOP counter: 2 per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops()
