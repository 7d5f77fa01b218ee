"""Lesson 18's checkers: the library's answers pass, and typical wrong answers (at least seven
per exercise, bracketing_scales's included) each get their own message. tests/test_exercises.py
counts these lists (_LISTED_ELSEWHERE)."""


import pytest
import torch
import torch.nn.functional as F

from diffuse_edu.diffusion import classifier_guidance as cg
from diffuse_edu.diffusion.forward_process import q_sample
from diffuse_edu.diffusion.guidance import guided_forward, pair_with_null
from diffuse_edu.exercises import as_learners, run_checker
from diffuse_edu.exercises.control_guidance import (
    BRACKETING_SCALES,
    CLASSIFIER_GUIDED_EPS,
    NEGATIVE_GUIDED_FORWARD,
    NOISY_CLASSIFIER_LOSS,
)
from diffuse_edu.models.conditioning import Cond

learners = as_learners  # the reference as a learner's own copy (the library's own is refused)


# --- noisy_classifier_loss ------------------------------------------------------------------------
def _loss(*, low=1, high_plus=1, t_first=True, clean=False, mix="sqrt", reduce="mean",
          zero_t=False, floats=False, detach=False, global_rng=False, on_device=True,
          one_t=False, scalar_t=False, head="ce"):
    def noisy_classifier_loss(classifier, x0, labels, schedule, *, generator=None):
        g = None if global_rng else generator
        B, T = x0.shape[0], schedule.T
        where = dict(device=x0.device) if on_device else {}
        if t_first:
            t = torch.randint(low, T + high_plus, (1,) if one_t else (B,), generator=g, **where)
            eps = torch.randn(x0.shape, generator=g, **where)
        else:
            eps = torch.randn(x0.shape, generator=g, **where)
            t = torch.randint(low, T + high_plus, (B,), generator=g, **where)
        t = t.expand(B) if one_t else t
        table = schedule.alphas if mix == "alphas" else schedule.alpha_bar
        ab = schedule.at(table, t, x0)
        x_t = (q_sample(x0, t, schedule, eps) if mix == "sqrt"
               else ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps if mix == "alphas"
               else ab * x0 + (1 - ab) * eps)
        seen = torch.zeros_like(t) if zero_t else (t.float() if floats else t)
        logits = classifier(x0 if clean else x_t, seen[0] if scalar_t else seen)
        if head == "softmax":
            logits = F.softmax(logits, -1)
        if head == "nll":
            loss = F.nll_loss(logits, labels)
        else:
            loss = F.cross_entropy(logits, labels, reduction=reduce)
        return loss.detach() if detach else loss
    return noisy_classifier_loss


LOSS_WRONG = [
    (_loss(clean=True), "the classifier saw the clean images"),
    (_loss(low=0, high_plus=0), "t was drawn from 0..T-1"),
    (_loss(t_first=False), "the noise was drawn before t"),
    (_loss(mix="plain"), "the weights are their square roots"),
    (_loss(reduce="sum"), "the cross-entropy was summed over the batch"),
    (_loss(zero_t=True), "the classifier was given t = 0 for every image"),
    (_loss(floats=True), "t reached the classifier as floats"),
    (_loss(detach=True), "returned a loss with no gradient"),
    (_loss(global_rng=True), "generators seeded alike gave different losses"),
    (_loss(low=0), "t was drawn from 0..T (torch.randint(0, T + 1"),
    (_loss(high_plus=0), "t was drawn from 1..T-1 (torch.randint(1, T, ...)"),
    (_loss(one_t=True), "one t for all its images"),
    (_loss(scalar_t=True), "give it one step per example, t of shape (B,)"),
    (_loss(head="softmax"), "the logits went through softmax before F.cross_entropy"),
    (_loss(head="nll"), "F.nll_loss was given the raw logits"),
    (_loss(mix="alphas"), "x_t was made with schedule.alphas"),
    (_loss(on_device=False), "draw t and eps on x0's device (device=x0.device)"),
]


# --- classifier_guided_eps ------------------------------------------------------------------------
def _guided(*, sign=-1, factor="sigma", of="log_p", reduce="sum", enable=True, detach=True,
            keep_graph=False, minus_one=False, cross_entropy=False):
    def classifier_guided_eps(eps, classifier, x, t, labels, scale, schedule):
        ab = schedule.at(schedule.alpha_bar, t, x)
        factor_ = {"sigma": (1 - ab) ** 0.5, "one": 1.0, "sqrt_ab": ab ** 0.5,
                   "inverse": (1 - ab) ** -0.5, "no_sqrt": 1 - ab,
                   "before": (1 - schedule.at(schedule.alpha_bar, t - 1, x)) ** 0.5}[factor]
        with torch.enable_grad() if enable else torch.no_grad():
            x_in = x.detach().requires_grad_(True) if detach else x.requires_grad_(True)
            logits = classifier(x_in, t)
            if cross_entropy:  # -log p, kept with the lesson's minus sign
                value = F.cross_entropy(logits, labels, reduction=reduce)
            elif of == "all_columns":
                value = F.log_softmax(logits, -1)[:, labels].sum()
            else:
                picked = {"log_p": F.log_softmax(logits, -1), "logit": logits,
                          "p": F.softmax(logits, -1),
                          "dim0": F.log_softmax(logits, 0)}[of].gather(1, labels[:, None])
                value = picked.sum() if reduce == "sum" else picked.mean()
            grad = torch.autograd.grad(value, x_in, create_graph=keep_graph)[0]
        return eps + sign * (scale - 1 if minus_one else scale) * factor_ * grad
    return classifier_guided_eps


def _guided_no_enable(eps, classifier, x, t, labels, scale, schedule):
    x_in = x.detach().requires_grad_(True)
    value = F.log_softmax(classifier(x_in, t), -1).gather(1, labels[:, None]).sum()
    grad = torch.autograd.grad(value, x_in)[0]
    return eps - scale * (1 - schedule.at(schedule.alpha_bar, t, x)) ** 0.5 * grad


def _guided_flat_factor(eps, classifier, x, t, labels, scale, schedule):
    """The factor read as (B, 1, 1, 1) whatever x's shape: breaks on vectors."""
    sigma = (1 - schedule.alpha_bar.to(x.dtype)[t]) ** 0.5
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        value = F.log_softmax(classifier(x_in, t), -1).gather(1, labels[:, None]).sum()
        grad = torch.autograd.grad(value, x_in)[0]
    return eps - scale * sigma[:, None, None, None] * grad


GUIDED_WRONG = [
    (_guided(sign=1), "the gradient was added"),
    (_guided(factor="one"), "the gradient is a score and eps is not"),
    (_guided(factor="sqrt_ab"), "that factor is sqrt(alpha_bar_t)"),
    (_guided(factor="inverse"), "the gradient was divided by sqrt(1 - alpha_bar_t)"),
    (_guided(of="logit"), "the gradient of the class's logit"),
    (_guided(of="p"), "the gradient of the probability p(y | x_t)"),
    (_guided(reduce="mean"), "averaged over the batch"),
    (_guided_no_enable, "take the gradient inside `with torch.enable_grad():`"),
    (_guided(keep_graph=True), "the guided eps still requires grad"),
    (_guided(detach=False), "the caller's x now requires grad"),
    (_guided_flat_factor, "for vectors x of shape (3, 6)"),
    (_guided(cross_entropy=True), "or you took the gradient of the cross-entropy"),
    (_guided(cross_entropy=True, sign=1, reduce="mean"), "reduction='sum'"),
    (_guided(factor="no_sqrt"), "you used 1 - alpha_bar_t, without the square root"),
    (_guided(factor="before"), "the factor was read at step t - 1"),
    (_guided(minus_one=True), "you used scale - 1"),
    (_guided(of="all_columns"), "log_p[:, labels] picks every asked class"),
    (_guided(of="dim0"), "the log_softmax ran over dim=0"),
]


# --- negative_guided_forward ----------------------------------------------------------------------
def _negative(*, order="cn", use_negative=True, factor=lambda s: s, start="negative",
              own_mask=True, split="halves", passes=1, broadcast=True):
    def negative_guided_forward(model, x, t, cond, negative, scale):
        B = x.shape[0]
        ctx, mask = negative.context, negative.context_mask
        if ctx.ndim == 2:
            if not broadcast:
                ctx, mask = ctx[None], mask[None]
            else:
                ctx, mask = ctx.expand(B, -1, -1), mask.expand(B, -1)
        if not use_negative:
            ctx, mask = cond.context, cond.context_mask
        if not own_mask:
            mask = cond.context_mask
        if passes == 2:
            c = model(x, t, cond)
            n = model(x, t, Cond(context=ctx, context_mask=mask))
        else:
            first, second = ((cond.context, cond.context_mask), (ctx, mask))
            if order == "nc":
                first, second = second, first
            both = model(torch.cat([x, x]), torch.cat([t, t]),
                         Cond(context=torch.cat([first[0], second[0]]),
                              context_mask=torch.cat([first[1], second[1]])))
            c, n = both.chunk(2) if split == "halves" else (both[0::2], both[1::2])
        s = factor(scale)
        return (n + s * (c - n)) if start == "negative" else (c - s * n)
    return negative_guided_forward


def _both(cond, negative, B, dim=0):
    ctx, mask = negative.context, negative.context_mask
    if ctx.ndim == 2:
        ctx, mask = ctx.expand(B, -1, -1), mask.expand(B, -1)
    return (torch.cat([cond.context, ctx], dim), torch.cat([cond.context_mask, mask], dim))


def _negative_borrowed(model, x, t, cond, negative, scale):
    return guided_forward(model, x, t, cond, negative, scale)


def _negative_paired(model, x, t, cond, negative, scale):
    c, n = model(torch.cat([x, x]), torch.cat([t, t]), pair_with_null(cond, negative)).chunk(2)
    return n + scale * (c - n)


def _negative_no_mask(model, x, t, cond, negative, scale):
    ctx, _ = _both(cond, negative, x.shape[0])
    c, n = model(torch.cat([x, x]), torch.cat([t, t]), Cond(context=ctx)).chunk(2)
    return n + scale * (c - n)


def _negative_tokens(model, x, t, cond, negative, scale):
    ctx, mask = _both(cond, negative, x.shape[0], dim=1)
    c, n = model(torch.cat([x, x]), torch.cat([t, t]), Cond(context=ctx,
                                                            context_mask=mask)).chunk(2)
    return n + scale * (c - n)


def _negative_always_expand(model, x, t, cond, negative, scale):
    B = x.shape[0]
    ctx = negative.context.unsqueeze(0).expand(B, *negative.context.shape)
    mask = negative.context_mask.unsqueeze(0).expand(B, *negative.context_mask.shape)
    both = Cond(context=torch.cat([cond.context, ctx]),
                context_mask=torch.cat([cond.context_mask, mask]))
    c, n = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
    return n + scale * (c - n)


def _negative_interleaved(x_too=True):
    def negative_guided_forward(model, x, t, cond, negative, scale):
        ctx, mask = _both(cond, negative, x.shape[0])
        xs = x.repeat_interleave(2, 0) if x_too else torch.cat([x, x])
        out = model(xs, t.repeat_interleave(2, 0), Cond(context=ctx, context_mask=mask))
        c, n = out.chunk(2)
        return n + scale * (c - n)
    return negative_guided_forward


def _negative_imported_inside(model, x, t, cond, negative, scale):
    from diffuse_edu.diffusion.guidance import guided_forward as lesson_08s
    return lesson_08s(model, x, t, cond, negative, scale)


def _negative_prompt_at_zero(model, x, t, cond, negative, scale):
    ctx, mask = _both(cond, negative, x.shape[0])
    c, n = model(torch.cat([x, x]), torch.cat([t, t]), Cond(context=ctx,
                                                            context_mask=mask)).chunk(2)
    return c if scale == 0 else n + scale * (c - n)


NEGATIVE_WRONG = [
    (_negative(order="nc"), "the two halves are swapped"),
    (_negative(use_negative=False), "the negative condition was not used"),
    (_negative(factor=lambda s: 1 + s), "you used 1 + s as the factor"),
    (_negative(start="subtract"), "prediction was subtracted from the prompt's"),
    (_negative(own_mask=False), "kept the batch's padding masks"),
    (_negative(split="alternate"), "you split the output by alternate rows"),
    (_negative(passes=2), "the network was called with batch sizes"),
    (_negative(broadcast=False), "make B of them"),
    (_negative_borrowed, "it calls lesson 08's guided_forward"),
    (_negative_paired, "it calls lesson 08's pair_with_null"),
    (_negative_no_mask, "a Cond with no context_mask"),
    (_negative_tokens, "torch.cat(..., dim=1)"),
    (_negative_always_expand, "expand only a 2-D negative"),
    (_negative_interleaved(), "x and t were interleaved"),
    (_negative_interleaved(x_too=False), "t was interleaved"),
    (_negative_imported_inside, "guided_forward (diffuse_edu.diffusion.guidance), which does"),
    (_negative_prompt_at_zero, "at scale 0 the guided prediction is the negative prompt's alone"),
]


# --- bracketing_scales ---------------------------------------------------------------------------
def _bracket(*, order="scale", strict=False, last=False, rising_only=False, ends=None, guard=True,
             weight="hi", pair="lo-hi"):
    def bracketing_scales(adherence, target):
        items = (sorted(adherence.items(), key=lambda kv: kv[1]) if order == "adherence"
                 else list(adherence.items()) if order == "dict" else sorted(adherence.items()))
        found = None
        for (lo, a), (hi, b) in zip(items, items[1:]):
            low, high = (a, b) if rising_only else (min(a, b), max(a, b))
            if (low < target < high) if strict else (low <= target <= high):
                w = 0.0 if guard and a == b else (target - a) / (b - a)
                w = 1 - w if weight == "lo" else lo + w * (hi - lo) if weight == "scale" else w
                found = ((lo, hi, w) if pair == "lo-hi" else (hi, lo, w) if pair == "hi-lo"
                         else (lo, hi))
                if not last:
                    return found
        if found is None and ends == "nearest":
            s = min(adherence, key=lambda k: abs(adherence[k] - target))
            return s, s, 0.0
        if found is None and ends == "extrapolate":
            (lo, a), (hi, b) = items[-2:] if target > items[-1][1] else items[:2]
            return lo, hi, (target - a) / (b - a)
        return found
    return bracketing_scales


BRACKET_WRONG = [
    (_bracket(ends="nearest"), "the nearest one stands in for it"),
    (_bracket(ends="extrapolate"), "it extrapolates past the measured scales"),
    (_bracket(order="adherence"), "the adherences were sorted (as np.interp needs)"),
    (_bracket(last=True), "it is not the first"),
    (_bracket(order="dict"), "the pairs were taken in the dictionary's order"),
    (_bracket(strict=True), "a measured adherence equal to the target did not count"),
    (_bracket(weight="lo"), "is the weight of the smaller scale"),
    (_bracket(weight="scale"), "is a scale between lo and hi"),
    (_bracket(pair="hi-lo"), "smallest scale first"),
    (_bracket(guard=False), "divided by zero"),
    (_bracket(pair="two"), "return (lo, hi, w)"),
    (_bracket(rising_only=True), "a falling pair counts too"),
]


@pytest.mark.parametrize("checker, fn", [(NOISY_CLASSIFIER_LOSS, cg.noisy_classifier_loss),
                                         (CLASSIFIER_GUIDED_EPS, cg.classifier_guided_eps),
                                         (NEGATIVE_GUIDED_FORWARD, cg.negative_guided_forward),
                                         (BRACKETING_SCALES, cg.bracketing_scales)],
                         ids=lambda v: getattr(v, "name", ""))
def test_the_library_answer_passes(checker, fn):
    verdict = run_checker(learners(fn), checker)
    assert verdict.status == "passed", verdict.message


ALL = ([(NOISY_CLASSIFIER_LOSS, *w) for w in LOSS_WRONG]
       + [(CLASSIFIER_GUIDED_EPS, *w) for w in GUIDED_WRONG]
       + [(NEGATIVE_GUIDED_FORWARD, *w) for w in NEGATIVE_WRONG]
       + [(BRACKETING_SCALES, *w) for w in BRACKET_WRONG])


@pytest.mark.parametrize("checker, wrong, expected", ALL,
                         ids=[f"{c.name}-{e[:30]}" for c, _, e in ALL])
def test_each_typical_mistake_gets_its_own_message(checker, wrong, expected):
    verdict = run_checker(wrong, checker)
    assert verdict.status == "failed", f"{expected!r} passed the checker"
    assert expected in verdict.message, verdict.message


@pytest.mark.parametrize("wrong_list", [LOSS_WRONG, GUIDED_WRONG, NEGATIVE_WRONG, BRACKET_WRONG])
def test_the_messages_are_distinct_and_at_least_seven(wrong_list):
    assert len(wrong_list) >= 7
    assert len({expected for _, expected in wrong_list}) == len(wrong_list)


def test_an_unfinished_exercise_falls_back_to_the_library():
    def negative_guided_forward(model, x, t, cond, negative, scale):
        raise NotImplementedError
    assert run_checker(negative_guided_forward, NEGATIVE_GUIDED_FORWARD).status == "unfinished"


def test_each_see_pointer_names_the_section_its_exercise_is_in():
    """SEE_* names the section of lesson 18 whose heading precedes the exercise's check."""
    import json
    import re
    from pathlib import Path

    from diffuse_edu.exercises import control_guidance as cgx

    path = Path(__file__).parents[1] / "solutions" / "18_control_by_guidance.ipynb"
    section, where = None, {}
    for cell in json.loads(path.read_text())["cells"]:
        text = "".join(cell["source"])
        heading = re.search(r"^## (\d+)\.", text, re.M)
        if cell["cell_type"] == "markdown" and heading:
            section = int(heading.group(1))
        for name in re.findall(r"= check\(\w+, (\w+)\)", text):
            where[name] = section
    assert set(where) == {"NOISY_CLASSIFIER_LOSS", "CLASSIFIER_GUIDED_EPS",
                          "NEGATIVE_GUIDED_FORWARD", "BRACKETING_SCALES"}
    for name, number in where.items():
        assert f"section {number}:" in getattr(cgx, name).see, (name, number,
                                                                getattr(cgx, name).see)
