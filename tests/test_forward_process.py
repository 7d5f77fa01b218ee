import pytest
import torch

from diffuse_edu.diffusion.forward_process import (
    correlation,
    markov_chain,
    q_posterior,
    q_sample,
    q_step,
)
from diffuse_edu.diffusion.schedules import (
    cosine_schedule,
    linear_schedule,
    rescale_zero_terminal_snr,
)

LINEAR = linear_schedule(1000)


def test_closed_form_moments_match_the_chained_process(generator):
    """Run the chain over many draws; mean and std at t agree with q(x_t | x_0) (Ho et al. 2020,
    Eq. 4)."""
    n = 20_000
    x0 = torch.linspace(-1, 1, 6).reshape(1, 1, 2, 3).expand(n, -1, -1, -1)
    seen = {}
    for t, xt in markov_chain(x0, LINEAR, generator=generator):
        if t in (1, 50, 400, 1000):
            seen[t] = xt
    for t, xt in seen.items():
        ab = LINEAR.alpha_bar[t].item()
        stderr = (1 - ab) ** 0.5 / n**0.5
        err = (xt.mean(0) - ab**0.5 * x0[0]).abs().max().item()
        assert err < 5 * stderr, f"mean off at t={t}: {err} vs stderr {stderr}"
        torch.testing.assert_close(xt.std(0), torch.full_like(xt[0], (1 - ab) ** 0.5), rtol=0.03,
                                   atol=0)
        closed = q_sample(x0, torch.full((n,), t), LINEAR,
                          torch.randn(x0.shape, generator=generator))
        assert (closed.mean(0) - xt.mean(0)).abs().max().item() < 7 * stderr


def test_markov_chain_yields_every_step():
    ts = [t for t, _ in markov_chain(torch.zeros(1, 1), linear_schedule(7))]
    assert ts == list(range(8))


def test_edge_cases_t0_and_T():
    x0, eps = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    torch.testing.assert_close(q_sample(x0, torch.tensor([0, 0]), LINEAR, eps), x0)
    zero = rescale_zero_terminal_snr(LINEAR)
    torch.testing.assert_close(q_sample(x0, torch.tensor([1000, 1000]), zero, eps), eps)


def test_q_sample_keeps_dtype_and_accepts_int_t():
    x0 = torch.randn(2, 3, 4, 4, dtype=torch.float16)
    out = q_sample(x0, 10, LINEAR, torch.randn_like(x0))
    assert out.dtype == torch.float16 and out.shape == x0.shape


def test_q_sample_rejects_mismatched_noise():
    with pytest.raises(ValueError, match="eps must have x0's shape"):
        q_sample(torch.zeros(2, 1, 4, 4), torch.tensor([1, 2]), LINEAR, torch.zeros(2, 1, 4, 3))


def test_one_step_of_the_chain_is_the_closed_form_at_t1():
    x0, eps = torch.randn(3, 2), torch.randn(3, 2)
    torch.testing.assert_close(q_step(x0, 1, LINEAR, eps), q_sample(x0, 1, LINEAR, eps))


@pytest.mark.parametrize("schedule", [LINEAR, cosine_schedule(1000)], ids=["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 2, 300, 1000])
def test_posterior_is_gaussian_conditioning(schedule, t):
    """Eq. 6-7 of Ho et al. 2020 equal conditioning the joint Gaussian of (x_{t-1}, x_t) on x_t."""
    x0, xt = (torch.tensor([[0.7, -0.2]], dtype=torch.float64),
              torch.tensor([[0.1, 1.3]], dtype=torch.float64))
    ab_prev, alpha = schedule.alpha_bar[t - 1].item(), schedule.alphas[t].item()
    mu1, var1 = ab_prev**0.5 * x0, 1 - ab_prev  # x_{t-1} | x_0
    mu2, var2 = alpha**0.5 * mu1, alpha * var1 + (1 - alpha)  # x_t | x_0
    cov = alpha**0.5 * var1
    mean, variance = q_posterior(x0, xt, t, schedule)
    torch.testing.assert_close(mean, mu1 + cov / var2 * (xt - mu2))
    torch.testing.assert_close(variance.squeeze(),
                               torch.tensor(var1 - cov**2 / var2, dtype=torch.float64))


def test_posterior_needs_t_at_least_one():
    with pytest.raises(ValueError, match="t >= 1"):
        q_posterior(torch.zeros(1, 1), torch.zeros(1, 1), 0, LINEAR)


def test_correlation():
    a = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    assert correlation(a, 3 * a + 1).item() == pytest.approx(1.0)
    assert correlation(a, -a).item() == pytest.approx(-1.0)
