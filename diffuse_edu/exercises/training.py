"""Checker for lesson 05: one update of the exponential moving average, with its warm-up."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.training.ema import ema_update


def _run(fn: Callable, updates: int, decay: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(updates)
    ema, cur = [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)], [torch.randn(3, 2, generator=g),
                                                                              torch.randn(4, generator=g)]
    e0, c0 = [e.clone() for e in ema], [c.clone() for c in cur]
    want = [e.clone() for e in ema]
    ema_update(want, [c.clone() for c in cur], updates, decay)
    warm = min(decay, (1 + updates) / (10 + updates))
    variants = {
        "swapped": [warm * c + (1 - warm) * e for e, c in zip(e0, c0)],
        "no_warmup": [decay * e + (1 - decay) * c for e, c in zip(e0, c0)],
        "always_warm": [((1 + updates) / (10 + updates)) * e + (1 - (1 + updates) / (10 + updates)) * c
                        for e, c in zip(e0, c0)],
    }
    result = fn(ema, cur, updates, decay)
    if result is not None and not isinstance(result, list):
        raise Mismatch("ema_update should change the EMA tensors in place and return None.")
    if any(not torch.equal(c, c0_) for c, c0_ in zip(cur, c0)):
        raise Mismatch("ema_update changed the model's own weights; only the EMA copies may change.")
    got = torch.cat([e.flatten() for e in (result or ema)])
    return got, {k: torch.cat([v.flatten() for v in vs]) for k, vs in variants.items()} | {
        "want": torch.cat([w.flatten() for w in want])}


def _case(updates: int, decay: float):
    def case(fn: Callable) -> None:
        got, v = _run(fn, updates, decay)
        mistakes = [
            Mistake("the weights are swapped: the EMA keeps d of itself and takes 1 - d of the model.",
                    v["swapped"]),
            Mistake("there is no warm-up: use d = min(decay, (1 + k) / (10 + k)) after k updates.",
                    v["no_warmup"]),
            Mistake("the warm-up never ends: d must be capped at the final decay.", v["always_warm"]),
        ]
        compare(got, v["want"], mistakes=mistakes,
                what=f"ema_update after {updates} updates with decay {decay}")
    return case


EMA_UPDATE = Checker(
    "ema_update", ema_update, [_case(0, 0.999), _case(5, 0.999), _case(5000, 0.99)],
    hint="d = min(decay, (1 + updates) / (10 + updates)); for each pair, e.mul_(d).add_(c, alpha=1 - d).",
)
