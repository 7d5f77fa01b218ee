import pytest
import torch

from diffuse_edu.diffusion.forward_process import q_posterior, q_sample
from diffuse_edu.diffusion.prediction import predict_x0
from diffuse_edu.diffusion.samplers import ddim_step, sample_ddim, timesteps
from diffuse_edu.diffusion.schedules import cosine_schedule, linear_schedule

LINEAR = linear_schedule(1000)


def test_timesteps_run_from_T_to_0():
    ts = timesteps(LINEAR, 4)
    assert ts == [1000, 750, 500, 250, 0]
    with pytest.raises(ValueError, match="steps must lie in 1..1000"):
        timesteps(LINEAR, 0)


def test_ddim_eta_one_reproduces_the_ddpm_posterior():
    """With t_prev = t - 1 and eta = 1, DDIM's variance is the posterior's, beta_tilde (Song et
    al. Eq. 16)."""
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    for t in (2, 10, 500, 1000):
        x_t = q_sample(x0, t, LINEAR, eps)
        mean, var = q_posterior(x0, x_t, t, LINEAR)
        deterministic = ddim_step(x_t, x0, eps, t, t - 1, LINEAR, eta=1.0,
                                  noise=torch.zeros_like(x_t))
        torch.testing.assert_close(deterministic, mean)
        ones = ddim_step(x_t, x0, eps, t, t - 1, LINEAR, eta=1.0, noise=torch.ones_like(x_t))
        torch.testing.assert_close(ones - deterministic, var.sqrt().expand_as(x_t))


def test_ddim_eta_zero_is_deterministic_and_needs_no_noise():
    model = lambda x, t, c=None: 0.3 * x
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_ddim(model, x, cosine_schedule(100), steps=10,
                    generator=torch.Generator().manual_seed(1))
    b = sample_ddim(model, x, cosine_schedule(100), steps=10,
                    generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)


def test_ddim_with_the_true_noise_returns_x0():
    """A model that knows the noise lands exactly on x0 in any number of deterministic steps."""
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    x_T = q_sample(x0, 1000, LINEAR, eps)
    out = sample_ddim(lambda x, t, c=None: eps, x_T, LINEAR, steps=7)
    torch.testing.assert_close(out, x0)
    torch.testing.assert_close(predict_x0(x_T, eps, 1000, LINEAR), x0)


def test_eta_needs_noise():
    with pytest.raises(ValueError, match="eta > 0 needs noise"):
        ddim_step(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), 10, 5, LINEAR, eta=0.5)


from diffuse_edu.diffusion.denoisers import as_denoiser
from diffuse_edu.diffusion.prediction import (
    Target,
    eps_to_x0,
    eps_x0_to_v,
    to_x0,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from diffuse_edu.diffusion.samplers import (
    heun_step,
    invert_ddim,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
    sigmas_evenly_in_t,
    slerp,
)


def test_prediction_conversions_round_trip():
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    ab = torch.tensor([[0.9], [0.5], [0.1], [0.01]], dtype=torch.float64)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = eps_x0_to_v(eps, x0, ab)
    torch.testing.assert_close(eps_to_x0(x_t, eps, ab), x0)
    torch.testing.assert_close(x0_to_eps(x_t, x0, ab), eps)
    torch.testing.assert_close(v_to_eps(x_t, v, ab), eps)
    torch.testing.assert_close(v_to_x0(x_t, v, ab), x0)
    for target, pred in ((Target.EPS, eps), (Target.X0, x0), (Target.V, v)):
        torch.testing.assert_close(to_x0(pred, target, x_t, ab), x0)


def test_t_at_sigma_inverts_the_schedule():
    for t in (1, 2, 37, 500, 999, 1000):
        assert LINEAR.t_at_sigma(LINEAR.sigma[t].item()).item() == pytest.approx(t, abs=1e-6)
    assert (LINEAR.t_at_sigma(1e-9).item() == pytest.approx(0, abs=1e-6)
            and LINEAR.t_at_sigma(1e9).item() == 1000)


def test_sigma_grids():
    k = karras_sigmas(LINEAR, 10)
    assert (k.shape == (11,) and k[-1] == 0 and bool((k[:-1] > 0).all())
            and bool((k[1:] < k[:-1]).all()))
    assert (k[0].item() == pytest.approx(80.0)
            and k[-2].item() == pytest.approx(LINEAR.sigma[1].item()))
    e = sigmas_evenly_in_t(LINEAR, 4)
    torch.testing.assert_close(e[[0, 3]], LINEAR.sigma[[1000, 1]])
    for bad in (float("inf"), float("nan"), 0.0):
        # inf and NaN spread through the whole grid otherwise
        with pytest.raises(ValueError, match="finite sigma_max"):
            karras_sigmas(LINEAR, 10, sigma_max=bad)


def test_the_denoiser_of_the_true_noise_is_x0():
    x0, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    d = as_denoiser(lambda x, t, c=None: eps, LINEAR)
    for sigma in (0.1, 3.0, 50.0):
        torch.testing.assert_close(d(x0 + sigma * eps, sigma), x0)


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun, sample_dpmpp_2m])
def test_ode_samplers_land_on_a_point_mass(sampler):
    """With the exact denoiser of a one-point data set, every ODE sampler ends on that point."""
    target = torch.tensor([[0.3, -0.7]], dtype=torch.float64)

    def oracle(x_t, t, c=None):
        # eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab), ab at the (fractional) t
        abt = LINEAR.alpha_bar_at(t.double())[:, None]
        return (x_t - abt.sqrt() * target) / (1 - abt).sqrt()
    out = sampler(oracle, torch.randn(4, 2, dtype=torch.float64), LINEAR, steps=12)
    torch.testing.assert_close(out, target.expand(4, 2), rtol=1e-3, atol=1e-3)


def test_heun_step_is_second_order():
    """On dx/dsigma = x / sigma * k (exact solution x ~ sigma^k), Heun's error shrinks ~4x when h
    halves."""
    k = 0.5

    def denoise(x, s):  # (x - D) / s = k x / s  =>  D = (1 - k) x
        return (1 - k) * x

    def error(n):
        sig = torch.linspace(2.0, 1.0, n + 1).tolist()
        x = torch.ones(1, dtype=torch.float64) * 2.0**k
        for a, b in zip(sig[:-1], sig[1:]):
            x = heun_step(x, a, b, denoise)
        return abs(x.item() - 1.0)
    assert 3.5 < error(4) / error(8) < 4.5


def test_ddim_inversion_round_trips():
    """Deterministic DDIM, inverted then run forward, gives the image back at 50+ steps."""
    torch.manual_seed(0)
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1

    def smooth(x, t, c=None):  # a model whose prediction varies smoothly with x and t
        return 0.5 * torch.tanh(x) * (t.double() / 1000).reshape(-1, 1, 1, 1)
    errors = {}
    for steps in (50, 100, 200):
        x_T = invert_ddim(smooth, x0, LINEAR, steps=steps, t_max=800)
        ts = torch.linspace(800, 0, steps + 1).round().long().tolist()
        x = x_T
        for t, t_prev in zip(ts[:-1], ts[1:]):
            eps_hat = smooth(x, torch.full((2,), t))
            x = ddim_step(x, predict_x0(x, eps_hat, t, LINEAR), eps_hat, t, t_prev, LINEAR)
        errors[steps] = (x - x0).abs().max().item()
    assert errors[50] < 0.04  # pixels span [-1, 1]
    # first order: ~halves
    assert errors[100] < 0.6 * errors[50] and errors[200] < 0.6 * errors[100]


def test_slerp_keeps_norm_and_endpoints():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1000, generator=g), torch.randn(3, 1000, generator=g)
    torch.testing.assert_close(slerp(a, b, 0.0), a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slerp(a, b, 1.0), b, rtol=1e-5, atol=1e-5)
    mid = slerp(a, b, 0.5)
    # a straight line would shrink ~30%
    assert (mid.norm(dim=1) / a.norm(dim=1) - 1).abs().max() < 0.05
    assert ((0.5 * (a + b)).norm(dim=1) / a.norm(dim=1)).max() < 0.8


def test_ddim_euler_in_sigma_and_first_order_dpm_solver_take_the_same_step():
    """Lesson 07: deterministic DDIM is Euler's method on the probability-flow ODE in sigma, and the
    first-order DPM-Solver++ step (Lu et al. 2022) is the same update again."""
    import math

    from diffuse_edu.diffusion.samplers import euler_step

    s_ = cosine_schedule(1000)
    g = torch.Generator().manual_seed(0)
    x_t, eps_hat = (torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64),
                    torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64))
    for t, s in ((600, 450), (999, 700), (50, 1)):
        a_t, a_s = s_.alpha_bar[t].item() ** 0.5, s_.alpha_bar[s].item() ** 0.5
        vp_t, vp_s = (1 - a_t**2) ** 0.5, (1 - a_s**2) ** 0.5
        x0_hat = (x_t - vp_t * eps_hat) / a_t
        ddim = ddim_step(x_t, x0_hat, eps_hat, t, s, s_)
        euler = a_s * euler_step(x_t / a_t, vp_t / a_t, vp_s / a_s, x0_hat)
        h = math.log(a_s / vp_s) - math.log(a_t / vp_t)
        dpm1 = vp_s / vp_t * x_t + a_s * (1 - math.exp(-h)) * x0_hat
        torch.testing.assert_close(euler, ddim)
        torch.testing.assert_close(dpm1, ddim)


def test_every_ddim_loop_moves_by_ddim_move_with_the_same_numbers(monkeypatch):
    """One DDIM move (issue 48): sampling, RePaint's step, inversion above t = 0 and the
    distillation target's two teacher steps all go through samplers.ddim_move; each still gives
    what its own loop, written out here, gives."""
    from diffuse_edu.diffusion import distillation, editing, samplers
    from diffuse_edu.diffusion.denoisers import Denoiser
    from diffuse_edu.diffusion.forward_process import q_forward

    schedule = cosine_schedule(100)
    d = Denoiser(lambda x, t, c=None: torch.tanh(x + t.reshape(-1, 1, 1, 1) / 100), schedule, "v")
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    moves, move = [], samplers.ddim_move

    def counted(*args, **kw):
        moves.append(args[2:4])
        return move(*args, **kw)
    for module in (samplers, editing, distillation):
        monkeypatch.setattr(module, "ddim_move", counted)

    with torch.no_grad():
        inverted = samplers.ddim_inversion(d, x, schedule, 4, 80)
        ts, by_hand = timesteps(schedule, 4, t_max=80)[::-1], x
        for t, t_next in zip(ts[:-1], ts[1:]):
            pred = d.at_step(by_hand, max(t, 1))
            x0_hat = by_hand if t == 0 else pred.x0
            by_hand = ddim_step(by_hand, x0_hat, pred.eps, t, t_next, schedule)
        assert torch.equal(inverted, by_hand)
        assert moves == list(zip(ts[1:-1], ts[2:]))  # the step from t = 0 apart

        moves.clear()
        target = distillation.distillation_target(d, x, 60, 40, 20, schedule)
        mid = ddim_step(x, d.at_step(x, 60).x0, d.at_step(x, 60).eps, 60, 40, schedule)
        end = ddim_step(mid, d.at_step(mid, 40).x0, d.at_step(mid, 40).eps, 40, 20, schedule)
        assert torch.equal(target, distillation.x0_for_step(x, end, 60, 20, schedule))
        assert moves == [(60, 40), (40, 20)]

        moves.clear()
        known, mask = torch.rand(2, 1, 4, 4), (torch.arange(4) < 2).float().reshape(1, 1, 1, 4)
        draws = torch.Generator().manual_seed(1)
        noise = lambda: torch.randn(2, 1, 4, 4, generator=draws)
        got = editing.repaint_step(d, x, 60, 40, known, mask, schedule, 2, noise)
        draws, x_t = torch.Generator().manual_seed(1), x
        for r in range(2):  # a try: step (its noise first), replace; a jump back between tries
            pred = d.at_step(x_t, 60)
            x_prev = ddim_step(x_t, pred.x0, pred.eps, 60, 40, schedule, eta=1.0, noise=noise())
            x_prev = editing.replace_known(x_prev, known, mask, 40, schedule, noise())
            if r == 0:
                x_t = q_forward(x_prev, 40, 60, schedule, noise())
        assert torch.equal(got, x_prev) and moves == [(60, 40), (60, 40)]
