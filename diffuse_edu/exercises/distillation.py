"""Checkers for lesson 14: progressive distillation's target and training step."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.distillation import distillation_target
from diffuse_edu.diffusion.forward_process import mix
from diffuse_edu.diffusion.objectives import per_example_mse
from diffuse_edu.diffusion.prediction import Target, x0_to_eps, x0_to_v
from diffuse_edu.diffusion.samplers import ddim_step
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.training.distill import distillation_step

_SCHEDULE = cosine_schedule(1000)


def _teacher(gain: float = 1.0) -> Denoiser:
    """An x0-model with a known, t-dependent answer, wrapped as a denoiser (``gain`` > 1: answers
    past [-1, 1])."""

    def net(x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        return gain * torch.tanh(0.8 * x) * (1 - t.reshape(-1, 1, 1, 1).float() / 2000)
    return Denoiser(net, _SCHEDULE, Target.X0)


def _target_mistakes(teacher: Denoiser, x: Tensor, t: int, m: int, n: int) -> list[Mistake]:
    p1 = teacher.at_step(x, t)
    x_mid = ddim_step(x, p1.x0, p1.eps, t, m, _SCHEDULE)
    p2 = teacher.at_step(x_mid, m)
    x_next = ddim_step(x_mid, p2.x0, p2.eps, m, n, _SCHEDULE)
    a_t, a_n = _SCHEDULE.alpha_bar[t].item() ** 0.5, _SCHEDULE.alpha_bar[n].item() ** 0.5
    s_t, s_n = (1 - a_t**2) ** 0.5, (1 - a_n**2) ** 0.5
    inverted = [] if s_n == 0 else [  # at t_next = 0 the inverted ratio is undefined
        Mistake("the ratio is sigma_next / sigma_t (noise left at t_next over noise at t), not "
                "the other way round.",
                (x_next - (s_t / s_n) * x) / (a_n - (s_t / s_n) * a_t))]
    return [
        Mistake("that is the teacher's first estimate at t, which is all that one teacher step "
                "(or two steps with the same estimates) implies: evaluate the teacher again at "
                "t_mid, take the second step, and solve for the x0 of one step to t_next.", p1.x0),
        Mistake("that is where the teacher's two steps land (x at t_next); the target is the x0 "
                "the student's one DDIM step from x_t needs to land there: solve the step's "
                "formula for x0.", x_next),
        *inverted,
        Mistake("that is the teacher's estimate at t_mid; the target is the x0 that takes one "
                "step from x_t to where the two steps land.", p2.x0),
        Mistake("alpha is sqrt(alpha_bar) (and sigma sqrt(1 - alpha_bar)); yours used alpha_bar "
                "itself.",
                (x_next - (s_n / s_t) * x) / (a_n**2 - (s_n / s_t) * a_t**2)),
        Mistake("a sign is flipped in both the x_t term and the alpha_t term of your solution: "
                "the step's formula holds them as (x_t - alpha_t x0); redo the algebra that "
                "solves it for x0.",
                (x_next + (s_n / s_t) * x) / (a_n + (s_n / s_t) * a_t)),
        Mistake("the target was clipped to [-1, 1]: it is not an image to show but the x0 that "
                "makes the student's one step land where the teacher's two land, and clipping it "
                "moves that landing point (Salimans & Ho clip nothing here).",
                ((x_next - (s_n / s_t) * x) / (a_n - (s_n / s_t) * a_t)).clamp(-1, 1)),
    ]


def _eps_at(x: Tensor, x0: Tensor, t: int) -> Tensor:
    return x0_to_eps(x, x0, _SCHEDULE.alpha_bar[t].item())


def _target_case(t: int, m: int, n: int, seed: int, gain: float = 1.0) -> Callable:
    def case(fn: Callable) -> None:
        teacher = _teacher(gain)
        x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        want = distillation_target(teacher, x, t, m, n, _SCHEDULE)
        got = fn(teacher, x.clone(), t, m, n, _SCHEDULE)
        compare(got, want, mistakes=_target_mistakes(teacher, x, t, m, n),
                what=f"distillation_target from t = {t} via {m} to {n}",
                otherwise="does not match the target of lesson 14's Math and section 1 "
                          "(Salimans & Ho 2022, Alg. 2): two teacher DDIM steps, t -> t_mid -> "
                          "t_next, then the x0 that makes one step from x_t land at the same "
                          "point.")
    return case


def _target_lands(fn: Callable) -> None:
    """The defining property: one DDIM step with the target lands where the teacher's two steps
    land."""
    teacher, t, m, n = _teacher(), 800, 600, 400
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    x0 = fn(teacher, x.clone(), t, m, n, _SCHEDULE)
    eps = _eps_at(x, x0, t)
    one = ddim_step(x, x0, eps, t, n, _SCHEDULE)
    p = teacher.at_step(x, t)
    two = ddim_step(x, p.x0, p.eps, t, m, _SCHEDULE)
    p = teacher.at_step(two, m)
    two = ddim_step(two, p.x0, p.eps, m, n, _SCHEDULE)
    compare(one, two, what="one DDIM step from x_t with your target, against the teacher's two "
                           "steps")


DISTILLATION_TARGET = Checker(
    "distillation_target", distillation_target,
    [_target_case(800, 700, 600, 0), _target_case(500, 375, 250, 1), _target_case(250, 125, 0, 2),
     _target_case(600, 450, 300, 3, gain=1.6), _target_lands],
    hints=(("Let the teacher take its two small steps first, exactly as a sampler would. Then ask: "
            "which x0, fed to one big step from the same x_t, ends at the same place?"),
           ("A deterministic DDIM step's result is alpha_next x0 + sigma_next (x_t - alpha_t x0) / "
            "sigma_t: linear in x0, so it can be solved for x0 (alpha = sqrt(alpha_bar), sigma = "
            "sqrt(1 - alpha_bar)).")),
    see="Salimans & Ho 2022, Alg. 2, in lesson 14's Math",
)


class _Student(nn.Module):
    """A tiny v-network: a 3x3 convolution whose bias depends on t."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.time = nn.Linear(1, 1)

    def forward(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        return self.conv(x) + self.time(t.float()[:, None] / 1000)[:, :, None, None]


def _step_inputs(seed: int):
    torch.manual_seed(seed)
    student = _Student()
    g = torch.Generator().manual_seed(seed)
    return student, torch.randn(4, 1, 5, 5, generator=g), torch.randn(4, 1, 5, 5, generator=g)


def _step_case(t: int, m: int, n: int, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        student, x0, eps = _step_inputs(seed)
        teacher_net = _Student()
        teacher = Denoiser(teacher_net, _SCHEDULE, Target.V)
        mine, ref = copy.deepcopy(student), copy.deepcopy(student)
        opt_mine = torch.optim.SGD(mine.parameters(), lr=0.1)
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
        # stale gradients from an earlier step: the step must clear them
        for p in mine.parameters():
            p.grad = torch.ones_like(p)
        want = distillation_step(ref, teacher, opt_ref, x0, t, m, n, eps, _SCHEDULE, grad_clip=None)
        got = fn(mine, teacher, opt_mine, x0.clone(), t, m, n, eps.clone(), _SCHEDULE, None)
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher_net.parameters()):
            raise Mismatch("the teacher received gradients: compute its target without gradients "
                           "(torch.no_grad(), or the target function, which already runs without "
                           "them); only the student learns.")
        ab = _SCHEDULE.alpha_bar[t].item()
        x_t = mix(x0, eps, ab)
        target_x0 = distillation_target(teacher, x_t, t, m, n, _SCHEDULE)
        out = copy.deepcopy(student)(x_t, torch.full((4,), t))
        ab_n = _SCHEDULE.alpha_bar[n].item()
        x_wrong = mix(x0, eps, ab_n)
        mistakes = [
            Mistake(
                "the student predicts v, so compare its output with the v that implies the "
                "target x0 (x0_to_v), not with the x0 itself.",
                per_example_mse(out, target_x0).detach(),
            ),
            Mistake(
                "the student was told t_next; it sees x_t, so tell it t.",
                per_example_mse(
                    copy.deepcopy(student)(x_t, torch.full((4,), n)), x0_to_v(x_t, target_x0, ab)
                ).detach(),
            ),
            Mistake(
                "the v target is read at t, where x_t is: x0_to_v(x_t, target, alpha_bar_t), "
                "not alpha_bar_t_next.",
                per_example_mse(out, x0_to_v(x_t, target_x0, ab_n)).detach(),
            ),
            Mistake(
                "the student predicts v, not eps: compare with the v that implies the target x0.",
                per_example_mse(out, x0_to_eps(x_t, target_x0, ab)).detach(),
            ),
            Mistake(
                "the student sees x_t, the data noised to t (where its big step starts), not "
                "the clean x0.",
                per_example_mse(
                    copy.deepcopy(student)(x0, torch.full((4,), t)), x0_to_v(x_t, target_x0, ab)
                ).detach(),
            ),
            Mistake(
                "x_t must be the data noised to t (the step's start), not to t_next.",
                per_example_mse(
                    copy.deepcopy(student)(x_wrong, torch.full((4,), t)),
                    x0_to_v(x_wrong, distillation_target(teacher, x_wrong, t, m, n, _SCHEDULE), ab),
                ).detach(),
            ),
        ]
        if isinstance(got, Tensor) and got.ndim == 0:
            raise Mismatch("distillation_step returned one number; return the loss per example, "
                           "shape (B,), detached.")
        if isinstance(got, Tensor) and got.requires_grad:
            raise Mismatch("distillation_step returned the loss with its graph attached: return "
                           "loss.detach(), or the losses the training loop keeps hold every "
                           "step's activations in memory.")
        compare(got, want, mistakes=mistakes, what=f"the loss distillation_step returns (t = {t} "
                                                   f"via {m} to {n})",
                otherwise="the loss per example does not match, and none of the usual mistakes "
                          "explains it: check what the student sees (input and time), the form "
                          "of its target (v, read at t) and the mean per example (lesson 14, "
                          "section 2).")
        for (name, p_mine), p_ref in zip(mine.named_parameters(), ref.parameters()):
            if torch.allclose(p_mine, student.state_dict()[name]):
                raise Mismatch("the student's weights did not change: call optimizer.step() after "
                               "backward().")
            # SGD with the stale gradient added
            stale = p_ref.detach() - 0.1 * torch.ones_like(p_ref)
            if torch.allclose(p_mine, stale, atol=1e-6):
                raise Mismatch("the step used stale gradients: call optimizer.zero_grad() before "
                               "backward().")
            compare(p_mine.detach(), p_ref.detach(), what=f"the student's {name} after your step "
                                                          "(SGD, lr 0.1)",
                    otherwise="the update differs from the mean loss's gradient step: "
                              "backpropagate the batch mean (not the sum) of the per-example "
                              "loss, once.")
    return case


def _step_clips(fn: Callable) -> None:
    """With grad_clip small enough to bind, the update is the clipped one."""
    student, x0, eps = _step_inputs(3)
    teacher = Denoiser(_Student(), _SCHEDULE, Target.V)
    mine, ref, plain = (copy.deepcopy(student) for _ in range(3))
    for net, clip in ((ref, 0.01), (plain, None)):
        distillation_step(
            net,
            teacher,
            torch.optim.SGD(net.parameters(), lr=0.1),
            x0,
            600,
            500,
            400,
            eps,
            _SCHEDULE,
            grad_clip=clip,
        )
    fn(
        mine,
        teacher,
        torch.optim.SGD(mine.parameters(), lr=0.1),
        x0.clone(),
        600,
        500,
        400,
        eps.clone(),
        _SCHEDULE,
        0.01,
    )
    mine_w, ref_w, plain_w = (
        torch.cat([p.detach().flatten() for p in net.parameters()]) for net in (mine, ref, plain)
    )
    if torch.allclose(mine_w, plain_w, atol=1e-6):
        raise Mismatch("with grad_clip = 0.01 your step took the unclipped update: clip the "
                       "gradients' total norm (torch.nn.utils.clip_grad_norm_) between backward() "
                       "and optimizer.step(), unless grad_clip is None.")
    compare(mine_w, ref_w, what="the student's weights after a step with grad_clip = 0.01",
            otherwise="the update is not the one clipped to total norm 0.01: clip_grad_norm_ over "
                      "the student's parameters after backward() and before optimizer.step() "
                      "(clip_grad_value_ clips each entry instead).")


DISTILLATION_STEP = Checker(
    "distillation_step",
    distillation_step,
    [_step_case(1000, 875, 750, 0), _step_case(400, 300, 200, 1), _step_clips],
    hints=(
        ("The step is lesson 05's training step with another target: the student sees x_t and "
         "learns to predict what makes its big DDIM step follow the teacher."),
        ("Your distillation_target gives the target as an x0; the student speaks v. Convert, "
         "compare per example, then the usual zero_grad, backward of the mean, clipping and "
         "step."),
    ),
    see="lesson 14, section 2: lesson 05's training step with the distillation target in v form",
)
