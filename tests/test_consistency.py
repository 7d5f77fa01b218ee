"""Lesson 16's library: EDM's preconditioning, the consistency function, its sampler and losses
(diffuse_edu.diffusion.consistency, diffuse_edu.training.consistency)."""

import copy
import itertools

import pytest
import torch
from torch import nn

from diffuse_edu.diffusion import consistency as cm
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.training.consistency import train_consistency
from diffuse_edu.training.loop import TrainConfig


def test_boundary_condition_is_exact_whatever_the_network_says():
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    for sd in (0.5, 1.0):
        out = cm.consistency_function(lambda z, s: 1e6 * torch.ones_like(z), x,
                                      torch.full((5,), 0.002, dtype=torch.float64),
                                      sigma_min=0.002, sigma_data=sd)
        assert torch.equal(out, x)
    c_skip, c_out = cm.consistency_coefficients(torch.tensor(0.3), sigma_min=0.3)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0


def test_consistency_coefficients_approach_edm_far_from_sigma_min():
    sigma = torch.tensor([5.0, 80.0], dtype=torch.float64)
    c_skip, c_out = cm.consistency_coefficients(sigma, sigma_min=0.002, sigma_data=0.5)
    e_skip, e_out, _, _ = cm.edm_preconditioning(sigma, 0.5)
    assert torch.allclose(c_skip, e_skip, rtol=1e-3) and torch.allclose(c_out, e_out, rtol=1e-3)


@pytest.mark.parametrize("sd", [0.5, 1.0, 0.25])
@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_edm_preconditioning_gives_unit_variance_input_and_target(sd, sigma):
    """Karras et al. 2022, Appendix B.6: for data of std sigma_data, c_in x and the target
    (x0 - c_skip x) / c_out have unit variance (a known answer)."""
    g = torch.Generator().manual_seed(0)
    x0 = sd * torch.randn(200_000, generator=g, dtype=torch.float64)
    x = x0 + sigma * torch.randn(200_000, generator=g, dtype=torch.float64)
    s = torch.full((200_000,), sigma, dtype=torch.float64)
    _, _, c_in, c_noise = cm.edm_preconditioning(s, sd)
    assert (c_in * x).var().item() == pytest.approx(1.0, rel=0.02)
    assert cm.edm_target(x0, x, s, sd).var().item() == pytest.approx(1.0, rel=0.02)
    assert c_noise[0].item() == pytest.approx(torch.log(torch.tensor(sigma)).item() / 4)
    # the v-parametrisation of the course is EDM's with sigma_data = 1: x0_hat = c_skip x + c_out F
    ab = 1 / (1 + sigma**2)
    c_skip, c_out, c_in1, _ = cm.edm_preconditioning(torch.tensor(sigma, dtype=torch.float64), 1.0)
    assert c_skip.item() == pytest.approx(ab) and c_in1.item() == pytest.approx(ab**0.5)
    assert c_out.item() == pytest.approx((1 - ab) ** 0.5)


def test_lognormal_sigmas_have_edm_moments():
    s = cm.lognormal_sigmas(100_000, generator=torch.Generator().manual_seed(1))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.02)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.02)


def _gaussian_f(s_data: float, sigma_min: float):
    """The exact consistency function of N(0, s_data^2) data: the ODE x(sigma) ∝ sqrt(s^2 +
    sigma^2) followed down to sigma_min."""
    def f(x, sigma):
        s = cm.column(sigma, x)
        return x * ((s_data**2 + sigma_min**2) / (s_data**2 + s**2)).sqrt()
    return f


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sampler_with_the_exact_consistency_function_draws_the_data(steps):
    """Gaussian data, whose consistency function is known: every step count draws N(0, s^2)."""
    s_data, n = 0.6, 40_000

    class Exact(nn.Module):  # a v-network whose consistency model is exact (sigma_data = 1)
        predicts = "v"

        def forward(self, x_t, t, cond=None):
            sigma = schedule.sigma_at(t.double()).to(x_t.dtype)
            x = x_t * (1 + cm.column(sigma, x_t) ** 2).sqrt()
            c_skip, c_out = cm.consistency_coefficients(cm.column(sigma, x_t), sigma_min=0.002,
                                                        sigma_data=1.0)
            raw = (_gaussian_f(s_data, 0.002)(x, sigma) - c_skip * x) / c_out
            return -raw

    schedule = cosine_schedule(1000)
    model = cm.ConsistencyModel(Exact(), schedule)
    x = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = cm.sample_consistency(model, x, steps=steps, generator=torch.Generator().manual_seed(3))
    assert out.std().item() == pytest.approx(s_data, rel=0.02)
    assert out.mean().item() == pytest.approx(0.0, abs=0.02)
    if steps == 1:  # deterministic: the ODE's end from sigma_max
        want = 80 * x * ((s_data**2 + 0.002**2) / (s_data**2 + 80**2)) ** 0.5
        assert torch.allclose(out, want, rtol=1e-4, atol=1e-6)


def test_sampler_calls_f_once_a_level_on_the_karras_levels():
    seen = []

    def f(x, sigma):
        seen.append(sigma[0].item())
        return torch.zeros_like(x)

    cm.consistency_sampler(f, torch.randn(2, 3), cm.sampling_sigmas(4), sigma_min=0.002)
    assert len(seen) == 4 and seen[0] == pytest.approx(80.0)
    assert all(a > b for a, b in itertools.pairwise(seen)) and seen[-1] > 0.002
    assert cm.karras_grid(18)[0].item() == pytest.approx(0.002)
    with pytest.raises(ValueError, match="at least 1"):
        cm.sampling_sigmas(0)


def test_cd_loss_is_small_for_the_exact_consistency_function_and_large_for_a_wrong_one():
    s_data, x0 = 0.5, 0.5 * torch.randn(512, 1, 2, 2, dtype=torch.float64)
    noise = torch.randn_like(x0)
    grid = cm.karras_grid(40, sigma_min=0.002).double()
    n = torch.randint(0, 39, (512,), generator=torch.Generator().manual_seed(0))
    sigma, sigma_next = grid[n + 1], grid[n]

    def teacher(x, s):  # the exact denoiser of N(0, s_data^2) data
        return x * s_data**2 / (s_data**2 + cm.column(s, x) ** 2)

    exact = _gaussian_f(s_data, 0.002)
    good = cm.cd_loss(exact, exact, teacher, x0, noise, sigma, sigma_next).mean().item()
    identity = cm.cd_loss(lambda x, s: x, lambda x, s: x, teacher, x0, noise, sigma,
                          sigma_next).mean().item()
    assert good < 1e-2 * identity
    assert cm.ct_loss(exact, exact, x0, noise, sigma, sigma_next).shape == (512,)
    assert cm.pseudo_huber(x0, x0).abs().max().item() == 0


def test_consistency_model_starts_as_its_teachers_denoiser_and_refuses_eps_networks():
    from diffuse_edu.diffusion.denoisers import Denoiser
    from diffuse_edu.diffusion.prediction import Target

    schedule = cosine_schedule(1000)

    class Net(nn.Module):
        predicts = "v"

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t, cond=None):
            return self.conv(x) * (t[:, None, None, None] / 1000)

    torch.manual_seed(0)
    net = Net()
    x, sigma = torch.randn(3, 1, 4, 4), torch.tensor([1.0, 5.0, 40.0])
    with torch.no_grad():
        f = cm.ConsistencyModel(net, schedule)(x, sigma)
        d = Denoiser(net, schedule, Target.V)(x, sigma)
    # the coefficients differ by sigma_min / sigma at most (0.2% at sigma = 1)
    assert torch.allclose(f, d, rtol=0, atol=5e-3 * x.abs().max().item())
    assert not torch.allclose(f, x)
    net.predicts = "eps"
    with pytest.raises(ValueError, match="v-prediction"):
        cm.ConsistencyModel(net, schedule)


def test_train_consistency_trains_the_student_by_ct_and_by_cd():
    schedule = cosine_schedule(1000)

    class Net(nn.Module):
        predicts = "v"

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t, cond=None):
            return self.conv(x)

    torch.manual_seed(0)
    net, data = Net(), torch.randn(64, 1, 4, 4).clamp(-1, 1)
    before = copy.deepcopy(net.state_dict())
    config = TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup_steps=1, ema_decay=None)
    model, losses = train_consistency(net, data, schedule, teacher=None, config=config,
                                      show_progress=False)
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before["conv.weight"], net.state_dict()["conv.weight"])
    assert model.network is net
    _, cd = train_consistency(copy.deepcopy(net), data, schedule,
                              teacher=lambda x, s: 0.5 * x, config=config, show_progress=False,
                              target_decay=0.95)
    assert len(cd) == 20


def test_edm_objective_on_gaussian_data_where_the_best_network_outputs_zero():
    """For N(0, sigma_data^2) data E[x0 | x] = c_skip x, so the optimal F is 0 and the zero network
    has loss E[target^2] = 1 at every level (a known answer); its EDMDenoiser is the exact one."""
    from diffuse_edu.diffusion.samplers import sample_heun

    schedule, sd = cosine_schedule(1000), 0.5
    objective = cm.EDMObjective(schedule, sigma_data=sd)

    def zero(x, t, cond=None):
        return torch.zeros_like(x)

    x0 = sd * torch.randn(50_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    loss, t = objective(zero, x0, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (50_000,) and t.shape == (50_000,)
    assert loss.mean().item() == pytest.approx(1.0, rel=0.03)
    assert objective.t_max == 1000.0 and t.min().item() >= 0 and t.max().item() <= 1000
    d = cm.EDMDenoiser(zero, schedule, sigma_data=sd)
    x, sigma = torch.randn(4, 1, 2, 2), torch.tensor([0.1, 1.0, 3.0, 20.0])
    want = x * sd**2 / (sd**2 + cm.column(sigma, x) ** 2)
    assert torch.allclose(d(x, sigma), want, rtol=1e-4, atol=1e-6)
    out = sample_heun(d, torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(2)),
                      schedule, steps=50)  # Heun's error: 5% at 18 steps, under 1% at 50
    assert out.std().item() == pytest.approx(sd, rel=0.02)


def test_edm_objective_trains_through_the_course_loop():
    from diffuse_edu.training.loop import train

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x, t, cond=None):
            return self.conv(x)

    torch.manual_seed(0)
    net = Net()
    result = train(net, torch.randn(64, 1, 4, 4).clamp(-1, 1),
                   cm.EDMObjective(cosine_schedule(1000), sigma_data=0.6),
                   TrainConfig(steps=5, batch_size=8, ema_decay=None), show_progress=False)
    assert result.steps == 5


def test_greedy_levels_picks_the_best_candidate_one_level_at_a_time():
    seen = []

    def score(levels):  # best: as close to [80, 1.2, 0.3, 0.15] as the greedy order allows
        seen.append(list(levels))
        return sum(abs(a - b) for a, b in zip(levels, [80.0, 1.2, 0.3, 0.15]))

    chosen = cm.greedy_levels(score, [2.5, 1.2, 0.6, 0.3, 0.15], 4)
    assert chosen == {1: [80.0], 2: [80.0, 1.2], 3: [80.0, 1.2, 0.3], 4: [80.0, 1.2, 0.3, 0.15]}
    assert [80.0, 0.15] not in seen  # leaves two lower candidates for the later steps
    assert all(a > b for levels in seen for a, b in itertools.pairwise(levels))  # always falling
    with pytest.raises(ValueError, match="need at least 3 candidates"):
        cm.greedy_levels(score, [1.0, 0.5], 4)


def test_class_coverage_tells_a_collapsed_sampler_from_an_even_one():
    even, largest = cm.class_coverage(torch.arange(100) % 10, 10)
    assert even == pytest.approx(1.0) and largest == pytest.approx(0.1)
    one, largest = cm.class_coverage(torch.full((50,), 8), 10)
    assert one == 0.0 and largest == 1.0
    half, largest = cm.class_coverage(torch.tensor([0, 1]), 4)
    assert half == pytest.approx(0.5) and largest == 0.5


def test_sample_consistency_takes_given_levels():
    calls = []

    class Fake:
        sigma_min = 0.002

        def __call__(self, x, sigma, cond):
            calls.append(round(sigma[0].item(), 3))
            return x * 0

    fake = Fake()
    cm.sample_consistency(fake, torch.randn(2, 1, 2, 2), steps=2, sigmas=[80.0, 0.6],
                          generator=torch.Generator().manual_seed(0))
    assert calls == [80.0, 0.6]
    with pytest.raises(ValueError, match="2 steps need 2 levels"):
        cm.sample_consistency(fake, torch.randn(2, 1, 2, 2), steps=2, sigmas=[80.0])
