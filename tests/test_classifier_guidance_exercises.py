"""Lesson 18's checkers: the library's answers pass, and typical wrong answers (at least seven per
exercise) each get their own message. tests/test_exercises.py counts these lists
(_LISTED_ELSEWHERE)."""

import types

import pytest
import torch
import torch.nn.functional as F

from diffuse_edu.diffusion import classifier_guidance as cg
from diffuse_edu.diffusion.forward_process import q_sample
from diffuse_edu.exercises import run_checker
from diffuse_edu.exercises.control_guidance import (
    CLASSIFIER_GUIDED_EPS,
    NEGATIVE_GUIDED_FORWARD,
    NOISY_CLASSIFIER_LOSS,
)
from diffuse_edu.models.conditioning import Cond


def learners(fn):
    """The reference as a learner's own function (a copy: the checker refuses the library's
    itself)."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


# --- noisy_classifier_loss ------------------------------------------------------------------------
def _loss(*, low=1, high_plus=1, t_first=True, clean=False, mix="sqrt", reduce="mean",
          zero_t=False, floats=False, detach=False, global_rng=False):
    def noisy_classifier_loss(classifier, x0, labels, schedule, *, generator=None):
        g = None if global_rng else generator
        B, T = x0.shape[0], schedule.T
        if t_first:
            t = torch.randint(low, T + high_plus, (B,), generator=g)
            eps = torch.randn(x0.shape, generator=g)
        else:
            eps = torch.randn(x0.shape, generator=g)
            t = torch.randint(low, T + high_plus, (B,), generator=g)
        ab = schedule.at(schedule.alpha_bar, t, x0)
        x_t = (q_sample(x0, t, schedule, eps) if mix == "sqrt"
               else ab * x0 + (1 - ab) * eps)
        seen = torch.zeros_like(t) if zero_t else (t.float() if floats else t)
        loss = F.cross_entropy(classifier(x0 if clean else x_t, seen), labels, reduction=reduce)
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
]


# --- classifier_guided_eps ------------------------------------------------------------------------
def _guided(*, sign=-1, factor="sigma", of="log_p", reduce="sum", enable=True, detach=True,
            keep_graph=False):
    def classifier_guided_eps(eps, classifier, x, t, labels, scale, schedule):
        ab = schedule.at(schedule.alpha_bar, t, x)
        factor_ = {"sigma": (1 - ab) ** 0.5, "one": 1.0, "sqrt_ab": ab ** 0.5,
                   "inverse": (1 - ab) ** -0.5}[factor]
        with torch.enable_grad() if enable else torch.no_grad():
            x_in = x.detach().requires_grad_(True) if detach else x.requires_grad_(True)
            logits = classifier(x_in, t)
            picked = {"log_p": F.log_softmax(logits, -1), "logit": logits,
                      "p": F.softmax(logits, -1)}[of].gather(1, labels[:, None])
            value = picked.sum() if reduce == "sum" else picked.mean()
            grad = torch.autograd.grad(value, x_in, create_graph=keep_graph)[0]
        return eps + sign * scale * factor_ * grad
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


NEGATIVE_WRONG = [
    (_negative(order="nc"), "the two halves are swapped"),
    (_negative(use_negative=False), "the negative condition was not used"),
    (_negative(factor=lambda s: 1 + s), "you used 1 + s as the factor"),
    (_negative(start="subtract"), "prediction was subtracted from the prompt's"),
    (_negative(own_mask=False), "kept the batch's padding masks"),
    (_negative(split="alternate"), "you split the output by alternate rows"),
    (_negative(passes=2), "the network was called with batch sizes"),
    (_negative(broadcast=False), "make B of them"),
]


@pytest.mark.parametrize("checker, fn", [(NOISY_CLASSIFIER_LOSS, cg.noisy_classifier_loss),
                                         (CLASSIFIER_GUIDED_EPS, cg.classifier_guided_eps),
                                         (NEGATIVE_GUIDED_FORWARD, cg.negative_guided_forward)],
                         ids=lambda v: getattr(v, "name", ""))
def test_the_library_answer_passes(checker, fn):
    verdict = run_checker(learners(fn), checker)
    assert verdict.status == "passed", verdict.message


ALL = ([(NOISY_CLASSIFIER_LOSS, *w) for w in LOSS_WRONG]
       + [(CLASSIFIER_GUIDED_EPS, *w) for w in GUIDED_WRONG]
       + [(NEGATIVE_GUIDED_FORWARD, *w) for w in NEGATIVE_WRONG])


@pytest.mark.parametrize("checker, wrong, expected", ALL,
                         ids=[f"{c.name}-{e[:30]}" for c, _, e in ALL])
def test_each_typical_mistake_gets_its_own_message(checker, wrong, expected):
    verdict = run_checker(wrong, checker)
    assert verdict.status == "failed", f"{expected!r} passed the checker"
    assert expected in verdict.message, verdict.message


@pytest.mark.parametrize("wrong_list", [LOSS_WRONG, GUIDED_WRONG, NEGATIVE_WRONG])
def test_the_messages_are_distinct_and_at_least_seven(wrong_list):
    assert len(wrong_list) >= 7
    assert len({expected for _, expected in wrong_list}) == len(wrong_list)


def test_an_unfinished_exercise_falls_back_to_the_library():
    def negative_guided_forward(model, x, t, cond, negative, scale):
        raise NotImplementedError
    assert run_checker(negative_guided_forward, NEGATIVE_GUIDED_FORWARD).status == "unfinished"
