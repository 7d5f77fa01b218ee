"""Checkers for lesson 12, part 3: the flow-matching loss and the flow's Euler sampler.

Time runs from tau = 0 (the data) to tau = 1 (the noise): x_tau = (1 - tau) x0 + tau eps, velocity u
= eps - x0; the network sees t = tau * 1000. Sampling walks back from tau = 1 to tau = 0."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.objectives import flow_matching_loss, per_example_mse
from diffuse_edu.diffusion.prediction import Target
from diffuse_edu.diffusion.samplers import flow_times, sample_flow_euler
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, require_gradient

SCALE = 1000.0  # the network sees t = tau * SCALE


def flow_euler(model: Callable, x: Tensor, steps: int) -> Tensor:
    """Lesson 12's sampler, as the learner writes it: Euler from tau = 1 (``x``, unit noise) to tau
    = 0 in ``steps`` evaluations of the velocity network ``model(x_tau, tau * 1000)``; the library's
    :func:`~diffuse_edu.diffusion.samplers.sample_flow_euler` does the work."""
    return sample_flow_euler(Denoiser(model, None, Target.FLOW), x, steps=steps)


def _strict_time(x: Tensor, t: object) -> None:
    """Refuse a time the lesson's networks refuse: their time embedding takes t of shape (B,)."""
    if isinstance(t, Tensor) and t.shape == (x.shape[0],):
        return
    given = (f"a Python {type(t).__name__}" if not isinstance(t, Tensor)
             else f"a tensor of shape {tuple(t.shape)}")
    fails = ("a shape (1,) only happens to broadcast inside "
             "them" if isinstance(t, Tensor) and t.shape == (1,)
             else "they reject this deep inside their time embedding")
    raise Mismatch(f"the network was called with t as {given}; the lesson's U-Net and DiT take t "
                   f"as a tensor of shape (B,) = ({x.shape[0]},), one time per example ({fails}). "
                   "Build it with torch.full((x.shape[0],), tau * 1000, device=x.device).")


class _Velocity:
    """A made-up velocity network that depends on x and t and counts its calls."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.w, self.u = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)
        self.calls: list[float] = []

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        _strict_time(x, t)
        self.calls.append(float(t.reshape(-1)[0]))
        t = t.reshape(-1, 1, 1, 1)
        return torch.tanh(0.7 * x * self.w + (t / SCALE) * self.u + 0.3 * torch.sin(t / 50))


def _loss_case(seed: int) -> Callable:
    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x0, eps = torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
        tau = torch.rand(3, generator=g)
        net = _Velocity(seed)
        tau_ = tau.reshape(-1, 1, 1, 1)
        x_tau = (1 - tau_) * x0 + tau_ * eps
        mistakes = [
            Mistake(
                "the velocity points the other way: time runs from the data (tau = 0) to the "
                "noise (tau = 1), and the target is the velocity dx_tau / dtau in that direction.",
                per_example_mse(net(x_tau, tau * SCALE), x0 - eps),
            ),
            Mistake(
                "x_tau has its ends swapped: the path is the data at tau = 0 and the noise at "
                "tau = 1 (lesson 12's Math).",
                per_example_mse(net(tau_ * x0 + (1 - tau_) * eps, tau * SCALE), eps - x0),
            ),
            Mistake(
                "the network must see t = tau * 1000, the range its time embedding was made "
                "for, not tau itself.",
                per_example_mse(net(x_tau, tau), eps - x0),
            ),
            Mistake(
                "that target is the noise (DDPM's); the flow's target is the velocity u of the "
                "Math, dx_tau / dtau.",
                per_example_mse(net(x_tau, tau * SCALE), eps),
            ),
            Mistake(
                "average over each example's pixels, not sum: the loss per example is a mean.",
                (net(x_tau, tau * SCALE) - (eps - x0)).square().flatten(1).sum(1),
            ),
            Mistake(
                "the network was told 1 - tau: time runs from the data (tau = 0) to the noise "
                "(tau = 1), and the network sees t = tau * 1000.",
                per_example_mse(net(x_tau, (1 - tau) * SCALE), eps - x0),
            ),
            Mistake(
                "the target is the velocity u of the Math, dx_tau / dtau, not the data x0.",
                per_example_mse(net(x_tau, tau * SCALE), x0),
            ),
            Mistake(
                "the flow's path is a straight line between x0 and eps, with no square roots "
                "in its weights (those are the diffusion schedule's).",
                per_example_mse(
                    net((1 - tau_).sqrt() * x0 + tau_.sqrt() * eps, tau * SCALE), eps - x0
                ),
            ),
            Mistake(
                "that is the absolute error (L1); the loss is a squared error.",
                (net(x_tau, tau * SCALE) - (eps - x0)).abs().flatten(1).mean(1),
            ),
        ]
        torch.manual_seed(seed)
        got = fn(net, x0.clone(), tau.clone(), eps.clone())
        if isinstance(got, Tensor) and got.ndim == 0:
            raise Mismatch("flow_matching_loss returned one number; return the loss per example, "
                           "shape (B,): the mean over each example's pixels (the training loop "
                           "averages over the batch).")
        torch.manual_seed(seed + 1)
        again = fn(net, x0.clone(), tau.clone(), eps.clone())
        if isinstance(got, Tensor) and isinstance(again, Tensor) and got.shape == again.shape \
                and not torch.allclose(got, again):
            raise Mismatch("two calls with the same x0, tau and eps gave different losses: make "
                           "x_tau from the eps you are given (the target uses it too); draw no "
                           "random numbers yourself.")
        compare(got, flow_matching_loss(net, x0, tau, eps), mistakes=mistakes,
                what="flow_matching_loss on 3 examples at tau = "
                     f"{[round(v, 2) for v in tau.tolist()]}",
                otherwise="does not match the lesson's loss (Liu et al. 2023, Eq. 1, in lesson "
                          "12's Math and section 3), and none of the usual mistakes explains it: "
                          "check the point x_tau (which end is the data), the time the network "
                          "is told, the target it is compared with, and the mean per example.")
    return case


def _loss_is_differentiable(fn: Callable) -> None:
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    loss = fn(
        lambda x, t, cond=None: net(x),
        torch.randn(2, 1, 4, 4),
        torch.rand(2),
        torch.randn(2, 1, 4, 4),
    )
    require_gradient(loss, "flow_matching_loss", "the model's output")


FLOW_MATCHING_LOSS = Checker(
    "flow_matching_loss",
    flow_matching_loss,
    [_loss_case(0), _loss_case(1), _loss_is_differentiable],
    hints=(
        ("Make the point x_tau on the straight line between the data and the noise at time tau, "
         "and ask the network how fast, and in which direction, that point moves as tau grows."),
        ("tau is one number per example: give it a shape that broadcasts over the pixels. The "
         "loss compares the network's answer with the line's velocity, per example."),
    ),
    see="Liu et al. 2023, Eq. 1, in lesson 12, section 3",
)


def _sampler_mistakes(net: _Velocity, x: Tensor, steps: int) -> list[Mistake]:
    def run(*, times=None, sign=1.0, at_next=False, scale=SCALE, rounded=False, clip=False):
        ts, z = times or flow_times(steps), x.clone()
        for tau, tau_next in zip(ts[:-1], ts[1:]):
            at = tau_next if at_next else tau
            t = torch.full((z.shape[0],), at * scale)
            v = net(z, t.round() if rounded else t)
            z = z + sign * (tau_next - tau) * v
            z = z.clamp(-1, 1) if clip else z
        return z
    return [
        Mistake("sampling starts at tau = 1 (the noise, where x is) and walks to tau = 0 (the "
                "data); yours walks from 0 to 1.", run(times=flow_times(steps)[::-1])),
        Mistake("yours moves the other way: sampling walks tau downwards, so each step's change "
                "in tau is negative, and Euler follows dx/dtau = u over that change.",
                run(sign=-1.0)),
        Mistake("Euler evaluates the velocity at the start of each step, at tau, not at tau_next.",
                run(at_next=True)),
        Mistake("the network must see t = tau * 1000, not tau itself.", run(scale=1.0)),
        Mistake("t was rounded to a whole step; the network takes t = tau * 1000 as it is, a "
                "float.", run(rounded=True)),
        Mistake("x was clipped to [-1, 1] along the way: only the finished sample is an image; "
                "x_tau is not.",
                run(clip=True)),
    ]


def _sampler_case(steps: int, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        reference = _Velocity(seed)
        want = flow_euler(reference, x, steps)
        net = _Velocity(seed)
        # its own network: the counts stay the learner's
        mistakes = _sampler_mistakes(_Velocity(seed), x, steps)
        torch.manual_seed(seed)
        got = fn(net, x.clone(), steps)
        net.calls.clear()
        torch.manual_seed(seed + 1)
        again = fn(net, x.clone(), steps)
        if isinstance(got, Tensor) and isinstance(again, Tensor) and not torch.allclose(got, again):
            raise Mismatch("two runs from the same x gave different samples: start from the x you "
                           "are given (it is the noise at tau = 1), and draw nothing else: Euler "
                           "is deterministic.")
        if len(net.calls) != steps:
            raise Mismatch(f"flow_euler with steps = {steps} called the network {len(net.calls)} "
                           f"times; Euler takes exactly {steps} steps, one network evaluation "
                           "each, from tau = 1 to tau = 0.")
        compare(got, want, mistakes=mistakes, what=f"flow_euler with steps = {steps}",
                otherwise="does not match Euler's method on the lesson's evenly spaced times from "
                          "tau = 1 to tau = 0 (lesson 12's Math and section 3), and none of the "
                          "usual mistakes explains it: check the grid (steps + 1 evenly spaced "
                          "times, both ends included), where each step reads the velocity, and "
                          "the size and sign of each move.")
    return case


FLOW_EULER = Checker(
    "flow_euler", flow_euler, [_sampler_case(4, 0), _sampler_case(1, 1), _sampler_case(7, 2)],
    hints=(("You start from pure noise at one end of the straight paths and follow the velocity "
            "the network gives back to the other end, in equal steps of time."),
           ("torch.linspace gives the step boundaries. Euler reads the slope once per step, where "
            "the step starts, and follows it for the whole step: which sign does a step's change "
            "in time have here?")),
    see="Euler's method on the ODE of lesson 12's Math, from tau = 1 to 0 (section 3)",
)
