"""What a denoiser predicts, and how to convert between the usual targets (lessons 02 and 07).

This module is the one place where these formulas are written; every other module calls it.

With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps (ab = alpha_bar_t):

* eps-prediction (Ho et al. 2020): the noise eps;
* x0-prediction: the clean image x0;
* v-prediction (Salimans & Ho 2022, Sec. 4): v = sqrt(ab) eps - sqrt(1 - ab) x0.

Any one of them, with x_t, gives the other two. ``alpha_bar`` may be a float or a tensor that
broadcasts against x_t.
"""

from __future__ import annotations

from enum import Enum

from torch import Tensor

from diffuse_edu.diffusion.schedules import NoiseSchedule


class Target(Enum):
    """The quantity a network is trained to predict."""

    EPS = "eps"
    X0 = "x0"
    V = "v"
    FLOW = "flow"  # rectified-flow velocity eps - x0 (lesson 12); see diffusion.denoisers


def as_target(value: Target | str) -> Target:
    """``value`` as a Target: a member, or its name as a learner may write it ("v" for Target.V)."""
    if isinstance(value, Target):
        return value
    try:
        return Target(value)
    except ValueError:
        raise ValueError(f"Unknown target {value!r}: use one of "
                         f"{', '.join(repr(t.value) for t in Target)} "
                         "(or Target.V, ...).") from None


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def v_to_eps(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return alpha_bar**0.5 * v + (1 - alpha_bar) ** 0.5 * x_t


def v_to_x0(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * v


def x0_to_v(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """The v that implies ``x0`` at x_t: (sqrt(ab) x_t - x0) / sqrt(1 - ab) (lesson 14's students
    learn it)."""
    return (alpha_bar**0.5 * x_t - x0) / (1 - alpha_bar) ** 0.5


def eps_x0_to_v(eps: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0


def to_x0(pred: Tensor, target: Target, x_t: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """The clean-image estimate implied by a prediction of ``target`` on the x_t of Ho et al."""
    if target is Target.EPS:
        return eps_to_x0(x_t, pred, alpha_bar)
    if target is Target.V:
        return v_to_x0(x_t, pred, alpha_bar)
    if target is Target.X0:
        return pred
    raise ValueError(f"{target} is not defined on x_t = sqrt(ab) x0 + sqrt(1 - ab) eps; "
                     "wrap a flow model with diffusion.denoisers.Denoiser instead.")


def target_of(target: Target, x0: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """What a network trained for ``target`` should output, given the true x0 and eps."""
    if target is Target.EPS:
        return eps
    if target is Target.X0:
        return x0
    if target is Target.V:
        return eps_x0_to_v(eps, x0, alpha_bar)
    raise ValueError(f"{target} has no target on the variance-preserving x_t; use FlowMatching.")


def predict_x0(x_t: Tensor, eps_hat: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """The clean image implied by a noise estimate at step t (lesson 02): inverts q_sample for x_0.

    Shapes: x_t, eps_hat (B, ...), t () or (B,) -> like x_t.
    """
    return eps_to_x0(x_t, eps_hat, schedule.at(schedule.alpha_bar, t, x_t))


def score(eps_hat: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """The score estimate grad log p_t(x_t) = -eps_hat / sqrt(1 - alpha_bar_t) (Song et al. 2021,
    Eq. 5 with Vincent 2011), lesson 02. Shapes: like eps_hat."""
    return -eps_hat / (1 - schedule.at(schedule.alpha_bar, t, eps_hat)).sqrt()


def vp_to_flow(x_t: Tensor, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor | float]:
    """A variance-preserving x_t = sqrt(ab) x0 + sqrt(1 - ab) eps in a flow's coordinates (lesson
    12): x_tau = (1 - tau) x0 + tau eps with tau = sqrt(1 - ab) / (sqrt(ab) + sqrt(1 - ab)), i.e.
    x_t divided by sqrt(ab) + sqrt(1 - ab). Both families then share one path, so their sampling
    paths compare. Returns (x_tau, tau). Shapes: x_t (B, ...) -> like x_t."""
    a, b = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    return x_t / (a + b), b / (a + b)
