"""Lesson 15's continuous view: the score of a denoiser, denoising score matching, Langevin
dynamics, the reverse SDE, the probability-flow ODE and its likelihood, each against a case known
in closed form (a Gaussian, a mixture of Gaussians)."""

import math

import pytest
import torch

from diffuse_edu.diffusion import score as sc
from diffuse_edu.evaluation.sample_sets import energy_distance
from diffuse_edu.models.mlp import MLPConfig, MLPDenoiser
from diffuse_edu.training.loop import TrainConfig, train


def two_modes(w=0.8) -> sc.GaussianMixture:
    return sc.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.tensor([0.4, 0.4]),
                              torch.tensor([w, 1 - w]))


def test_the_mixtures_score_is_the_gradient_of_its_log_density():
    gm = two_modes()
    x = torch.randn(6, 2, dtype=torch.float64) * 2
    for sigma in (0.0, 0.3, 2.0):
        xx = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(gm.log_prob(xx, sigma).sum(), xx)
        torch.testing.assert_close(gm.score(x, sigma), grad)
    # the density integrates to one (a grid over the plane)
    g = torch.linspace(-6, 6, 241, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    assert abs(gm.log_prob(grid, 0.5).exp().sum().item() * (12 / 240) ** 2 - 1) < 1e-3


def test_a_perfect_noise_predictor_gives_the_exact_score():
    """For data N(0, s0^2 I) the best eps predictor is E[eps | x] = sigma x / (s0^2 + sigma^2);
    its score view, -eps_hat / sigma, is the exact score -x / (s0^2 + sigma^2)."""
    s0 = 0.7
    x = torch.randn(5, 2, dtype=torch.float64)
    for sigma in (0.05, 1.0, 9.0):
        eps_hat = sigma * x / (s0**2 + sigma**2)
        sigmas = torch.full((5,), sigma, dtype=torch.float64)
        torch.testing.assert_close(sc.score_from_eps(eps_hat, sigmas), -x / (s0**2 + sigma**2))
    net = lambda x_in, label: x_in * 0
    view = sc.ScoreView(net, 1.0)
    torch.testing.assert_close(view.denoise(x.float(), 2.0), x.float())


def test_the_dsm_loss_is_zero_for_the_conditional_score_and_weighs_every_level_alike():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    sigma = torch.tensor([0.01, 0.1, 1.0, 10.0])

    def conditional(x, s):  # the score of q(x | x0), which DSM regresses onto
        return -(x - x0) / s[:, None] ** 2
    assert sc.dsm_loss(conditional, x0, sigma, eps).abs().max() < 1e-8
    # an error of eps_hat = eps + 1 costs the same at every level under the sigma^2 weight
    off = lambda x, s: -(x - x0) / s[:, None] ** 2 - 1 / s[:, None]
    torch.testing.assert_close(sc.dsm_loss(off, x0, sigma, eps), torch.ones(4))


def test_the_dsm_objective_trains_a_score_model_towards_the_exact_score():
    gm = two_modes()
    points, _ = gm.sample(4000, generator=torch.Generator().manual_seed(1))
    objective = sc.DenoisingScoreMatching(sigma_min=0.05, sigma_max=10.0,
                                          sigma_data=float(points.std()))
    torch.manual_seed(0)
    net = MLPDenoiser(MLPConfig(hidden=32, depth=2))
    view = sc.ScoreView(lambda x, label: net(x, label), objective.sigma_data)
    x = gm.sample(500, generator=torch.Generator().manual_seed(2))[0] + torch.randn(500, 2)

    def error() -> float:
        with torch.no_grad():
            return ((view(x, 1.0) - gm.score(x, 1.0)).square().sum(1)).mean().item()
    before = error()
    config = TrainConfig(steps=300, batch_size=128, lr=3e-3, warmup_steps=10, ema_decay=None)
    train(net, points, objective, config,
          generator=torch.Generator().manual_seed(3), show_progress=False)
    assert error() < 0.25 * before


def test_langevin_at_one_level_keeps_the_starting_basins_and_annealing_finds_the_weights():
    gm = two_modes(0.8)
    score = lambda x, s: gm.score(x, s)
    g = torch.Generator().manual_seed(0)
    start = torch.rand(3000, 2, generator=g) * 8 - 4  # as many points start near each mode
    single = sc.langevin(score, start, 0.05, steps=200, step_size=0.01, generator=g)
    shares = sc.mode_shares(single, gm.means)
    assert abs(shares[0] - 0.5) < 0.05  # stuck where it started
    annealed = sc.annealed_langevin(score, torch.randn(3000, 2, generator=g) * 10,
                                    sc.sigma_ladder(10, 0.05, 10), steps=100, eps=2e-4, generator=g)
    assert abs(sc.mode_shares(annealed, gm.means)[0] - 0.8) < 0.04
    # the reference step itself: x + (a / 2) score + sqrt(a) z
    x, z = torch.randn(4, 2), torch.randn(4, 2)
    torch.testing.assert_close(sc.langevin_step(score, x, 0.3, 0.1, z),
                               x + 0.05 * gm.score(x, 0.3) + 0.1**0.5 * z)


def test_the_sde_and_the_ode_with_the_exact_score_reach_the_data():
    gm = two_modes(0.8)
    score = lambda x, s: gm.score(x, s)
    data = gm.sample(2000, generator=torch.Generator().manual_seed(4))[0]
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5)) * 20
    sigmas = sc.sigma_steps(20.0, 0.01, 200)
    sde = sc.sample_reverse_sde(score, noise, sigmas, generator=torch.Generator().manual_seed(6))
    ode = sc.sample_ode(score, noise, sigmas)
    other = gm.sample(2000, generator=torch.Generator().manual_seed(7))[0]
    floor = energy_distance(other, data)  # two sample sets of the same distribution
    for samples in (sde, ode):
        assert energy_distance(samples, data) < floor + 0.02
    assert energy_distance(data + torch.tensor([0.5, 0.0]), data) > 0.1  # the distance sees a shift
    few = sc.sigma_steps(20.0, 0.01, 3)
    assert energy_distance(sc.sample_ode(score, noise, few), data) < energy_distance(
        sc.sample_reverse_sde(score, noise, few, generator=torch.Generator().manual_seed(6)), data)


def test_the_reverse_sde_step_is_euler_maruyama_in_sigma_squared_and_the_ode_is_half_its_drift():
    score = lambda x, s: -x / (1 + s[:, None] ** 2)
    x, z = torch.randn(3, 2), torch.randn(3, 2)
    d = 2.0**2 - 1.5**2
    torch.testing.assert_close(sc.reverse_sde_step(score, x, 2.0, 1.5, z),
                               x + d * score(x, torch.full((3,), 2.0)) + math.sqrt(d) * z)
    torch.testing.assert_close(sc.ode_drift(score, x, 2.0), -2.0 * score(x, torch.full((3,), 2.0)))


def rotated_two_modes(w=0.8) -> sc.GaussianMixture:
    """The two modes on the diagonal: the score's Jacobian has off-diagonal terms, so random signs
    no longer give its trace exactly (on the axis-aligned mixture z^T J z = tr J for every z)."""
    r = 2.0 / math.sqrt(2.0)
    return sc.GaussianMixture(torch.tensor([[-r, -r], [r, r]]), torch.tensor([0.4, 0.4]),
                              torch.tensor([w, 1 - w]))


def _probe_without_signs(score, x, sigma, z):  # E[|z_i| |z_j|] != 0: biased by J's off-diagonal
    return sc.hutchinson_divergence(score, x, sigma, z.abs())


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_the_exact_divergence_matches_a_closed_form(probe):
    """For the score of N(0, v I), f = -sigma score = sigma x / v has divergence D sigma / v. On
    the rotated mixture every probe kind has a spread, and the mean over probes meets the exact
    divergence within 4 standard errors: an estimator biased by as little as a tenth of its
    one-probe spread fails."""
    v = 1.0 + 0.8**2
    linear = lambda x, s: -x / v
    x = torch.randn(7, 2)
    _, exact = sc.exact_divergence(linear, x, 0.8)
    torch.testing.assert_close(exact, torch.full((7,), 2 * 0.8 / v))
    gm = rotated_two_modes()
    score = lambda x, s: gm.score(x, s)
    x = torch.tensor([[0.1, -0.2], [-0.3, 0.4], [1.0, 0.2], [0.2, 0.9], [-0.5, 0.0]])
    _, exact = sc.exact_divergence(score, x, 0.7)
    z = sc.probe_vectors((4000, 5, 2), probe, generator=torch.Generator().manual_seed(0))

    def estimates(estimator):
        return torch.stack([estimator(score, x, 0.7, zk)[1] for zk in z])  # (probes, points)
    right = estimates(sc.hutchinson_divergence)
    spread = right.std(0)
    assert (spread > 0.2).all()  # not trivially exact: the Jacobian is not diagonal
    assert ((right.mean(0) - exact).abs() < 4 * spread / 4000**0.5).all()
    for biased in (_probe_without_signs,):
        wrong = estimates(biased)
        assert ((wrong.mean(0) - exact).abs() > 4 * wrong.std(0) / 4000**0.5 + 1e-6).any()
    # on the axis-aligned mixture random signs are exact: the check the lesson no longer makes
    aligned = lambda x, s: two_modes().score(x, s)
    signs = sc.probe_vectors((50, 5, 2), generator=torch.Generator().manual_seed(1))
    one = torch.stack([sc.hutchinson_divergence(aligned, x, 0.7, zk)[1] for zk in signs])
    assert one.std(0).max() < 1e-5
    with pytest.raises(ValueError, match="rademacher"):
        sc.probe_vectors((2, 2), "uniform")


def test_the_ode_likelihood_recovers_the_mixtures_exact_density():
    gm = two_modes()
    score = lambda x, s: gm.score(x, s)
    x = gm.sample(300, generator=torch.Generator().manual_seed(8))[0]
    sigmas = sc.sigma_ladder(0.01, 40.0, 96)
    exact = gm.log_prob(x, 0.01)
    by_exact_div = sc.ode_log_likelihood(score, x, sigmas, divergence=sc.exact_divergence)
    assert (by_exact_div - exact).abs().mean() < 0.03
    by_probes = sc.ode_log_likelihood(score, x, sigmas, probes=4,
                                      generator=torch.Generator().manual_seed(9))
    assert abs((by_probes - exact).mean().item()) < 0.05  # unbiased over the points
    wrong = two_modes(0.5)  # a model with the wrong weights is less likely on these points
    assert sc.ode_log_likelihood(lambda x, s: wrong.score(x, s), x, sigmas,
                                 divergence=sc.exact_divergence).mean() < by_exact_div.mean() - 0.1


def test_energy_distance_and_mode_shares():
    a = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    b = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    assert abs(energy_distance(a, b)) < 0.02 and energy_distance(a, b + 1) > 0.5
    with pytest.raises(ValueError, match="at least 2"):
        energy_distance(a[:1], b)
    shares = sc.mode_shares(torch.tensor([[-1.0, 0.0], [-3.0, 0.0], [2.0, 1.0]]), two_modes().means)
    torch.testing.assert_close(shares, torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


def test_the_ladders_fall_geometrically():
    ladder = sc.sigma_ladder(10.0, 0.1, 3)
    assert ladder == pytest.approx([10.0, 1.0, 0.1])
    assert sc.sigma_steps(10.0, 0.1, 3)[-1] == 0.0 and len(sc.sigma_steps(10.0, 0.1, 3)) == 4
    drawn = sc.log_uniform_sigmas(1000, 0.01, 10.0, generator=torch.Generator().manual_seed(0))
    middle = (math.log(0.01) + math.log(10.0)) / 2
    assert drawn.log().mean().item() == pytest.approx(middle, abs=0.2)


def _gaussian_data(n=2000, d=4, s0=0.5):
    """Data N(0, s0^2 I): its denoiser, E[x0 | x] = s0^2 x / (s0^2 + sigma^2), and its exact
    negative log-density are known."""
    y = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) * s0
    denoise = lambda x, s: s0**2 / (s0**2 + s[:, None] ** 2) * x
    nll = 0.5 * y.double().square().sum(1) / s0**2 + 0.5 * d * math.log(2 * math.pi * s0**2)
    return y, denoise, nll


def test_the_ddpm_elbo_bounds_the_exact_nll_and_tightens_with_more_levels():
    """With the exact denoiser of Gaussian data the chain's -ELBO lies above the exact NLL, and
    the gap shrinks as the levels get denser (Kingma et al. 2021: the discrete-time bound tends
    to the continuous one, tight for the exact denoiser)."""
    y, denoise, nll = _gaussian_data()
    gaps = []
    for n in (10, 100, 1000):
        levels = torch.logspace(-3, 2, n)
        neg = sc.chain_neg_elbo(denoise, y, levels, generator=torch.Generator().manual_seed(1))
        gap, se = (neg - nll).mean().item(), (neg - nll).std().item() / len(y) ** 0.5
        assert gap > -3 * se  # a bound: never below the exact NLL
        gaps.append(gap)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.1 * y.shape[1]
    # a worse denoiser (it shrinks too little) has a looser bound
    worse = lambda x, s: 0.9 * denoise(x, s) + 0.1 * x
    levels = torch.logspace(-3, 2, 1000)
    neg_worse = sc.chain_neg_elbo(worse, y, levels, generator=torch.Generator().manual_seed(1))
    assert neg_worse.mean().item() > nll.mean().item() + gaps[2] + 0.1


def test_the_stratified_elbo_estimate_is_unbiased():
    y, denoise, _ = _gaussian_data(n=1000)
    levels = torch.logspace(-3, 2, 400)
    full = sc.chain_neg_elbo(denoise, y, levels, generator=torch.Generator().manual_seed(2))
    part = sc.chain_neg_elbo(denoise, y, levels, terms=20,
                             generator=torch.Generator().manual_seed(3))
    se = ((full.var() + part.var()) / len(y)).sqrt().item()
    assert abs(full.mean().item() - part.mean().item()) < 4 * se
    assert part.std() > full.std()  # fewer terms, more noise
    with pytest.raises(ValueError, match="rising"):
        sc.chain_neg_elbo(denoise, y, torch.tensor([1.0, 0.5]))


def test_dequantisation_and_bits_per_dim():
    x = torch.tensor([[-1.0, 0.0, 1.0]]).repeat(2000, 1)
    y = sc.dequantise(x, 0.125, generator=torch.Generator().manual_seed(0))
    assert ((y - x).abs() <= 0.0625).all() and (y - x).std() > 0.03
    # a uniform density over the bins (log p = -D ln 0.125) is one code per value: 0 bits
    assert sc.bits_per_dim(3 * math.log(0.125), 3, 0.125) == pytest.approx(0.0)
    assert sc.bits_per_dim(0.0, 3, 0.125) == pytest.approx(3.0)


def test_the_ancestral_step_leaves_noise_of_the_next_width():
    """From x = x0 + sigma eps with the exact denoiser of a point mass at 0 the ancestral step
    lands at width sigma_next; Euler-Maruyama's step keeps almost the whole width sigma."""
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0)) * 10.0
    score = lambda x, s: -x / s[:, None] ** 2  # the score of N(0, sigma^2 I)
    z = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1))
    anc = sc.ancestral_step(score, x, 10.0, 1.0, z)
    em = sc.reverse_sde_step(score, x, 10.0, 1.0, z)
    assert anc.std().item() == pytest.approx(1.0, rel=0.03)
    assert em.std().item() == pytest.approx(math.sqrt(99.0), rel=0.03)
    torch.testing.assert_close(sc.ancestral_step(score, x, 2.0, 0.0, z), torch.zeros_like(x))
