"""Learning to reverse the noise (lesson 02).

A network eps_hat = model(x_t, t) learns to predict the noise that was added, by minimising
(Ho et al. 2020, Eq. 14, "L_simple")::

    L = E_{x_0, t, eps} || eps - model(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2.

One ancestral step then goes from x_t to x_{t-1} (Ho et al. 2020, Eq. 11 and Alg. 2)::

    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_hat) / sqrt(alpha_t) + sigma_t z,

with sigma_t^2 the posterior variance beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (Eq. 7),
which is 0 at t = 1. The predicted noise is also a score estimate (Song et al. 2021, Eq. 5 with
Vincent 2011): grad log p_t(x_t) ~= -eps_hat / sqrt(1 - alpha_bar_t).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuse_edu.forward_process import q_sample
from diffuse_edu.plotting import progress
from diffuse_edu.schedules import NoiseSchedule
from diffuse_edu.time_embedding import sinusoidal_embedding


@dataclass(frozen=True)
class MLPConfig:
    """A small denoiser for points (lesson 02)."""

    dim: int = 2  # dimension of a data point
    hidden: int = 128  # width of each hidden layer
    depth: int = 3  # hidden layers
    time_dim: int = 32  # width of the sinusoidal time features


class MLPDenoiser(nn.Module):
    """eps_hat = MLP([x_t, sinusoidal(t)]). Shapes: x (B, dim), t (B,) -> (B, dim)."""

    def __init__(self, config: MLPConfig = MLPConfig()):
        super().__init__()
        self.config = config
        layers, width = [], config.dim + config.time_dim
        for _ in range(config.depth):
            layers += [nn.Linear(width, config.hidden), nn.SiLU()]
            width = config.hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, config.dim))

    def forward(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        return self.net(torch.cat([x, sinusoidal_embedding(t, self.config.time_dim)], dim=1))


def eps_loss(model: Callable, x0: Tensor, t: Tensor, eps: Tensor, schedule: NoiseSchedule,
             cond: object = None) -> Tensor:
    """Mean squared error between eps and model(x_t, t) (Ho et al. 2020, Eq. 14).

    Shapes: x0 (B, ...), t (B,), eps like x0 -> a scalar.
    """
    x_t = q_sample(x0, t, schedule, eps)
    return torch.mean((model(x_t, t, cond) - eps) ** 2)


@torch.no_grad()
def loss_by_t(model: Callable, x0: Tensor, schedule: NoiseSchedule, *, buckets: int = 10,
              draws: int = 1, generator: torch.Generator | None = None,
              batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """The eps-prediction loss in ``buckets`` equal ranges of t, each image at a random t per bucket.

    Returns (edges, losses): bucket k covers t in (edges[k], edges[k + 1]].
    Shapes: x0 (N, ...) -> edges (buckets + 1,), losses (buckets,).
    """
    edges = torch.linspace(0, schedule.T, buckets + 1).round().long()
    losses = torch.zeros(buckets)
    for k in range(buckets):
        total, count = 0.0, 0
        for _ in range(draws):
            for batch in x0.split(batch_size):
                lo, hi = int(edges[k]) + 1, int(edges[k + 1])
                t = torch.randint(lo, hi + 1, (batch.shape[0],), generator=generator).to(batch.device)
                eps = torch.randn(batch.shape, generator=generator).to(batch.device)
                total += eps_loss(model, batch, t, eps, schedule).item() * batch.shape[0]
                count += batch.shape[0]
        losses[k] = total / count
    return edges, losses


def ddpm_step(x_t: Tensor, eps_hat: Tensor, t: Tensor | int, schedule: NoiseSchedule,
              noise: Tensor) -> Tensor:
    """One ancestral step x_t -> x_{t-1} (Ho et al. 2020, Eq. 11, sigma_t^2 = posterior variance).

    Needs alpha_t > 0, so not t = T of a zero-terminal-SNR schedule (use v-prediction there).
    Shapes: x_t, eps_hat, noise (B, ...), t () or (B,) in 1..T -> like x_t.
    """
    t = torch.as_tensor(t)
    beta = schedule.at(schedule.betas, t, x_t)
    ab = schedule.at(schedule.alpha_bar, t, x_t)
    ab_prev = schedule.at(schedule.alpha_bar, t - 1, x_t)
    mean = (x_t - beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()
    variance = beta * (1 - ab_prev) / (1 - ab)
    return mean + variance.sqrt() * noise


def sample_ancestral(model: Callable, x_T: Tensor, schedule: NoiseSchedule, *,  # noqa: N803
                     generator: torch.Generator | None = None, cond: object = None,
                     callback: Callable[[int, Tensor], None] | None = None) -> Tensor:
    """Run ddpm_step from t = T down to 1 and return x_0; ``callback(t, x_t)`` sees each step.

    Shapes: x_T (B, ...) -> like x_T.
    """
    x = x_T
    for t in range(schedule.T, 0, -1):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        with torch.no_grad():
            eps_hat = model(x, t_batch, cond)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = ddpm_step(x, eps_hat, t, schedule, noise)
        if callback is not None:
            callback(t - 1, x)
    return x


def predict_x0(x_t: Tensor, eps_hat: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """The clean image implied by a noise estimate: (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t).

    Inverts q_sample (Ho et al. 2020, Eq. 4) for x_0. Shapes: x_t, eps_hat (B, ...) -> like x_t.
    """
    ab = schedule.at(schedule.alpha_bar, t, x_t)
    return (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()


def score(eps_hat: Tensor, t: Tensor | int, schedule: NoiseSchedule) -> Tensor:
    """The score estimate grad log p_t(x_t) = -eps_hat / sqrt(1 - alpha_bar_t). Shapes: like eps_hat."""
    return -eps_hat / (1 - schedule.at(schedule.alpha_bar, t, eps_hat)).sqrt()


def train_denoiser(
    model: nn.Module, data: Tensor, schedule: NoiseSchedule, *, steps: int, batch_size: int,
    lr: float = 1e-3, generator: torch.Generator | None = None, labels: Tensor | None = None,
    show_progress: bool = True, desc: str = "training",
) -> list[float]:
    """Minimise :func:`eps_loss` with AdamW on random batches of ``data``; return each step's loss.

    A plain loop for the lessons' small experiments; lesson 05 builds the full trainer.
    Shapes: data (N, ...) on the model's device; labels (N,) or None.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    device, losses = data.device, []
    model.train()
    for _ in progress(range(steps), desc=desc, disable=not show_progress):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator).to(device)
        x0 = data[idx]
        t = torch.randint(1, schedule.T + 1, (batch_size,), generator=generator).to(device)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        loss = eps_loss(model, x0, t, eps, schedule, None if labels is None else labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
