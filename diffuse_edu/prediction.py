"""What a denoiser predicts, and how to convert between the three usual targets (lesson 07).

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


class Target(Enum):
    """The quantity a network is trained to predict."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


def eps_to_x0(x_t: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def x0_to_eps(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def v_to_eps(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return alpha_bar**0.5 * v + (1 - alpha_bar) ** 0.5 * x_t


def v_to_x0(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * v


def eps_x0_to_v(eps: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0


def to_x0(pred: Tensor, target: Target, x_t: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """The clean-image estimate implied by a prediction of ``target``."""
    if target is Target.EPS:
        return eps_to_x0(x_t, pred, alpha_bar)
    if target is Target.V:
        return v_to_x0(x_t, pred, alpha_bar)
    return pred
