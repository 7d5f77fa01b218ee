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
runs it; :func:`guided_forward` evaluates both predictions in one batched forward pass.

The rescale acts on whatever the network predicts (eps for the class-conditional models of lesson
08, v for lesson 09's text-conditioned one): Lin et al. derived it for v-prediction, where the
guided output's standard deviation is that of an image-like quantity.
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


def pair_with_null(cond: object, null: object) -> object:
    """The batch's conditions followed by as many null conditions (every field concatenated).

    ``null`` holds one example's condition (labels (), context (L, D), mask (L,)).
    Shapes: cond's fields (B, ...) -> (2B, ...).
    """
    fields = {}
    for name in ("labels", "context", "context_mask"):
        value, empty = getattr(cond, name, None), getattr(null, name, None)
        if value is None:
            continue
        if empty is None:
            raise ValueError(f"Guidance needs a null {name} to pair with the batch's: give "
                             f"null=Cond({name}=...).")
        fields[name] = torch.cat([value, empty.to(value.device, value.dtype).expand_as(value)])
    return type(cond)(**fields)


def guided_forward(model: Callable, x: Tensor, t: Tensor, cond: object, null: object, scale: float,
                   rescale: float = 0.0, interval: tuple[float, float] | None = None) -> Tensor:
    """The guided prediction in one batched forward pass (lesson 08's exercise).

    The batch and a copy of it with the null condition go through ``model`` together (2B
    examples); the output is split into the conditional and the unconditional halves and
    combined with :func:`guided_prediction`; with ``rescale`` = phi > 0 the result is rescaled
    towards the conditional prediction's standard deviation (:func:`rescale_guidance`); with
    ``interval`` = (t_lo, t_hi) it is used only where t_lo <= t <= t_hi (bounds included), the
    conditional prediction elsewhere.

    Shapes: x (B, ...), t (B,), cond's fields (B, ...) -> (B, ...).
    """
    both = model(torch.cat([x, x]), torch.cat([t, t]), pair_with_null(cond, null))
    cond_pred, uncond_pred = both.chunk(2)  # (B, ...) each
    guided = guided_prediction(cond_pred, uncond_pred, scale)
    if rescale:
        guided = rescale_guidance(guided, cond_pred, rescale)
    if interval is not None:
        lo, hi = interval
        inside = ((t >= lo) & (t <= hi)).reshape((-1,) + (1,) * (x.ndim - 1))  # (B, 1, ..., 1)
        guided = torch.where(inside, guided, cond_pred)
    return guided


@dataclass(frozen=True, eq=False)
class Guided:
    """``model`` guided at ``scale``: a callable ``(x, t, cond) -> prediction`` for any sampler.

    ``null`` is the condition meaning "none" for one example (e.g. ``Cond(labels=tensor(10))``).
    ``interval`` = (t_lo, t_hi), in the model's time units, guides only there and uses the
    conditional prediction elsewhere. ``forward`` computes the guided prediction, with the
    signature of :func:`guided_forward` (a learner's, once it passed its check).
    """

    model: Callable  # a conditional network trained with condition dropout
    scale: float  # s: 0 unconditional, 1 conditional, > 1 guided
    null: object  # the null condition of one example
    rescale: float = 0.0  # phi of Lin et al. 2024 (0: no rescaling; they suggest 0.7)
    interval: tuple[float, float] | None = None  # guide only for t in [t_lo, t_hi]
    forward: Callable[..., Tensor] = guided_forward

    @property
    def predicts(self) -> str | None:
        """What the guided model predicts: its network's target (guidance combines predictions of
        that kind, so a sampler reads the guided output the same way)."""
        return getattr(self.model, "predicts", None)

    def __call__(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        if cond is None:
            raise ValueError("Guided needs the condition to guide towards, e.g. Cond(labels=...).")
        return self.forward(self.model, x, t, cond, self.null, self.scale, self.rescale,
                            self.interval)
