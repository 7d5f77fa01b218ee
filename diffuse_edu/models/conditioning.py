"""What a denoiser is conditioned on besides x_t and t (lessons 08-09), and dropping it.

Classifier-free guidance (Ho & Salimans 2022) trains one network both with and without its
condition by replacing the condition with a null one for a share of the examples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Cond:
    """What a denoiser is conditioned on besides x_t and t.

    Shapes: labels (B,) int64; context (B, L, context_dim); context_mask (B, L) bool, True = real.
    """

    labels: Tensor | None = None
    context: Tensor | None = None
    context_mask: Tensor | None = None

    def index(self, idx: Tensor) -> Cond:
        """The conditions of the examples ``idx`` (every field indexed along its first axis)."""
        return Cond(*(None if f is None else f[idx] for f in self._fields()))

    def _fields(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.labels, self.context, self.context_mask


def drop_condition(cond: Cond, null: Cond, p: float, *,
                   generator: torch.Generator | None = None) -> Cond:
    """Replace each example's condition by ``null`` with probability ``p`` (Ho & Salimans 2022,
    Alg. 1).

    ``null`` holds one example's condition (labels (), context (L, D), mask (L,)), broadcast over
    the batch. Shapes: cond's fields (B, ...) -> the same.
    """
    ref = next(f for f in cond._fields() if f is not None)
    drop = torch.rand(ref.shape[0], generator=generator, device=ref.device) < p  # (B,)
    fields = []
    for value, empty, name in zip(cond._fields(), null._fields(),
                                  ("labels", "context", "context_mask")):
        if value is None:
            fields.append(None)
            continue
        if empty is None:
            raise ValueError(f"drop_condition: the null condition has no {name} to put in place of "
                             f"the batch's; give null=Cond({name}=...).")
        mask = drop.reshape((-1,) + (1,) * (value.ndim - 1))
        fields.append(torch.where(mask, empty.to(value.device, value.dtype), value))
    return Cond(*fields)


def drop_labels(labels: Tensor, p_null: float, null_label: int, *,
                generator: torch.Generator | None = None) -> Tensor:
    """A copy of ``labels`` in which each label becomes ``null_label`` with probability ``p_null``,
    independently, drawn from ``generator`` (lesson 08's exercise; Ho & Salimans 2022, Alg. 1).

    Shapes: labels (B,) int64 -> (B,) int64.
    """
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_null
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def label_dropout(fn: Callable[..., Tensor] = drop_labels) -> Callable[..., Cond]:
    """Condition dropout for class labels with ``fn(labels, p_null, null_label, generator=)`` (a
    learner's :func:`drop_labels`), in the signature of :func:`drop_condition` that the training
    loop calls."""
    def drop(cond: Cond, null: Cond, p: float, *, generator: torch.Generator | None = None) -> Cond:
        if cond.labels is None or cond.context is not None:
            raise ValueError("label_dropout drops class labels; for captions use drop_condition.")
        return Cond(labels=fn(cond.labels, p, int(null.labels), generator=generator))
    return drop
