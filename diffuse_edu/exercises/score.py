"""Checkers for lesson 15: denoising score matching, Langevin dynamics (one step, annealed), the
reverse SDE's Euler-Maruyama step and the probability-flow ODE's drift with Hutchinson's divergence.

The convention is the VE one, x = x0 + sigma eps; every function takes a ``score(x, sigma)`` that
takes sigma as a Python number or as a tensor of shape (B,), one level per example, of x's dtype
on x's device (the lesson's score models take both).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.diffusion.score import (
    annealed_langevin,
    dsm_loss,
    hutchinson_divergence,
    langevin_step,
    reverse_sde_step,
)
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, require_gradient


def _strict_sigma(x: object, sigma: object) -> None:
    """Refuse what the lesson's score models refuse or get wrong: the arguments swapped, a level
    tensor of another shape than (B,), or of another dtype or device than x (a float32 level
    against float64 points, a CPU level against points on a GPU). A Python number is fine."""
    swapped = (not isinstance(x, Tensor)
               or (isinstance(sigma, Tensor) and sigma.ndim >= 2 and x.ndim <= 1))
    if swapped:
        raise Mismatch("the score was called as score(sigma, x): its arguments are score(x, "
                       "sigma), the points first and their level second.")
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        return
    if not isinstance(sigma, Tensor) or sigma.shape != (x.shape[0],):
        given = (f"a Python {type(sigma).__name__}" if not isinstance(sigma, Tensor)
                 else f"a tensor of shape {tuple(sigma.shape)}")
        raise Mismatch(f"score(x, sigma) was called with sigma as {given}; the lesson's score "
                       f"models take sigma as a number or as a tensor of shape (B,) = "
                       f"({x.shape[0]},), one level per example.")
    if sigma.dtype != x.dtype or sigma.device != x.device:
        raise Mismatch(f"score(x, sigma) was given sigma as {sigma.dtype} on {sigma.device} while "
                       f"x is {x.dtype} on {x.device}: a level tensor you build must follow x "
                       "(torch.full takes dtype= and device=), or the lesson's models fail on a "
                       "GPU and round the level in float64.")


class _Score:
    """A made-up smooth score field that depends on x and sigma and counts its calls."""

    def __init__(self, seed: int, dim: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dim, dim, generator=g) * 0.8
        self.u = torch.randn(dim, generator=g)
        self.calls: list[float] = []

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        _strict_sigma(x, sigma)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        self.calls.append(float(sigma.reshape(-1)[0]))
        flat = x.flatten(1)
        d = flat.shape[1]
        s = sigma.expand(x.shape[0]).reshape(-1, 1)
        w, u = self.w[:d, :d].to(x.dtype), self.u[:d].to(x.dtype)
        out = torch.tanh(flat @ w + s.log() * u) - flat / (1 + s**2)
        return out.reshape(x.shape)


def _score(seed: int, dim: int = 4) -> Callable:
    """A fresh field (no calls counted) for computing the typical wrong answers."""
    return _Score(seed, dim)


def _deterministic(fn: Callable, args: Callable[[], tuple], name: str, what: str) -> object:
    torch.manual_seed(0)
    got = fn(*args())
    torch.manual_seed(1)
    again = fn(*args())
    if isinstance(got, Tensor) and isinstance(again, Tensor) and got.shape == again.shape \
            and not torch.allclose(got, again):
        raise Mismatch(f"two calls of {name} with the same arguments gave different results: "
                       f"{what}")
    return got


# --- 1. Denoising score matching --------------------------------------------------------------

def _dsm_case(seed: int, batch: int) -> Callable:
    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x0, eps = torch.randn(batch, 2, generator=g), torch.randn(batch, 2, generator=g)
        sigma = torch.exp(torch.randn(batch, generator=g))
        s_ = sigma[:, None]
        sc = _score(seed)

        def loss(x_in: Tensor, target: Tensor, weight: Tensor, reduce: str = "mean") -> Tensor:
            sq = (sc(x_in, sigma) - target).square()
            return weight * (sq.mean(1) if reduce == "mean" else sq.sum(1))
        x_noisy = x0 + s_ * eps
        mistakes = [
            Mistake("the weight w(sigma) = sigma^2 is missing: without it the levels with small "
                    "sigma, whose target -eps / sigma is huge, swamp the loss.",
                    loss(x_noisy, -eps / s_, 1.0)),
            Mistake("the weight is sigma; it is sigma^2, which makes sigma^2 ||score + eps / "
                    "sigma||^2 = ||sigma score + eps||^2 of size one at every level.",
                    loss(x_noisy, -eps / s_, sigma)),
            Mistake("the target points the wrong way: the score of N(x0, sigma^2 I) at x0 + sigma "
                    "eps is -(x - x0) / sigma^2 = -eps / sigma, towards the clean point.",
                    loss(x_noisy, eps / s_, sigma**2)),
            Mistake("the target is -eps / sigma, not -eps: the score of the noised data is the "
                    "noise over its width (score = -eps / sigma).", loss(x_noisy, -eps, sigma**2)),
            Mistake("the target is -eps / sigma (= -(x - x0) / sigma^2); -eps / sigma^2 divides "
                    "once too often.", loss(x_noisy, -eps / s_**2, sigma**2)),
            Mistake("the noised point is x0 + sigma eps (sigma is the noise's standard deviation, "
                    "not its variance).", loss(x0 + s_**2 * eps, -eps / s_, sigma**2)),
            Mistake("average over each example's coordinates, not sum: the loss per example is a "
                    "mean.",
                    loss(x_noisy, -eps / s_, sigma**2, "sum")),
            Mistake("the score is asked at the clean x0; it must be asked at the noised point x0 "
                    "+ sigma eps.",
                    loss(x0, -eps / s_, sigma**2)),
        ]
        # with B = D = 2 an unreshaped sigma broadcasts over the coordinates silently
        if batch == 2:
            s_row = sigma[None, :]
            x_row = x0 + s_row * eps
            sq = (sc(x_row, sigma) - (-eps / s_row)).square().mean(1)
            mistakes.append(Mistake(
                "sigma has shape (B,) and x0 (B, 2): reshape it to (B, 1) before it multiplies or "
                "divides x0 or eps, else it runs along the coordinates instead of the "
                "examples.", sigma**2 * sq))
        got = _deterministic(
            fn,
            lambda: (_Score(seed), x0.clone(), sigma.clone(), eps.clone()),
            "dsm_loss",
            "use the eps and sigma you are given; draw no random numbers yourself.",
        )
        if isinstance(got, Tensor) and got.ndim == 0:
            raise Mismatch("dsm_loss returned one number; return the loss per example, shape (B,) "
                           "(the training loop averages over the batch).")
        compare(got, dsm_loss(_Score(seed), x0, sigma, eps), mistakes=mistakes,
                what=f"dsm_loss on {batch} points at sigma = "
                     f"{[round(v, 2) for v in sigma.tolist()]}",
                otherwise="does not match the lesson's loss (section 1), and is none of the "
                          "usual slips: compare, part by part, where you ask the score, the "
                          "target you compare it with, the weight and how you reduce over "
                          "coordinates with the Math's DSM formula.")
    return case


def _dsm_is_differentiable(fn: Callable) -> None:
    net = torch.nn.Linear(2, 2)
    loss = fn(lambda x, sigma: net(x) / sigma[:, None], torch.randn(3, 2), torch.rand(3) + 0.1,
              torch.randn(3, 2))
    require_gradient(loss, "dsm_loss", "the score's output")


DSM_LOSS = Checker(
    "dsm_loss",
    dsm_loss,
    [_dsm_case(1, 2), _dsm_case(0, 3), _dsm_is_differentiable],
    hints=(
        (
            "Noise the clean points at each example's own level, ask the score model there, and "
            "compare its answer with the score of the Gaussian you noised with, which you know "
            "exactly."
        ),
        (
            "sigma is one number per example: where it meets x0 or eps it needs shape (B, 1). "
            "The score of a Gaussian N(x0, sigma^2 I) is the gradient of its log density; at a "
            "point noised with eps it is a simple expression in eps and sigma. The weight is "
            "named in the Math."
        ),
    ),
    see="lesson 15, section 1 (the Math's denoising score matching; Song & Ermon 2019, Eq. 5-6)",
)


# --- 2. Langevin dynamics -----------------------------------------------------------------------

def _langevin_case(seed: int, sigma: float, a: float,
                   dtype: torch.dtype = torch.float32) -> Callable:
    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x, z = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
        x, z = x.to(dtype), z.to(dtype)
        s = _score(seed)(x, sigma)
        mistakes = [
            Mistake("the score term is (step_size / 2) * score: the half is missing.",
                    x + a * s + math.sqrt(a) * z),
            Mistake("the noise is sqrt(step_size) * z: the square root is missing.",
                    x + 0.5 * a * s + a * z),
            Mistake("Langevin climbs the density: add the score, do not subtract it.",
                    x - 0.5 * a * s + math.sqrt(a) * z),
            Mistake("the noise term sqrt(step_size) z is missing: without it the step is gradient "
                    "ascent, which piles every point on a mode instead of sampling.",
                    x + 0.5 * a * s),
            Mistake("the noise is sqrt(step_size) * z, not sqrt(2 * step_size) * z: with the half "
                    "on the score, the noise takes the whole step size.",
                    x + 0.5 * a * s + math.sqrt(2 * a) * z),
            Mistake("the noise is sqrt(step_size) * z: the half belongs to the score term only, "
                    "not to the noise's variance.", x + 0.5 * a * s + math.sqrt(a / 2) * z),
        ]
        got = _deterministic(
            fn,
            lambda: (_Score(seed), x.clone(), sigma, a, z.clone()),
            "langevin_step",
            "use the noise z you are given; draw no random numbers yourself.",
        )
        compare(got, langevin_step(_Score(seed), x, sigma, a, z), mistakes=mistakes,
                what=f"langevin_step at sigma = {sigma}, step_size = {a}",
                otherwise="does not match Song & Ermon's step (section 2), and is none of the "
                          "usual slips: check the coefficient of the score term and the size of "
                          "the noise term against the Math's Langevin update.")
    return case


LANGEVIN_STEP = Checker(
    "langevin_step",
    langevin_step,
    # float64 points: a level built without x's dtype is caught
    [_langevin_case(0, 0.5, 0.1), _langevin_case(1, 2.0, 0.03),
     _langevin_case(2, 1.0, 0.05, torch.float64)],
    hints=(
        (
            "One step moves up the slope of log p (the score) by half the step size and adds "
            "fresh noise whose variance is the step size."
        ),
        (
            "The score model takes sigma as a number, or as a (B,) tensor of x's dtype on x's "
            "device. "
            "The noise term is a standard deviation times z."
        ),
    ),
    see="Song & Ermon 2019, Alg. 1, line 6, in lesson 15, section 2",
)


def _annealed_mistakes(
    seed: int, x: Tensor, sigmas: list[float], steps: int, eps: float
) -> list[Mistake]:
    def run(
        *, sizes: Callable[[float], float], order: list[float] | None = None, once: bool = False
    ):
        g, z_x = torch.Generator().manual_seed(seed + 100), x.clone()
        for sigma in order or sigmas:
            z = torch.randn(x.shape, generator=g)
            for k in range(steps):
                if k and not once:
                    z = torch.randn(x.shape, generator=g)
                z_x = langevin_step(_score(seed), z_x, sigma, sizes(sigma), z)
        return z_x
    last = sigmas[-1]
    return [
        Mistake("the step size at level sigma_i is eps * sigma_i^2 / sigma_L^2; yours uses eps at "
                "every level.",
                run(sizes=lambda s: eps)),
        Mistake("the step size is eps * sigma_i^2 / sigma_L^2, squared: yours scales with sigma_i "
                "/ sigma_L.",
                run(sizes=lambda s: eps * s / last)),
        Mistake("the step size is eps * sigma_i^2 / sigma_L^2, large at the large levels; yours "
                "is inverted.",
                run(sizes=lambda s: eps * last**2 / s**2)),
        Mistake("the levels are walked from the first (largest) to the last (smallest), as given; "
                "yours runs them backwards.",
                run(sizes=lambda s: eps * s**2 / last**2, order=sigmas[::-1])),
        Mistake("a_i = eps * sigma_i^2 / sigma_L^2 divides by the last, smallest level sigma_L = "
                "sigmas[-1]; yours divides by the first.",
                run(sizes=lambda s: eps * s**2 / sigmas[0] ** 2)),
        Mistake("every Langevin step draws fresh noise z (torch.randn(x.shape, "
                "generator=generator)); yours reuses one z for all the steps of a level.",
                run(sizes=lambda s: eps * s**2 / last**2, once=True)),
    ]


def _annealed_case(seed: int, levels: int, steps: int) -> Callable:
    def case(fn: Callable) -> None:
        sigmas = [2.0 * 0.5**i for i in range(levels)]
        eps = 0.05
        x = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed))
        want = annealed_langevin(_score(seed), x, sigmas, steps=steps, eps=eps,
                                 generator=torch.Generator().manual_seed(seed + 100))
        net = _Score(seed)
        torch.manual_seed(0)
        got = fn(
            net,
            x.clone(),
            sigmas,
            steps=steps,
            eps=eps,
            generator=torch.Generator().manual_seed(seed + 100),
        )
        torch.manual_seed(1)
        again = fn(_Score(seed), x.clone(), sigmas, steps=steps, eps=eps,
                   generator=torch.Generator().manual_seed(seed + 100))
        if isinstance(got, Tensor) and isinstance(again, Tensor) and got.shape == again.shape \
                and not torch.allclose(got, again):
            raise Mismatch("two runs with generators seeded alike gave different samples: draw "
                           "every z with the generator you are given, torch.randn(x.shape, "
                           "generator=generator), not from PyTorch's global one.")
        if len(net.calls) != levels * steps:
            raise Mismatch(f"annealed_langevin with {levels} levels and steps = {steps} asked the "
                           f"score {len(net.calls)} times; it takes `steps` Langevin steps at "
                           f"each level, one score evaluation each: {levels * steps}.")
        compare(got, want, mistakes=_annealed_mistakes(seed, x, sigmas, steps, eps),
                what=f"annealed_langevin over sigmas {sigmas} with steps = {steps}, eps = {eps}",
                otherwise="does not match Song & Ermon's Alg. 1 (section 2), and is none of the "
                          "usual slips: check the order of the levels, the step size at each "
                          "(the Math), and that each step is your checked langevin_step.",
                atol=1e-5)
    return case


ANNEALED_LANGEVIN = Checker(
    "annealed_langevin",
    annealed_langevin,
    [_annealed_case(0, 3, 2), _annealed_case(1, 4, 3)],
    hints=(
        (
            "Walk down the ladder of levels; at each, run a few Langevin steps with a step size "
            "that shrinks with the level, so that the noise each step adds matches the width of "
            "that level."
        ),
        (
            "The step size at level sigma_i is eps times the square of the ratio of sigma_i to "
            "the last (smallest) level. Draw a fresh z with the generator you are given before "
            "every step."
        ),
    ),
    see="Song & Ermon 2019, Alg. 1, in lesson 15, section 2",
)


# --- 3. The reverse SDE -------------------------------------------------------------------------

def _sde_case(seed: int, sigma: float, sigma_next: float,
              shape: tuple[int, ...] = (4, 2), dtype: torch.dtype = torch.float32) -> Callable:
    """One step on points of ``shape``: (B, 2) as section 3's mixture, (B, 1, 8, 8) as its
    digits."""
    dim = math.prod(shape[1:])

    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x, z = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        x, z = x.to(dtype), z.to(dtype)
        s = _Score(seed, dim)(x, sigma)
        s_next = _Score(seed, dim)(x, sigma_next)
        d = sigma**2 - sigma_next**2
        mistakes = [
            Mistake("that is the probability-flow ODE's step (half the drift, no noise): the "
                    "reverse SDE moves by the whole (sigma^2 - sigma_next^2) score and adds noise.",
                    x + 0.5 * d * s),
            Mistake("the drift is right but the noise is missing: the reverse SDE adds "
                    "sqrt(sigma^2 - sigma_next^2) z at every step.", x + d * s),
            Mistake("the noise's standard deviation is sqrt(sigma^2 - sigma_next^2), the width of "
                    "the noise the step removes; yours is sigma - sigma_next.",
                    x + d * s + (sigma - sigma_next) * z),
            Mistake("the step is measured in sigma^2 (the SDE is Brownian motion in sigma^2): the "
                    "drift is (sigma^2 - sigma_next^2) score, not (sigma - sigma_next) score.",
                    x + (sigma - sigma_next) * s + math.sqrt(d) * z),
            Mistake("the reverse SDE climbs towards the data: add the score term, do not subtract "
                    "it.",
                    x - d * s + math.sqrt(d) * z),
            Mistake("Euler-Maruyama evaluates the score where the step starts, at sigma, not at "
                    "sigma_next.",
                    x + d * s_next + math.sqrt(d) * z),
            Mistake("the noise is sqrt(sigma^2 - sigma_next^2) z, not (sigma^2 - sigma_next^2) z.",
                    x + d * s + d * z),
        ]
        got = _deterministic(fn, lambda: (_Score(seed, dim), x.clone(), sigma, sigma_next,
                                          z.clone()),
                             "reverse_sde_step", "use the noise z you are given; draw no random "
                                                 "numbers yourself.")
        compare(got, reverse_sde_step(_Score(seed, dim), x, sigma, sigma_next, z),
                mistakes=mistakes,
                what=f"reverse_sde_step from sigma = {sigma} to {sigma_next} on x of shape "
                     f"{tuple(shape)}",
                otherwise="does not match the lesson's Euler-Maruyama step (section 3), and is "
                          "none of the usual slips: check the drift's coefficient, where the "
                          "score is asked, and the noise's standard deviation against the Math.")
    return case


REVERSE_SDE_STEP = Checker(
    "reverse_sde_step",
    reverse_sde_step,
    [_sde_case(0, 2.0, 1.2), _sde_case(1, 0.5, 0.0), _sde_case(2, 5.0, 4.5),
     _sde_case(3, 1.5, 0.9, (3, 1, 8, 8)),  # section 3's digits run the same step on images
     _sde_case(4, 1.0, 0.5, (4, 2), torch.float64)],
    hints=(
        (
            "In the variable sigma^2 the forward process is Brownian motion; the reverse SDE's "
            "drift is minus the score per unit of sigma^2, and each step also adds Brownian noise "
            "for the sigma^2 it covers."
        ),
        (
            "Let d = sigma^2 - sigma_next^2 (positive: sigma falls). The drift moves by d times "
            "the score at the step's start; the noise's standard deviation is the square root of "
            "d."
        ),
    ),
    see="Song et al. 2021, Eq. 6 and Eq. 47, in lesson 15, section 3",
)


# --- 4. The probability-flow ODE and Hutchinson's divergence -----------------------------------

def _drift_mistakes(
    seed: int, x: Tensor, sigma: float, z: Tensor
) -> list[tuple[Tensor, Tensor, str]]:
    """(f, div) of typical wrong answers, each with its message."""
    def parts(scale: float, reduce: str = "sum", times_z: bool = True, of: str = "f"):
        with torch.enable_grad():
            xx = x.detach().clone().requires_grad_(True)
            s = _score(seed, math.prod(x.shape[1:]))(xx, sigma)
            f = scale * s
            out = f if of == "f" else s
            (vjp,) = torch.autograd.grad(out, xx, grad_outputs=z if times_z else torch.ones_like(z))
        prod = (vjp * z if times_z else vjp).flatten(1)
        div = prod.sum(1) if reduce == "sum" else prod.mean(1)
        return f.detach(), div
    return [
        (
            *parts(-sigma, "mean"),
            (
                "the divergence is a trace, the sum over coordinates of z * (z^T J); yours "
                "takes their mean."
            ),
        ),
        (
            *parts(-sigma, times_z=False),
            (
                "Hutchinson's estimate is z^T J z: the vector-Jacobian product must be "
                "taken with z (grad_outputs=z) and then multiplied by z again and summed."
            ),
        ),
        (
            *parts(-sigma, of="score"),
            (
                "the divergence is of the drift f = -sigma score, not of the score: "
                "take the vector-Jacobian product of f."
            ),
        ),
        (
            *parts(-1.0),
            "the drift is dx/dsigma = -sigma score(x, sigma): the factor sigma is missing.",
        ),
        (
            *parts(sigma),
            (
                "the drift is -sigma score(x, sigma): as sigma falls the ODE moves up the score, "
                "so dx/dsigma points down it."
            ),
        ),
        (
            *parts(-2 * sigma),
            (
                "-2 sigma score is the reverse SDE's drift in sigma; the probability-flow ODE has "
                "half of it, -sigma score (no noise to balance)."
            ),
        ),
    ]


def _divergence_case(seed: int, sigma: float, shape: tuple[int, ...],
                     dtype: torch.dtype = torch.float32) -> Callable:
    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(shape, generator=g).to(dtype)
        z = (torch.randint(0, 2, shape, generator=g).float() * 2 - 1).to(dtype)
        dim = math.prod(shape[1:])
        want_f, want_div = hutchinson_divergence(_Score(seed, dim), x, sigma, z)
        net = _Score(seed, dim)
        given = x.clone()
        got = fn(net, given, sigma, z.clone())
        if given.requires_grad:
            raise Mismatch("hutchinson_divergence switched on gradient tracking of the x it was "
                           "given (requires_grad_ changes the caller's tensor in place, and every "
                           "later use of it builds a graph): track a detached copy instead.")
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mismatch("hutchinson_divergence returns two things, (f, divergence): the drift, "
                           "like x, and the estimate, one number per example.")
        f, div = got
        if len(net.calls) != 1:
            raise Mismatch(f"hutchinson_divergence asked the score {len(net.calls)} times; one "
                           "evaluation and one vector-Jacobian product (torch.autograd.grad with "
                           "grad_outputs=z) are all it needs.")
        what = f"hutchinson_divergence at sigma = {sigma} on points of shape {shape}"
        if isinstance(div, Tensor) and div.shape == x.shape:
            raise Mismatch(f"{what}: the divergence came back with x's shape {tuple(x.shape)}; it "
                           "is one number per example: sum z * (z^T J) over each example's "
                           "coordinates.")
        if isinstance(div, Tensor) and div.ndim == 0:
            raise Mismatch(f"{what}: the divergence came back as one number; sum over each "
                           "example's coordinates only, one estimate per example, shape (B,).")
        if isinstance(div, Tensor) and div.ndim > 1:
            raise Mismatch(f"{what}: the divergence came back with shape {tuple(div.shape)}; it is "
                           f"one number per example, shape ({shape[0]},): on images reduce over "
                           "all of an example's numbers (channels and pixels), not one dimension.")
        for wrong_f, wrong_div, message in _drift_mistakes(seed, x, sigma, z):
            if (
                isinstance(f, Tensor)
                and isinstance(div, Tensor)
                and f.shape == wrong_f.shape
                and div.shape == wrong_div.shape
                and torch.allclose(f.detach(), wrong_f, atol=1e-5)
                and torch.allclose(div.detach(), wrong_div, atol=1e-5)
                and not (
                    torch.allclose(f.detach(), want_f, atol=1e-5)
                    and torch.allclose(div.detach(), want_div, atol=1e-5)
                )
            ):
                raise Mismatch(f"{what}: {message}")
        compare(f.detach() if isinstance(f, Tensor) else f, want_f, what=f"{what}, the drift f",
                otherwise="the drift is not the probability-flow ODE's: compare yours with the "
                          "Math's dx/dsigma (section 3).")
        compare(div.detach() if isinstance(div, Tensor) else div, want_div, what=f"{what}, the "
                                                                                 "divergence",
                otherwise="the drift is right but the estimate is not z^T J z for the probe z you "
                          "are given: check what the vector-Jacobian product is taken of and with, "
                          "and how it is reduced per example (the Math, section 4).")
    return case


def _under_no_grad(fn: Callable) -> None:
    """The lesson's samplers run under torch.no_grad(): the estimate must still work there."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 2, generator=g)
    z = torch.randint(0, 2, (4, 2), generator=g).float() * 2 - 1
    _, want_div = hutchinson_divergence(_Score(5), x, 1.0, z)
    try:
        with torch.no_grad():
            got = fn(_Score(5), x.clone(), 1.0, z.clone())
    except RuntimeError as e:
        if "does not require grad" in str(e) or "grad_fn" in str(e):
            raise Mismatch("hutchinson_divergence fails under torch.no_grad(), where the lesson's "
                           "samplers call it (autograd records nothing there): evaluate the drift "
                           "and take the vector-Jacobian product inside `with "
                           "torch.enable_grad():`.") from None
        raise
    div = got[1] if isinstance(got, tuple) and len(got) == 2 else got
    compare(div.detach() if isinstance(div, Tensor) else div, want_div,
            what="hutchinson_divergence called under torch.no_grad(), the divergence")


HUTCHINSON_DIVERGENCE = Checker(
    "hutchinson_divergence",
    hutchinson_divergence,
    [
        _divergence_case(0, 0.7, (5, 2)),
        _divergence_case(1, 3.0, (3, 2)),
        _divergence_case(2, 0.2, (2, 4)),
        _divergence_case(3, 1.1, (3, 2), torch.float64),
        _divergence_case(4, 0.9, (3, 1, 8, 8)),  # section 4's digits run it on images
        _under_no_grad,
    ],
    hints=(
        (
            "Compute the ODE's drift at x with x tracked by autograd, then get z^T J (J the "
            "drift's Jacobian) from a single backward pass: the trace estimate is that row vector "
            "dotted with z."
        ),
        (
            "Inside torch.enable_grad(): x = x.detach().requires_grad_(True); f = ... ; "
            "torch.autograd.grad(f, x, grad_outputs=z) gives z^T df/dx. Multiply by z and sum "
            "over each example's coordinates."
        ),
    ),
    see="Grathwohl et al. 2019, Eq. 7, in lesson 15, section 4",
)
