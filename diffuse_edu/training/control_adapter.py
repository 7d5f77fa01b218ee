"""Training lesson 19's controlled models (the ControlNet-style adapter and the baseline that
fine-tunes the whole U-Net with the map as input): a plain loop over (image, map, label) triples."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.control_adapter import Controlled


def train_control(model: nn.Module, images: Tensor, maps: Tensor, objective: Callable, *,
                  steps: int, batch_size: int = 64, lr: float = 1e-3,
                  labels: Tensor | None = None, drop_map: float = 0.0,
                  generator: torch.Generator | None = None,
                  seconds: float | None = None,
                  callback: Callable[[int], None] | None = None) -> dict:
    """Train ``model(x, t, control, cond)`` (a :class:`ControlAdapter` or a
    :class:`WidenedUNet`) on (image, map) pairs with ``objective`` (the base model's), AdamW on
    ``model.trainable()``. ``drop_map`` is the share of examples whose map is zeroed (so that "no
    control" is something the model has seen). ``callback(step)`` runs after each step (a
    snapshot, say). ``seconds`` is a guard: a run the clock stops says so in its result.

    Shapes: images (N, C, H, W), maps (N, K, H, W), labels (N,) or None. Returns dict(steps,
    planned_steps, seconds, losses, stopped_by_clock).
    """
    params = model.trainable()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses, start, done = [], time.perf_counter(), 0
    for step in range(steps):
        if seconds is not None and time.perf_counter() - start > seconds:
            break
        idx = torch.randint(0, len(images), (batch_size,), generator=generator)
        x0, c = images[idx], maps[idx].float()
        if drop_map:
            keep = torch.rand(batch_size, generator=generator) >= drop_map
            c = c * keep.to(c)[:, None, None, None]
        cond = None if labels is None else Cond(labels=labels[idx])
        loss, _ = objective(Controlled(model, c), x0, cond=cond, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.mean().item())
        done = step + 1
        if callback is not None:
            callback(done)
    model.eval()
    return {"steps": done, "planned_steps": steps, "seconds": time.perf_counter() - start,
            "losses": losses, "stopped_by_clock": done < steps}


def mean_loss(losses: list[float], last: int = 20) -> float:
    """The mean of the last ``last`` losses (training's noisy per-step losses, smoothed)."""
    tail = losses[-last:]
    return sum(tail) / max(len(tail), 1)
