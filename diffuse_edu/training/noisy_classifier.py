"""Training lesson 18's noise-aware classifier (Dhariwal & Nichol 2021, Sec. 4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.diffusion.classifier_guidance import noisy_classifier_loss
from diffuse_edu.diffusion.schedules import NoiseSchedule
from diffuse_edu.models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from diffuse_edu.progress import progress


def train_noisy_classifier(images: Tensor, labels: Tensor, schedule: NoiseSchedule,
                           config: NoisyClassifierConfig | None = None, *,
                           steps: int = 600, batch_size: int = 128, lr: float = 3e-3,
                           seed: int = 0, loss_fn: Callable[..., Tensor] = noisy_classifier_loss,
                           ) -> tuple[NoisyClassifier, list[float]]:
    """Train a :class:`NoisyClassifier` with ``loss_fn`` (:func:`noisy_classifier_loss` or a
    learner's) and AdamW under a one-cycle schedule (``config``: by default
    :class:`NoisyClassifierConfig`'s); the weights and batches come from ``seed``.

    The batches and ``loss_fn``'s draws come from one generator on the images' device.
    Returns the classifier in eval mode and the loss of every step.
    Shapes: images (N, C, H, W) in [-1, 1], labels (N,).
    """
    torch.manual_seed(seed)
    model = NoisyClassifier(config or NoisyClassifierConfig()).to(images.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    # on the images' device, so that a loss drawing t and eps with device=x0.device can use it
    g = torch.Generator(images.device).manual_seed(seed)
    losses = []
    for _ in progress(range(steps), desc="noise-aware classifier"):
        idx = torch.randint(0, len(images), (batch_size,), generator=g, device=images.device)
        loss = loss_fn(model, images[idx], labels[idx], schedule, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), losses
