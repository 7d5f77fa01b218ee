"""Control by guidance (lesson 18): a noise-aware classifier's gradient, and negative prompts.

**Classifier guidance** (Dhariwal & Nichol 2021, Sec. 4, Alg. 2). A classifier p_phi(y | x_t, t)
trained on noised images (:func:`noisy_classifier_loss`; the network is
:class:`diffuse_edu.models.noisy_classifier.NoisyClassifier`, trained by
:func:`diffuse_edu.training.noisy_classifier.train_noisy_classifier`) gives the
gradient of log p(y | x_t) with respect to x_t. Added to the score with a scale s, it samples
p_t(x) p_t(y | x)^s. Since eps = -sqrt(1 - alpha_bar_t) * score (lesson 02), the guided noise
prediction is (ibid., Eq. 14, with the scale)::

    eps_hat = eps(x_t) - s sqrt(1 - alpha_bar_t) grad_x log p_phi(y | x_t, t).

:func:`classifier_guided_eps` computes it; :class:`ClassifierGuided` is a model like any other,
``model(x, t, cond)``, so every sampler runs it (it turns gradients on inside itself, since the
samplers run under ``torch.no_grad()``).

**Negative prompts.** Classifier-free guidance (lesson 08) extrapolates from the null condition
past the asked one. Putting a *negative* condition in the null one's place extrapolates away from
what it names::

    eps_hat = eps(x_t, negative) + s (eps(x_t, cond) - eps(x_t, negative)).

:func:`negative_guided_forward` evaluates both in one batched pass; the negative condition is one
example's (broadcast over the batch) or one per example. :class:`NegativeGuided` wraps it as a
model.

:func:`bracketing_scales` finds, for a target adherence, the two measured scales of a method
that bracket it, so that two methods are compared at equal adherence without extrapolating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuse_edu.diffusion.forward_process import q_sample
from diffuse_edu.diffusion.guidance import guided_prediction
from diffuse_edu.diffusion.schedules import NoiseSchedule


def noisy_classifier_loss(classifier: Callable, x0: Tensor, labels: Tensor,
                          schedule: NoiseSchedule, *,
                          generator: torch.Generator | None = None) -> Tensor:
    """The noise-aware classifier's loss on one batch (lesson 18's first exercise).

    Draw t uniformly from 1..T (``torch.randint(1, T + 1, (B,))``), then the noise eps (``randn``
    like x0), both from ``generator`` in that order; noise the images (q_sample, lesson 01) and
    return the mean cross-entropy of ``classifier(x_t, t)`` against ``labels``.

    Shapes: x0 (B, ...), labels (B,) int64 -> ().
    """
    t = torch.randint(1, schedule.T + 1, (x0.shape[0],), generator=generator,
                      device=generator.device if generator is not None else "cpu").to(x0.device)
    eps = torch.randn(x0.shape, generator=generator,
                      device=generator.device if generator is not None else "cpu").to(x0)
    return F.cross_entropy(classifier(q_sample(x0, t, schedule, eps), t), labels)


@torch.no_grad()
def noisy_accuracy(classifier: Callable, images: Tensor, labels: Tensor, schedule: NoiseSchedule,
                   t: int, *, seed: int = 0) -> float:
    """The classifier's accuracy on ``images`` noised to step ``t`` (0: the clean images)."""
    steps = torch.full((len(images),), t, device=images.device)
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images)
    x_t = q_sample(images, steps, schedule, eps)
    return (classifier(x_t, steps).argmax(1) == labels).float().mean().item()


def classifier_guided_eps(eps: Tensor, classifier: Callable, x: Tensor, t: Tensor,
                          labels: Tensor, scale: float, schedule: NoiseSchedule) -> Tensor:
    """eps - scale * sqrt(1 - alpha_bar_t) * grad_x log p(labels | x_t, t) (Dhariwal & Nichol
    2021, Eq. 14 and Alg. 2; lesson 18's second exercise).

    ``eps`` is the diffusion model's noise prediction at ``x``; ``classifier(x, t)`` gives logits.
    The gradient is each example's own (the log-probabilities summed over the batch, so no example
    scales another's), taken with gradients on even where the caller runs under no_grad, and the
    caller's ``x`` is left as it was. Shapes: eps, x (B, ...), t (B,), labels (B,) -> (B, ...).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_p = F.log_softmax(classifier(x_in, t).float(), dim=-1)  # (B, K)
        chosen = log_p.gather(1, labels[:, None]).sum()
        grad = torch.autograd.grad(chosen, x_in)[0]  # (B, ...)
    sigma = (1 - schedule.at(schedule.alpha_bar, t, x)) ** 0.5  # (B, 1, ..., 1)
    return eps - scale * sigma * grad.to(eps.dtype)


def bracketing_scales(adherence: dict[float, float],
                      target: float) -> tuple[float, float, float] | None:
    """Where a guidance method reaches ``target`` adherence, for comparing methods at equal
    adherence (lesson 18): the first two neighbouring scales, smallest first, whose measured
    adherences (``{scale: adherence}``) bracket the target, and the weight w of the larger one that
    puts the linear interpolation of adherence on the target. A quantity q measured at both scales
    is read there as (1 - w) q(lo) + w q(hi). None where no neighbouring pair brackets the target:
    nothing is extrapolated. Returns (lo, hi, w).
    """
    scales = sorted(adherence)
    for lo, hi in zip(scales, scales[1:]):
        a, b = adherence[lo], adherence[hi]
        if min(a, b) <= target <= max(a, b):
            return lo, hi, 0.0 if a == b else (target - a) / (b - a)
    return None


@dataclass(frozen=True, eq=False)
class ClassifierGuided:
    """The unconditional prediction of ``model`` (a conditional network asked with ``null``) steered
    by ``classifier``'s gradient at ``scale``: a callable ``(x, t, cond) -> eps`` for any sampler.

    ``cond.labels`` are the classes asked for. ``forward`` is :func:`classifier_guided_eps` (or a
    learner's, once it passed its check). ``model`` must predict eps.
    """

    model: Callable
    classifier: Callable
    scale: float
    null: object  # the null condition of one example (Cond(labels=tensor(10)))
    schedule: NoiseSchedule
    forward: Callable[..., Tensor] = classifier_guided_eps

    def __post_init__(self) -> None:
        predicts = getattr(self.model, "predicts", None)
        if getattr(predicts, "value", predicts) not in (None, "eps"):
            raise ValueError("ClassifierGuided adds a gradient to an eps prediction, but the "
                             f"model predicts {getattr(predicts, 'value', predicts)}: give it an "
                             "eps-prediction network (lesson 08's).")

    @property
    def predicts(self) -> str:
        return "eps"

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        if cond is None or getattr(cond, "labels", None) is None:
            raise ValueError("ClassifierGuided needs the classes to guide towards: "
                             "cond=Cond(labels=...).")
        null = type(cond)(labels=self.null.labels.to(x.device).expand(x.shape[0]))
        with torch.no_grad():
            eps = self.model(x, t, null)
        return self.forward(eps, self.classifier, x, t, cond.labels, self.scale, self.schedule)


def negative_guided_forward(model: Callable, x: Tensor, t: Tensor, cond: object,
                            negative: object, scale: float) -> Tensor:
    """eps(negative) + scale (eps(cond) - eps(negative)) in one batched forward pass (lesson 18's
    third exercise): classifier-free guidance with the negative condition in the null one's place.

    ``negative`` holds one example's condition (broadcast over the batch) or one per example.
    Shapes: x (B, ...), t (B,), cond's fields (B, ...) -> (B, ...).
    """
    B = x.shape[0]
    context, mask = negative.context, negative.context_mask
    if context.ndim == 2:  # one example's negative (L, D), (L,): the same for the whole batch
        context, mask = context.expand(B, -1, -1), mask.expand(B, -1)
    stacked = type(cond)(context=torch.cat([cond.context, context.to(cond.context)]),
                         context_mask=torch.cat([cond.context_mask, mask.to(cond.context_mask)]))
    both = model(torch.cat([x, x]), torch.cat([t, t]), stacked)  # one call of 2B
    cond_pred, negative_pred = both.chunk(2)  # (B, ...) each
    return guided_prediction(cond_pred, negative_pred, scale)


@dataclass(frozen=True, eq=False)
class NegativeGuided:
    """``model`` guided at ``scale`` away from ``negative`` (one example's condition, or one per
    example of every batch it is called with): a callable ``(x, t, cond)`` for any sampler.
    ``forward`` is :func:`negative_guided_forward` (or a learner's, once it passed its check)."""

    model: Callable
    scale: float
    negative: object  # a Cond
    forward: Callable[..., Tensor] = negative_guided_forward

    @property
    def predicts(self) -> str | None:
        return getattr(self.model, "predicts", None)

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        if cond is None:
            raise ValueError("NegativeGuided needs the condition to guide towards (the prompt).")
        return self.forward(self.model, x, t, cond, self.negative, self.scale)
