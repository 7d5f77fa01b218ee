"""The noise-aware classifier of lesson 18: p_phi(y | x_t, t), for classifier guidance
(Dhariwal & Nichol 2021, Sec. 4). Trained by
:func:`diffuse_edu.training.noisy_classifier.train_noisy_classifier` on images noised to every
level; its gradient steers sampling (:mod:`diffuse_edu.diffusion.classifier_guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from diffuse_edu.models.time_embedding import sinusoidal_embedding


@dataclass(frozen=True)
class NoisyClassifierConfig:
    """A small CNN on x_t that knows t (the noise level) through scale-and-shift of each stage."""

    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 64)  # channels of the conv stages (each halves H and W)
    time_dim: int = 64  # width of the time embedding


class NoisyClassifier(nn.Module):
    """p_phi(y | x_t, t): conv stages modulated by the time embedding -> average -> logits.

    Shapes: x (B, C, H, W), t (B,) integer steps -> logits (B, num_classes).
    """

    config_class = NoisyClassifierConfig  # what checkpoints rebuild it from

    def __init__(self, config: NoisyClassifierConfig = NoisyClassifierConfig()):
        super().__init__()
        self.config = config
        self.time = nn.Sequential(nn.Linear(config.time_dim, config.time_dim), nn.SiLU())
        self.convs, self.norms, self.films = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        width = config.in_channels
        for w in config.widths:
            self.convs.append(nn.Conv2d(width, w, 3, padding=1))
            self.norms.append(nn.GroupNorm(8, w))
            self.films.append(nn.Linear(config.time_dim, 2 * w))
            width = w
        self.head = nn.Linear(width, config.num_classes)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.time(sinusoidal_embedding(t, self.config.time_dim).to(x.dtype))  # (B, D)
        h = x
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            scale, shift = film(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1) each
            h = F.avg_pool2d(F.silu(norm(conv(h)) * (1 + scale) + shift), 2)
        return self.head(h.mean((2, 3)))
