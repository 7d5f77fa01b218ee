"""Checkers for lesson 11: RePaint's step (its inner loop) and DDIM inversion, both built on the
learner's DDIM step of lesson 07."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffuse_edu.diffusion.editing import repaint_step, replace_known
from diffuse_edu.diffusion.forward_process import q_forward, q_sample
from diffuse_edu.diffusion.prediction import x0_to_eps
from diffuse_edu.diffusion.samplers import ddim_inversion, ddim_step, timesteps
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare

_SCHEDULE = cosine_schedule(1000)


@dataclass
class _Estimates:
    x0: torch.Tensor
    eps: torch.Tensor


class _StandIn:
    """A stand-in denoiser: smooth, consistent estimates (x_t = sqrt(ab) x0_hat + sqrt(1 - ab)
    eps_hat) from x_t and t, recording the step of every call. At t = 0 its noise estimate is
    infinite, as a real model's is meaningless there."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def at_step(self, x: torch.Tensor, t: int, cond: object = None, *, schedule=None) -> _Estimates:
        self.calls.append(int(t))
        ab = _SCHEDULE.alpha_bar[int(t)].item()
        x0 = torch.tanh(
            0.7 * x + 0.3 * torch.sin(torch.arange(x.shape[-1], dtype=x.dtype)) + 1e-4 * t
        )
        eps = x0_to_eps(x, x0, ab) if ab < 1 else torch.full_like(x, float("inf"))
        return _Estimates(x0, eps)


class _Noise:
    """noise() for the checks: the same tensor at every call, so that the order of the draws does
    not matter, only whether noise() is used."""

    def __init__(self, like: torch.Tensor, seed: int) -> None:
        self.value = torch.randn(like.shape, generator=torch.Generator().manual_seed(seed))
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.value.clone()


def _repaint_data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x_t, known = torch.randn(2, 1, 4, 6, generator=g), torch.rand(2, 1, 4, 6, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, 4, 6)
    mask[..., :2, :] = 1  # the top half is known
    return x_t, known, mask


def _replace(x, known, mask, t_prev, schedule, noise, how, t=None):
    if how == "at t":  # the known image noised to the step's start instead of its end
        return replace_known(x, known, mask, t, schedule, noise)
    if how == "clean":
        return torch.where(mask.bool(), known, x)
    if how == "inverted":
        return replace_known(x, known, 1 - mask, t_prev, schedule, noise)
    return replace_known(x, known, mask, t_prev, schedule, noise)


def _repaint_variant(
    d,
    x_t,
    t,
    t_prev,
    known,
    mask,
    schedule,
    resample,
    noise,
    cond=None,
    *,
    last_once=True,
    jump="forward",
    jump_last=False,
    replace=True,
    replace_first=False,
    eta=1.0,
    extra=0,
    paste="noised",
):
    tries = (resample if t_prev > 0 or not last_once else 1) + extra
    for r in range(tries):
        if replace_first:
            x_t = replace_known(x_t, known, mask, t, schedule, noise())
        pred = d.at_step(x_t, t, cond, schedule=schedule)
        x_prev = ddim_step(
            x_t, pred.x0, pred.eps, t, t_prev, schedule, eta=eta, noise=noise() if eta else None
        )
        if replace and not replace_first:
            x_prev = _replace(x_prev, known, mask, t_prev, schedule, noise(), paste, t)
        if r < tries - 1 or jump_last:
            if jump == "forward":
                x_t = q_forward(x_prev, t_prev, t, schedule, noise())
            elif jump == "from x0":
                x_t = q_sample(x_prev, t, schedule, noise())
        if jump_last and r == tries - 1:
            return x_t
    return x_prev


def _count_tries(what: str, calls: int, tries: int) -> None:
    """One network evaluation per try: checked before the values, so that a wrong number of tries is
    named as such rather than as whichever value mistake it happens to resemble."""
    if calls == tries:
        return
    if calls == 2 * tries:
        raise Mismatch(f"{what} evaluated the network {calls} times, twice per try: a try asks "
                       "the denoiser once, at x_t, and takes both estimates (pred.x0, pred.eps) "
                       "from that call.")
    raise Mismatch(f"{what} evaluated the network {calls} times: {calls} tries instead of "
                   f"{tries}. The loop runs resample times (range(resample)), one evaluation per "
                   "try, each try but the last followed by a jump back to t.")


def _repaint_case(t: int, t_prev: int, resample: int, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x_t, known, mask = _repaint_data(seed)
        args = (x_t, t, t_prev, known, mask, _SCHEDULE, resample)
        what = f"repaint_step from t = {t} to t_prev = {t_prev} with resample = {resample}"
        stand_in, noise = _StandIn(), _Noise(x_t, seed)
        got = fn(stand_in, x_t.clone(), t, t_prev, known.clone(), mask, _SCHEDULE, resample, noise)
        tries = resample if t_prev > 0 else 1
        if t_prev == 0 and len(stand_in.calls) > 1:
            raise Mismatch(f"{what} evaluated the network {len(stand_in.calls)} times; the last "
                           "step runs once: at t_prev = 0 there is nothing to jump back to, and a "
                           "repeat would denoise the finished image as if it were still noisy "
                           "(Lugmayr et al. 2022, Alg. 1).")
        _count_tries(what, len(stand_in.calls), tries)
        if noise.calls == 0:
            raise Mismatch(f"{what} never called noise(): draw every random number with noise(), "
                           "so that runs can be repeated (the step's noise, the known image's "
                           "noise and the jump's noise).")

        def wrong(**kw):
            return _repaint_variant(_StandIn(), *args, _Noise(x_t, seed), **kw)

        mistakes = [
            Mistake("each try started from the same x_t: between tries, jump back from the try's "
                    "x_{t_prev} to t with q(x_t | x_{t_prev}), so the next try starts from the "
                    "previous one's result.",
                    wrong(jump="none")),
            Mistake("you jumped back with q(x_t | x_0), as if x_{t_prev} were a clean image; the "
                    "way back from t_prev to t is q(x_t | x_{t_prev}): sqrt(ab_t / ab_prev) x + "
                    "sqrt(1 - ab_t / ab_prev) noise.",
                    wrong(jump="from x0")),
            Mistake("you returned x_t after a last jump back; return the last try's x_{t_prev}.",
                    wrong(jump_last=True)),
            Mistake("the known region was not put back: after each step, replace it with the "
                    "known image noised to t_prev.", wrong(replace=False)),
            Mistake("the known region was put back before the step, at t; put it back after the "
                    "step, at t_prev, so that the step's result keeps it.",
                    wrong(replace_first=True)),
            Mistake("the known image was pasted in clean at t_prev > 0: noise it to t_prev first "
                    "(q_sample with noise()), so that both regions carry the same noise level; "
                    "only at t_prev = 0 does it go back as it is.", wrong(paste="clean")),
            Mistake("the mask is inverted: 1 marks the known pixels, which come from the known "
                    "image.",
                    wrong(paste="inverted")),
            Mistake("the known image was noised to t, where the step starts; x_prev is at t_prev, "
                    "so noise the known image to t_prev (q_sample(known, t_prev, ...)).",
                    wrong(paste="at t")),
            Mistake("RePaint's steps are ancestral: ddim_step with eta = 1 and noise() as its "
                    "noise.", wrong(eta=0.0)),
        ]
        compare(
            got, repaint_step(_StandIn(), *args, _Noise(x_t, seed)), what=what, mistakes=mistakes
        )
        # This noise() returns the same values at every call, so a draw used twice leaves the values
        # right:
        # count the draws. Each try needs the step's noise, the known image's (below t_prev = 0)
        # and, but
        # for the last try, the jump's.
        draws = tries + (tries if t_prev > 0 else 0) + tries - 1
        if noise.calls < draws:
            raise Mismatch(f"{what} called noise() {noise.calls} time(s) for {draws} independent "
                           "draws: each random number needs its own call (the step's noise, the "
                           "known image's noise at t_prev and the jump's noise, at every try). A "
                           "draw used twice ties together what must be independent: the known "
                           "region's noise and the step's, or one try's jump and its step.")
    return case


def _repaint_exact_known(fn: Callable) -> None:
    x_t, known, mask = _repaint_data(8)
    got = fn(_StandIn(), x_t, 20, 0, known, mask, _SCHEDULE, 4, _Noise(x_t, 8))
    if (
        isinstance(got, torch.Tensor)
        and got.shape == known.shape
        and not torch.equal(got * mask, known * mask)
    ):
        raise Mismatch("after the last step (t_prev = 0) the known region must be the known image "
                       "exactly.")


def _repaint_unchanged(fn: Callable) -> None:
    x_t, known, mask = _repaint_data(9)
    before = (x_t.clone(), known.clone())
    fn(_StandIn(), x_t, 400, 300, known, mask, _SCHEDULE, 3, _Noise(x_t, 9))
    if not (torch.equal(x_t, before[0]) and torch.equal(known, before[1])):
        raise Mismatch("repaint_step changed x_t or the known image in place; the loop still "
                       "needs them: build new tensors.")


REPAINT_STEP = Checker(
    "repaint_step",
    repaint_step,
    [
        _repaint_case(600, 560, 3, 0),
        _repaint_case(300, 200, 2, 1),
        _repaint_case(40, 0, 5, 2),
        _repaint_case(900, 850, 1, 3),
        _repaint_exact_known,
        _repaint_unchanged,
    ],
    hints=(
        ("A try is: estimates at x_t, a step down to t_prev, the known region put back. Between "
         "tries the result has to go back up to t, noisier, so that the next try can redo the step "
         "from there."),
        ("Going up from t_prev to t is the forward process over the steps in between, started from "
         "x_{t_prev} (not from a clean image). Count the tries, and think about what 'going back "
         "up' means when t_prev = 0."),
    ),
    see="Lugmayr et al. 2022, Alg. 1, in lesson 11, section 3",
)


def _inversion_variant(d, x0, schedule, steps, t_max, cond=None, *, order="up", at_zero="t1",
                       skip_first=False,
                       label="start", eta=0.0):
    ts = timesteps(schedule, steps, t_max=t_max)
    ts = ts[::-1] if order == "up" else ts
    pairs = list(zip(ts[:-1], ts[1:]))[1 if skip_first else 0:]
    x = x0
    for t, t_next in pairs:
        at = {"start": t, "end": t_next}[label]
        at = max(at, 1) if at_zero in ("t1", "x0") else at
        pred = d.at_step(x, at, cond, schedule=schedule)
        x0_hat = x if (t == 0 and at_zero == "t1") else pred.x0
        x = ddim_step(x, x0_hat, pred.eps, t, t_next, schedule, eta=eta,
                      noise=torch.randn(x.shape) if eta else None)
    return x


def _inversion_case(steps: int, t_max: int, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x0 = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        args = (x0, _SCHEDULE, steps, t_max)
        what = f"ddim_inversion of 2 images in {steps} steps to t_max = {t_max}"
        stand_in = _StandIn()
        got = fn(stand_in, x0.clone(), _SCHEDULE, steps, t_max)
        if 0 in stand_in.calls:
            raise Mismatch(f"{what} {_AT_ZERO}")
        if isinstance(got, (list, tuple)):
            raise Mismatch(f"{what} returned a {type(got).__name__}; return the final x_{{t_max}} "
                           "alone.")
        rising = timesteps(_SCHEDULE, steps, t_max=t_max)[::-1]
        if steps > 1 and stand_in.calls == rising[1:]:
            raise Mismatch(f"{what} asked the network at the step's end every time (t_next = "
                           f"{rising[1:]}) with the x of the step's start: only x_t is known, so "
                           "ask at t, the step's start (t = 1 for the first step, from t = 0).")
        # steps - 1: the first step left out, named below
        if len(stand_in.calls) not in (steps, steps - 1):
            jump = (
                " a single jump from x_0 with one noise estimate is not DDIM's path."
                if len(stand_in.calls) == 1
                else ""
            )
            raise Mismatch(f"{what} asked the network {len(stand_in.calls)} time(s); the climb "
                           f"takes {steps} DDIM steps, each with the estimates at its own start "
                           f"(one call per step).{jump}")
        mistakes = [
            Mistake("the steps ran downwards, from t_max to 0: that is sampling. Inversion "
                    "climbs: take the grid in rising order, from 0 to t_max.",
                    _inversion_variant(_StandIn(), *args, order="down")),
            Mistake("the first step (from t = 0) is missing: the climb starts at x_0 itself.",
                    _inversion_variant(_StandIn(), *args, skip_first=True)),
            Mistake("the estimates were asked at the step's end, t_next; only x_t is known, so "
                    "ask them at t, the step's start (the less noisy end).",
                    _inversion_variant(_StandIn(), *args, label="end")),
            Mistake("at t = 0 use x_0 itself as x0_hat (the network's estimate there is at t = 1, "
                    "one step off).",
                    _inversion_variant(_StandIn(), *args, at_zero="x0")),
        ]
        compare(
            got,
            ddim_inversion(_StandIn(), x0, _SCHEDULE, steps, t_max),
            what=what,
            mistakes=mistakes,
        )

    return case


_AT_ZERO = ("evaluated the network at t = 0, where it was never trained (its noise estimate is "
            "meaningless there): at t = 0 take x0_hat = x_0 itself and the noise estimate at t = "
            "1.")
_STEP_UPWARDS = ("Inversion runs the DDIM step upwards (t_prev > t, from t = 0 on) with eta = 0, "
                 "where sigma must be exactly 0 without evaluating its formula: upwards 1 - "
                 "alpha_bar_t / alpha_bar_prev is negative (a NaN square root) and 1 - "
                 "alpha_bar_0 = 0 divides. Compute sigma only when eta > 0, in your ddim_step "
                 "(section 1 checks it upwards too) and in any step you wrote inside "
                 "ddim_inversion.")


def _inversion_deterministic(fn: Callable) -> None:
    x0 = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(5)) * 2 - 1
    stand_in = _StandIn()
    try:
        torch.manual_seed(1)
        a = fn(stand_in, x0, _SCHEDULE, 5, 500)
        torch.manual_seed(2)
        b = fn(_StandIn(), x0, _SCHEDULE, 5, 500)
    except ZeroDivisionError as e:
        raise Mismatch(f"ddim_inversion divided by zero ({e}): usually a step with eta > 0, whose "
                       "noise has no meaning on the way up from t = 0. Inversion is deterministic "
                       f"DDIM: eta = 0, no noise. {_STEP_UPWARDS}") from None
    # the stand-in's noise estimate is inf there: that, not the step, made the NaN
    if 0 in stand_in.calls:
        raise Mismatch(f"ddim_inversion of 2 images in 5 steps to t_max = 500 {_AT_ZERO}")
    if isinstance(a, torch.Tensor) and not torch.isfinite(a).all():
        raise Mismatch("ddim_inversion returned NaN or inf (a NaN is not randomness: both runs "
                       f"give it). {_STEP_UPWARDS}")
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and not torch.allclose(a, b):
        raise Mismatch("two inversions of the same images differ: inversion is deterministic DDIM "
                       "(eta = 0, no noise), so that the latent it finds regenerates the image.")


class _Conditional(_StandIn):
    """A stand-in that records the condition of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.conds: list[object] = []

    def at_step(self, x: torch.Tensor, t: int, cond: object = None, *, schedule=None) -> _Estimates:
        self.conds.append(cond)
        return super().at_step(x, t, cond, schedule=schedule)


def _inversion_passes_cond(fn: Callable) -> None:
    x0 = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(7)) * 2 - 1
    cond = torch.tensor([3, 7])
    stand_in = _Conditional()
    fn(stand_in, x0, _SCHEDULE, 3, 300, cond)
    if not stand_in.conds or any(c is not cond for c in stand_in.conds):
        raise Mismatch("ddim_inversion did not pass cond to the denoiser (denoiser.at_step(x, t, "
                       "cond)): the latent must be found by the same conditional model that will "
                       "regenerate the image, or the two paths differ.")


def _inversion_unchanged(fn: Callable) -> None:
    x0 = torch.rand(2, 1, 4, 6, generator=torch.Generator().manual_seed(6)) * 2 - 1
    before = x0.clone()
    fn(_StandIn(), x0, _SCHEDULE, 4, 400)
    if not torch.equal(x0, before):
        raise Mismatch("ddim_inversion changed the images in place: build new tensors.")


DDIM_INVERSION = Checker(
    "ddim_inversion",
    ddim_inversion,
    [
        _inversion_deterministic,
        _inversion_case(4, 400, 0),
        _inversion_case(10, 900, 1),
        _inversion_case(1, 300, 2),
        _inversion_unchanged,
        _inversion_passes_cond,
    ],
    hints=(
        ("Sampling walks the grid from t_max down to 0; inversion walks the same grid up. At each "
         "step only the less noisy end is known, so the estimates come from there."),
        ("timesteps(schedule, steps, t_max=t_max) lists the grid from t_max to 0: reverse it. Your "
         "ddim_step moves to any other step, also a noisier one. Mind t = 0, where the network was "
         "never trained."),
    ),
    see="Song et al. 2021, Sec. 4.3, in lesson 11, section 4: DDIM with t and t_prev swapped, "
    "estimates at the start",
)
