"""Checkers for lesson 18: the noise-aware classifier's loss, the classifier-guided noise
prediction and classifier-free guidance with a negative condition."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from diffuse_edu.diffusion.classifier_guidance import (
    classifier_guided_eps,
    negative_guided_forward,
    noisy_classifier_loss,
)
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, require_gradient
from diffuse_edu.models.conditioning import Cond

SEE_LOSS = "lesson 18, section 1: the classifier's loss (Dhariwal & Nichol 2021, Sec. 4)"
SEE_GUIDED = "lesson 18, section 2: the guided noise prediction (Dhariwal & Nichol 2021, Eq. 14)"
SEE_NEGATIVE = "lesson 18, section 4: the negative prompt in the null condition's place"


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
        self.ts.append(t.detach().clone())
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

    def ce(x, t, reduction="mean"):
        return F.cross_entropy(clf(x, t), labels, reduction=reduction).detach()

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
    if seen.min() < 1 or seen.max() > schedule.T or seen.unique().numel() != schedule.T:
        raise Mismatch(f"over 6 batches of 64 with T = {schedule.T} the classifier saw t in "
                       f"{sorted(seen.unique().tolist())}; it must see every step of 1..T, and "
                       "only those.")


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
    [_loss_reproducible_and_trainable, _loss_values, _loss_times],
    hints=(
        ("The classifier must work where guidance will ask it: on noised images, at every noise "
         "level, knowing which. So each example gets its own t, and is noised to it."),
        ("Draw t, then eps, from the generator; x_t as in lesson 01 (q_sample is imported); the "
         "classifier takes (x_t, t); the usual classification loss, averaged."),
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
        mistakes = [
            Mistake("the gradient was added: eps points towards the noise, against the score "
                    "(eps = -sqrt(1 - alpha_bar_t) * score), so a step up log p(y | x_t) "
                    "subtracts it from eps.", eps + scale * sigma * grad),
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
            Mistake("the log-probabilities were averaged over the batch, so each example's "
                    "gradient is divided by B; sum them (each example's gradient is then its own).",
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
        ("Three pieces: the gradient of log p(y | x_t, t) with respect to x_t, the factor that "
         "turns a score into eps units, and the sign (eps points away from the data)."),
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
        mistakes = [
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
        try:
            got = fn(_TextNetwork(), x.clone(), t.clone(), cond, negative, scale)
        except (RuntimeError, IndexError) as e:
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
    [_negative_values(3.0), _negative_values(0.0), _negative_values(2.0, per_example=False),
     _negative_one_pass, _negative_any_shape],
    hints=(
        ("Lesson 08's guided forward pass, with the negative condition where the null one was. "
         "It may hold one example's condition or one per example: make B of them either way."),
        ("Every field of a Cond (context and context_mask) is stacked: the batch's, then the "
         "negative's; one call; split the output as you stacked it; combine as in lesson 08."),
    ),
    see=SEE_NEGATIVE,
)
