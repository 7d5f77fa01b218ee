"""Checkers for lesson 07: one DDIM step and one Heun step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.diffusion.samplers import ddim_step, heun_step
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare

_SCHEDULE = cosine_schedule(1000)


def _ddim_case(t: int, t_prev: int, eta: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    x, e, n = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    return x, e, t, t_prev, n, eta


def _ddim_mistakes(x, e, t, t_prev, n, eta) -> list[Mistake]:
    ab, abp = _SCHEDULE.alpha_bar[t].item(), _SCHEDULE.alpha_bar[t_prev].item()
    a, ap = _SCHEDULE.alphas[t].item(), _SCHEDULE.alphas[t_prev].item()
    sigma = eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)) ** 0.5
    x0 = (x - (1 - ab) ** 0.5 * e) / ab**0.5

    def out(x0_, sig_, coef_):
        return abp**0.5 * x0_ + coef_ * e + sig_ * n
    return [
        Mistake("use alpha_bar (the products), not the one-step alphas.",
                (ap**0.5) * (x - (1 - a) ** 0.5 * e) / a**0.5 + (1 - ap) ** 0.5 * e),
        Mistake("x0_hat needs sqrt(1 - alpha_bar_t) in front of eps_hat, not (1 - alpha_bar_t).",
                out((x - (1 - ab) * e) / ab**0.5, sigma, max(1 - abp - sigma**2, 0) ** 0.5)),
        Mistake("the direction term must shrink when noise is added: its coefficient is "
                "sqrt(1 - alpha_bar_prev - sigma^2).", out(x0, sigma, (1 - abp) ** 0.5)),
        Mistake("sigma_t(eta) has two factors: eta * sqrt((1 - ab_prev) / (1 - ab)) * sqrt(1 - ab / ab_prev).",
                out(x0, eta * ((1 - abp) / (1 - ab)) ** 0.5,
                    max(1 - abp - eta**2 * (1 - abp) / (1 - ab), 0) ** 0.5)),
        Mistake("x0_hat and eps_hat are swapped in the update: x_prev = sqrt(ab_prev) x0_hat + "
                "sqrt(1 - ab_prev - sigma^2) eps_hat + sigma noise.",
                abp**0.5 * e + max(1 - abp - sigma**2, 0) ** 0.5 * x0 + sigma * n),
    ]


def _ddim(t: int, t_prev: int, eta: float, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x, e, tt, tp, n, et = _ddim_case(t, t_prev, eta, seed)
        want = ddim_step(x, e, tt, tp, _SCHEDULE, eta=et, noise=n)
        got = fn(x.clone(), e.clone(), tt, tp, _SCHEDULE, eta=et, noise=n.clone())
        compare(got, want, what=f"ddim_step from t = {t} to {t_prev} with eta = {eta}",
                mistakes=_ddim_mistakes(x, e, tt, tp, n, et))
    return case


def _ddim_clip(t: int, t_prev: int, seed: int) -> Callable:
    """Near t = T the implied x0 is large (sqrt(alpha_bar_t) is tiny), so clip=1.0 must matter."""
    def case(fn: Callable) -> None:
        x, e, tt, tp, n, _ = _ddim_case(t, t_prev, 0.0, seed)
        e = 0.5 * e + 0.5 * x  # a poor noise estimate: x0_hat far outside [-1, 1]
        want = ddim_step(x, e, tt, tp, _SCHEDULE, clip=1.0)
        ab, abp = _SCHEDULE.alpha_bar[tt].item(), _SCHEDULE.alpha_bar[tp].item()
        x0 = ((x - (1 - ab) ** 0.5 * e) / ab**0.5).clamp(-1, 1)
        mistakes = [
            Mistake("clip is ignored: clamp x0_hat to [-clip, clip] when clip is given.",
                    ddim_step(x, e, tt, tp, _SCHEDULE)),
            Mistake("after clamping x0_hat, recompute eps_hat from it, (x_t - sqrt(ab) x0_hat) / "
                    "sqrt(1 - ab), so that the two stay consistent.", abp**0.5 * x0 + (1 - abp) ** 0.5 * e),
            Mistake("clip applies to x0_hat, not to the returned x_prev.",
                    ddim_step(x, e, tt, tp, _SCHEDULE).clamp(-1, 1)),
        ]
        got = fn(x.clone(), e.clone(), tt, tp, _SCHEDULE, eta=0.0, noise=None, clip=1.0)
        compare(got, want, what=f"ddim_step from t = {t} to {t_prev} with clip = 1.0", mistakes=mistakes)
    return case


def _denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A made-up denoiser that depends on both x and sigma."""
    return x / (1 + sigma**2) + 0.1 * torch.tanh(x) * sigma


def _heun_mistakes(x, s, sn) -> list[Mistake]:
    d = (x - _denoise(x, s)) / s
    xe = x + (sn - s) * d
    dn = (xe - _denoise(xe, sn)) / sn
    return [
        Mistake("that is Euler's step: Heun adds a correction with the slope at sigma_next.", xe),
        Mistake("only the slope at sigma_next was used; average the two slopes.", x + (sn - s) * dn),
        Mistake("the averaged slope must be applied from x, not from the Euler estimate.",
                xe + (sn - s) * (d + dn) / 2),
        Mistake("the second slope must be evaluated at sigma_next (the Euler estimate's noise level).",
                x + (sn - s) * (d + (xe - _denoise(xe, s)) / s) / 2),
    ]


def _heun(s: float, sn: float) -> Callable:
    def case(fn: Callable) -> None:
        x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(int(s * 10)))
        want = heun_step(x, s, sn, _denoise)
        got = fn(x.clone(), s, sn, _denoise)
        if sn == 0 and isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            raise Mismatch("the last step goes to sigma_next = 0, where the slope (x - D) / sigma is "
                           "undefined: take the Euler step alone there.")
        compare(got, want, what=f"heun_step from sigma = {s} to {sn}",
                mistakes=_heun_mistakes(x, s, sn) if sn else [])
    return case


DDIM_STEP = Checker(
    "ddim_step", ddim_step,
    [_ddim(900, 700, 0.0, 0), _ddim(500, 250, 0.0, 1), _ddim(600, 400, 0.6, 2), _ddim(100, 0, 0.0, 3),
     _ddim_clip(980, 900, 4)],
    hints=("First estimate x0 from x_t and eps_hat; then move to the noise level of t_prev, keeping the "
           "same eps_hat as the direction of the noise.",
           "With eta > 0 part of the eps_hat term is replaced by fresh noise of standard deviation sigma, so "
           "the deterministic part shrinks to keep the total variance; with clip, clamp x0_hat and make "
           "eps_hat consistent with the clamped x0_hat before the step."),
)
HEUN_STEP = Checker(
    "heun_step", heun_step, [_heun(10.0, 5.0), _heun(1.0, 0.4), _heun(0.3, 0.0)],
    hints=("Heun is Euler with a correction: take an Euler step, look at the slope where it lands, and "
           "average the two slopes.",
           "The slope at noise level s is (x - D(x, s)) / s. At s_next = 0 the second slope is undefined: "
           "keep the Euler step there."),
)
