"""Classifier-free guidance (lesson 08; Ho & Salimans 2022).

One network, trained with its condition dropped for a share of the examples, predicts both
eps(x_t, c) and eps(x_t, null). Guidance extrapolates from the unconditional prediction past the
conditional one (Ho & Salimans 2022, Eq. 6, written with the scale s = 1 + w)::

    eps_guided = eps_uncond + s (eps_cond - eps_uncond).

s = 1 is the conditional model, s = 0 the unconditional one, s > 1 pushes samples towards what
distinguishes the class, at the price of diversity and, at large s, over-saturated ("fried") images.
Two remedies: rescaling the guided prediction's standard deviation to the conditional one's
(Lin et al. 2024, Sec. 3.4) and guiding only inside an interval of noise levels
(Kynkaanniemi et al. 2024).

:class:`Guided` is a model like any other, ``model(x, t, cond)``, so every sampler of lesson 07
runs it; it evaluates both predictions in one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def guided_prediction(cond_pred: Tensor, uncond_pred: Tensor, scale: float) -> Tensor:
    """uncond + scale * (cond - uncond) (Ho & Salimans 2022, Eq. 6 with scale = 1 + w), lesson 08.

    Shapes: cond_pred, uncond_pred (B, ...) -> (B, ...).
    """
    return uncond_pred + scale * (cond_pred - uncond_pred)


def rescale_guidance(guided: Tensor, cond_pred: Tensor, phi: float) -> Tensor:
    """Blend the guided prediction with itself rescaled to the conditional prediction's standard
    deviation per example (Lin et al. 2024, Sec. 3.4): phi = 0 leaves it, phi = 1 fully rescales.

    Shapes: guided, cond_pred (B, ...) -> (B, ...).
    """
    dims = tuple(range(1, guided.ndim))
    rescaled = guided * (cond_pred.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return phi * rescaled + (1 - phi) * guided


def _pair(cond: object, null: object) -> object:
    """The batch's conditions followed by as many null conditions (every field concatenated)."""
    fields = {}
    for name in ("labels", "context", "context_mask"):
        value, empty = getattr(cond, name, None), getattr(null, name, None)
        if value is None:
            continue
        if empty is None:
            raise ValueError(f"Guidance needs a null {name} to pair with the batch's: give null=Cond({name}=...).")
        fields[name] = torch.cat([value, empty.to(value.device, value.dtype).expand_as(value)])
    return type(cond)(**fields)


@dataclass(frozen=True, eq=False)
class Guided:
    """``model`` guided at ``scale``: a callable ``(x, t, cond) -> prediction`` for any sampler.

    ``null`` is the condition meaning "none" for one example (e.g. ``Cond(labels=tensor(10))``).
    ``interval`` = (t_lo, t_hi), in the model's time units, guides only there and uses the
    conditional prediction elsewhere. ``combine`` is the guidance formula (a learner's, once it
    passed its check).
    """

    model: Callable  # a conditional network trained with condition dropout
    scale: float  # s: 0 unconditional, 1 conditional, > 1 guided
    null: object  # the null condition of one example
    rescale: float = 0.0  # phi of Lin et al. 2024 (0: no rescaling; they suggest 0.7)
    interval: tuple[float, float] | None = None  # guide only for t in [t_lo, t_hi]
    combine: Callable[[Tensor, Tensor, float], Tensor] = guided_prediction

    @property
    def predicts(self) -> str | None:
        """What the guided model predicts: its network's target (guidance combines predictions of
        that kind, so a sampler reads the guided output the same way)."""
        return getattr(self.model, "predicts", None)

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        if cond is None:
            raise ValueError("Guided needs the condition to guide towards, e.g. Cond(labels=...).")
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), _pair(cond, self.null))
        cond_pred, uncond_pred = both.chunk(2)  # (B, ...) each
        guided = self.combine(cond_pred, uncond_pred, self.scale)
        if self.rescale:
            guided = rescale_guidance(guided, cond_pred, self.rescale)
        if self.interval is not None:
            lo, hi = self.interval
            inside = ((t >= lo) & (t <= hi)).reshape((-1,) + (1,) * (x.ndim - 1))  # (B, 1, ..., 1)
            guided = torch.where(inside, guided, cond_pred)
        return guided
