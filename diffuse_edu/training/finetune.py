"""Fine-tuning a trained model (lesson 13): DreamBooth's prior preservation, and a VAE's decoder
alone.

* **Prior preservation** (Ruiz et al. 2023, Sec. 3.3, Eq. 2). Teaching a model a subject from a few
  images with the subject's class name makes it forget what the class looked like. Before
  fine-tuning, the model generates images of the class; every fine-tuning step then adds, with a
  weight, the loss on as many of those images labelled with the class, so that the model keeps
  drawing the class as it did. :class:`PriorPreservation` makes any objective of the loop do this,
  with the loss :func:`prior_preservation_loss` (or lesson 13's learner's).
* **The decoder alone** (the usual remedy for blurry fine detail in latent models). The encoder, and
  so the latents a latent diffusion model was trained on, stay as they are; the decoder learns to
  draw sharper edges with a squared error weighted towards them (:class:`DecoderObjective`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuse_edu.evaluation.probes import edge_magnitude
from diffuse_edu.models.conditioning import Cond


def prior_preservation_loss(model: Callable, objective: Callable, subject: Tensor,
                            subject_cond: Cond, prior_pool: Tensor, prior_label: int, weight: float,
                            generator: torch.Generator | None = None) -> Tensor:
    """DreamBooth's loss per example (Ruiz et al. 2023, Eq. 2), lesson 13: ``objective``'s loss on
    the subject's batch plus ``weight`` times its loss on as many images drawn at random (with
    ``generator``) from ``prior_pool``, the class's images the model generated before fine-tuning,
    each labelled ``prior_label``.

    Shapes: subject (B, C, H, W), prior_pool (M, C, H, W) -> (B,).
    """
    b = subject.shape[0]
    idx = torch.randint(0, prior_pool.shape[0], (b,), generator=generator, device=prior_pool.device)
    prior_cond = Cond(labels=torch.full((b,), prior_label, device=subject.device, dtype=torch.long))
    subject_loss, _ = objective(model, subject, cond=subject_cond, generator=generator)
    prior_loss, _ = objective(model, prior_pool[idx], cond=prior_cond, generator=generator)
    return subject_loss + weight * prior_loss


@dataclass(frozen=True, eq=False)
class PriorPreservation:
    """``objective`` on the loop's batch (the subject) plus prior preservation, for the training
    loop.

    ``loss`` is :func:`prior_preservation_loss` or a learner's (same signature). The loop's noise
    levels are not those the loss draws, so the loss-by-t record means little for this objective.
    """

    objective: Callable  # e.g. DiffusionObjective(schedule, target)
    prior_pool: Tensor  # (M, C, H, W): the class's images, generated before fine-tuning
    prior_label: int  # their label
    weight: float = 1.0  # lambda of Ruiz et al.'s Eq. 2
    loss: Callable[..., Tensor] = prior_preservation_loss

    @property
    def target(self):
        return getattr(self.objective, "target", None)

    @property
    def t_max(self) -> float:
        return self.objective.t_max

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.objective.draw(x0, generator)

    def __call__(self, model: Callable, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is None:
            raise ValueError("Prior preservation needs the subject's condition: train(..., "
                             "cond=Cond(labels=...)).")
        loss = self.loss(model, self.objective, x0, cond, self.prior_pool.to(x0.device),
                         self.prior_label, self.weight, generator)
        return loss, t if t is not None else self.objective.draw(x0, generator)[0]


@dataclass(frozen=True, eq=False)
class DecoderObjective:
    """Fine-tune a VAE's decoder with the encoder frozen: the squared error between an image and its
    reconstruction through the posterior mean, each pixel weighted 1 + ``edge_weight`` x its edge
    strength (:func:`~diffuse_edu.evaluation.probes.edge_magnitude`, scaled to a mean of 1 per
    image), mean per image. Train with ``trainable=lambda name: name.startswith("decoder.")``."""

    edge_weight: float = 4.0
    t_max = 1.0

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return torch.zeros(x0.shape[0], device=x0.device), torch.zeros_like(x0)  # nothing random

    def __call__(self, model: nn.Module, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            mean, _ = model.encode(x0)  # the latents stay those the latent model knows
        edges = edge_magnitude(x0)
        weights = 1 + self.edge_weight * edges / (
            edges.flatten(1).mean(1).clamp_min(1e-8).reshape(-1, 1, 1, 1))
        error = (model.decode(mean).float() - x0.float()).square() * weights
        return error.flatten(1).mean(1), torch.zeros(x0.shape[0], device=x0.device)
