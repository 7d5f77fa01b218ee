"""Objectives: identities between eps, x0 and v losses, continuous t, and flow matching."""

import pytest
import torch

from diffuse_edu.diffusion.objectives import (
    DiffusionObjective,
    FlowMatching,
    eps_loss,
    per_example_mse,
)
from diffuse_edu.diffusion.prediction import Target, eps_to_x0, eps_x0_to_v
from diffuse_edu.diffusion.schedules import cosine_schedule

SCHEDULE = cosine_schedule(100)
G = torch.Generator().manual_seed(0)
X0 = torch.randn(16, 1, 4, 4, generator=G, dtype=torch.float64)
EPS = torch.randn(16, 1, 4, 4, generator=G, dtype=torch.float64)
T = torch.randint(1, 101, (16,), generator=G)


def eps_net(x, t, cond=None):
    return torch.sin(x) * 0.7 + 0.01 * t.to(x.dtype).reshape(-1, 1, 1, 1)


def ab_of(t, x):
    return SCHEDULE.at(SCHEDULE.alpha_bar, t, x)


def test_v_loss_is_the_eps_loss_over_alpha_bar_on_the_same_output():
    """||v_hat - v||^2 = ||eps_hat - eps||^2 / alpha_bar (so the v-weight is 1 + SNR over x0's)."""
    def v_net(x, t, cond=None):
        ab, e = ab_of(t, x), eps_net(x, t)
        return eps_x0_to_v(e, eps_to_x0(x, e, ab), ab)

    eps_l, _ = DiffusionObjective(SCHEDULE)(eps_net, X0, t=T, eps=EPS)
    v_l, _ = DiffusionObjective(SCHEDULE, Target.V)(v_net, X0, t=T, eps=EPS)
    ab = SCHEDULE.alpha_bar[T]
    torch.testing.assert_close(v_l, eps_l / ab)


def test_x0_loss_is_the_eps_loss_over_snr_on_the_same_output():
    def x0_net(x, t, cond=None):
        return eps_to_x0(x, eps_net(x, t), ab_of(t, x))

    eps_l, _ = DiffusionObjective(SCHEDULE)(eps_net, X0, t=T, eps=EPS)
    x0_l, _ = DiffusionObjective(SCHEDULE, Target.X0)(x0_net, X0, t=T, eps=EPS)
    torch.testing.assert_close(x0_l, eps_l / SCHEDULE.snr[T])


def test_eps_loss_is_ho_et_al_eq_14():
    ab = ab_of(T, X0)
    x_t = ab.sqrt() * X0 + (1 - ab).sqrt() * EPS
    assert (eps_loss(eps_net, X0, T, EPS, SCHEDULE).item()
            == pytest.approx(((eps_net(x_t, T) - EPS) ** 2).mean().item()))


def test_draws_lie_in_range_and_continuous_draws_are_fractional():
    _, t = DiffusionObjective(SCHEDULE)(eps_net, X0, generator=torch.Generator().manual_seed(1))
    assert t.dtype == torch.int64 and 1 <= t.min() and t.max() <= 100
    loss, t = DiffusionObjective(SCHEDULE, continuous=True)(
        eps_net, X0, generator=torch.Generator().manual_seed(1))
    assert t.dtype.is_floating_point and 1 <= t.min() and t.max() <= 100 and (t != t.round()).any()
    assert loss.shape == (16,)


def test_continuous_objective_at_integer_t_equals_the_discrete_one():
    d, _ = DiffusionObjective(SCHEDULE)(eps_net, X0, t=T, eps=EPS)
    c, _ = DiffusionObjective(SCHEDULE, continuous=True)(eps_net, X0, t=T.double(), eps=EPS)
    torch.testing.assert_close(c, d)


def test_flow_matching_path_and_target():
    s = torch.rand(16, generator=G, dtype=torch.float64)
    seen = {}

    def spy(x_s, t, cond=None):
        seen.update(x_s=x_s, t=t)
        return torch.zeros_like(x_s)

    loss, s_back = FlowMatching()(spy, X0, t=s, eps=EPS)
    sb = s.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x_s"], (1 - sb) * X0 + sb * EPS)
    torch.testing.assert_close(seen["t"], s * 1000)
    torch.testing.assert_close(loss, per_example_mse(torch.zeros_like(X0), EPS - X0))
    exact, _ = FlowMatching()(lambda x, t, c=None: EPS - X0, X0, t=s, eps=EPS)
    assert exact.abs().max() == 0 and torch.equal(s_back, s)


def test_low_precision_outputs_are_upcast_and_double_kept():
    assert (per_example_mse(torch.ones(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3)).dtype
            == torch.float32)
    assert (per_example_mse(torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, 3)).dtype
            == torch.float64)


def test_objectives_refuse_targets_they_cannot_train():
    with pytest.raises(ValueError, match="FlowMatching"):
        DiffusionObjective(SCHEDULE, Target.FLOW)(eps_net, X0, t=T, eps=EPS)
