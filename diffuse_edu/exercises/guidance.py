"""Checkers for lesson 08: condition dropout and the guided model's forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.diffusion.guidance import guided_forward, guided_prediction, rescale_guidance
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.models.conditioning import Cond, drop_labels

NULL = 10  # the null label of the checkers' stand-in network (classes 0-9)


class _Network:
    """A stand-in conditional network: a fixed smooth function of (x, t, label) that records the
    batch size of every call. The null label gives a clearly different output."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.calls.append(x.shape[0])
        shape = (-1,) + (1,) * (x.ndim - 1)
        label = cond.labels.to(x.dtype).reshape(shape)
        return (
            torch.sin(x * (1 + 0.15 * label)) + 0.05 * label + 1e-3 * t.to(x.dtype).reshape(shape)
        )


def _batch(shape=(4, 2, 3, 5), t=(5, 200, 500, 900), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    labels = torch.tensor([0, 3, 7, 9, 5, 1][: shape[0]])
    return x, torch.tensor(t[: shape[0]]), Cond(labels=labels), Cond(labels=torch.tensor(NULL))


def _halves(x, t, cond):
    net = _Network()
    return net(x, t, cond), net(x, t, Cond(labels=torch.full_like(cond.labels, NULL)))


def _call(fn: Callable, x, t, cond, null, scale, rescale=0.0, interval=None):
    net = _Network()
    out = fn(
        net, x.clone(), t.clone(), Cond(labels=cond.labels.clone()), null, scale, rescale, interval
    )
    return out, net.calls


def _dims(x):
    return tuple(range(1, x.ndim))


def _guidance_values(scale: float) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        x, t, cond, null = _batch()
        c, u = _halves(x, t, cond)
        both = torch.cat([c, u])
        a, b = both[0::2], both[1::2]
        mistakes = [
            Mistake("the two halves are swapped: if the batch's own conditions come first in the "
                    "stack, the first B rows of the output are the conditional prediction.",
                    c + scale * (u - c)),
            Mistake("you used 1 + s as the factor: here the scale s is already Ho & Salimans' 1 + "
                    "w (s = 1 is the conditional model).", u + (1 + scale) * (c - u)),
            Mistake("both halves ran with the batch's own labels: the copy must carry the null "
                    "label, so that its half is the unconditional prediction.", c),
            Mistake("you extrapolated from the conditional prediction; start from the "
                    "unconditional one.",
                    c + scale * (c - u)),
            Mistake("you split the output by alternate rows, but the batch and its copy were "
                    "stacked one after the other: split the way you stacked (the first B rows, "
                    "then the last B).",
                    b + scale * (a - b)),
        ]
        got, _ = _call(fn, x, t, cond, null, scale)
        compare(got, guided_forward(_Network(), x, t, cond, null, scale),
                what=f"the guided prediction at scale {scale} (B = 4 images)", mistakes=mistakes)
    return case


def _one_pass(fn: Callable) -> None:
    x, t, cond, null = _batch()
    _, calls = _call(fn, x, t, cond, null, 3.0)
    if calls != [2 * len(x)]:
        raise Mismatch(f"the network was called with batch sizes {calls}; stack the batch and its "
                       f"null-condition copy and run them in one call of 2B = {2 * len(x)} "
                       "examples (one forward pass: on a GPU it costs about what one of two "
                       "smaller passes costs).")


def _rescaled(fn: Callable) -> None:
    x, t, cond, null = _batch(seed=1)
    scale, phi = 4.0, 0.7
    c, u = _halves(x, t, cond)
    g = guided_prediction(c, u, scale)
    whole = g * (c.std() / g.std())
    to_u = g * (u.std(dim=_dims(g), keepdim=True) / g.std(dim=_dims(g), keepdim=True))
    per = g * (c.std(dim=_dims(g), keepdim=True) / g.std(dim=_dims(g), keepdim=True))
    mistakes = [
        Mistake(
            "rescale was ignored: with rescale = phi > 0, blend the guided prediction with "
            "itself rescaled to the conditional prediction's standard deviation.",
            g,
        ),
        Mistake(
            "the standard deviations were taken over the whole batch; take them per example "
            "(over every axis but the first).",
            phi * whole + (1 - phi) * g,
        ),
        Mistake(
            "that ratio is of variances; rescale by the ratio of standard deviations, "
            "sigma_cond / sigma_g (the square root of the variances' ratio).",
            phi * g * (c.var(dim=_dims(g), keepdim=True) / g.var(dim=_dims(g), keepdim=True))
            + (1 - phi) * g,
        ),
        Mistake(
            "phi and 1 - phi are swapped: phi is the weight of the rescaled prediction.",
            (1 - phi) * per + phi * g,
        ),
        Mistake(
            "you rescaled to the unconditional prediction's standard deviation; the target is "
            "the conditional one's.",
            phi * to_u + (1 - phi) * g,
        ),
        Mistake(
            "that is the fully rescaled prediction (phi = 1); blend it with the unrescaled "
            "one by phi.",
            per,
        ),
    ]
    got, _ = _call(fn, x, t, cond, null, scale, rescale=phi)
    compare(got, rescale_guidance(g, c, phi), what=f"the guided prediction at scale {scale} with "
                                                   f"rescale {phi}",
            mistakes=mistakes)


def _interval(fn: Callable) -> None:
    # t = 200 lies strictly inside, t = 100 and 300 on the bounds: "bounds excluded" guides 200
    # alone,
    # "compared with t / 1000" guides nothing, the right answer 100, 200 and 300.
    x, t, cond, null = _batch(shape=(5, 2, 3, 5), t=(5, 100, 200, 300, 600), seed=2)
    scale, (lo, hi) = 3.0, (100, 300)
    c, u = _halves(x, t, cond)
    g = guided_prediction(c, u, scale)
    inside = ((t >= lo) & (t <= hi)).reshape(-1, 1, 1, 1)
    strict = ((t > lo) & (t < hi)).reshape(-1, 1, 1, 1)
    mistakes = [
        Mistake("the interval was ignored: outside [t_lo, t_hi] use the conditional prediction.",
                g),
        Mistake("outside the interval you used the unconditional prediction; use the conditional "
                "one there (no guidance is s = 1, not s = 0).", torch.where(inside, g, u)),
        Mistake("the interval is inverted: guide where t_lo <= t <= t_hi and use the conditional "
                "prediction outside.", torch.where(inside, c, g)),
        Mistake("the bounds are excluded: t = t_lo and t = t_hi lie inside the interval.",
                torch.where(strict, g, c)),
        Mistake("nothing was guided: the interval's bounds are steps, like the t the network gets "
                "(0 to 1000); compare t itself with them, not t / 1000 (nor a time in [0, 1]).",
                torch.where(((t / 1000 >= lo) & (t / 1000 <= hi)).reshape(-1, 1, 1, 1), g, c)),
    ]
    got, _ = _call(fn, x, t, cond, null, scale, interval=(lo, hi))
    compare(
        got,
        torch.where(inside, g, c),
        what=f"the guided prediction with interval ({lo}, {hi}) at t = {t.tolist()}",
        mistakes=mistakes,
    )


def _any_shape(fn: Callable) -> None:
    """Vectors instead of images, through the rescale and the interval: both reshape per-example
    values."""
    x, t, cond, null = _batch(shape=(3, 6), seed=3)
    try:
        got, _ = _call(fn, x, t, cond, null, 2.0, rescale=0.7, interval=(0, 400))
    except (IndexError, RuntimeError) as e:
        if "out of range" not in str(e) and "dimension" not in str(e) and "shape" not in str(e):
            raise
        raise Mismatch(f"for vectors x of shape {tuple(x.shape)} it raised {type(e).__name__} "
                       f"({e}): it works on images (B, C, H, W) but not on other shapes. Take "
                       "per-example statistics over every axis but the first (dim=tuple(range(1, "
                       "x.ndim))) and reshape per-example values to (B, 1, ..., 1) with as many "
                       "ones as x has axes after the first.") from None
    if isinstance(got, torch.Tensor) and got.shape != x.shape:
        raise Mismatch(f"for vectors x of shape {tuple(x.shape)} the result has shape "
                       f"{tuple(got.shape)}: it works on images (B, C, H, W) but not on other "
                       "shapes. Reshape per-example values to (B, 1, ..., 1) with as many ones as "
                       "x has axes after the first.")
    compare(got, guided_forward(_Network(), x, t, cond, null, 2.0, 0.7, (0, 400)),
            what="the guided prediction for vectors x of shape (3, 6) with rescale 0.7 and an "
                 "interval",
            otherwise="it works on images (B, C, H, W) but not on other shapes: reshape "
                      "per-example values to (B, 1, ..., 1) with as many ones as x has axes after "
                      "the first.")


def _inputs_unchanged(fn: Callable) -> None:
    x, t, cond, null = _batch(seed=4)
    before = (x.clone(), t.clone(), cond.labels.clone(), null.labels.clone())
    fn(_Network(), x, t, cond, null, 3.0, 0.7, (100, 600))
    if not all(torch.equal(a, b) for a, b in zip((x, t, cond.labels, null.labels), before)):
        raise Mismatch("the guided forward pass changed its inputs in place; the sampler still "
                       "needs x, t and the conditions: build new tensors (torch.cat makes copies).")


GUIDED_FORWARD = Checker(
    "guided_forward",
    guided_forward,
    [
        _guidance_values(3.0),
        _guidance_values(0.0),
        _guidance_values(1.0),
        _one_pass,
        _rescaled,
        _interval,
        _any_shape,
        _inputs_unchanged,
    ],
    hints=(
        ("A batch of 2B: the first B examples carry their own conditions, the last B the same "
         "images with the null condition. One call of the network, then split its output the way "
         "you stacked its input."),
        ("The null condition holds one example's label; the copy needs B of them (expand_as or "
         "full_like). The rescale and the interval both act per example: per-example statistics, "
         "per-example masks."),
    ),
    see="lesson 08, section 3: Eq. 6 for the combination, Lin et al. 2024 Sec. 3.4 for the rescale",
)


def _draw(fn: Callable, labels: torch.Tensor, p_null: float, seed: int | None):
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return fn(labels.clone(), p_null, NULL, generator=g)


def _drop_values(fn: Callable) -> None:
    labels = torch.arange(10).repeat(2000)  # B = 20,000
    p = 0.15
    got = _draw(fn, labels, p, 0)
    if not isinstance(got, torch.Tensor):
        raise Mismatch(f"drop_labels returned {type(got).__name__}; expected a tensor of labels.")
    if got.shape != labels.shape or got.dtype != labels.dtype:
        raise Mismatch(f"drop_labels returned {tuple(got.shape)} {got.dtype}; expected the "
                       f"labels' shape {tuple(labels.shape)} and dtype {labels.dtype} (the "
                       "embedding table indexes with them).")
    changed = got != labels
    if changed.any() and (got[changed] == 0).all():
        raise Mismatch("the dropped labels became 0, which is the class 'zero'; they must become "
                       f"null_label ({NULL}), the class the network learns as 'no condition'.")
    if not (got[changed] == NULL).all():
        raise Mismatch(f"some labels changed to values other than null_label ({NULL}): a label is "
                       "either kept as it is or replaced by null_label.")
    share, se = changed.float().mean().item(), (p * (1 - p) / len(labels)) ** 0.5
    if share == 0:
        raise Mismatch("no label was dropped at p_null = 0.15.")
    if abs(share - (1 - p)) < 5 * se:
        raise Mismatch(f"{share:.1%} of the labels were dropped at p_null = {p}: you dropped "
                       "where the uniform number is above p_null, which drops a share 1 - p_null.")
    if abs(share - p) > 5 * se:
        raise Mismatch(f"{share:.1%} of the labels were dropped at p_null = {p}; expected about "
                       f"{p:.0%} (each label independently with probability p_null).")


def _drop_independent(fn: Callable) -> None:
    labels = torch.arange(64) % 10
    drops = torch.stack([_draw(fn, labels, 0.5, seed) != labels for seed in range(20)])  # (20, 64)
    per_call = drops.float().mean(1)
    if not drops.any():
        raise Mismatch("no label was dropped in 20 calls at p_null = 0.5: replace each label by "
                       "null_label with probability p_null.")
    if ((per_call == 0) | (per_call == 1)).all():
        raise Mismatch("each call dropped either every label or none: draw one number per "
                       "example, not one for the whole batch.")
    if (drops == drops[0]).all():
        raise Mismatch("the same examples lost their labels in every call, whatever the "
                       "generator: which examples are dropped must be drawn at random, from the "
                       "generator.")
    counts = drops.sum(1)
    if (counts == counts[0]).all():
        raise Mismatch(f"every call dropped exactly {int(counts[0])} of 64 labels: a fixed "
                       "number, p_null * B, chosen at random. Let each example flip its own coin "
                       "instead, so that the count varies from batch to batch (a fixed count "
                       "rounds to none in a small batch: p_null = 0.15 with B = 4 drops nothing, "
                       "ever).")


def _drop_reproducible(fn: Callable) -> None:
    labels = torch.arange(64) % 10
    torch.manual_seed(1)
    first = _draw(fn, labels, 0.5, 5)
    torch.manual_seed(2)
    second = _draw(fn, labels, 0.5, 5)
    if not torch.equal(first, second):
        raise Mismatch("two calls with generators seeded alike dropped different labels: draw "
                       "with generator=generator (torch.rand(..., generator=generator)) so that "
                       "training is reproducible.")
    if _draw(fn, labels, 0.0, 3).ne(labels).any():
        raise Mismatch("at p_null = 0 no label may be dropped.")


def _drop_unchanged(fn: Callable) -> None:
    labels = torch.arange(64) % 10
    before = labels.clone()
    fn(labels, 0.5, NULL, generator=torch.Generator().manual_seed(0))
    if not torch.equal(labels, before):
        raise Mismatch("drop_labels changed the caller's labels in place; the data set's labels "
                       "would lose classes for good. Return a new tensor (torch.where or a clone).")


DROP_LABELS = Checker(
    "drop_labels",
    drop_labels,
    [_drop_independent, _drop_values, _drop_reproducible, _drop_unchanged],
    hints=(
        ("Each example flips its own biased coin: heads (probability p_null) and its label becomes "
         "the null label."),
        ("One uniform number per example, from the generator you are given; compare it with "
         "p_null, and pick between the null label and the label with that boolean."),
    ),
    see="Ho & Salimans 2022, Alg. 1, in lesson 08, section 1",
)
