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
    return flops_by_module(model, *inputs)[""]


def flops_by_module(model: nn.Module, *inputs) -> dict[str, int]:
    """FLOPs of one forward pass for every module, by its path in ``model`` ("" is the whole)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    root = type(model).__name__
    flops = {}
    for name, by_op in counter.get_flop_counts().items():
        if name == "Global":
            continue
        path = "" if name == root else name.removeprefix(root + ".")
        flops[path] = sum(by_op.values())
    flops.setdefault("", counter.get_total_flops())
    return flops


def group_by_part(values: dict[str, int], depth: int = 1, *,
                  deeper: tuple[str, ...] = ()) -> dict[str, int]:
    """Sum per-module (or per-parameter) values over the first ``depth`` parts of each path.

    Paths that start with a name in ``deeper`` keep one more part ("encoder.0" rather than
    "encoder"). Only the leaves' values are summed, so nested modules are not counted twice.
    """
    leaves = {k: v for k, v in values.items()
              if k and not any(other.startswith(k + ".") for other in values)}
    grouped: dict[str, int] = {}
    for path, value in leaves.items():
        parts = path.split(".")
        key = ".".join(parts[: depth + (parts[0] in deeper)])
        grouped[key] = grouped.get(key, 0) + value
    return grouped
