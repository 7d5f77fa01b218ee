"""Checkers for lesson 07: one DDIM step and one Heun step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.diffusion.forward_process import mix, posterior_variance
from diffuse_edu.diffusion.prediction import eps_to_x0, x0_to_eps
from diffuse_edu.diffusion.samplers import ddim_step, heun_step
from diffuse_edu.diffusion.schedules import cosine_schedule, rescale_zero_terminal_snr
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare

_SCHEDULE = cosine_schedule(1000)
_ZERO_SNR = rescale_zero_terminal_snr(_SCHEDULE)


def _ddim_case(
    t: int, t_prev: int, eta: float, seed: int, schedule=_SCHEDULE, clipped: bool = False
):
    """x_t, a denoiser's x0_hat and eps_hat (consistent with each other; with ``clipped`` x0_hat is
    clamped to [-1, 1] afterwards, so that it is no longer the x0 that eps_hat implies), noise."""
    g = torch.Generator().manual_seed(seed)
    x0, eps, n = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    x0 = 1.6 * x0  # some values outside [-1, 1], so that a clamp changes them
    ab = schedule.alpha_bar[t].item()
    x = mix(x0, eps, ab)
    x0_hat = x0 + 0.3 * n.roll(1, 0)  # an imperfect estimate
    eps_hat = x0_to_eps(x, x0_hat, ab)  # consistent with x0_hat
    if clipped:
        x0_hat = x0_hat.clamp(-1, 1)
    return x, x0_hat, eps_hat, n


def _ddim_mistakes(x, x0, e, t, t_prev, n, eta, schedule=_SCHEDULE) -> list[Mistake]:
    ab, abp = schedule.alpha_bar[t].item(), schedule.alpha_bar[t_prev].item()
    ap = schedule.alphas[t_prev].item()
    sigma = eta * posterior_variance(ab, abp) ** 0.5

    def out(x0_, sig_, coef_, noise_=n):
        return abp**0.5 * x0_ + coef_ * e + sig_ * noise_
    coef = max(1 - abp - sigma**2, 0) ** 0.5
    return [
        Mistake(
            "use alpha_bar (the products), not the one-step alphas.",
            ap**0.5 * x0 + max(1 - ap - sigma**2, 0) ** 0.5 * e + sigma * n,
        ),
        Mistake(
            "the direction term must shrink when noise is added: its coefficient is "
            "sqrt(1 - alpha_bar_prev - sigma^2).",
            out(x0, sigma, (1 - abp) ** 0.5),
        ),
        Mistake(
            "sigma_t(eta) has two factors: eta * sqrt((1 - ab_prev) / (1 - ab)) * sqrt(1 - ab "
            "/ ab_prev).",
            out(
                x0,
                eta * ((1 - abp) / (1 - ab)) ** 0.5,
                max(1 - abp - eta**2 * (1 - abp) / (1 - ab), 0) ** 0.5,
            ),
        ),
        Mistake(
            "x0_hat and eps_hat are swapped in the update: x_prev = sqrt(ab_prev) x0_hat + "
            "sqrt(1 - ab_prev - sigma^2) eps_hat + sigma noise.",
            abp**0.5 * e + coef * x0 + sigma * n,
        ),
        *(
            [
                Mistake(
                    "sigma is the noise's standard deviation: add sigma * noise, not sigma^2 * "
                    "noise.",
                    out(x0, sigma**2, coef),
                )
            ]
            if eta
            else []
        ),
        Mistake(
            "that is the step of a variance of (1 - ab_prev) eta^2: sigma_t(eta) is the "
            "posterior's standard deviation times eta, eta * sqrt((1 - ab_prev) / (1 - ab)) * "
            "sqrt(1 - ab / ab_prev).",
            out(x0, eta * (1 - abp) ** 0.5, max(1 - abp - eta**2 * (1 - abp), 0) ** 0.5),
        ),
        Mistake(
            "alpha_bar was read at t, where the step starts, instead of at t_prev, where it "
            "lands: that rebuilds x_t itself.",
            ab**0.5 * x0 + max(1 - ab - sigma**2, 0) ** 0.5 * e + sigma * n,
        ),
        Mistake(
            "x0_hat is weighted by alpha_bar_prev; its weight is the square root, "
            "sqrt(alpha_bar_prev), as in lesson 01's q_sample (x_prev must look like x0 "
            "noised to t_prev).",
            abp * x0 + coef * e + sigma * n,
        ),
        *(
            [
                Mistake(
                    f"the step landed at t - 1 = {t - 1}; DDIM jumps from t to the t_prev it is "
                    f"given ({t_prev}), skipping the steps between.",
                    ddim_step(x, x0, e, t, t - 1, schedule, eta=eta, noise=n),
                )
            ]
            if t_prev != t - 1
            else []
        ),
        *(
            [
                Mistake(
                    "sigma was built from 1 - alpha_bar_t / alpha_bar_prev alone (a variance of "
                    "the forward jump); sigma_t(eta) is eta times the posterior's standard "
                    "deviation, which also has the factor sqrt((1 - ab_prev) / (1 - ab)).",
                    out(
                        x0,
                        eta * (1 - ab / abp) ** 0.5,
                        max(1 - abp - eta**2 * (1 - ab / abp), 0) ** 0.5,
                    ),
                )
            ]
            if eta
            else []
        ),
        *(
            [
                Mistake(
                    "the fresh noise is added unscaled: it enters as sigma * noise.",
                    out(x0, 1.0, coef),
                ),
                Mistake(
                    "sigma is eta times the posterior's standard deviation, not eta squared times "
                    "it.",
                    out(x0, eta**2 * sigma / eta, max(1 - abp - (eta * sigma) ** 2, 0) ** 0.5),
                ),
            ]
            if 0 < eta < 1
            else []
        ),
    ]


def _ddim(t: int, t_prev: int, eta: float, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x, x0, e, n = _ddim_case(t, t_prev, eta, seed)
        want = ddim_step(x, x0, e, t, t_prev, _SCHEDULE, eta=eta, noise=n)
        got = fn(x.clone(), x0.clone(), e.clone(), t, t_prev, _SCHEDULE, eta=eta, noise=n.clone())
        if isinstance(got, tuple):
            raise Mismatch(f"ddim_step returned a tuple of {len(got)}; it returns one tensor, "
                           "x_{t_prev} alone (the sampler asks the denoiser again for the next "
                           "step's estimates).")
        noisy = [] if eta else [Mistake("with eta = 0 the step is deterministic: sigma is 0, so "
                                        "the noise must not be added even when it is passed.",
                                        want + n)]
        compare(got, want, what=f"ddim_step from t = {t} to {t_prev} with eta = {eta}",
                mistakes=_ddim_mistakes(x, x0, e, t, t_prev, n, eta) + noisy,
                otherwise=("does not match DDIM's step (the lesson's Eq. 12 with sigma_t(eta) of "
                           "Eq. 16, section 1): compare your x_prev with sqrt(ab_prev) x0_hat + "
                           "sqrt(1 - ab_prev - sigma^2) eps_hat + sigma noise term by term."))
    return case


def _ddim_given_x0(fn: Callable) -> None:
    """The step uses the estimates as given (here x0_hat was clamped after the network), never an x0
    rebuilt from eps_hat."""
    t, t_prev = 980, 900
    x, x0, e, n = _ddim_case(t, t_prev, 0.0, 4, clipped=True)
    want = ddim_step(x, x0, e, t, t_prev, _SCHEDULE)
    ab, abp = _SCHEDULE.alpha_bar[t].item(), _SCHEDULE.alpha_bar[t_prev].item()
    rebuilt = eps_to_x0(x, e, ab)
    mistakes = [Mistake("use the x0_hat you are given: the denoiser's estimate (here clamped to "
                        "[-1, 1]) is x0_hat, and rebuilding it from eps_hat undoes that (and "
                        "divides by sqrt(alpha_bar_t), which is 0 at the end of a "
                        "zero-terminal-SNR schedule).",
                        mix(rebuilt, e, abp))]
    got = fn(x.clone(), x0.clone(), e.clone(), t, t_prev, _SCHEDULE, eta=0.0, noise=None)
    compare(got, want, what=f"ddim_step from t = {t} to {t_prev} with a clamped x0_hat",
            mistakes=mistakes)


def _ddim_zero_snr(fn: Callable) -> None:
    """At t = T of a zero-terminal-SNR schedule sqrt(alpha_bar_T) = 0: nothing may divide by it."""
    T = _ZERO_SNR.T
    x, x0, _, n = _ddim_case(T - 1, 900, 0.0, 5, schedule=_ZERO_SNR)
    e = x.clone()  # at alpha_bar_T = 0, x_T is pure noise: eps_hat = x_T
    want = ddim_step(x, x0, e, T, 900, _ZERO_SNR)
    got = fn(x.clone(), x0.clone(), e.clone(), T, 900, _ZERO_SNR, eta=0.0, noise=None)
    if isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
        raise Mismatch(f"ddim_step from t = {T} of a zero-terminal-SNR schedule returned inf or "
                       "NaN: there alpha_bar_T = 0, so anything that divides by sqrt(alpha_bar_t) "
                       "(rebuilding x0_hat from eps_hat) breaks. Use the x0_hat you are given.")
    compare(got, want, what=f"ddim_step from t = {T} to 900 of a zero-terminal-SNR schedule")


def _ddim_needs_noise(fn: Callable) -> None:
    x, x0, e, _ = _ddim_case(600, 400, 1.0, 6)
    try:
        got = fn(x, x0, e, 600, 400, _SCHEDULE, eta=1.0, noise=None)
    except ValueError:
        return
    except TypeError as error:
        if "NoneType" not in str(error):
            raise
        raise Mismatch(f"ddim_step with eta = 1 and noise=None raised TypeError ({error}): check "
                       "for it first and raise a ValueError that asks for noise (a step cannot "
                       "invent its own noise: the sampler passes seeded noise, so that runs "
                       "repeat).") from None
    raise Mismatch(f"ddim_step with eta = 1 and noise=None returned {type(got).__name__}; it must "
                   "raise a ValueError that asks for noise (a step cannot invent its own noise: "
                   "the sampler passes seeded noise, so that runs repeat).")


def _ddim_deterministic(fn: Callable) -> None:
    x, x0, e, n = _ddim_case(500, 250, 0.0, 7)
    want = ddim_step(x, x0, e, 500, 250, _SCHEDULE)
    got = fn(x.clone(), x0.clone(), e.clone(), 500, 250, _SCHEDULE, eta=0.0, noise=n.clone())
    compare(got, want, what="ddim_step with eta = 0 and noise given", mistakes=[
        Mistake("with eta = 0 the step is deterministic: sigma is 0, so the noise must not be "
                "added even when it is passed.", want + n),
        Mistake("with eta = 0 the step is deterministic: sigma = eta * ... is 0, so nothing of the "
                "noise may enter.", ddim_step(x, x0, e, 500, 250, _SCHEDULE, eta=1.0, noise=n))])


_UPWARDS = (
    "lesson 11's DDIM inversion runs this same step upwards, to a noisier t_prev > t, with eta = 0"
)
_SIGMA_ONLY_WITH_ETA = ("with eta = 0, sigma is 0: compute its formula only when eta > 0, since "
                        "upwards 1 - alpha_bar_t / alpha_bar_prev is negative (its square root is "
                        "NaN, or a math domain error) and from t = 0 the factor 1 / (1 - "
                        "alpha_bar_0) divides by 0")


def _ddim_upwards(t: int, t_prev: int, seed: int) -> Callable:
    """The step run upwards, as inversion runs it: from t (0 included, where x_t is the clean image)
    to a noisier t_prev, eta = 0."""
    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x0, n = 1.6 * torch.randn(3, 1, 4, 4, generator=g), torch.randn(3, 1, 4, 4, generator=g)
        ab = _SCHEDULE.alpha_bar[t].item()
        x = mix(x0, n, ab)
        x0_hat = x0 if t == 0 else x0 + 0.3 * n.roll(1, 0)  # at t = 0 inversion takes x_0 itself
        # t = 0: the estimate at t = 1
        eps_hat = n + 0.2 * x0 if t == 0 else x0_to_eps(x, x0_hat, ab)
        what = f"ddim_step from t = {t} up to t_prev = {t_prev} with eta = 0"
        try:
            got = fn(
                x.clone(),
                x0_hat.clone(),
                eps_hat.clone(),
                t,
                t_prev,
                _SCHEDULE,
                eta=0.0,
                noise=None,
            )
        except NotImplementedError:
            raise
        except (ZeroDivisionError, ValueError, TypeError, AssertionError) as e:
            sigma = isinstance(e, ZeroDivisionError) or "domain" in str(e) or "complex" in str(e)
            if isinstance(e, TypeError) and not sigma:
                raise  # not the direction's fault: the usual handling names it
            why = (
                f", and {_SIGMA_ONLY_WITH_ETA}"
                if sigma
                else "; nothing in the step may assume t_prev < t"
            )
            raise Mismatch(f"{what} raised {type(e).__name__} ({e}): {_UPWARDS}{why}.") from None
        if isinstance(got, torch.Tensor) and got.shape == x.shape and not torch.isfinite(got).all():
            raise Mismatch(f"{what} returned NaN or inf: {_UPWARDS}, and {_SIGMA_ONLY_WITH_ETA}.")
        compare(got, ddim_step(x, x0_hat, eps_hat, t, t_prev, _SCHEDULE), what=what,
                otherwise=f"{_UPWARDS}: the same formula, sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) "
                          "eps_hat with sigma = 0, must hold there; nothing in the step may assume "
                          "t_prev < t.")
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
        Mistake("only the slope at sigma_next was used; average the two slopes.",
                x + (sn - s) * dn),
        Mistake("the averaged slope must be applied from x, not from the Euler estimate.",
                xe + (sn - s) * (d + dn) / 2),
        Mistake("the second slope must be evaluated at sigma_next (the Euler estimate's noise "
                "level).",
                x + (sn - s) * (d + (xe - _denoise(xe, s)) / s) / 2),
        Mistake("the step runs the wrong way: it is (sigma_next - sigma) * slope with the slope "
                "(x - D(x, sigma)) / sigma, so x moves towards D as sigma falls.",
                x + (s - sn) * (d + (x + (s - sn) * d - _denoise(x + (s - sn) * d, sn)) / sn) / 2),
        Mistake("the second slope was taken at x; take it at the Euler estimate, where the first "
                "step landed.",
                x + (sn - s) * (d + (x - _denoise(x, sn)) / sn) / 2),
        Mistake("the two slopes were added, not averaged: (d + d_next) / 2.",
                x + (sn - s) * (d + dn)),
        Mistake("the final update runs the wrong way: x moves by (sigma_next - sigma) times the "
                "averaged slope, as the Euler step did.", x + (s - sn) * (d + dn) / 2),
    ]



def _heun(s: float, sn: float) -> Callable:
    def case(fn: Callable) -> None:
        x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(int(s * 10)))
        want = heun_step(x, s, sn, _denoise)
        got = fn(x.clone(), s, sn, _denoise)
        if sn == 0 and isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            raise Mismatch("the last step goes to sigma_next = 0, where the slope (x - D) / sigma "
                           "is undefined: take the Euler step alone there.")
        compare(got, want, what=f"heun_step from sigma = {s} to {sn}",
                mistakes=_heun_mistakes(x, s, sn) if sn else [],
                otherwise=None if sn else ("the last step, to sigma_next = 0, is Euler's step "
                                           "alone (Karras et al. 2022, Alg. 1: the correction "
                                           "needs the slope at sigma_next, which divides by 0 "
                                           "there; a tiny sigma in its place changes the result)."))
    return case


DDIM_STEP = Checker(
    "ddim_step",
    ddim_step,
    [
        _ddim(900, 700, 0.0, 0),
        _ddim(500, 250, 0.0, 1),
        _ddim(600, 400, 0.6, 2),
        _ddim(100, 0, 0.0, 3),
        _ddim_given_x0,
        _ddim_zero_snr,
        _ddim_needs_noise,
        _ddim_deterministic,
        _ddim_upwards(300, 600, 8),
        _ddim_upwards(0, 250, 9),
    ],
    hints=(
        ("The denoiser already gives you both estimates, x0_hat and eps_hat. A DDIM step keeps "
         "the same x0_hat and the same direction of noise, and only changes how much of each "
         "x_t_prev holds."),
        ("Compare the amounts of x0_hat and of noise in x_t with those q(x_t_prev | x_0) asks "
         "for. With eta > 0, part of the noise comes fresh, so the eps_hat part must shrink to "
         "keep the total variance."),
    ),
    see="Song et al. 2021, Eq. 12 and 16, in lesson 07, section 1",
)
HEUN_STEP = Checker(
    "heun_step", heun_step, [_heun(10.0, 5.0), _heun(1.0, 0.4), _heun(0.3, 0.0)],
    hints=(("Heun is Euler with a correction: take an Euler step, look at the slope where it "
            "lands, and average the two slopes."),
           ("The slope at noise level sigma is (x - D(x, sigma)) / sigma. At sigma_next = 0 the "
            "second slope is undefined: keep the Euler step there.")),
    see="Karras et al. 2022, Alg. 1, in lesson 07, section 2",
)
