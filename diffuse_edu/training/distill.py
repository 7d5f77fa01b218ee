"""Training a student by progressive distillation (lesson 14; Salimans & Ho 2022, Alg. 2).

A round trains the student, which starts as a copy of its teacher, to take in one DDIM step what
the teacher takes in two: :func:`distillation_step` is one optimiser step (the learner's, lesson
14, or this one) and :func:`distill` the round's loop. Each step draws one position on the student's
grid for the whole batch (on the host: the teacher's steps need the times as numbers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.distillation import distillation_target
from diffuse_edu.diffusion.forward_process import mix
from diffuse_edu.diffusion.objectives import per_example_mse
from diffuse_edu.diffusion.prediction import x0_to_v
from diffuse_edu.diffusion.samplers import timesteps
from diffuse_edu.diffusion.schedules import NoiseSchedule
from diffuse_edu.progress import progress
from diffuse_edu.training.loop import TrainConfig, adamw, learning_rate


def distillation_step(student: nn.Module, teacher: Denoiser, optimizer: torch.optim.Optimizer,
                      x0: Tensor, t: int,
                      t_mid: int, t_next: int, eps: Tensor, schedule: NoiseSchedule,
                      grad_clip: float | None = 1.0) -> Tensor:
    """One step of progressive distillation (Salimans & Ho 2022, Alg. 2), lesson 14: x_t from x0 and
    eps at t; the teacher's two-step target x0 (no gradient); the student's v-prediction against the
    v that implies that x0, per example; then zero the gradients, backpropagate the batch mean, clip
    the global norm at ``grad_clip`` and step. Returns the loss per example, detached.

    Shapes: x0, eps (B, C, H, W) -> (B,).
    """
    ab = schedule.alpha_bar[t].item()
    x_t = mix(x0, eps, ab)
    target = x0_to_v(x_t, distillation_target(teacher, x_t, t, t_mid, t_next, schedule), ab)
    loss = per_example_mse(student(x_t, torch.full((x0.shape[0],), t, device=x0.device)), target)
    optimizer.zero_grad(set_to_none=True)
    loss.mean().backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                       grad_clip)
    optimizer.step()
    return loss.detach()


def distill(student: nn.Module, teacher: Denoiser, data: Tensor, schedule: NoiseSchedule, *,
            student_steps: int,
            config: TrainConfig, seed: int = 0, step: Callable = distillation_step,
            show_progress: bool = True) -> list[float]:
    """One round: train ``student`` (a v-prediction network, usually a copy of the teacher's) so
    that DDIM with ``student_steps`` steps follows ``teacher`` with twice as many. ``config`` gives
    the steps, batch size, learning rate and its warm-up, and gradient clipping; ``step`` is
    :func:`distillation_step` or a learner's. Returns each step's mean loss. The student comes back
    in the mode it came in.
    """
    grid = timesteps(schedule, 2 * student_steps)  # the teacher's grid, T .. 0: the
    # student takes every other
    device = data.device
    host, gen = torch.Generator().manual_seed(seed), torch.Generator(device).manual_seed(seed)
    opt = adamw([p for p in student.parameters() if p.requires_grad], lr=config.lr,
                weight_decay=config.weight_decay)
    was_training = student.training
    student.train()
    losses = []
    for i in progress(range(config.steps or 1), desc=f"distilling to {student_steps} steps",
                      disable=not show_progress):
        for group in opt.param_groups:
            group["lr"] = learning_rate(i, config)
        k = int(torch.randint(0, student_steps, (1,), generator=host))
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen, device=device)
        x0 = data[idx]
        eps = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
        losses.append(step(student, teacher, opt, x0, grid[2 * k], grid[2 * k + 1], grid[2 * k + 2],
                           eps, schedule, config.grad_clip).mean())
    student.train(was_training)
    return torch.stack(losses).tolist()
