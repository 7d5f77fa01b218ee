"""Training a consistency model (lesson 16; Song et al. 2023, Alg. 2 and 3).

:func:`train_consistency` starts from a copy of a pretrained v-network (lesson 05's) and trains it,
read as a
:class:`~diffuse_edu.diffusion.consistency.ConsistencyModel`, with consistency distillation (a
teacher denoiser given) or consistency training (none). The target network is an EMA of the
student with decay ``target_decay``: 0 makes it a stop-gradient copy of the current student, as in
Song & Dhariwal 2023; Song et al. 2023 use 0.95 for distillation. Consistency training here is
their Alg. 3 on a fixed grid with that stop-gradient target, not Geng et al.'s (2024) ECT, which
also anneals the gap between the two levels towards zero during training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffuse_edu.diffusion.consistency import (
    SIGMA_MAX,
    SIGMA_MIN,
    ConsistencyModel,
    cd_loss,
    consistency_function,
    ct_loss,
    karras_grid,
)
from diffuse_edu.diffusion.schedules import NoiseSchedule
from diffuse_edu.progress import progress
from diffuse_edu.training.loop import TrainConfig, adamw, learning_rate


def train_consistency(student: nn.Module, data: Tensor, schedule: NoiseSchedule, *,
                      teacher: Callable | None, config: TrainConfig, grid_size: int = 18,
                      seed: int = 0, loss: Callable | None = None, target_decay: float = 0.0,
                      function: Callable = consistency_function, sigma_min: float = SIGMA_MIN,
                      sigma_max: float = SIGMA_MAX,
                      show_progress: bool = True) -> tuple[ConsistencyModel, list[float]]:
    """Train ``student`` (a v-network on ``schedule``, changed in place) as a consistency model.

    ``teacher`` is a denoiser ``teacher(x, sigma) -> x0_hat`` for distillation (``loss`` then
    defaults to :func:`cd_loss`, or the learner's, same signature), or None for consistency training
    (:func:`ct_loss`). Each example draws its own neighbouring pair of a Karras grid of
    ``grid_size`` levels (Song et al. 2023 use 18 on CIFAR-10). ``config`` gives the steps, batch
    size, learning rate with its warm-up and gradient clipping. Returns the model (the student
    read through ``function``) and each step's mean loss.
    """
    if loss is None:
        loss = ct_loss if teacher is None else cd_loss
    device = data.device
    grid = karras_grid(grid_size, sigma_min=sigma_min, sigma_max=sigma_max).to(device,
                                                                              data.dtype)
    gen = torch.Generator(device).manual_seed(seed)
    target_net = copy.deepcopy(student).requires_grad_(False).eval()
    model = ConsistencyModel(student, schedule, sigma_min=sigma_min, function=function)
    target = ConsistencyModel(target_net, schedule, sigma_min=sigma_min, function=function)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = adamw(params, lr=config.lr, weight_decay=config.weight_decay)
    was_training, losses = student.training, []
    student.train()
    for i in progress(range(config.steps or 1), desc="consistency " + ("distillation" if teacher
                                                                         else "training"),
                      disable=not show_progress):
        for group in opt.param_groups:
            group["lr"] = learning_rate(i, config)
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen, device=device)
        x0 = data[idx]
        noise = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
        n = torch.randint(0, grid_size - 1, (config.batch_size,), generator=gen, device=device)
        sigma, sigma_next = grid[n + 1], grid[n]  # (B,) each, sigma > sigma_next
        if teacher is None:
            per_example = loss(model, target, x0, noise, sigma, sigma_next)
        else:
            per_example = loss(model, target, teacher, x0, noise, sigma, sigma_next)
        opt.zero_grad(set_to_none=True)
        per_example.mean().backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        with torch.no_grad():  # the target: an EMA of the student (decay 0: a copy)
            for p_t, p in zip(target_net.parameters(), student.parameters()):
                p_t.lerp_(p, 1 - target_decay)
        losses.append(per_example.detach().mean())
    student.train(was_training)
    return model, torch.stack(losses).tolist()
