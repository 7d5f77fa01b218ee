"""EDM's preconditioning and consistency models (lesson 16).

One convention throughout, the variance-exploding one of Karras et al. (2022): x = x0 + sigma eps.

* **EDM's preconditioning** (Karras et al. 2022, Sec. 5 and Table 1): a network F is wrapped as
  D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)) with
  c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data / sqrt(sigma^2 +
  sigma_data^2), c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4. For data of
  standard deviation sigma_data, F's input and its training target (x0 - c_skip x) / c_out both
  have unit variance at every sigma (their Appendix B.6). Training draws ln(sigma) from
  N(P_mean, P_std^2) (:func:`lognormal_sigmas`). The course's v-prediction networks (lesson 05) are
  this parametrisation with sigma_data = 1 and F = -v: :class:`ConsistencyModel` reads them so.
* **The consistency function** (Song et al. 2023, Sec. 3 and Appendix C): f(x, sigma) maps every
  point of a probability-flow ODE path to the path's end, f(x, sigma) = c_skip(sigma) x +
  c_out(sigma) F(x, sigma) with c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2) and
  c_out = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2), so that f(x, sigma_min) =
  x exactly (the boundary condition), whatever F says.
* **Consistency distillation** (their Alg. 2): on a grid sigma_min = s_1 < ... < s_N = sigma_max,
  x_{n+1} = x0 + s_{n+1} z, one teacher ODE step to x_hat_n at s_n, and the loss
  d(f_theta(x_{n+1}, s_{n+1}), f_target(x_hat_n, s_n)) with the target network held fixed (no
  gradient). **Consistency training** (their Alg. 3) replaces the teacher's step by x0 + s_n z, the
  same z (here with a stop-gradient target, as in Song & Dhariwal 2023, on a fixed grid).
* **Multistep consistency sampling** (their Alg. 1): denoise from sigma_max, then re-noise to the
  next level and denoise again.

Imports only torch and the course's math.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.samplers import euler_step
from diffuse_edu.diffusion.schedules import NoiseSchedule

SIGMA_MIN = 0.002  # Song et al. 2023 (and Karras et al. 2022): the lowest noise level
SIGMA_MAX = 80.0  # the highest
SIGMA_DATA = 0.5  # EDM's default (Karras et al. 2022, Table 1); the course's v-networks imply 1
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training noise: ln(sigma) ~ N(P_mean, P_std^2)

Raw = Callable[[Tensor, Tensor], Tensor]  # F(x (B, ...), sigma (B,)) -> like x


def column(sigma: Tensor | float, like: Tensor) -> Tensor:
    """sigma as a (B, 1, ..., 1) tensor that broadcasts over ``like`` (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(like.shape[0])
    return sigma.reshape((-1,) + (1,) * (like.ndim - 1))


def edm_preconditioning(sigma: Tensor, sigma_data: float = SIGMA_DATA
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) at ``sigma`` (Karras et al. 2022, Table 1), lesson 16.

    Shapes: sigma (...) -> four tensors like sigma.
    """
    sd2, s2 = sigma_data**2, sigma**2
    return (sd2 / (s2 + sd2), sigma * sigma_data / (s2 + sd2).sqrt(), 1 / (s2 + sd2).sqrt(),
            sigma.log() / 4)


def edm_target(x0: Tensor, x: Tensor, sigma: Tensor, sigma_data: float = SIGMA_DATA) -> Tensor:
    """What EDM's F is trained to output at x = x0 + sigma eps: (x0 - c_skip x) / c_out (Karras et
    al. 2022, Eq. 8); of unit variance for data of std sigma_data. Shapes: like x0, sigma (B,)."""
    c_skip, c_out, _, _ = edm_preconditioning(column(sigma, x), sigma_data)
    return (x0 - c_skip * x) / c_out


def lognormal_sigmas(n: int, *, p_mean: float = P_MEAN, p_std: float = P_STD,
                     generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> Tensor:
    """``n`` training noise levels with ln(sigma) ~ N(p_mean, p_std^2) (Karras et al. 2022,
    Table 1).

    Shapes: -> (n,).
    """
    return (p_mean + p_std * torch.randn(n, generator=generator, device=device)).exp()


@dataclass(frozen=True, eq=False)
class EDMObjective:
    """Training with EDM's preconditioning and noise levels (Karras et al. 2022, Table 1), for the
    course's training loop (``objective(model, x0, ...) -> (loss (B,), t (B,))``), lesson 16.

    ln(sigma) ~ N(p_mean, p_std^2); the network sees c_in x and, in place of c_noise, the step
    t(sigma) of ``schedule`` (the course's networks embed steps); it learns F's target (x0 - c_skip
    x) / c_out with plain squared error (EDM's weight lambda = 1 / c_out^2 cancels c_out^2). Read a
    network trained so with :class:`EDMDenoiser`.
    """

    schedule: NoiseSchedule  # only its sigma <-> t map: the network's time input
    sigma_data: float = SIGMA_DATA
    p_mean: float = P_MEAN
    p_std: float = P_STD

    @property
    def t_max(self) -> float:
        return float(self.schedule.T)

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Noise levels as steps t (B,) and noise eps (like x0)."""
        sigma = lognormal_sigmas(x0.shape[0], p_mean=self.p_mean, p_std=self.p_std,
                                 generator=generator, device=x0.device)
        t = self.schedule.t_at_sigma(sigma).to(x0.dtype)
        return t, torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def __call__(self, model: Callable, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(loss per example (B,), t (B,)); t and eps are drawn unless given."""
        if t is None or eps is None:
            t_drawn, eps_drawn = self.draw(x0, generator)
            t, eps = (t_drawn if t is None else t), (eps_drawn if eps is None else eps)
        sigma = self.schedule.sigma_at(t.double()).to(x0.dtype)  # (B,)
        x = x0 + column(sigma, x0) * eps
        _, _, c_in, _ = edm_preconditioning(column(sigma, x0), self.sigma_data)
        out = model(c_in * x, t, cond)
        return (out - edm_target(x0, x, sigma, self.sigma_data)).square().flatten(1).mean(1), t


@dataclass(frozen=True, eq=False)
class EDMDenoiser(Denoiser):
    """D(x; sigma) = c_skip x + c_out F(c_in x, t(sigma)) for a network trained with
    :class:`EDMObjective`; a :class:`~diffuse_edu.diffusion.denoisers.Denoiser`, so every
    sigma-space sampler of lesson 07 runs it. Shapes: x (B, ...) -> like x."""

    sigma_data: float = SIGMA_DATA

    def __call__(self, x: Tensor, sigma: float | Tensor, cond: object = None) -> Tensor:
        sig = column(sigma, x)  # (B, 1, ..., 1)
        c_skip, c_out, c_in, _ = edm_preconditioning(sig, self.sigma_data)
        t = self.schedule.t_at_sigma(sig.reshape(-1)).to(x.dtype)
        return self._clip(c_skip * x + c_out * self.network(x)(c_in * x, t, cond))


def consistency_coefficients(sigma: Tensor, *, sigma_min: float = SIGMA_MIN,
                             sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) of a consistency model (Song et al. 2023, Appendix C): 1 and 0 at sigma_min.

    Shapes: sigma (...) -> two tensors like sigma.
    """
    sd2 = sigma_data**2
    return (sd2 / ((sigma - sigma_min) ** 2 + sd2),
            sigma_data * (sigma - sigma_min) / (sigma**2 + sd2).sqrt())


def consistency_function(raw: Raw, x: Tensor, sigma: Tensor, *, sigma_min: float = SIGMA_MIN,
                         sigma_data: float = SIGMA_DATA) -> Tensor:
    """f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(x, sigma) (Song et al. 2023, Eq. 7), lesson
    16, section 2: exactly x at sigma = sigma_min. ``raw`` is F, called as raw(x, sigma).

    Shapes: x (B, ...), sigma (B,) -> like x.
    """
    c_skip, c_out = consistency_coefficients(column(sigma, x), sigma_min=sigma_min,
                                             sigma_data=sigma_data)
    return c_skip * x + c_out * raw(x, sigma)


@dataclass(frozen=True, eq=False)
class ConsistencyModel:
    """f(x, sigma) over a course network that predicts v on ``schedule`` (lesson 05's kind).

    Such a network is EDM's preconditioning with sigma_data = 1: it sees c_in x = x / sqrt(1 +
    sigma^2) (its x_t) at the step t(sigma) (its c_noise), and its x0_hat = c_skip x + c_out (-v).
    Here -v is F, and f uses the consistency coefficients, so a copy of a teacher starts as the
    teacher's denoiser everywhere but near sigma_min. ``function`` is :func:`consistency_function`
    or a learner's. Shapes: x (B, ...), sigma (B,) or a number -> like x.
    """

    network: Callable  # model(x_t, t, cond) -> v
    schedule: NoiseSchedule  # the schedule it was trained on
    sigma_min: float = SIGMA_MIN
    sigma_data: float = 1.0  # what the v-parametrisation implies
    function: Callable = consistency_function

    def __post_init__(self) -> None:
        predicts = getattr(self.network, "predicts", "v")
        if str(getattr(predicts, "value", predicts)) != "v":
            raise ValueError(f"ConsistencyModel reads a v-prediction network (lesson 05's); this "
                             f"one predicts {predicts!r}. Train it with Target.V.")

    def raw(self, x: Tensor, sigma: Tensor | float, cond: object = None) -> Tensor:
        """F(x, sigma) = -v(x / sqrt(1 + sigma^2), t(sigma)). Shapes: like x."""
        sig = column(sigma, x)
        t = self.schedule.t_at_sigma(sig.reshape(-1)).to(x.dtype)  # (B,)
        return -self.network(x / (1 + sig**2).sqrt(), t, cond)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: object = None) -> Tensor:
        sigma = column(sigma, x).reshape(-1)  # (B,)
        return self.function(lambda z, s: self.raw(z, s, cond), x, sigma,
                             sigma_min=self.sigma_min, sigma_data=self.sigma_data)


def karras_grid(n: int, *, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = 7.0) -> Tensor:
    """The ``n`` levels s_1 = sigma_min < ... < s_n = sigma_max that consistency models train on
    (Song et al. 2023, Sec. 5 with Karras et al. 2022, Eq. 5), rising. Shapes: (n,), float64."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (low + ramp * (high - low)) ** rho


def sampling_sigmas(steps: int, *, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                    rho: float = 7.0) -> list[float]:
    """The ``steps`` levels a multistep consistency sampler denoises at, falling from sigma_max: the
    top ``steps`` of a Karras grid of ``steps + 1`` (the last level, sigma_min, is left out: f
    there is the identity). Host numbers."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    grid = karras_grid(steps + 1, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    return grid.flip(0)[:steps].tolist()


def consistency_sampler(f: Callable, x: Tensor, sigmas: list[float], *, sigma_min: float,
                        generator: torch.Generator | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1), lesson 16, section 2: ``x`` is
    unit noise; x <- f(sigma_0 x, sigma_0); then at each next level sigma, re-noise with fresh noise
    of std sqrt(sigma^2 - sigma_min^2) and denoise, x <- f(x + that, sigma). ``f(x, sigma (B,))``;
    the fresh noise is drawn as torch.randn(x.shape, generator=generator, device=x.device,
    dtype=x.dtype), one draw a level.

    Shapes: x (B, ...) -> like x.
    """
    b = x.shape[0]
    x = f(sigmas[0] * x, torch.full((b,), sigmas[0], device=x.device, dtype=x.dtype))
    for sigma in sigmas[1:]:
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = f(x + math.sqrt(sigma**2 - sigma_min**2) * z,
              torch.full((b,), sigma, device=x.device, dtype=x.dtype))
    return x


@torch.no_grad()
def sample_consistency(model: ConsistencyModel, x: Tensor, schedule: NoiseSchedule | None = None,
                       *, steps: int, generator: torch.Generator | None = None,
                       callback: Callable | None = None, cond: object = None,
                       clip: float | None = None, sampler: Callable = consistency_sampler,
                       sigma_max: float = SIGMA_MAX, sigmas: list[float] | None = None) -> Tensor:
    """The course's sampler signature for a consistency model: ``steps`` network evaluations on
    ``sigmas`` (falling, ``steps`` of them) or, when None, on :func:`sampling_sigmas`.
    ``schedule`` is not used (the model carries its own); ``sampler`` is
    :func:`consistency_sampler` or a learner's; ``clip`` clamps every denoised output.
    Shapes: x (B, ...) unit noise -> like x.
    """
    if sigmas is None:
        sigmas = sampling_sigmas(steps, sigma_min=model.sigma_min, sigma_max=sigma_max)
    if len(sigmas) != steps:
        raise ValueError(f"{steps} steps need {steps} levels; got {list(sigmas)}.")
    calls = iter(range(steps))

    def f(z: Tensor, sigma: Tensor) -> Tensor:
        out = model(z, sigma, cond)
        out = out if clip is None else out.clamp(-clip, clip)
        if callback is not None:
            callback(next(calls), sigma[0].item(), out)
        return out

    return sampler(f, x, sigmas, sigma_min=model.sigma_min, generator=generator)


def greedy_levels(score: Callable[[list[float]], float], candidates: list[float], steps: int, *,
                  sigma_max: float = SIGMA_MAX) -> dict[int, list[float]]:
    """Multistep sampling levels chosen greedily (Song et al. 2023, Sec. 6 choose the middle level
    of two-step sampling by greedy search): start from [sigma_max], then add, one at a time, the
    candidate below the last level with the lowest ``score(levels)`` (lower is better; score it
    on noise kept apart from the evaluation's). Returns {n: the first n levels} for n = 1..steps.
    """
    if len(candidates) < steps - 1:
        raise ValueError(f"{steps} levels need at least {steps - 1} candidates: {candidates}.")
    levels, chosen = [float(sigma_max)], {1: [float(sigma_max)]}
    for n in range(2, steps + 1):
        below = sorted((float(c) for c in candidates if c < levels[-1]), reverse=True)
        below = below[:len(below) - (steps - n)]  # leave enough lower candidates for later steps
        levels = levels + [min(below, key=lambda c: score(levels + [c]))]
        chosen[n] = list(levels)
    return chosen


def class_coverage(classes: Tensor, n_classes: int) -> tuple[float, float]:
    """How evenly samples spread over the classes a classifier gives them: (entropy of the class
    shares over log(n_classes), 1 for all classes equally often, 0 for one class only; the largest
    class's share). A recognisable share can be high for a collapsed sampler that draws one class
    (lesson 16). Shapes: classes (N,) integer."""
    shares = torch.bincount(classes.flatten().long().cpu(), minlength=n_classes).double()
    shares = shares / shares.sum()
    nonzero = shares[shares > 0]
    return float(-(nonzero * nonzero.log()).sum() / math.log(n_classes)), float(shares.max())


def per_example_distance(a: Tensor, b: Tensor) -> Tensor:
    """The squared distance, mean over each example's entries. Shapes: (B, ...) -> (B,)."""
    return (a - b).square().flatten(1).mean(1)


def pseudo_huber(a: Tensor, b: Tensor, *, c: float | None = None) -> Tensor:
    """sqrt(||a - b||^2 + c^2) - c per example (Song & Dhariwal 2023, Sec. 3.3), c = 0.00054
    sqrt(d) by default (d entries an example). Shapes: (B, ...) -> (B,)."""
    d = a[0].numel()
    c = 0.00054 * d**0.5 if c is None else c
    return ((a - b).square().flatten(1).sum(1) + c**2).sqrt() - c


def cd_loss(student: Callable, target: Callable, teacher: Callable, x0: Tensor, noise: Tensor,
            sigma: Tensor, sigma_next: Tensor, *,
            distance: Callable = per_example_distance) -> Tensor:
    """Consistency distillation's loss (Song et al. 2023, Alg. 2), lesson 16, section 3: x = x0 +
    sigma noise; one Euler step of the teacher's ODE (``teacher(x, sigma)`` -> x0_hat, a denoiser)
    down to sigma_next; the distance between student(x, sigma) and target(x_hat, sigma_next), the
    target computed without gradient. sigma > sigma_next, neighbours on the training grid.

    Shapes: x0, noise (B, ...), sigma, sigma_next (B,) -> (B,).
    """
    s, s_next = column(sigma, x0), column(sigma_next, x0)
    x = x0 + s * noise
    with torch.no_grad():
        x_hat = euler_step(x, s, s_next, teacher(x, sigma))
        want = target(x_hat, sigma_next)
    return distance(student(x, sigma), want)


def ct_loss(student: Callable, target: Callable, x0: Tensor, noise: Tensor, sigma: Tensor,
            sigma_next: Tensor, *, distance: Callable = per_example_distance) -> Tensor:
    """Consistency training's loss (Song et al. 2023, Alg. 3): as :func:`cd_loss`, with the
    teacher's step replaced by the same noise at the lower level, x0 + sigma_next noise.

    Shapes: x0, noise (B, ...), sigma, sigma_next (B,) -> (B,).
    """
    x = x0 + column(sigma, x0) * noise
    with torch.no_grad():
        want = target(x0 + column(sigma_next, x0) * noise, sigma_next)
    return distance(student(x, sigma), want)
