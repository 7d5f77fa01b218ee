"""An exponential moving average of a model's weights (lesson 05).

Sampling from an average of the weights over the last few thousand steps gives smoother, better
samples than the last weights alone (Song & Ermon 2020, Sec. 3.4; Ho et al. 2020, App. B). The
decay warms up as decay_k = min(decay, (1 + k) / (10 + k)), so early averages forget the random
initialisation quickly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn


def ema_decay_at(updates: int, decay: float) -> float:
    """The decay after ``updates`` updates: min(decay, (1 + k) / (10 + k))."""
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def ema_update(ema: list[Tensor], current: list[Tensor], updates: int, decay: float) -> None:
    """In place: ema <- d * ema + (1 - d) * current, with d = ema_decay_at(updates, decay)."""
    d = ema_decay_at(updates, decay)
    torch._foreach_lerp_(ema, current, 1 - d)


class EMA:
    """An exponential moving average of a model's weights, itself a model to sample from.

    With ``trainable`` (a filter on parameter names) only those parameters are averaged; the rest
    are frozen and stay as they were copied. ``update_fn`` does the averaging (:func:`ema_update`,
    or a learner's, lesson 05).
    """

    def __init__(self, model: nn.Module, decay: float, *,
                 trainable: Callable[[str], bool] | None = None,
                 update_fn: Callable[..., None] = ema_update):
        self.decay, self.update_fn = decay, update_fn
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.names = [n for n, _ in model.named_parameters() if trainable is None or trainable(n)]
        own = dict(self.model.named_parameters())
        self._targets = [own[n] for n in self.names]
        self._sources: tuple[int, list[Tensor]] | None = None  # (id of the model,
        # its averaged parameters)
        self.updates = 0

    def current_decay(self) -> float:
        return ema_decay_at(self.updates, self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._sources is None or self._sources[0] != id(model):  # looked up once, not every step
            params = dict(model.named_parameters())
            self._sources = (id(model), [params[n].detach() for n in self.names])
        self.update_fn(self._targets, self._sources[1], self.updates, self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.updates += 1
