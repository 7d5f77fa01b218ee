"""Checkers for lesson 18: the noise-aware classifier's loss, the classifier-guided noise
prediction, the scales that bracket a target adherence and classifier-free guidance with a
negative condition."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffuse_edu.diffusion.classifier_guidance import (
    bracketing_scales,
    classifier_guided_eps,
    negative_guided_forward,
    noisy_classifier_loss,
)
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import (
    Checker,
    Mismatch,
    Mistake,
    _filled,
    compare,
    require_gradient,
)
from diffuse_edu.models.conditioning import Cond

SEE_LOSS = "lesson 18, section 1: the classifier's loss (Dhariwal & Nichol 2021, Sec. 4)"
SEE_GUIDED = "lesson 18, section 3: the guided noise prediction (Dhariwal & Nichol 2021, Eq. 14)"
SEE_BRACKET = "lesson 18, section 4: reading both methods at the same adherence"
SEE_NEGATIVE = "lesson 18, section 5: the negative prompt in the null condition's place"


class _Classifier(nn.Module):
    """A stand-in noise-aware classifier (x, t) -> logits of 5 classes: smooth in x, with a
    t-dependent term, so that t, x_t and the log-softmax all show in its outputs and gradients.
    It records the t of every call."""

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(features, 5, generator=g) / features ** 0.5)
        self.ts: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.shape != (x.shape[0],):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise Mismatch(f"the classifier was given t of shape {shape} for a batch of "
                           f"{x.shape[0]}: give it one step per example, t of shape (B,) "
                           "(torch.randint(1, T + 1, (B,), ...)).")
        if t.device != x.device:
            raise Mismatch(f"t reached the classifier on {t.device} while x_t is on {x.device}: "
                           "draw t and eps on x0's device (device=x0.device), or move them there "
                           "(.to(x0.device)); on a GPU the CPU draw would crash.")
        self.ts.append(t.detach().clone())
        if x.device.type == "meta":
            return torch.zeros(x.shape[0], 5, device=x.device, dtype=x.dtype) + self.weight.sum()
        h = torch.tanh(2 * x.flatten(1) @ self.weight.to(x.dtype))  # (B, 5)
        return 3 * h * (1 + t.to(x.dtype)[:, None] / 100) + h ** 2


def _schedule(T: int = 50):
    return cosine_schedule(T)


# ---------------------------------------------------------------- noisy_classifier_loss


def _loss_batch(seed: int = 0, shape=(6, 1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    labels = torch.randint(0, 5, (shape[0],), generator=g)
    return x0, labels


def _loss_mistakes(clf: _Classifier, x0, labels, schedule, seed: int) -> list[Mistake]:
    T, B = schedule.T, len(x0)

    def draws(t_first: bool = True, low: int = 1, high: int | None = None):
        g = torch.Generator().manual_seed(seed)
        if t_first:
            t = torch.randint(low, (high or T + 1), (B,), generator=g)
            eps = torch.randn(x0.shape, generator=g)
        else:
            eps = torch.randn(x0.shape, generator=g)
            t = torch.randint(low, (high or T + 1), (B,), generator=g)
        return t, eps

    def ce(x, t, reduction="mean", how="ce"):
        logits = clf(x, t)
        if how == "softmax":
            return F.cross_entropy(F.softmax(logits, -1), labels).detach()
        if how == "nll":
            return F.nll_loss(logits, labels).detach()
        return F.cross_entropy(logits, labels, reduction=reduction).detach()

    t, eps = draws()
    ab = schedule.at(schedule.alpha_bar, t, x0)
    x_t = ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps
    t0, eps0 = draws(low=0, high=T)
    ab0 = schedule.at(schedule.alpha_bar, t0, x0)
    t2, eps2 = draws(t_first=False)
    ab2 = schedule.at(schedule.alpha_bar, t2, x0)
    return [
        Mistake("the classifier saw the clean images: it must learn p(y | x_t, t) on noised ones, "
                "the inputs guidance will give it. Noise x0 to x_t first.", ce(x0, t)),
        Mistake("t was drawn from 0..T-1; draw it from 1..T (torch.randint(1, T + 1, ...)): t = 0 "
                "is the clean image, and t = T, the noisiest, must be trained too.",
                ce(ab0 ** 0.5 * x0 + (1 - ab0) ** 0.5 * eps0, t0)),
        Mistake("the noise was drawn before t: draw t first, then eps, from the generator (the "
                "docstring's order), so that a run can be repeated.",
                ce(ab2 ** 0.5 * x0 + (1 - ab2) ** 0.5 * eps2, t2)),
        Mistake("x_t mixes x0 and eps with alpha_bar and 1 - alpha_bar; the weights are their "
                "square roots (q_sample of lesson 01).", ce(ab * x0 + (1 - ab) * eps, t)),
        Mistake("the cross-entropy was summed over the batch; take its mean, so that the learning "
                "rate does not depend on the batch size.", ce(x_t, t, "sum")),
        Mistake("the logits went through softmax before F.cross_entropy, which applies "
                "log_softmax itself: give it the raw logits.", ce(x_t, t, how="softmax")),
        Mistake("F.nll_loss was given the raw logits; it expects log-probabilities. Use "
                "F.cross_entropy on the logits (log_softmax and nll_loss in one).",
                ce(x_t, t, how="nll")),
        Mistake("x_t was made with schedule.alphas (alpha_t, one step's factor); noising to step t "
                "in one go uses the product alpha_bar_t (schedule.alpha_bar, as q_sample does).",
                ce(schedule.at(schedule.alphas, t, x0) ** 0.5 * x0
                   + (1 - schedule.at(schedule.alphas, t, x0)) ** 0.5 * eps, t)),
        Mistake("the classifier was given t = 0 for every image: give it the t each image was "
                "noised to, so that it knows how noisy its input is.",
                ce(x_t, torch.zeros_like(t))),
    ]


def _loss_values(fn: Callable) -> None:
    schedule = _schedule()
    for seed in (0, 3):
        x0, labels = _loss_batch(seed)
        clf = _Classifier(16, seed)
        got = fn(clf, x0.clone(), labels.clone(), schedule,
                 generator=torch.Generator().manual_seed(seed))
        want = noisy_classifier_loss(clf, x0, labels, schedule,
                                     generator=torch.Generator().manual_seed(seed))
        if isinstance(got, torch.Tensor) and got.shape != ():
            raise Mismatch(f"the loss has shape {tuple(got.shape)}; return one number (shape ()), "
                           "the mean cross-entropy over the batch.")
        compare(got, want.detach(), what=f"the loss on a batch of {len(x0)} images (T = "
                                         f"{schedule.T}, generator seeded {seed})",
                mistakes=_loss_mistakes(clf, x0, labels, schedule, seed))


def _loss_times(fn: Callable) -> None:
    """Over many batches, t covers 1..T and nothing else."""
    schedule = _schedule(T=8)
    x0, labels = _loss_batch(1, shape=(64, 1, 4, 4))
    clf = _Classifier(16, 1)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        fn(clf, x0, labels, schedule, generator=g)
    if not clf.ts:
        raise Mismatch("the classifier was never called: compute its logits on x_t and t.")
    seen = torch.cat(clf.ts)
    if seen.is_floating_point():
        raise Mismatch("t reached the classifier as floats; keep it integer steps in 1..T "
                       "(torch.randint gives int64).")
    if (seen == 0).all():
        raise Mismatch("the classifier was given t = 0 for every image: give it the t each image "
                       "was noised to, so that it knows how noisy its input is.")
    if all(ts.unique().numel() == 1 for ts in clf.ts):
        raise Mismatch("every batch of 64 had one t for all its images (a single draw, expanded "
                       "or repeated): draw one step per example, torch.randint(1, T + 1, (B,)).")
    low, high, T = int(seen.min()), int(seen.max()), schedule.T
    ranges = {(0, T - 1): "t was drawn from 0..T-1; draw it from 1..T (torch.randint(1, T + 1, "
                          "...)): t = 0 is the clean image, and t = T, the noisiest, must be "
                          "trained too.",
              (0, T): "t was drawn from 0..T (torch.randint(0, T + 1, ...)); draw it from 1..T: "
                      "t = 0 is the clean image, which guidance never asks about.",
              (1, T - 1): "t was drawn from 1..T-1 (torch.randint(1, T, ...): its upper end is "
                          "excluded); draw it from 1..T with torch.randint(1, T + 1, ...), so "
                          "that t = T, the noisiest, is trained too."}
    if (low, high) in ranges and seen.unique().numel() == high - low + 1:
        raise Mismatch(f"over 6 batches of 64 with T = {T} the classifier saw t from {low} to "
                       f"{high}: " + ranges[low, high])
    if low < 1 or high > T or seen.unique().numel() != T:
        raise Mismatch(f"over 6 batches of 64 with T = {T} the classifier saw t in "
                       f"{sorted(seen.unique().tolist())}; it must see every step of 1..T, and "
                       "only those.")


def _loss_on_the_images_device(fn: Callable) -> None:
    """x0 on another device than the CPU (the meta device stands in for a GPU): t and eps must be
    drawn there, or moved there, before they meet x0."""
    schedule = _schedule()
    x0 = torch.empty(4, 1, 4, 4, device="meta")
    labels = torch.zeros(4, dtype=torch.long, device="meta")
    clf = _Classifier(16, 0)
    fn = getattr(fn, "__wrapped__", fn)  # unwatched: meta tensors hold no values to compare
    try:
        fn(clf, x0, labels, schedule, generator=None)
    except Mismatch:
        raise
    except (RuntimeError, NotImplementedError, ValueError) as e:
        raise Mismatch(f"with x0 on another device (the 'meta' device, standing in for a GPU) it "
                       f"raised {type(e).__name__} ({str(e).splitlines()[0][:120]}): draw t and "
                       "eps on x0's device (device=x0.device), or move them there with "
                       ".to(x0.device).") from None


def _loss_reproducible_and_trainable(fn: Callable) -> None:
    schedule = _schedule()
    x0, labels = _loss_batch(2)
    clf = _Classifier(16, 2)
    torch.manual_seed(1)
    a = fn(clf, x0, labels, schedule, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(2)
    b = fn(clf, x0, labels, schedule, generator=torch.Generator().manual_seed(4))
    require_gradient(a, "noisy_classifier_loss", "the classifier's logits")
    if not torch.equal(a.detach(), b.detach()):
        raise Mismatch("two calls with generators seeded alike gave different losses: draw t and "
                       "eps with generator=generator, so that training can be repeated.")


NOISY_CLASSIFIER_LOSS = Checker(
    "noisy_classifier_loss",
    noisy_classifier_loss,
    [_loss_times, _loss_reproducible_and_trainable, _loss_values, _loss_on_the_images_device],
    hints=(
        ("It is lesson 05's training loss with the network swapped: there a denoiser on x_t "
         "regressed eps; here a classifier on the same x_t predicts the label. Which lines of "
         "that loss carry over unchanged?"),
        ("torch.randint's upper end is excluded; both draws take generator= and device=x0.device; "
         "F.cross_entropy wants raw logits and int64 labels and averages by itself."),
    ),
    see=SEE_LOSS,
)


# ---------------------------------------------------------------- classifier_guided_eps


def _guided_batch(seed: int = 0, shape=(4, 1, 3, 3), t=(3, 15, 30, 48)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    eps = torch.randn(shape, generator=g)
    labels = torch.tensor([0, 2, 4, 1, 3, 0][: shape[0]])
    return x, eps, torch.tensor(t[: shape[0]]), labels


def _gradient(clf, x, t, labels, of: str = "log_p") -> torch.Tensor:
    x_in = x.detach().requires_grad_(True)
    logits = clf(x_in, t)
    if of == "log_p":
        value = F.log_softmax(logits, -1).gather(1, labels[:, None]).sum()
    elif of == "logit":
        value = logits.gather(1, labels[:, None]).sum()
    elif of == "p":
        value = F.softmax(logits, -1).gather(1, labels[:, None]).sum()
    elif of == "all_columns":  # log_p[:, labels]: every example's log p of every asked class
        value = F.log_softmax(logits, -1)[:, labels].sum()
    elif of == "dim0":  # the log-softmax over the batch instead of the classes
        value = F.log_softmax(logits, 0).gather(1, labels[:, None]).sum()
    else:  # the mean over the batch
        value = F.log_softmax(logits, -1).gather(1, labels[:, None]).mean()
    return torch.autograd.grad(value, x_in)[0]


def _guided_values(scale: float) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        schedule = _schedule()
        x, eps, t, labels = _guided_batch()
        clf = _Classifier(x[0].numel())
        ab = schedule.at(schedule.alpha_bar, t, x)
        sigma = (1 - ab) ** 0.5
        grad = _gradient(clf, x, t, labels)
        sigma_before = (1 - schedule.at(schedule.alpha_bar, t - 1, x)) ** 0.5
        mistakes = [
            Mistake("the gradient was added (or you took the gradient of the cross-entropy, which "
                    "is -log p, and kept the lesson's minus sign): eps points towards the noise, "
                    "against the score (eps = -sqrt(1 - alpha_bar_t) * score), so a step up "
                    "log p(y | x_t) subtracts it from eps.", eps + scale * sigma * grad),
            Mistake("the factor is sqrt(1 - alpha_bar_t); you used 1 - alpha_bar_t, without the "
                    "square root.", eps - scale * sigma ** 2 * grad),
            Mistake("the factor was read at step t - 1; use sqrt(1 - alpha_bar_t) at the t the "
                    "classifier was asked about (schedule.at(schedule.alpha_bar, t, x)).",
                    eps - scale * sigma_before * grad),
            Mistake("you used scale - 1 (the classifier-free habit); in Eq. 14 the classifier's "
                    "gradient is multiplied by the scale s itself.",
                    eps - (scale - 1) * sigma * grad),
            Mistake("log_p[:, labels] picks every asked class for every example (a B x B block), "
                    "so each example is pushed towards all the batch's classes; pick each "
                    "example's own with log_p.gather(1, labels[:, None]) (or "
                    "log_p[torch.arange(B), labels]).",
                    eps - scale * sigma * _gradient(clf, x, t, labels, "all_columns")),
            Mistake("the log_softmax ran over dim=0, across the batch; the probabilities are over "
                    "the classes, dim=-1 (or dim=1).",
                    eps - scale * sigma * _gradient(clf, x, t, labels, "dim0")),
            Mistake("the gradient is a score and eps is not: convert it with the factor the lesson "
                    "gives (eps and the score differ by sqrt(1 - alpha_bar_t)).",
                    eps - scale * grad),
            Mistake("that factor is sqrt(alpha_bar_t); eps and the score differ by "
                    "sqrt(1 - alpha_bar_t).", eps - scale * ab ** 0.5 * grad),
            Mistake("the gradient was divided by sqrt(1 - alpha_bar_t); multiply (eps = "
                    "-sqrt(1 - alpha_bar_t) * score).", eps - scale * grad / sigma),
            Mistake("that is the gradient of the class's logit; guidance needs the gradient of its "
                    "log-probability (log_softmax), which also pushes the other classes down.",
                    eps - scale * sigma * _gradient(clf, x, t, labels, "logit")),
            Mistake("that is the gradient of the probability p(y | x_t); take the gradient of its "
                    "logarithm (it does not vanish where the classifier is already sure).",
                    eps - scale * sigma * _gradient(clf, x, t, labels, "p")),
            Mistake("the log-probabilities were averaged over the batch (F.cross_entropy's "
                    "default reduction='mean' does this), so each example's gradient is divided "
                    "by B; sum them (reduction='sum'): each example's gradient is then its own.",
                    eps - scale * sigma * _gradient(clf, x, t, labels, "mean"), atol=1e-6),
        ]
        got = fn(eps.clone(), clf, x.clone(), t.clone(), labels.clone(), scale, schedule)
        compare(got, classifier_guided_eps(eps, clf, x, t, labels, scale, schedule),
                what=f"the guided eps at scale {scale} (B = 4, t = {t.tolist()}, T = 50)",
                mistakes=mistakes)
    return case


def _guided_under_no_grad(fn: Callable) -> None:
    schedule = _schedule()
    x, eps, t, labels = _guided_batch(seed=1)
    clf = _Classifier(x[0].numel(), 1)
    try:
        with torch.no_grad():
            got = fn(eps, clf, x, t, labels, 2.0, schedule)
    except RuntimeError as e:
        if "grad" not in str(e):
            raise
        raise Mismatch("under torch.no_grad() it raised RuntimeError (" + str(e).split("\n")[0]
                       + "): the samplers run under no_grad, so take the gradient inside "
                       "`with torch.enable_grad():`.") from None
    compare(got, classifier_guided_eps(eps, clf, x, t, labels, 2.0, schedule),
            what="the guided eps under torch.no_grad() (as the samplers call it)")


def _guided_leaves_x(fn: Callable) -> None:
    schedule = _schedule()
    x, eps, t, labels = _guided_batch(seed=2)
    clf = _Classifier(x[0].numel(), 2)
    got = fn(eps, clf, x, t, labels, 2.0, schedule)
    if isinstance(got, torch.Tensor) and got.requires_grad:
        raise Mismatch("the guided eps still requires grad: the gradient is a number to add, not "
                       "a graph to keep; take it with torch.autograd.grad (no create_graph) from "
                       "a detached copy of x.")
    if x.requires_grad or x.grad is not None:
        raise Mismatch("the caller's x now requires grad (or holds a .grad): take the gradient "
                       "with respect to a detached copy, x.detach().requires_grad_(), and leave "
                       "the sampler's x as it was.")


def _guided_any_shape(fn: Callable) -> None:
    schedule = _schedule()
    x, eps, t, labels = _guided_batch(seed=3, shape=(3, 6))
    clf = _Classifier(6, 3)
    try:
        got = fn(eps, clf, x, t, labels, 1.5, schedule)
    except (RuntimeError, IndexError) as e:
        raise Mismatch(f"for vectors x of shape {tuple(x.shape)} it raised {type(e).__name__} "
                       f"({str(e).splitlines()[0]}): it works on images but not on other shapes. "
                       "Shape per-example factors (B, 1, ..., 1) to x (schedule.at does)."
                       ) from None
    compare(got, classifier_guided_eps(eps, clf, x, t, labels, 1.5, schedule),
            what="the guided eps for vectors x of shape (3, 6)",
            otherwise="it works on images but not on other shapes: shape per-example factors "
                      "(B, 1, ..., 1) to x (schedule.at does).")


CLASSIFIER_GUIDED_EPS = Checker(
    "classifier_guided_eps",
    classifier_guided_eps,
    [_guided_values(3.0), _guided_values(0.5), _guided_under_no_grad, _guided_leaves_x,
     _guided_any_shape],
    hints=(
        ("Write the score of p_t(x) p(y | x)^s as a sum of two scores, then turn the whole "
         "thing into eps units with the relation of lesson 02: where does the scale land, and "
         "with which sign?"),
        ("Gradients must be on even under no_grad (torch.enable_grad); differentiate with respect "
         "to a detached copy of x that requires grad; pick each example's own class from the "
         "log-probabilities and sum them; torch.autograd.grad returns the gradient."),
    ),
    see=SEE_GUIDED,
)


# ---------------------------------------------------------------- negative_guided_forward


class _TextNetwork:
    """A stand-in text-conditioned network: a smooth function of x, t and the masked mean of the
    context (so both the context and its mask show in the output). Records its batch sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if getattr(cond, "context_mask", None) is None:
            raise Mismatch("the network got a Cond with no context_mask: a text condition is "
                           "context and context_mask together; stack both (the batch's, then the "
                           "negative's) into the Cond you pass.")
        if cond.context.ndim != 3:
            raise Mismatch(f"the network got a context of shape {tuple(cond.context.shape)} "
                           f"({cond.context.ndim} dims): expand only a 2-D negative (one "
                           "example's, (L, D)) to (B, L, D); one per example is already (B, L, D) "
                           "and is stacked as it is.")
        if cond.context.shape[0] != x.shape[0]:
            rows = cond.context.shape[0]
            joined = (" It is longer along dim 1: you joined the prompts and the negatives "
                      "token by token (torch.cat(..., dim=1)); stack them along dim 0."
                      if rows * 2 == x.shape[0] else
                      " The negative added one row: it holds one example's condition; make B of "
                      "them (expand) before stacking them under the batch's."
                      if rows == x.shape[0] // 2 + 1 else "")
            raise Mismatch(f"the network got {x.shape[0]} images but a context of shape "
                           f"{tuple(cond.context.shape)}: every field is stacked like x, the "
                           "batch's rows then the negative's (torch.cat along dim 0)." + joined)
        m = cond.context_mask.to(x.dtype)[..., None]  # (B, L, 1)
        pooled = (cond.context * m).sum(1) / m.sum(1).clamp_min(1)  # (B, D)
        shape = (-1,) + (1,) * (x.ndim - 1)
        a, b = pooled[:, 0].reshape(shape), pooled[:, 1].reshape(shape)
        return torch.sin(x * (1 + 0.3 * a)) + 0.2 * b + 1e-3 * t.to(x.dtype).reshape(shape)


def _text_batch(seed: int = 0, shape=(4, 3, 2, 2), per_example: bool = True):
    g = torch.Generator().manual_seed(seed)
    B, L, D = shape[0], 5, 4
    x = torch.randn(shape, generator=g)
    t = torch.tensor([5, 200, 500, 900, 50, 700][:B])
    lengths = torch.tensor([2, 5, 3, 4, 1, 5][:B])
    cond = Cond(context=torch.randn(B, L, D, generator=g),
                context_mask=torch.arange(L)[None] < lengths[:, None])
    if per_example:
        neg_lengths = torch.tensor([3, 2, 5, 1, 4, 2][:B])
        negative = Cond(context=torch.randn(B, L, D, generator=g),
                        context_mask=torch.arange(L)[None] < neg_lengths[:, None])
    else:
        negative = Cond(context=torch.randn(L, D, generator=g), context_mask=torch.arange(L) < 3)
    return x, t, cond, negative


def _expand(negative: Cond, B: int) -> Cond:
    if negative.context.ndim == 2:
        return Cond(context=negative.context.expand(B, -1, -1),
                    context_mask=negative.context_mask.expand(B, -1))
    return negative


def _negative_values(scale: float, per_example: bool = True) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        x, t, cond, negative = _text_batch(per_example=per_example)
        B = len(x)
        full = _expand(negative, B)
        c = _TextNetwork()(x, t, cond)
        n = _TextNetwork()(x, t, full)
        n_mask = _TextNetwork()(x, t, Cond(context=full.context, context_mask=cond.context_mask))
        both = torch.cat([c, n])
        a, b = both[0::2], both[1::2]
        stacked = Cond(context=torch.cat([cond.context, full.context]),
                       context_mask=torch.cat([cond.context_mask, full.context_mask]))
        interleaved = {
            "x and t were": (x.repeat_interleave(2, 0), t.repeat_interleave(2, 0)),
            "x was": (x.repeat_interleave(2, 0), torch.cat([t, t])),
            "t was": (torch.cat([x, x]), t.repeat_interleave(2, 0))}
        first = []
        if scale == 0:
            first = [Mistake("at scale 0 the guided prediction is the negative prompt's alone "
                             "(s = 0 keeps none of the prompt's direction); you returned the "
                             "prompt's own prediction.", c)]
        mistakes = first + [
            Mistake("the two halves are swapped: the first B rows of the output are the prediction "
                    "for the batch's own prompts when those come first in the stack.",
                    c + scale * (n - c)),
            Mistake("the negative condition was not used: the second half must carry it, in the "
                    "null condition's place.", c),
            Mistake("you used 1 + s as the factor: the scale s is already Ho & Salimans' 1 + w "
                    "(s = 1 gives the prompt's own prediction).", n + (1 + scale) * (c - n)),
            Mistake("the negative prompt's prediction was subtracted from the prompt's; "
                    "guidance starts from the negative prediction and extrapolates past the "
                    "prompt's, along their difference.", c - scale * n),
            Mistake("the negative prompts kept the batch's padding masks: each condition comes "
                    "with its own mask (context and context_mask travel together).",
                    n_mask + scale * (c - n_mask)),
            Mistake("you split the output by alternate rows, but the two halves were stacked one "
                    "after the other: split the way you stacked.", b + scale * (a - b)),
        ]
        for which, (xs, ts) in interleaved.items():
            mc, mn = _TextNetwork()(xs, ts, stacked).chunk(2)
            mistakes.append(Mistake(
                f"{which} interleaved (repeat_interleave: each row next to its copy) while the "
                "conditions were stacked one half after the other: stack x, t and the conditions "
                "the same way, torch.cat([x, x]) and torch.cat([t, t]).", mn + scale * (mc - mn)))
        try:
            got = fn(_TextNetwork(), x.clone(), t.clone(), cond, negative, scale)
        except (RuntimeError, IndexError) as e:
            if per_example and "dimensions" in str(e):
                raise Mismatch(f"with one negative per example (context "
                               f"{tuple(negative.context.shape)}) it raised {type(e).__name__} "
                               f"({str(e).splitlines()[0]}): expand only a 2-D negative (one "
                               "example's, (L, D)); one per example is already (B, L, D) and is "
                               "stacked as it is.") from None
            if per_example:
                raise
            raise Mismatch(f"with one example's negative condition (context "
                           f"{tuple(negative.context.shape)}, mask "
                           f"{tuple(negative.context_mask.shape)}) it raised "
                           f"{type(e).__name__} ({str(e).splitlines()[0]}): make B of them "
                           "(expand) before stacking them under the batch's.") from None
        how = "one per example" if per_example else "one example's, for the whole batch"
        compare(got, negative_guided_forward(_TextNetwork(), x, t, cond, negative, scale),
                what=f"the guided prediction at scale {scale} with negative prompts {how} "
                     f"(B = {B})", mistakes=mistakes)
    return case


def _negative_own_stacking(fn: Callable) -> None:
    """The stacking is the exercise: lesson 08's guided_forward or pair_with_null would do it."""
    from diffuse_edu.diffusion import guidance
    from diffuse_edu.exercises import _names_used

    fn = getattr(fn, "__wrapped__", fn)  # the learner's own function, not the checker's watch
    code, scope = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    if code is None:
        return
    cells = [c.cell_contents for c in (fn.__closure__ or ()) if _filled(c)]
    for name in ("guided_forward", "pair_with_null"):
        ref = getattr(guidance, name)
        used = _names_used(code)
        if (any(scope.get(n) is ref for n in used) or any(c is ref for c in cells)
                or name in used and any(n.endswith("guidance") for n in used)):
            raise Mismatch(f"it calls lesson 08's {name} (diffuse_edu.diffusion.guidance), which "
                           "does the stacking this exercise asks you to write: stack the prompts "
                           "and the negatives yourself (context and context_mask, expanding a "
                           "one-example negative), run one call, split and combine.")


def _negative_one_pass(fn: Callable) -> None:
    x, t, cond, negative = _text_batch(seed=1)
    net = _TextNetwork()
    fn(net, x, t, cond, negative, 3.0)
    if net.calls != [2 * len(x)]:
        raise Mismatch(f"the network was called with batch sizes {net.calls}; stack the batch "
                       "and its copy with the negative condition and run one call of 2B = "
                       f"{2 * len(x)} examples, as lesson 08's guided_forward does.")


def _negative_any_shape(fn: Callable) -> None:
    x, t, cond, negative = _text_batch(seed=2, shape=(3, 6))
    compare(fn(_TextNetwork(), x, t, cond, negative, 2.0),
            negative_guided_forward(_TextNetwork(), x, t, cond, negative, 2.0),
            what="the guided prediction for vectors x of shape (3, 6)",
            otherwise="it works on images but not on other shapes.")


NEGATIVE_GUIDED_FORWARD = Checker(
    "negative_guided_forward",
    negative_guided_forward,
    [_negative_own_stacking, _negative_values(3.0), _negative_values(0.0),
     _negative_values(2.0, per_example=False), _negative_one_pass, _negative_any_shape],
    hints=(
        ("What does the network need to see, row by row, to give both predictions in one call? "
         "Count the rows of x, t, context and context_mask you hand it."),
        ("A one-example negative has no batch axis (its context is 2-D): tell the two forms "
         "apart by ndim. Which half of the output is which follows from the order you stacked."),
    ),
    see=SEE_NEGATIVE,
)


# ---------------------------------------------------------------- bracketing_scales


def _as_bracket(got: object, what: str) -> tuple | None:
    if got is None:
        return None
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Mismatch(f"{what} returned {got!r}; return (lo, hi, w), the two scales and the "
                       "weight of hi, or None where no neighbouring pair brackets the target.")
    try:
        return float(got[0]), float(got[1]), float(got[2])
    except (TypeError, ValueError):
        raise Mismatch(f"{what} returned {got!r}; lo, hi and w are numbers (two scales and a "
                       "weight).") from None


def _neighbours(order: list, pair: tuple) -> bool:
    return any((a, b) == pair for a, b in zip(order, order[1:]))


def _bracket_diagnosis(adherence: dict, target: float, got: tuple | None,
                       want: tuple | None) -> str:
    """What a wrong (lo, hi, w) says about the answer that gave it."""
    values = sorted(adherence.values())
    if got is None:
        if target in values:
            return ("a measured adherence equal to the target did not count (114 of 120 samples is "
                    "0.95); bracket with <=, so that a scale on the target is found.")
        a, b = adherence[want[0]], adherence[want[1]]
        return (f"scales {want[0]:g} and {want[1]:g} (adherence {a:g} and {b:g}) bracket "
                f"{target:g}" + (": a falling pair counts too (a curve may dip), so test the "
                                 "target against min and max of the two." if a > b else "."))
    lo, hi, w = got
    if want is None:
        if not 0 <= w <= 1:
            return (f"w = {w:.4g} lies outside [0, 1]: it extrapolates past the measured scales. "
                    f"No neighbouring pair brackets {target:g} (the adherences run from "
                    f"{values[0]:g} to {values[-1]:g}): return None.")
        return (f"no measured scale reaches {target:g} (the adherences run from {values[0]:g} to "
                f"{values[-1]:g}), and the nearest one stands in for it; return None (the lesson "
                "then leaves that seed out and says so).")
    if (lo, hi) == want[:2]:
        if abs(w - (1 - want[2])) < 1e-6:
            return (f"w = {w:.4g} is the weight of the smaller scale: w is the weight of hi, "
                    "(target - adherence[lo]) / (adherence[hi] - adherence[lo]), so that "
                    "(1 - w) a(lo) + w a(hi) is the target.")
        if abs(w - (lo + want[2] * (hi - lo))) < 1e-6:
            return (f"w = {w:.4g} is a scale between lo and hi: return the weight w in [0, 1], "
                    "not the interpolated scale (adherence is what is held equal).")
        return f"the pair is right, but w should be {want[2]:.4g}."
    if (hi, lo) == want[:2]:
        return "give the pair smallest scale first, (lo, hi), with w the weight of hi."
    scales = sorted(adherence)
    by_adherence = [s for s, _ in sorted(adherence.items(), key=lambda kv: kv[1])]
    if _neighbours(scales, (lo, hi)):
        return ("that pair brackets the target too, but it is not the first; return the first "
                "neighbouring pair, the smallest scales that reach the target (stop there).")
    if _neighbours(by_adherence, (lo, hi)) or _neighbours(by_adherence, (hi, lo)):
        return ("the adherences were sorted (as np.interp needs), which pairs scales that are not "
                "neighbours where the curve dips; walk the scales in increasing order and test "
                "each neighbouring pair.")
    if _neighbours(list(adherence), (lo, hi)):
        return ("the pairs were taken in the dictionary's order; sort the scales first "
                "(sorted(adherence)) and pair each with the next larger one.")
    return f"expected {want}."


def _bracket_case(adherence: dict, target: float) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        what = f"bracketing_scales({adherence}, {target})"
        try:
            got = _as_bracket(fn(dict(adherence), target), what)
        except ZeroDivisionError:
            raise Mismatch(f"{what} divided by zero: two neighbouring scales have the same "
                           "adherence; where both equal the target, w = 0 (the smaller scale), "
                           "so test a == b before dividing.") from None
        want = bracketing_scales(adherence, target)
        if got is None and want is None:
            return
        if got is not None and want is not None and got[:2] == want[:2] and abs(
                got[2] - want[2]) < 1e-6:
            return
        raise Mismatch(f"{what} returned {got}: "
                       + _bracket_diagnosis(adherence, target, got, want))
    return case


BRACKETING_SCALES = Checker(
    "bracketing_scales",
    bracketing_scales,
    [
        _bracket_case({1.0: 0.8, 2.0: 0.9, 3.0: 0.95}, 0.85),  # half way between 1 and 2
        _bracket_case({3.0: 0.95, 1.0: 0.8, 2.0: 0.9}, 0.925),  # the scales in any order
        _bracket_case({1.0: 0.8, 2.0: 0.9, 3.0: 0.93}, 0.95),  # no scale reaches the target
        _bracket_case({1.0: 0.86, 2.0: 0.93}, 0.8),  # the smallest scale is already past it
        _bracket_case({1.0: 0.8, 2.0: 0.96, 3.0: 0.93, 4.0: 0.97}, 0.95),  # a dip: first crossing
        _bracket_case({1.0: 0.8, 2.0: 0.93, 3.0: 0.96, 4.0: 0.9}, 0.95),  # a dip after the target
        _bracket_case({10.0: 0.9, 20.0: 114 / 120, 30.0: 0.97}, 0.95),  # a scale on the target
        _bracket_case({1.0: 0.95, 2.0: 0.95}, 0.95),  # both on the target: w = 0
        _bracket_case({1.0: 0.97, 2.0: 0.93}, 0.95),  # a falling pair brackets it too
    ],
    hints=(
        ("Walk the scales from the smallest up and look at each neighbouring pair: when does a "
         "pair's measured adherence span the target? What should come back when no pair does?"),
        ("Solve (1 - w) a_lo + w a_hi = target for w; min/max of the pair's two adherences lets a "
         "falling pair count too, and a pair of equal adherences needs w = 0 before you divide."),
    ),
    see=SEE_BRACKET,
)
