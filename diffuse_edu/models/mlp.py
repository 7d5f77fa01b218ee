"""A small denoiser for points in the plane (lesson 02): eps_hat = MLP([x_t, sinusoidal(t)])."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuse_edu.models.time_embedding import sinusoidal_embedding


@dataclass(frozen=True)
class MLPConfig:
    """A small denoiser for points (lesson 02)."""

    dim: int = 2  # dimension of a data point
    hidden: int = 128  # width of each hidden layer
    depth: int = 3  # hidden layers
    time_dim: int = 32  # width of the sinusoidal time features


class MLPDenoiser(nn.Module):
    """eps_hat = MLP([x_t, sinusoidal(t)]). Shapes: x (B, dim), t (B,) -> (B, dim)."""

    config_class = MLPConfig

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
