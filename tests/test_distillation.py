"""Lesson 14's progressive distillation: the target makes one step land where two teacher steps
land, and a round trains a student that follows its teacher with half the steps."""

import copy

import torch

from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.distillation import distillation_target, x0_for_step
from diffuse_edu.diffusion.prediction import Target, v_to_x0, x0_to_v
from diffuse_edu.diffusion.samplers import ddim_step, sample_ddim
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.distill import distill
from diffuse_edu.training.loop import TrainConfig

SCHEDULE = cosine_schedule(1000)


def teacher():
    """An x0-model with a known answer (x0_hat = tanh(x) scaled by t)."""
    return Denoiser(lambda x, t, cond=None: torch.tanh(x)
                    * (1 - t.double().reshape(-1, 1, 1, 1) / 3000),
                    SCHEDULE, Target.X0)


def test_one_step_with_the_target_lands_exactly_where_two_teacher_steps_land():
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = teacher()
    for t, m, n in ((1000, 875, 750), (500, 250, 0), (60, 30, 0)):
        target = distillation_target(d, x, t, m, n, SCHEDULE)
        ab = SCHEDULE.alpha_bar[t].item()
        one = ddim_step(x, target, (x - ab**0.5 * target) / (1 - ab) ** 0.5, t, n, SCHEDULE)
        two = sample_ddim(d, x, SCHEDULE, steps=2, t_max=t) if n == 0 and m == t // 2 else None
        p = d.at_step(x, t)
        mid = ddim_step(x, p.x0, p.eps, t, m, SCHEDULE)
        p = d.at_step(mid, m)
        end = ddim_step(mid, p.x0, p.eps, m, n, SCHEDULE)
        torch.testing.assert_close(one, end)
        if two is not None:
            torch.testing.assert_close(end, two)  # the sampler's own two steps


def test_x0_for_step_inverts_a_ddim_step_and_v_converts_both_ways():
    g = torch.Generator().manual_seed(1)
    x, x0 = (torch.randn(2, 5, generator=g, dtype=torch.float64),
             torch.randn(2, 5, generator=g, dtype=torch.float64))
    ab = SCHEDULE.alpha_bar[400].item()
    landed = ddim_step(x, x0, (x - ab**0.5 * x0) / (1 - ab) ** 0.5, 400, 100, SCHEDULE)
    torch.testing.assert_close(x0_for_step(x, landed, 400, 100, SCHEDULE), x0)
    torch.testing.assert_close(v_to_x0(x, x0_to_v(x, x0, ab), ab), x0)


def test_a_round_trains_a_student_that_follows_its_teacher_with_half_the_steps():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    net = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2))
    t = Denoiser(net, SCHEDULE, Target.V, fast=False)
    student = copy.deepcopy(net).eval()
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        target = sample_ddim(t, x, SCHEDULE, steps=8)
        before = (sample_ddim(Denoiser(student, SCHEDULE, Target.V), x, SCHEDULE,
                              steps=4) - target).square().mean()
    calls = []

    def counting_step(*args):
        from diffuse_edu.training.distill import distillation_step
        calls.append(args[4:7])  # t, t_mid, t_next
        return distillation_step(*args)
    losses = distill(student, t, images, SCHEDULE, student_steps=4, step=counting_step,
                     show_progress=False,
                     config=TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5,
                                        ema_decay=None))
    with torch.no_grad():
        after = (sample_ddim(Denoiser(student, SCHEDULE, Target.V), x, SCHEDULE,
                             steps=4) - target).square().mean()
    assert len(losses) == 60 and not student.training  # back in the mode it came in
    # the 4-step student follows the 8-step teacher more closely than its copy did
    assert after < before
    grid = [1000, 875, 750, 625, 500, 375, 250, 125, 0]
    # the student's grid, the teacher's midpoints
    assert all(c in [tuple(grid[2 * k: 2 * k + 3]) for k in range(4)] for c in calls)
    assert all(p.grad is None for p in net.parameters())  # the teacher never learned
