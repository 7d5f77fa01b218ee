import pytest
import torch

from diffuse_edu.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    rescale_zero_terminal_snr,
    scaled_linear_schedule,
)

ALL = [linear_schedule(1000), scaled_linear_schedule(1000), cosine_schedule(1000),
       rescale_zero_terminal_snr(linear_schedule(1000)),
       rescale_zero_terminal_snr(cosine_schedule(1000))]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: s.name)
def test_alpha_bar_starts_at_one_and_decreases(schedule):
    ab = schedule.alpha_bar
    assert ab.dtype == torch.float64 and ab.shape == (1001,)
    assert ab[0] == 1.0
    assert bool((ab[1:] < ab[:-1]).all()), "alpha_bar must fall strictly at every step"
    assert bool((ab >= 0).all())


def test_linear_matches_its_definition():
    s = linear_schedule(1000)
    assert s.T == 1000
    assert s.betas[1].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    torch.testing.assert_close(s.alpha_bar[1:], torch.cumprod(1 - s.betas[1:], 0))


def test_rescaled_schedule_has_zero_terminal_snr_exactly():
    for base in (linear_schedule(1000), scaled_linear_schedule(1000), cosine_schedule(1000)):
        s = rescale_zero_terminal_snr(base)
        assert s.alpha_bar[-1].item() == 0.0
        assert s.snr[-1].item() == 0.0
        assert s.betas[-1].item() == 1.0
        # the first step is kept (Lin et al. 2024, Alg. 1)
        assert s.alpha_bar[1].item() == pytest.approx(base.alpha_bar[1].item(), rel=1e-12)


def test_linear_schedule_leaks_a_known_amount():
    assert linear_schedule(1000).alpha_bar[-1].item() == pytest.approx(4.04e-5, rel=0.01)


def test_at_broadcasts_and_casts():
    s = linear_schedule(10)
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    v = s.at(s.alpha_bar, torch.tensor([0, 5, 10]), x)
    assert v.shape == (3, 1, 1, 1) and v.dtype == torch.float32
    assert v[0].item() == 1.0


@pytest.mark.parametrize("t, error",
                         [(torch.tensor([11]), ValueError), (torch.tensor([-1]), ValueError),
                          (torch.tensor([0.5]), TypeError)])
def test_at_rejects_bad_time_steps(t, error):
    s = linear_schedule(10)
    with pytest.raises(error, match="t must"):
        s.at(s.alpha_bar, t, torch.zeros(1, 1))


def test_schedule_validates_betas():
    with pytest.raises(ValueError, match="betas\\[0\\] must be 0"):
        NoiseSchedule(torch.tensor([0.1, 0.2]), "bad")
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        NoiseSchedule(torch.tensor([0.0, 1.5]), "bad")


# --- parity with diffusers' DDPMScheduler (an independent implementation) -------------------
diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("ours, kwargs", [
    (linear_schedule(1000), dict(beta_schedule="linear")),
    (scaled_linear_schedule(1000),
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
    (cosine_schedule(1000), dict(beta_schedule="squaredcos_cap_v2")),
    (rescale_zero_terminal_snr(linear_schedule(1000)),
     dict(beta_schedule="linear", rescale_betas_zero_snr=True)),
    (rescale_zero_terminal_snr(scaled_linear_schedule(1000)),
     dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
          rescale_betas_zero_snr=True)),
    (rescale_zero_terminal_snr(cosine_schedule(1000)),
     dict(beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=True)),
], ids=["linear", "scaled_linear", "cosine", "linear_zero_snr", "scaled_linear_zero_snr",
        "cosine_zero_snr"])
def test_alpha_bar_matches_diffusers(ours, kwargs):
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, **kwargs)
    # diffusers computes in float32; its index i is our t = i + 1
    ref = theirs.alphas_cumprod.double()
    torch.testing.assert_close(ours.alpha_bar[1:], ref, rtol=2e-5, atol=1e-6)
