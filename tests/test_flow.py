"""Lesson 12's flow matching: the loss's direction, time sampling, the loop, the sampler, and the
map between a variance-preserving x_t and a flow's x_tau."""

import torch

from diffuse_edu.diffusion.objectives import (
    FlowMatching,
    flow_matching_loss,
    logit_normal_times,
    uniform_times,
)
from diffuse_edu.diffusion.prediction import vp_to_flow
from diffuse_edu.diffusion.samplers import flow_times, sample_flow_euler
from diffuse_edu.diffusion.schedules import cosine_schedule, shift_snr
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.loop import TrainConfig, train


def test_the_loss_is_zero_for_the_true_velocity_and_not_for_its_reverse():
    g = torch.Generator().manual_seed(0)
    x0, eps, tau = (torch.randn(4, 1, 4, 4, generator=g), torch.randn(4, 1, 4, 4, generator=g),
                    torch.rand(4, generator=g))
    true_v = lambda x_tau, t, cond=None: eps - x0  # noqa: E731
    assert flow_matching_loss(true_v, x0, tau, eps).abs().max() == 0
    assert flow_matching_loss(lambda x_tau, t, cond=None: x0 - eps, x0, tau, eps).min() > 0.5
    seen = []
    flow_matching_loss(lambda x_tau, t, cond=None: seen.append(t) or x_tau, x0, tau, eps)
    torch.testing.assert_close(seen[0], tau * 1000)  # the network sees t = tau * 1000


def test_time_samplers_cover_zero_to_one_and_logit_normal_favours_the_middle():
    g = torch.Generator().manual_seed(1)
    u, ln = uniform_times(20_000, generator=g), logit_normal_times(20_000, generator=g)
    assert 0 <= u.min() and u.max() <= 1 and 0 < ln.min() and ln.max() < 1
    middle = lambda tau: ((tau > 0.3) & (tau < 0.7)).float().mean()  # noqa: E731
    assert abs(middle(u) - 0.4) < 0.02 and middle(ln) > 0.5


def test_a_learners_flow_loss_trains_through_the_objective():
    calls = []

    def mine(model, x0, tau, eps):
        calls.append(1)
        return flow_matching_loss(model, x0, tau, eps)
    torch.manual_seed(0)
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    cfg = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)
    model = UNet(cfg)
    result = train(model, images, FlowMatching(loss=mine, times=logit_normal_times),
                   TrainConfig(steps=5, batch_size=8, ema_decay=None), show_progress=False)
    assert len(calls) == 5 and model.predicts == "flow" and result.bucket_edges.tolist()[-1] == 1.0


def test_flow_times_run_from_noise_to_data_and_shift_spends_steps_at_high_noise():
    assert flow_times(4) == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = flow_times(4, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0
    # every inner time nearer the noise
    assert all(a > b for a, b in zip(shifted[1:-1], flow_times(4)[1:-1]))
    net = lambda x, t, cond=None: torch.zeros_like(x)  # noqa: E731
    net.predicts = "flow"
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(sample_flow_euler(net, x, steps=3), x)  # no velocity: nothing moves


def test_vp_and_flow_paths_coincide_after_rescaling():
    schedule = cosine_schedule(100)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for t in (1, 37, 99):
        ab = schedule.alpha_bar[t].item()
        x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
        x_tau, tau = vp_to_flow(x_t, ab)
        torch.testing.assert_close(x_tau, (1 - tau) * x0 + tau * eps)


def test_shift_snr_multiplies_every_snr():
    schedule = cosine_schedule(100)
    shifted = shift_snr(schedule, 16.0)
    torch.testing.assert_close(shifted.snr[1:], 16 * schedule.snr[1:])
    assert shifted.alpha_bar[-1] > schedule.alpha_bar[-1]  # more signal left at t = T
