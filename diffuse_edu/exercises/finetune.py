"""Checker for lesson 13, part 4: DreamBooth's prior-preservation loss.

The checker's objective and model are deterministic (the objective draws no noise), so a learner's
loss matches whatever order it draws its random numbers in; every class image in the pool is the
same, so which ones are drawn does not matter either, only how many and how they are labelled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, compare_gradients
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.training.finetune import prior_preservation_loss


class _Model:
    """A made-up conditional model whose output depends on x and on the labels; records its
    calls."""

    def __init__(self):
        self.calls: list[tuple[int, list[int]]] = []

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        labels = cond.labels if cond is not None else torch.zeros(x.shape[0], dtype=torch.long)
        labels = (
            torch.as_tensor(labels).reshape(-1).expand(x.shape[0])
            if torch.as_tensor(labels).numel() == 1
            else labels
        )
        # one label for the batch (0-d) counts for each example
        self.calls.append((x.shape[0], labels.tolist()))
        return torch.tanh(x) * (1 + labels.float().reshape(-1, 1, 1, 1) / 10)


def _objective(
    model: Callable,
    x0: Tensor,
    *,
    cond: object = None,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    eps: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """A deterministic stand-in for DiffusionObjective: per-example squared error of model(x0)
    against x0."""
    t = torch.full((x0.shape[0],), 500)
    return (model(x0, t, cond) - x0).square().flatten(1).mean(1), t


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    subject = torch.randn(4, 1, 3, 3, generator=g)
    # every class image alike
    pool = torch.randn(1, 1, 3, 3, generator=g).expand(9, 1, 3, 3).clone()
    return subject, Cond(labels=torch.full((4,), 10)), pool


def _value_case(weight: float, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        subject, cond, pool = _inputs(seed)
        reference = _Model()
        want = prior_preservation_loss(
            reference, _objective, subject, cond, pool, 3, weight, torch.Generator()
        )
        s_loss, _ = _objective(_Model(), subject, cond=cond)
        p_loss, _ = _objective(_Model(), pool[:4], cond=Cond(labels=torch.full((4,), 3)))
        wrong_label, _ = _objective(_Model(), pool[:4], cond=cond)
        mistakes = [
            Mistake(
                "the weight multiplies the prior images' loss, not the subject's.",
                weight * s_loss + p_loss,
            ),
            Mistake(
                "the prior images must carry the class's label (prior_label); yours carry the "
                "subject's, which teaches the new label to draw plain class images.",
                s_loss + weight * wrong_label,
            ),
            Mistake(
                "the prior term must be the loss on images drawn from prior_pool (the class "
                "as the model drew it before fine-tuning), not on the subject's images again.",
                s_loss
                + weight * _objective(_Model(), subject, cond=Cond(labels=torch.full((4,), 3)))[0],
            ),
            Mistake(
                "the prior term is missing: the loss on the class images, with its weight, is "
                "part of the loss.", s_loss
            ),
            Mistake(
                "the subject's loss is missing: the prior term is added to it, not used "
                "instead of it.",
                weight * p_loss,
            ),
            Mistake(
                "the two terms are added, not averaged (Eq. 2 of the Math sums them).",
                (s_loss + weight * p_loss) / 2,
            ),
            Mistake(
                "the subject's loss counts fully; weight scales the prior term only (not (1 - "
                "weight) and weight).",
                (1 - weight) * s_loss + weight * p_loss,
            ),
            Mistake(
                "the prior images carry prior_label (3 here), not label 0.",
                s_loss
                + weight
                * _objective(
                    _Model(), pool[:4], cond=Cond(labels=torch.zeros(4, dtype=torch.long))
                )[0],
            ),
        ]
        model = _Model()
        got = fn(
            model,
            _objective,
            subject.clone(),
            cond,
            pool.clone(),
            3,
            weight,
            torch.Generator().manual_seed(1),
        )
        if isinstance(got, Tensor) and got.ndim == 0:
            raise Mismatch("prior_preservation_loss returned one number; return one loss per "
                           "subject example, shape (B,): the training loop averages them.")
        prior_calls = [n for n, labels in model.calls if labels and labels[0] != 10]
        if prior_calls and prior_calls[0] != subject.shape[0]:
            raise Mismatch(f"the model saw {prior_calls[0]} class images with the "
                           f"{subject.shape[0]} subject images: draw as many class images as the "
                           "batch holds subject images (one prior example per subject example).")
        compare(got, want, mistakes=mistakes, what=f"prior_preservation_loss with weight {weight}",
                otherwise="does not match the lesson's loss (Ruiz et al. 2023, Eq. 2, in lesson "
                          "13's Math), and none of the usual mistakes explains it: check which "
                          "images and labels each term scores, how many class images are drawn, "
                          "and which term the weight multiplies.")
    return case


def _draws_with_the_generator(fn: Callable) -> None:
    """The class images are drawn with the generator passed in, so that a run repeats."""
    g = torch.Generator().manual_seed(2)
    subject = torch.randn(3, 1, 3, 3, generator=g)
    # distinct class images: which are drawn matters here
    pool = torch.randn(50, 1, 3, 3, generator=g)
    cond = Cond(labels=torch.full((3,), 10))
    runs = [
        fn(_Model(), _objective, subject, cond, pool, 3, 1.0, torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    if not torch.allclose(runs[0], runs[1]):
        raise Mismatch("two calls with generators of the same seed gave different losses: draw "
                       "the class images with the generator passed in (generator=generator).")


def _draws_at_random(fn: Callable) -> None:
    """Generators of other seeds draw other class images: the pool is sampled, not sliced."""
    g = torch.Generator().manual_seed(3)
    subject = torch.randn(3, 1, 3, 3, generator=g)
    pool = torch.randn(50, 1, 3, 3, generator=g)
    cond = Cond(labels=torch.full((3,), 10))
    runs = [
        fn(_Model(), _objective, subject, cond, pool, 3, 1.0, torch.Generator().manual_seed(s))
        for s in (5, 6, 7)
    ]
    if all(torch.allclose(r, runs[0]) for r in runs[1:]):
        first = (
            _objective(_Model(), subject, cond=cond)[0]
            + _objective(_Model(), pool[:3], cond=Cond(labels=torch.full((3,), 3)))[0]
        )
        which = ("the first images of the pool every time" if torch.allclose(runs[0], first)
                 else "the same images whatever the generator")
        raise Mismatch("generators of three different seeds gave the same loss: your class images "
                       f"are {which}. Draw them at random from the whole pool, with the generator "
                       "and a new draw each call, so that every image the model drew before "
                       "fine-tuning takes its turn.")


class _Trainable(_Model):
    """The stand-in model with one trainable gain, so that the loss has a gradient to check."""

    def __init__(self):
        super().__init__()
        self.gain = torch.tensor(1.3, requires_grad=True)

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        return self.gain * super().__call__(x, t, cond)


def _gradient(fn: Callable) -> None:
    """Fine-tuning learns from both terms: the prior term's gradient keeps the class as it was."""
    subject, cond, pool = _inputs(4)
    model, weight = _Trainable(), 0.7
    got = fn(model, _objective, subject, cond, pool, 3, weight, torch.Generator().manual_seed(1))
    if not isinstance(got, Tensor) or not got.requires_grad:
        raise Mismatch("the loss carries no gradient to the model (computed under "
                       "torch.no_grad(), or with .item() or .detach()?): fine-tuning could not "
                       "learn from it.")
    want = prior_preservation_loss(
        model, _objective, subject, cond, pool, 3, weight, torch.Generator()
    )
    s_loss = _objective(model, subject, cond=cond)[0]
    p_loss = _objective(model, pool[:4], cond=Cond(labels=torch.full((4,), 3)))[0]
    compare_gradients(
        got, want, {"the model's weights": model.gain},
        what=f"the gradient of prior_preservation_loss with weight {weight}",
        mistakes=[
            Mistake("the prior term carries no gradient (computed under torch.no_grad(), or "
                    "detached): the class images' loss is there to be trained on, so that "
                    "fine-tuning keeps the class as the model drew it; only the class images "
                    "themselves, drawn before fine-tuning, need no gradient.",
                    s_loss + weight * p_loss.detach()),
            Mistake("the subject's term carries no gradient (computed under torch.no_grad(), or "
                    "detached): the model learns the subject from it.",
                    s_loss.detach() + weight * p_loss),
        ])


PRIOR_PRESERVATION_LOSS = Checker(
    "prior_preservation_loss", prior_preservation_loss,
    [_value_case(0.5, 1), _value_case(1.0, 0), _draws_with_the_generator, _draws_at_random,
     _gradient],
    hints=(("Each step sees two kinds of examples: the subject, with its new label, and images of "
            "its class the model drew before fine-tuning, with the class's label. Both are "
            "ordinary denoising examples."),
           ("One class image per subject image, drawn at random with the generator; the objective "
            "scores a batch under the labels you give it. Which batch does the weight belong "
            "to?")),
    see="Ruiz et al. 2023, Eq. 2, in lesson 13, section 4",
)
