"""The continuous view of diffusion (lesson 15): scores, Langevin dynamics, the reverse SDE and the
probability-flow ODE with its exact likelihood.

One convention throughout, the variance-exploding (VE) one: the noised data are
x = x0 + sigma eps, eps ~ N(0, I), with sigma from sigma_min (almost the data) to sigma_max
(almost pure noise of width sigma_max). In the variable sigma^2 the forward process is plain
Brownian motion, dx = dw (Song et al. 2021, Eq. 9 with sigma(t)^2 = t; Karras et al. 2022 with
sigma(t) = t).

* The score of the noised data, grad_x log p_sigma(x), is what a denoiser estimates: for a network
  that predicts the noise, score = -eps_hat / sigma (Vincent 2011; lesson 02 in the VP form).
* Denoising score matching (Song & Ermon 2019, Eq. 5-6): sigma drawn per example, the weight
  w(sigma) = sigma^2 that makes every level's loss of size one.
* Langevin dynamics (Song & Ermon 2019, Alg. 1): x <- x + (a / 2) score + sqrt(a) z, annealed over a
  falling ladder of sigmas with a = eps sigma_i^2 / sigma_L^2.
* The reverse SDE (Anderson 1982; Song et al. 2021, Eq. 6), in sigma^2: dx = -score d(sigma^2) +
  dw_bar; its Euler-Maruyama step from sigma to sigma' < sigma.
* The probability-flow ODE (Song et al. 2021, Eq. 13): dx / dsigma = -sigma score, which moves the
  marginals as the SDE does without noise; with the instantaneous change of variables
  d log p / dsigma = -div f (Chen et al. 2018; Grathwohl et al. 2019) it gives log p exactly up to
  the solver's error; the divergence estimated with Hutchinson's trace estimator, z^T J z.

Everything here takes a ``score(x, sigma)`` callable, with sigma of shape (B,) (or a number); a
network trained to predict eps becomes one through :class:`ScoreView`. Imports only torch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Score = Callable[[Tensor, Tensor], Tensor]  # score(x (B, ...), sigma (B,)) -> like x


def per_example(sigma: Tensor | float, like: Tensor) -> Tensor:
    """sigma as a (B, 1, ..., 1) tensor that broadcasts over ``like`` (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(like.shape[0])
    return sigma.reshape((-1,) + (1,) * (like.ndim - 1))


def as_batch(sigma: Tensor | float, like: Tensor) -> Tensor:
    """sigma as a (B,) tensor, one level per example of ``like``."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.expand(like.shape[0]) if sigma.ndim == 0 else sigma


def score_from_eps(eps_hat: Tensor, sigma: Tensor | float) -> Tensor:
    """grad log p_sigma(x) = -eps_hat / sigma for x = x0 + sigma eps (Vincent 2011): the score of
    the noised data is minus the predicted noise over its width. Shapes: like eps_hat, sigma
    (B,)."""
    return -eps_hat / per_example(sigma, eps_hat)


def noise_label(sigma: Tensor) -> Tensor:
    """What a network's time embedding sees for a level sigma: 100 ln sigma (Karras et al. 2022,
    Table 1, use c_noise = ln(sigma) / 4; scaled here for the sinusoidal features of lesson 04)."""
    return 100.0 * sigma.log()


@dataclass(frozen=True, eq=False)
class ScoreView:
    """The score of an eps-predicting network ``net(x_in, label)``: its input scaled to unit
    width, x_in = x / sqrt(sigma^2 + sigma_data^2) (Karras et al. 2022, c_in), and score =
    -eps_hat / sigma.

    Call it as ``view(x, sigma)`` for the score; ``view.eps(x, sigma)`` gives the predicted noise
    and ``view.denoise(x, sigma)`` Tweedie's estimate of x0, x + sigma^2 score (Efron 2011).
    """

    net: Callable
    sigma_data: float = 1.0  # the data's spread, for the input scaling

    def eps(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = as_batch(sigma, x)
        c_in = 1 / (per_example(sigma, x) ** 2 + self.sigma_data**2).sqrt()
        return self.net(x * c_in, noise_label(sigma))

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return score_from_eps(self.eps(x, sigma), sigma)

    def denoise(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return x + per_example(sigma, x) ** 2 * self(x, sigma)


def dsm_loss(score: Score, x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """Denoising score matching per example (Vincent 2011; Song & Ermon 2019, Eq. 5-6), lesson 15:
    w(sigma) ||score(x0 + sigma eps, sigma) - (-eps / sigma)||^2 averaged over each example's
    numbers, with w(sigma) = sigma^2, the weight under which every level contributes alike.
    Shapes: x0, eps (B, ...), sigma (B,) -> (B,)."""
    s = per_example(sigma, x0)
    target = -eps / s  # the score of q(x | x0) = N(x0, sigma^2 I) at x
    return s.flatten() ** 2 * (score(x0 + s * eps, sigma) - target).square().flatten(1).mean(1)


def log_uniform_sigmas(n: int, sigma_min: float, sigma_max: float, *,
                       generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """n levels with ln sigma ~ U(ln sigma_min, ln sigma_max). Shapes: (n,)."""
    u = torch.rand(n, generator=generator, device=device)
    return (math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min))).exp()


@dataclass(frozen=True, eq=False)
class DenoisingScoreMatching:
    """The multi-level DSM objective for the training loop: sigma log-uniform per example, the loss
    ``loss(score, x0, sigma, eps)`` (:func:`dsm_loss`, or the learner's) on the network's
    :class:`ScoreView`. Returns (loss per example, sigma), as every objective does."""

    sigma_min: float = 0.01
    sigma_max: float = 20.0
    sigma_data: float = 1.0
    loss: Callable[..., Tensor] = dsm_loss

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        sigma = log_uniform_sigmas(x0.shape[0], self.sigma_min, self.sigma_max, generator=generator,
                                   device=x0.device)
        return sigma, torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)

    def __call__(self, model: Callable, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is not None:
            raise ValueError("DenoisingScoreMatching takes no conditions.")
        if t is None or eps is None:
            drawn_t, drawn_eps = self.draw(x0, generator)
            t, eps = (drawn_t if t is None else t), (drawn_eps if eps is None else eps)
        view = ScoreView(lambda x, label: model(x, label, None), self.sigma_data)
        return self.loss(view, x0, t, eps), t


def sigma_ladder(sigma_max: float, sigma_min: float, levels: int) -> list[float]:
    """``levels`` noise levels falling geometrically from sigma_max to sigma_min (Song & Ermon 2019,
    Sec. 4.2)."""
    if levels == 1:
        return [float(sigma_min)]
    ratio = (sigma_min / sigma_max) ** (1 / (levels - 1))
    return [float(sigma_max * ratio**i) for i in range(levels)]


def langevin_step(score: Score, x: Tensor, sigma: float, step_size: float, z: Tensor) -> Tensor:
    """One step of Langevin dynamics at level sigma (Song & Ermon 2019, Alg. 1, line 6), lesson 15:
    x + (a / 2) score(x, sigma) + sqrt(a) z with step size a and unit noise z. Shapes: like x."""
    return x + 0.5 * step_size * score(x, as_batch(sigma, x)) + math.sqrt(step_size) * z


def langevin(score: Score, x: Tensor, sigma: float, *, steps: int, step_size: float,
             generator: torch.Generator | None = None) -> Tensor:
    """``steps`` Langevin steps at the single level sigma."""
    for _ in range(steps):
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = langevin_step(score, x, sigma, step_size, z)
    return x


def annealed_langevin(score: Score, x: Tensor, sigmas: list[float], *, steps: int, eps: float,
                      generator: torch.Generator | None = None,
                      step: Callable = langevin_step) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1), lesson 15: at each level sigma_i of
    the falling ladder ``sigmas``, ``steps`` Langevin steps of size a_i = eps sigma_i^2 / sigma_L^2
    (sigma_L the last, smallest level), each with fresh noise drawn from ``generator``. ``step`` is
    the one Langevin step (the library's or a learner's)."""
    for sigma in sigmas:
        a = eps * sigma**2 / sigmas[-1] ** 2
        for _ in range(steps):
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = step(score, x, sigma, a, z)
    return x


def reverse_sde_step(score: Score, x: Tensor, sigma: float, sigma_next: float, z: Tensor) -> Tensor:
    """One Euler-Maruyama step of the reverse VE SDE, dx = -score d(sigma^2) + dw_bar (Song et al.
    2021, Eq. 6; their Eq. 47 for the VE SDE), from sigma down to sigma_next, lesson 15:
    x + (sigma^2 - sigma_next^2) score(x, sigma) + sqrt(sigma^2 - sigma_next^2) z.
    Shapes: like x."""
    d = sigma**2 - sigma_next**2
    return x + d * score(x, as_batch(sigma, x)) + math.sqrt(d) * z


def ancestral_step(score: Score, x: Tensor, sigma: float, sigma_next: float, z: Tensor) -> Tensor:
    """One ancestral step from sigma to sigma_next (Ho et al. 2020, Eq. 6-7 in the VE variable;
    Song et al. 2021, App. E): a draw from the Gaussian posterior q(x' | x, x0) with x0 replaced by
    Tweedie's estimate D = x + sigma^2 score. Its mean is the Euler-Maruyama step's,
    x + (sigma^2 - sigma_next^2) score, but the noise is only sqrt(sigma_next^2 (sigma^2 -
    sigma_next^2) / sigma^2) z, so that x' carries noise of width sigma_next, not sigma: no noise
    at all on the last step to 0 (where Euler-Maruyama adds noise of width sigma, and its first
    step from sigma_max adds almost sigma_max). Shapes: like x."""
    d = sigma**2 - sigma_next**2
    return x + d * score(x, as_batch(sigma, x)) + math.sqrt(d * sigma_next**2 / sigma**2) * z


def ode_drift(score: Score, x: Tensor, sigma: float | Tensor) -> Tensor:
    """The probability-flow ODE's drift in sigma, dx / dsigma = -sigma score(x, sigma) (Song et al.
    2021, Eq. 13; Karras et al. 2022, Eq. 4 with sigma(t) = t). Shapes: like x."""
    return -per_example(sigma, x) * score(x, as_batch(sigma, x))


def sigma_steps(sigma_max: float, sigma_min: float, steps: int) -> list[float]:
    """The levels of a sampler with ``steps`` steps, geometric from sigma_max to sigma_min, then 0
    (the last step lands on the data). ``steps + 1`` numbers."""
    return [*sigma_ladder(sigma_max, sigma_min, steps), 0.0]


def sample_reverse_sde(score: Score, x: Tensor, sigmas: list[float], *,
                       generator: torch.Generator | None = None,
                       step: Callable = reverse_sde_step) -> Tensor:
    """The reverse SDE by Euler-Maruyama over the falling ``sigmas`` (the first the width of the
    starting noise ``x``); one network evaluation per step; ``step`` the library's or a
    learner's."""
    for sigma, sigma_next in itertools.pairwise(sigmas):
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = step(score, x, sigma, sigma_next, z)
    return x


def sample_ode(score: Score, x: Tensor, sigmas: list[float], *,
               drift: Callable = ode_drift) -> Tensor:
    """The probability-flow ODE by Euler's method over the falling ``sigmas``: one evaluation per
    step, x <- x + (sigma_next - sigma) drift(x, sigma). Deterministic."""
    for sigma, sigma_next in itertools.pairwise(sigmas):
        x = x + (sigma_next - sigma) * drift(score, x, sigma)
    return x


def hutchinson_divergence(score: Score, x: Tensor, sigma: float,
                          z: Tensor) -> tuple[Tensor, Tensor]:
    """The ODE's drift f = -sigma score(x, sigma) and Hutchinson's estimate of its divergence,
    z^T (df/dx) z, from one vector-Jacobian product (Hutchinson 1989; Grathwohl et al. 2019, Eq. 7),
    lesson 15. Over probes z with E[z z^T] = I (Gaussian or Rademacher) its mean is the trace of
    df/dx. Shapes: x, z (B, ...) -> f like x, divergence (B,)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = ode_drift(score, x, sigma)
        (z_jac,) = torch.autograd.grad(f, x, grad_outputs=z)  # z^T df/dx, one backward pass
    return f.detach(), (z_jac * z).flatten(1).sum(1)


def exact_divergence(score: Score, x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """The drift and its divergence, sum_i df_i / dx_i, by one backward pass per coordinate (D of
    them: fine in 2-D, the cost Hutchinson's estimator avoids). Shapes: x (B, D) -> (B, D), (B,)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = ode_drift(score, x, sigma)
        div = sum(torch.autograd.grad(f[:, i].sum(), x, retain_graph=True)[0][:, i]
                  for i in range(x.shape[1]))
    return f.detach(), div


def probe_vectors(shape: tuple[int, ...] | torch.Size, kind: str = "rademacher", *,
                  generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """Probes z with E[z z^T] = I for Hutchinson's estimator: "rademacher" (random signs, the
    smaller variance, 2 sum_{i != j} J_ij^2) or "gaussian" (N(0, I), variance 2 ||J||_F^2;
    Hutchinson 1989, Avron & Toledo 2011). Shapes: ``shape``."""
    if kind == "rademacher":
        return torch.randint(0, 2, tuple(shape), generator=generator, device=device).float() * 2 - 1
    if kind == "gaussian":
        return torch.randn(tuple(shape), generator=generator, device=device)
    raise ValueError(f"probe kind must be 'rademacher' or 'gaussian', got {kind!r}.")


def ode_log_likelihood(score: Score, x0: Tensor, sigmas: list[float], *,
                       divergence: Callable = hutchinson_divergence, probes: int = 1,
                       generator: torch.Generator | None = None,
                       probe: str = "rademacher") -> Tensor:
    """log p(x0) under the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2): carry x0
    from sigmas[0] (small) up the rising ``sigmas`` to sigma_max by Heun's method while integrating
    the divergence, then log p(x0) = log N(x(sigma_max); 0, sigma_max^2 I) + int div f dsigma.

    ``divergence(score, x, sigma, z)`` gives (f, div) (:func:`hutchinson_divergence` or a
    learner's);
    ``probes`` probe vectors (:func:`probe_vectors` of kind ``probe``), each fixed along the
    whole path (Grathwohl et al. 2019), are averaged. With ``divergence=exact_divergence`` (z
    ignored) the divergence is exact. In nats.
    Shapes: x0 (B, ...) -> (B,)."""
    x0 = x0.detach()
    div_fn = divergence
    if divergence is exact_divergence:
        def div_fn(score: Score, x: Tensor, sigma: float, z: Tensor) -> tuple[Tensor, Tensor]:
            return exact_divergence(score, x, sigma)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for _ in range(probes):
        z = probe_vectors(x0.shape, probe, generator=generator, device=x0.device).to(x0.dtype)
        x, integral = x0, torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        for sigma, sigma_next in itertools.pairwise(sigmas):
            h = sigma_next - sigma
            f, div = div_fn(score, x, sigma, z)
            x_euler = x + h * f
            f2, div2 = div_fn(score, x_euler, sigma_next, z)
            x = x + h * 0.5 * (f + f2)
            integral = integral + h * 0.5 * (div + div2).double()
        d = x0[0].numel()
        s_max = sigmas[-1]
        prior = (-0.5 * x.double().square().flatten(1).sum(1) / s_max**2
                 - 0.5 * d * math.log(2 * math.pi * s_max**2))
        total = total + prior + integral
    return total / probes


def dequantise(x: Tensor, bin_width: float, *, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation (Theis et al. 2016): each value of a grid of spacing ``bin_width``
    spread uniformly over its bin, y = x + (u - 1/2) bin_width. A continuous density p on y then
    bounds the grid's probabilities: log P(x) >= E_u[log p(y)] + D log(bin_width).
    Shapes: like x."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (u - 0.5) * bin_width


def bits_per_dim(nll: Tensor | float, dims: int, bin_width: float) -> Tensor | float:
    """A continuous negative log-likelihood of dequantised data (nats per example, over ``dims``
    numbers) as the bound on the grid's code length it gives, in bits per dimension:
    (nll - D ln bin_width) / (D ln 2)."""
    return (nll - dims * math.log(bin_width)) / (dims * math.log(2))


def chain_neg_elbo(denoise: Callable[[Tensor, Tensor], Tensor], y: Tensor, sigmas: Tensor, *,
                   terms: int | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
    """-ELBO of a DDPM, in nats per example (Ho et al. 2020, Eq. 5; written in the VE variable
    as Kingma et al. 2021, Eq. 13-15, do): the chain over the rising levels sigmas = (sigma_1 <
    ... < sigma_N) whose reverse steps are Gaussian with the posterior's variance and x0 replaced
    by the model's ``denoise(x, sigma (B,))``, an upper bound on -log p_model(y) for continuous y:

    * the prior term KL(q(x_N | y) || N(0, sigma_N^2 I)) = ||y||^2 / (2 sigma_N^2);
    * for i = 2..N, KL(q(x_{i-1} | x_i, y) || p(x_{i-1} | x_i)) = (1 / sigma_{i-1}^2 - 1 /
      sigma_i^2) ||y - D(x_i, sigma_i)||^2 / 2 at x_i = y + sigma_i eps;
    * the decoder -log N(y; D(x_1, sigma_1), sigma_1^2 I) at x_1 = y + sigma_1 eps.

    A DDPM's discrete steps x_t = sqrt(ab_t) (x0 + sigma_t eps) are these levels rescaled, and a
    KL does not change when both its sides are rescaled alike, so this is the DDPM's own bound
    over its schedule (with the prior N(0, sigma_N^2 I) in place of N(0, I) rescaled, which
    differs only by the data's width against sigma_N). ``terms``: estimate the sum over the
    N - 1 middle terms from that many levels per example, one drawn in each of ``terms`` strata
    of equal width in ln sigma and weighted by its stratum's size (unbiased); None sums them
    all. One noise eps per level. Shapes: y (B, ...), sigmas (N,) -> (B,), float64.
    """
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten().to(y.device)
    if sig.numel() < 2 or not (sig[1:] > sig[:-1]).all() or sig[0] <= 0:
        raise ValueError("chain_neg_elbo needs at least two positive, rising levels.")
    b, d = y.shape[0], y[0].numel()
    y64 = y.double().flatten(1)

    def sq_error(i: Tensor) -> Tensor:  # ||y - D(y + sigma_i eps, sigma_i)||^2, i (B,) indices
        s = sig[i]
        eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        x = y + per_example(s.to(y.dtype), y) * eps
        with torch.no_grad():
            x0_hat = denoise(x, s.to(y.dtype))
        return (y64 - x0_hat.double().flatten(1)).square().sum(1)

    prior = y64.square().sum(1) / (2 * sig[-1] ** 2)
    first = torch.zeros(b, dtype=torch.long, device=y.device)
    decoder = (sq_error(first) / (2 * sig[0] ** 2) + 0.5 * d * math.log(2 * math.pi)
               + d * sig[0].log())
    middle = torch.zeros(b, dtype=torch.float64, device=y.device)
    n = sig.numel()
    weight = 0.5 * (1 / sig[:-1] ** 2 - 1 / sig[1:] ** 2)  # weight[i - 1] for level i
    if terms is None or terms >= n - 1:
        for i in range(1, n):
            middle += weight[i - 1] * sq_error(torch.full((b,), i, device=y.device))
    else:
        # strata of equal width in ln sigma: the terms' sizes vary far less within one
        grid = torch.linspace(sig[1].log().item(), sig[-1].log().item(), terms + 1,
                              dtype=torch.float64, device=sig.device)
        edges = [1, *torch.searchsorted(sig.log(), grid[1:-1]).tolist(), n]
        for lo, hi in itertools.pairwise(edges):
            if hi <= lo:
                continue
            u = torch.rand(b, generator=generator, device=y.device, dtype=torch.float64)
            i = (lo + (u * (hi - lo)).long()).clamp(max=hi - 1)
            middle += (hi - lo) * weight[i - 1] * sq_error(i)
    return prior + decoder + middle


@dataclass(frozen=True)
class GaussianMixture:
    """A mixture of isotropic Gaussians in the plane (or any dimension): the case where the noised
    data's density and score are known in closed form, p_sigma = sum_k w_k N(mu_k, (std_k^2 +
    sigma^2) I). Shapes: means (K, D), stds (K,), weights (K,) summing to 1."""

    means: Tensor
    stds: Tensor
    weights: Tensor

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n points and the component each came from. Shapes: (n, D), (n,) int64."""
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[which] + self.stds[which, None] * noise, which

    def _log_parts(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """log (w_k N(x; mu_k, v_k I)) per component, and v_k. Shapes: (B, K), (B, K)."""
        d = x.shape[1]
        sigma = per_example(sigma, x[:, :1]).reshape(-1, 1).to(torch.float64)  # (B, 1)
        var = self.stds.double()[None] ** 2 + sigma**2  # (B, K)
        sq = torch.cdist(x.double(), self.means.double()).square()  # (B, K)
        log = (self.weights.double().log()[None] - 0.5 * sq / var
               - 0.5 * d * (2 * math.pi * var).log())
        return log, var

    def log_prob(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """log p_sigma(x), in nats, in float64. Shapes: (B, D) -> (B,)."""
        return torch.logsumexp(self._log_parts(x, sigma)[0], dim=1)

    def score(self, x: Tensor, sigma: Tensor | float = 0.0) -> Tensor:
        """grad log p_sigma(x) = sum_k r_k (mu_k - x) / v_k, r_k the responsibilities.
        Shapes: (B, D) -> (B, D), in x's dtype."""
        log, var = self._log_parts(x, sigma)
        r = torch.softmax(log, dim=1)  # (B, K)
        pull = (self.means.double()[None] - x.double()[:, None]) / var[..., None]  # (B, K, D)
        return (r[..., None] * pull).sum(1).to(x.dtype)


def mode_shares(samples: Tensor, means: Tensor) -> Tensor:
    """The share of samples nearest to each mean. Shapes: (n, D), (K, D) -> (K,)."""
    nearest = torch.cdist(samples.float(), means.float()).argmin(dim=1)
    return torch.bincount(nearest, minlength=means.shape[0]).double() / samples.shape[0]
