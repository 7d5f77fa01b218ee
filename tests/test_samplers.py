import pytest
import torch

from diffuse_edu.forward_process import q_posterior, q_sample
from diffuse_edu.reverse_process import predict_x0
from diffuse_edu.samplers import ddim_step, sample_ddim, timesteps
from diffuse_edu.schedules import cosine_schedule, linear_schedule

LINEAR = linear_schedule(1000)


def test_timesteps_run_from_T_to_0():
    ts = timesteps(LINEAR, 4)
    assert ts == [1000, 750, 500, 250, 0]
    with pytest.raises(ValueError, match="steps must lie in 1..1000"):
        timesteps(LINEAR, 0)


def test_ddim_eta_one_reproduces_the_ddpm_posterior():
    """With t_prev = t - 1 and eta = 1, DDIM's variance is the posterior's, beta_tilde (Song et al. Eq. 16)."""
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    for t in (2, 10, 500, 1000):
        x_t = q_sample(x0, t, LINEAR, eps)
        mean, var = q_posterior(x0, x_t, t, LINEAR)
        deterministic = ddim_step(x_t, eps, t, t - 1, LINEAR, eta=1.0, noise=torch.zeros_like(x_t))
        torch.testing.assert_close(deterministic, mean)
        ones = ddim_step(x_t, eps, t, t - 1, LINEAR, eta=1.0, noise=torch.ones_like(x_t))
        torch.testing.assert_close(ones - deterministic, var.sqrt().expand_as(x_t))


def test_ddim_eta_zero_is_deterministic_and_needs_no_noise():
    model = lambda x, t, c=None: 0.3 * x  # noqa: E731
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_ddim(model, x, cosine_schedule(100), steps=10, generator=torch.Generator().manual_seed(1))
    b = sample_ddim(model, x, cosine_schedule(100), steps=10, generator=torch.Generator().manual_seed(2))
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
        ddim_step(torch.zeros(1, 2), torch.zeros(1, 2), 10, 5, LINEAR, eta=0.5)
