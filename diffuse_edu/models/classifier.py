"""A small image classifier (lesson 06): the course's feature network for FID, and its judge.

Its penultimate layer gives the features FID and precision/recall compare; its predictions score
whether a sample shows the class (or, in lesson 09, the attribute) it was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ClassifierConfig:
    """A small CNN classifier whose penultimate layer gives the features."""

    in_channels: int = 1
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # channels of the conv stages (each halves H and W)
    feature_dim: int = 64  # width of the feature layer


class Classifier(nn.Module):
    """conv stages -> global average -> features (B, feature_dim) -> logits (B, num_classes)."""

    config_class = ClassifierConfig  # what checkpoints rebuild it from

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        layers, width = [], config.in_channels
        for w in config.widths:
            layers += [nn.Conv2d(width, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
                       nn.MaxPool2d(2)]
            width = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.to_features = nn.Linear(width, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Shapes: x (B, C, H, W) in [-1, 1] -> (B, feature_dim)."""
        return F.silu(self.to_features(self.body(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
