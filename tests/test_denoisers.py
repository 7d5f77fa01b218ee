"""One D(x; sigma) view of any model: the same network wrapped as an eps-, x0-, v- or flow model
gives the same samples with every sampler (Karras et al. 2022, Table 1)."""

import gc
import math
import weakref

import pytest
import torch

from diffuse_edu.diffusion.denoisers import (
    Denoiser,
    as_denoiser,
    bf16_supported,
    declared_target,
    fast_path,
)
from diffuse_edu.diffusion.prediction import Target, eps_to_x0, eps_x0_to_v, v_to_x0
from diffuse_edu.diffusion.samplers import (
    ddim_step,
    invert_ddim,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_flow_euler,
    sample_heun,
    sigmas_evenly_in_t,
)
from diffuse_edu.diffusion.schedules import (
    cosine_schedule,
    linear_schedule,
    rescale_zero_terminal_snr,
)

SCHEDULE = cosine_schedule(200)


def eps_net(x, t, cond=None):
    """A smooth stand-in for a trained eps-network (float t allowed), in float64."""
    s = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / SCHEDULE.T
    return torch.tanh(0.8 * x + 0.3 * torch.cos(3 * s) * x.roll(1, -1)) * (0.5 + s)


def alpha_bar_of(t, x):
    """alpha_bar at integer or fractional steps, as the adapter would see it."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    exact = t == t.round()
    ab = SCHEDULE.alpha_bar[t.long()] if exact.all() else SCHEDULE.alpha_bar_at(t)
    return ab.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def x0_net(x, t, cond=None):
    return eps_to_x0(x, eps_net(x, t), alpha_bar_of(t, x))


def v_net(x, t, cond=None):
    ab = alpha_bar_of(t, x)
    eps = eps_net(x, t)
    return eps_x0_to_v(eps, eps_to_x0(x, eps, ab), ab)


def flow_net(x_s, t_scaled, cond=None):
    """The flow velocity eps - x0 implied by eps_net, on x_s = (1 - s) x0 + s eps."""
    s = (t_scaled / 1000.0).reshape(-1, *([1] * (x_s.ndim - 1)))
    sigma = s / (1 - s)
    x = x_s / (1 - s)  # x0 + sigma eps
    ab = 1 / (1 + sigma**2)
    t = SCHEDULE.t_at_sigma(sigma.flatten()).to(x.dtype)
    eps = eps_net(x * ab.sqrt(), t)
    return eps - (x - sigma * eps)


WRAPPED = {
    "x0": Denoiser(x0_net, SCHEDULE, Target.X0),
    "v": Denoiser(v_net, SCHEDULE, Target.V),
    "flow": Denoiser(flow_net, SCHEDULE, Target.FLOW),
}
SAMPLERS = {
    "ddim": lambda m, x: sample_ddim(m, x, SCHEDULE, steps=8),
    "ddim eta 0.5": lambda m, x: sample_ddim(m, x, SCHEDULE, steps=8, eta=0.5,
                                             generator=torch.Generator().manual_seed(1)),
    "ddpm": lambda m, x: sample_ddpm(m, x, SCHEDULE, steps=10,
                                     generator=torch.Generator().manual_seed(2)),
    "euler": lambda m, x: sample_euler(m, x, SCHEDULE, steps=6),
    "heun": lambda m, x: sample_heun(m, x, SCHEDULE, steps=5),
    "dpm++ 2m": lambda m, x: sample_dpmpp_2m(m, x, SCHEDULE, steps=6),
    "ddim clipped": lambda m, x: sample_ddim(m, x, SCHEDULE, steps=8, clip=1.0),
}


@pytest.mark.parametrize("target", list(WRAPPED))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_target_gives_the_eps_models_samples(sampler, target):
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = SAMPLERS[sampler](eps_net, x)
    got = SAMPLERS[sampler](WRAPPED[target], x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_the_adapter_returns_x0_in_sigma_space_for_each_target():
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = float(SCHEDULE.sigma[120])
    x = x0 + sigma * eps

    def oracle(target):  # a network that predicts its target exactly
        ab = 1 / (1 + sigma**2)
        values = {Target.EPS: eps, Target.X0: x0, Target.V: eps_x0_to_v(eps, x0, ab),
                  Target.FLOW: eps - x0}
        return lambda *_: values[target]

    for target in Target:
        d = Denoiser(oracle(target), SCHEDULE, target)
        torch.testing.assert_close(d(x, sigma), x0)


def test_t_at_sigma_hits_the_steps_and_inverts_the_continuous_alpha_bar():
    for t in (0, 1, 7, 100, 199, 200):
        assert SCHEDULE.t_at_sigma(float(SCHEDULE.sigma[t])).item() == pytest.approx(t, abs=1e-9)
    t = torch.tensor([0.5, 1.0, 3.25, 57.5, 150.9, 200.0], dtype=torch.float64)
    ab = SCHEDULE.alpha_bar_at(t)
    back = SCHEDULE.t_at_sigma(((1 - ab) / ab).sqrt())
    torch.testing.assert_close(back, t)
    torch.testing.assert_close(SCHEDULE.alpha_bar_at(torch.arange(0, 201, dtype=torch.float64)),
                               SCHEDULE.alpha_bar)


def test_the_conversions_reach_an_infinite_sigma_at_zero_terminal_snr():
    zero = rescale_zero_terminal_snr(SCHEDULE)
    t = torch.tensor([199.0, 199.5, 200.0], dtype=torch.float64)
    sig = zero.sigma_at(t)
    assert (math.isfinite(sig[0]) and math.isfinite(sig[1]) and sig[1] > sig[0]
            and sig[2] == math.inf)
    torch.testing.assert_close(zero.t_at_sigma(sig), t)
    assert zero.t_at_sigma(float("inf")).item() == 200 and zero.t_at_sigma(0.0).item() == 0
    grid = sigmas_evenly_in_t(zero, 5)
    assert torch.isfinite(grid).all() and grid[0] > 1e3  # capped, not infinite


def test_misuse_is_named():
    with pytest.raises(ValueError, match="needs the schedule"):
        Denoiser(eps_net, None, Target.V)
    # a network that declares nothing, sampled without a schedule: it may be a flow missing its
    # declaration
    with pytest.raises(ValueError,
                       match="does not declare what it predicts .* model.predicts = 'flow'"):
        as_denoiser(lambda x, t, cond=None: x, None)

    def v_declared(x, t, cond=None):
        return x
    v_declared.predicts = "v"
    with pytest.raises(ValueError, match="A v-prediction network needs the schedule"):
        as_denoiser(v_declared, None)
    d = as_denoiser(eps_net, SCHEDULE, clip=1.0)
    assert d.clip == 1.0 and as_denoiser(d, SCHEDULE) is d
    with pytest.raises(ValueError, match="not defined on x_t"):
        from diffuse_edu.diffusion.prediction import to_x0
        to_x0(torch.zeros(1), Target.FLOW, torch.zeros(1), 0.5)


def test_a_denoiser_sampled_on_another_schedule_is_refused():
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    other = linear_schedule(200)
    for sampler in (lambda m: sample_ddim(m, x, other, steps=4),
                    lambda m: sample_euler(m, x, other, steps=4)):
        with pytest.raises(ValueError,
                           match="trained on the 'cosine' schedule but the sampler was given "
                                 "'linear'"):
            sampler(WRAPPED["v"])
    # equal betas: fine
    assert sample_ddim(WRAPPED["v"], x, cosine_schedule(200), steps=4).shape == x.shape
    assert sample_ddim(WRAPPED["flow"], x, other, steps=4).shape == x.shape  # a flow fits any grid


def test_a_flow_model_samples_on_any_grid_or_is_refused_with_the_samplers_that_fit():
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flow = Denoiser(flow_net, None, Target.FLOW)
    a = sample_ddim(flow, x, SCHEDULE, steps=8)
    torch.testing.assert_close(a, sample_ddim(eps_net, x, SCHEDULE, steps=8), rtol=1e-6, atol=1e-6)
    for run in (lambda: sample_ddim(flow, x, None, steps=8),
                lambda: sample_ddpm(flow, x, None, steps=8),
                lambda: sample_heun(flow, x, None, steps=4),
                lambda: invert_ddim(flow, x, None, steps=4)):
        with pytest.raises(ValueError, match="sample_flow_euler"):
            run()
    with pytest.raises(ValueError, match="samples a flow model; this one predicts v"):
        sample_flow_euler(WRAPPED["v"], x, SCHEDULE, steps=4)


def test_flow_euler_walks_from_noise_to_data_and_is_exact_for_straight_paths():
    """A flow whose velocity is the straight line from a fixed x0 to the start noise lands on x0."""
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def straight(x_s, t, cond=None):
        s = (t / 1000).reshape(-1, 1, 1, 1)
        eps = (x_s - (1 - s) * x0) / s  # the noise this x_s started from
        return eps - x0
    straight.predicts = "flow"
    noise = torch.randn_like(x0)
    torch.testing.assert_close(sample_flow_euler(straight, noise, steps=3), x0)
    seen = []
    sample_flow_euler(straight, noise, steps=4, callback=lambda i, s, x: seen.append(s))
    assert seen == pytest.approx([0.75, 0.5, 0.25, 0.0])


def test_zero_terminal_snr_ddim_of_a_v_model_is_finite_and_follows_the_models_own_x0():
    """At t = T of a zero-SNR schedule sqrt(alpha_bar_T) = 0: x0_hat must come from v directly."""
    zero = rescale_zero_terminal_snr(SCHEDULE)

    def v_model(x, t, cond=None):
        return 0.5 * torch.tanh(x) - 0.1 * (t.reshape(-1, 1, 1, 1) / zero.T)
    v_model.predicts = "v"
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    out = sample_ddim(v_model, x, zero, steps=10)
    assert torch.isfinite(out).all()
    first = []
    sample_ddim(v_model, x, zero, steps=10,
                callback=lambda i, t, z: first.append(z) if i == 0 else None)
    T, t1 = zero.T, timesteps_of(zero, 10)[1]
    x0_hat = v_to_x0(x, v_model(x, torch.full((4,), T)), 0.0)  # = -v at alpha_bar = 0
    expected = (zero.alpha_bar[t1].item() ** 0.5 * x0_hat
                + (1 - zero.alpha_bar[t1].item()) ** 0.5 * x)
    torch.testing.assert_close(first[0], expected)
    assert torch.isfinite(sample_euler(v_model, x, zero, steps=6)).all()
    assert torch.isfinite(sample_dpmpp_2m(v_model, x, zero, steps=6)).all()
    assert torch.isfinite(sample_ddpm(v_model, x, zero, steps=10,
                                      generator=torch.Generator().manual_seed(0))).all()
    with pytest.raises(ValueError, match="eps-prediction model cannot be sampled from step 200"):
        sample_ddim(eps_net, x, zero, steps=10)


def timesteps_of(schedule, steps):
    from diffuse_edu.diffusion.samplers import timesteps
    return timesteps(schedule, steps)


def test_a_v_model_never_round_trips_through_eps_in_float32():
    """On the cosine schedule the old path prediction -> x0 -> eps -> x0 lost ~5e-3 at t = T."""
    schedule = cosine_schedule(1000)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    v = torch.randn_like(x)
    d = Denoiser(lambda x_t, t, cond=None: v, schedule, Target.V)
    pred = d.at_step(x, schedule.T)
    ab = schedule.alpha_bar[-1].item()
    torch.testing.assert_close(pred.x0, v_to_x0(x, v, ab), rtol=0, atol=1e-6)
    step = ddim_step(x, pred.x0, pred.eps, schedule.T, 980, schedule)
    ab_prev = schedule.alpha_bar[980].item()
    want = ab_prev**0.5 * v_to_x0(x.double(), v.double(), ab) + (1 - ab_prev) ** 0.5 * (
        ab**0.5 * v.double() + (1 - ab) ** 0.5 * x.double())
    assert (step.double() - want).abs().max() < 1e-5


def test_per_example_sigma_equals_one_call_per_example():
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigmas = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64)
    for name, d in {"eps": Denoiser(eps_net, SCHEDULE), **WRAPPED}.items():
        batched = d(x, sigmas)
        one_by_one = torch.cat([d(x[i:i + 1], float(s)) for i, s in enumerate(sigmas)])
        torch.testing.assert_close(batched, one_by_one, msg=name)


def test_one_sigma_as_a_float_a_0d_or_a_1_tensor_is_the_same_call():
    """As EDM's and k-diffusion's users pass it: D(x, karras_sigmas(...)[0])."""
    x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for name, d in {"eps": Denoiser(eps_net, SCHEDULE), **WRAPPED}.items():
        want = d(x, 0.7)
        for sigma in (torch.tensor(0.7, dtype=torch.float64),
                      torch.tensor([0.7], dtype=torch.float64)):
            torch.testing.assert_close(d(x, sigma), want, msg=name)
        with pytest.raises(ValueError, match="one noise level or one per example"):
            d(x, torch.tensor([0.7, 0.8], dtype=torch.float64))


def test_plain_networks_are_read_as_what_they_declare():
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def v_declared(x_t, t, cond=None):
        return v_net(x_t, t)
    v_declared.predicts = "v"
    assert declared_target(v_declared) is Target.V and declared_target(eps_net) is None
    torch.testing.assert_close(sample_ddim(v_declared, x, SCHEDULE, steps=5),
                               sample_ddim(eps_net, x, SCHEDULE, steps=5))
    assert as_denoiser(v_declared, SCHEDULE).target is Target.V


def test_inversion_of_an_x0_model_matches_the_eps_model():
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3),
                     dtype=torch.float64) * 0.5
    a = invert_ddim(eps_net, x0, SCHEDULE, steps=10, t_max=150)
    b = invert_ddim(WRAPPED["x0"], x0, SCHEDULE, steps=10, t_max=150)
    torch.testing.assert_close(a, b)


def test_the_fast_path_on_the_cpu_is_the_model_itself_and_is_made_once():
    net = torch.nn.Conv2d(1, 1, 1)
    d = Denoiser(net, linear_schedule(10))
    x = torch.randn(2, 1, 2, 2)
    assert d.network(x) is net  # CPU: called as it is
    assert fast_path(net, compile=False) is fast_path(net, compile=False)

    class Net(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return x

    out = fast_path(Net(), compile=False)(x.double(), None)
    # float32 out (bfloat16 autocast only where the GPU supports it)
    assert out.dtype == torch.float32
    assert not bf16_supported("cpu")


def test_the_fast_path_cache_lets_a_deleted_model_go_and_copies_build_their_own():
    import copy

    net = torch.nn.Conv2d(1, 1, 1)
    run = fast_path(net, compile=False)
    twin = copy.deepcopy(net)  # an EMA copy: must not reuse its original's compiled graph
    assert fast_path(twin, compile=False) is not run and fast_path(net, compile=False) is run
    gone = weakref.ref(net)
    del net, run
    gc.collect()
    assert gone() is None, "the fast-path cache kept a deleted model (and its compiled graph) alive"


def test_a_target_by_name_is_the_same_target():
    schedule = cosine_schedule(100)
    net = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    by_name, by_member = Denoiser(net, schedule, "v"), Denoiser(net, schedule, Target.V)
    assert by_name.target is Target.V
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(by_name(x, 1.5), by_member(x, 1.5))
    with pytest.raises(ValueError,
                       match="Unknown target 'velocity': use one of 'eps', 'x0', 'v', 'flow'"):
        Denoiser(net, schedule, "velocity")
    from diffuse_edu.diffusion.objectives import DiffusionObjective

    assert DiffusionObjective(schedule, "x0").target is Target.X0


def test_a_network_that_does_not_declare_its_target_is_warned_about_once_and_read_as_eps():
    import warnings

    from diffuse_edu.diffusion.denoisers import UndeclaredTargetWarning
    from diffuse_edu.diffusion.guidance import Guided
    from diffuse_edu.models.conditioning import Cond

    def undeclared(x, t, cond=None):
        return eps_net(x, t, cond)

    def declared(x, t, cond=None):
        return eps_net(x, t, cond)
    declared.predicts = "eps"
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = sample_ddim(undeclared, x, SCHEDULE, steps=4)
        sample_euler(undeclared, x, SCHEDULE, steps=4)  # the same network: warned once
        b = sample_ddim(declared, x, SCHEDULE, steps=4)
        sample_ddim(Denoiser(undeclared, SCHEDULE, Target.EPS), x, SCHEDULE, steps=4)  # said there
    said = [w for w in caught if issubclass(w.category, UserWarning)]
    assert len(said) == 1 and issubclass(said[0].category, UndeclaredTargetWarning)
    assert "does not declare what it predicts" in str(said[0].message)
    assert "model.predicts = 'eps' (or 'v', 'x0', 'flow')" in str(said[0].message)
    assert said[0].filename == __file__  # it points at the sampler's caller, not the library
    torch.testing.assert_close(a, b)  # read as eps, as before
    with pytest.warns(UndeclaredTargetWarning, match=r"\(Guided\)"):  # wraps an undeclared network
        sample_ddim(Guided(undeclared, 2.0, None), x, SCHEDULE, steps=2, cond=Cond())
