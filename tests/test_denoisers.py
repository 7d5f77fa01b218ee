"""One D(x; sigma) view of any model: the same network wrapped as an eps-, x0-, v- or flow model
gives the same samples with every sampler (Karras et al. 2022, Table 1)."""

import math

import pytest
import torch

from diffuse_edu.diffusion.denoisers import Denoiser, as_denoiser, fast_path, sigma_to_t
from diffuse_edu.diffusion.prediction import Target, eps_to_x0, eps_x0_to_v
from diffuse_edu.diffusion.samplers import (
    invert_ddim,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)
from diffuse_edu.diffusion.schedules import cosine_schedule, linear_schedule

SCHEDULE = cosine_schedule(200)


def eps_net(x, t, cond=None):
    """A smooth stand-in for a trained eps-network (float t allowed), in float64."""
    s = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / SCHEDULE.T
    return torch.tanh(0.8 * x + 0.3 * torch.cos(3 * s) * x.roll(1, -1)) * (0.5 + s)


def alpha_bar_of(t, x):
    """alpha_bar at integer or fractional steps, as the adapter would see it."""
    t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
    ab = SCHEDULE.alpha_bar_continuous(t.clamp(min=1)) if t.dtype.is_floating_point else None
    exact = t == t.round()
    if exact.all():
        ab = SCHEDULE.alpha_bar[t.long()]
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
    t = torch.tensor([sigma_to_t(float(v), SCHEDULE) for v in sigma.flatten()], dtype=x.dtype)
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
    "ddpm": lambda m, x: sample_ddpm(m, x, SCHEDULE, steps=10, generator=torch.Generator().manual_seed(2)),
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
        values = {Target.EPS: eps, Target.X0: x0, Target.V: eps_x0_to_v(eps, x0, ab), Target.FLOW: eps - x0}
        return lambda *_: values[target]

    for target in Target:
        d = Denoiser(oracle(target), SCHEDULE, target)
        torch.testing.assert_close(d(x, sigma), x0)


def test_sigma_to_t_hits_the_steps_and_inverts_the_continuous_alpha_bar():
    for t in (1, 7, 100, 199, 200):
        assert sigma_to_t(float(SCHEDULE.sigma[t]), SCHEDULE) == pytest.approx(t, abs=1e-9)
    t = torch.tensor([1.0, 3.25, 57.5, 150.9, 200.0], dtype=torch.float64)
    ab = SCHEDULE.alpha_bar_continuous(t)
    back = [sigma_to_t(math.sqrt((1 - a) / a), SCHEDULE) for a in ab.tolist()]
    assert back == pytest.approx(t.tolist(), abs=1e-6)
    torch.testing.assert_close(SCHEDULE.alpha_bar_continuous(torch.arange(1, 201, dtype=torch.float64)),
                               SCHEDULE.alpha_bar[1:])


def test_misuse_is_named():
    with pytest.raises(ValueError, match="needs the schedule"):
        Denoiser(eps_net, None, Target.V)
    d = as_denoiser(eps_net, SCHEDULE, clip=1.0)
    assert d.clip == 1.0 and as_denoiser(d, SCHEDULE) is d
    with pytest.raises(ValueError, match="not defined on x_t"):
        from diffuse_edu.diffusion.prediction import to_x0
        to_x0(torch.zeros(1), Target.FLOW, torch.zeros(1), 0.5)


def test_inversion_of_an_x0_model_matches_the_eps_model():
    x0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.5
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
    assert out.dtype == torch.float32  # bfloat16 autocast, float32 out
