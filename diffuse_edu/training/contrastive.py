"""Training the miniature CLIP of lesson 09 (Radford et al. 2021, Fig. 3)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.models.clip import MiniCLIP, contrastive_loss
from diffuse_edu.progress import progress
from diffuse_edu.training.loop import adamw, record_training


def train_clip(model: MiniCLIP, images: Tensor, ids: Tensor, mask: Tensor, *, steps: int,
               seconds: float | None = None, batch_size: int = 128, lr: float = 2e-3,
               generator: torch.Generator | None = None,
               loss_fn: Callable[[Tensor, Tensor], Tensor] = contrastive_loss) -> list[float]:
    """AdamW with a one-cycle learning rate on the contrastive loss; returns each step's loss.

    Stops after ``steps`` or ``seconds``, whichever comes first (a stop by the clock is recorded by
    :func:`~diffuse_edu.training.loop.record_training`). Pairs with identical captions
    count as matches: ``loss_fn(logits, same)`` (the library's :func:`contrastive_loss`, or a
    learner's) gets the (B, B) logits and which pairs of the batch share a caption.
    Shapes: images (N, C, S, S), ids and mask (N, L) on one device.
    """
    opt = adamw(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    losses, start = [], time.perf_counter()
    model.train()
    for _ in progress(range(steps), desc="mini-CLIP"):
        idx = torch.randint(0, len(images), (batch_size,), generator=generator,
                            device=images.device)
        same = (ids[idx, None, :] == ids[None, idx, :]).all(-1)  # (B, B) identical captions
        loss = loss_fn(model(images[idx], ids[idx], mask[idx]), same)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if seconds is not None and time.perf_counter() - start > seconds:
            break
    record_training("mini-CLIP", steps=len(losses), planned_steps=steps,
                    seconds=time.perf_counter() - start, limit=seconds)
    return torch.stack(losses).tolist()
