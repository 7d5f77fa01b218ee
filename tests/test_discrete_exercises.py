"""Lesson 17's checkers: the library's answers pass, and typical wrong answers (at least seven per
exercise) each get their own message. tests/test_exercises.py counts these lists
(_LISTED_ELSEWHERE)."""

import pytest
import torch
import torch.nn.functional as F

from diffuse_edu.diffusion import discrete as dd
from diffuse_edu.exercises import as_learners, run_checker
from diffuse_edu.exercises.discrete import MASK_TOKENS, MASKED_DIFFUSION_LOSS, UNMASK_STEP

learners = as_learners  # the reference as a learner's own copy (the library's own is refused)


# --- mask_tokens ------------------------------------------------------------------------------
def _mask(*, prob=lambda s, t: 1 - s.alpha(t), above=False, fill=None, reshape=True,
          own_noise=False):
    def mask_tokens(x0, t, u, mask_id, schedule):
        p = prob(schedule, t)
        p = p[:, None] if reshape else p[None, :]
        draws = torch.rand(x0.shape) if own_noise else u
        where = draws > p if above else draws < p
        return torch.where(where, torch.full_like(x0, mask_id if fill is None else fill), x0)
    return mask_tokens


def _mask_nothing(x0, t, u, mask_id, schedule):
    return x0.clone()


MASK_WRONG = [
    (_mask(prob=lambda s, t: s.alpha(t)), "alpha(t) is the probability that a token is KEPT"),
    (_mask(above=True), "not where u > ..."),
    (_mask(fill=0), "not 0 (0 is a data token)"),
    (_mask(fill=-1), "not -1"),
    (_mask(prob=lambda s, t: t), "t itself is that probability only for the linear"),
    (_mask(reshape=False), "give the probability shape (B, 1)"),
    (_mask(own_noise=True), "draw no random numbers yourself"),
    (_mask_nothing, "does not match the lesson's forward process"),
    (_mask(prob=lambda s, t: s.alpha(t), above=True), "yours masks where u > alpha(t)"),
    (lambda x0, t, u, mask_id, s: torch.where(u < (1 - s.alpha(t))[:, None], x0.max() + 1, x0),
     "not x0.max() + 1"),
    (lambda x0, t, u, mask_id, s: torch.where(u < (1 - s.alpha(t))[:, None], 2, x0),
     "not the notebook's global MASK = 2"),
]


def test_mask_tokens_at_the_ends():
    def never_all(x0, t, u, mask_id, schedule):  # masks with probability (1 - alpha) / 2
        return torch.where(u < (1 - schedule.alpha(t))[:, None] / 2 + 2, mask_id, x0)
    verdict = run_checker(never_all, MASK_TOKENS)
    assert verdict.status == "failed"
    ends = dd.mask_tokens  # right on random t, wrong at t = 0 and t = 1

    def off_at_ends(x0, t, u, mask_id, schedule):
        out = ends(x0, t, u, mask_id, schedule)
        return torch.where(t[:, None] >= 1, x0, out)
    only_ends = run_checker(off_at_ends, MASK_TOKENS)
    assert only_ends.status == "failed" and "alpha(1) = 0" in only_ends.message, only_ends.message


# --- masked_diffusion_loss --------------------------------------------------------------------
def _loss(*, weight=lambda s, t: -s.alpha_prime(t) / (1 - s.alpha(t)), where="masked",
          reduce="sum", raw=False,
          scalar=False):
    def masked_diffusion_loss(logits, x0, xt, t, mask_id, schedule):
        if raw:
            nll = -logits.gather(-1, x0[..., None])[..., 0]
        else:
            nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        m = {"masked": (xt == mask_id), "kept": (xt != mask_id),
             "all": torch.ones_like(xt, dtype=torch.bool)}[where].float()
        total = (nll * m).sum(1)
        if reduce == "mean":
            total = total / m.sum(1).clamp_min(1)
        out = weight(schedule, t) * total
        return out.mean() if scalar else out
    return masked_diffusion_loss


LN2 = torch.log(torch.tensor(2.0))


def _loss_per_token(unit):
    def masked_diffusion_loss(logits, x0, xt, t, mask_id, schedule):
        nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        w = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))
        return w * (nll * (xt == mask_id)).sum(1) / (x0.shape[1] * unit)
    return masked_diffusion_loss


def _loss_minus_forgotten(logits, x0, xt, t, mask_id, schedule):
    logp = logits.log_softmax(-1).gather(-1, x0[..., None])[..., 0]
    w = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))
    return w * (logp * (xt == mask_id)).sum(1)


def _loss_probability(logits, x0, xt, t, mask_id, schedule):
    p = logits.softmax(-1).gather(-1, x0[..., None])[..., 0]
    w = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))
    return w * (-p * (xt == mask_id)).sum(1)


def _loss_crash(kind):
    def masked_diffusion_loss(logits, x0, xt, t, mask_id, schedule):
        w = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))
        masked = (xt == mask_id).float()
        if kind == "no_transpose":
            nll = F.cross_entropy(logits, x0, reduction="none")
        elif kind == "target_xt":
            nll = F.cross_entropy(logits.transpose(1, 2), xt, reduction="none")
        elif kind == "gather_no_dim":
            nll = -logits.log_softmax(-1).gather(-1, x0)
        else:
            nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
            return (w * nll * masked).sum(1)
        return w * (nll * masked).sum(1)
    return masked_diffusion_loss


LOSS_WRONG = [
    (_loss(weight=lambda s, t: torch.ones_like(t)),
     "weight -alpha'(t) / (1 - alpha(t)) is missing"),
    (_loss(where="all"), "over the MASKED positions only"),
    (_loss(where="kept"), "yours sums over the kept ones"),
    (_loss(reduce="mean"), "yours averages it over them"),
    (_loss(weight=lambda s, t: s.alpha_prime(t) / (1 - s.alpha(t))), "your loss is negative"),
    (_loss(raw=True), "the logits need a log_softmax"),
    (_loss(weight=lambda s, t: -s.alpha_prime(t) / s.alpha(t)), "yours divides by alpha(t)"),
    (_loss(weight=lambda s, t: 1 / (1 - t)), "that is 1 / (1 - t), where the weight is 1 / t"),
    (_loss(weight=lambda s, t: 1 / t), "1 / t is the linear schedule's only"),
    (_loss(weight=lambda s, t: 1 / (1 - s.alpha(t))), "without alpha'(t)"),
    (_loss_per_token(1.0), "yours divides by L."),
    (_loss_per_token(LN2), "yours divides by L ln 2"),
    (_loss_minus_forgotten, "your loss is negative"),
    (_loss_probability, "yours used the probability"),
    (_loss_crash("no_transpose"), "wants the classes on dim 1"),
    (_loss_crash("target_xt"), "target is x0"),
    (_loss_crash("gather_no_dim"), "gather along the vocabulary"),
    (_loss_crash("weight_b"), "w[:, None]"),
    (_loss(scalar=True), "returned one number"),
]


def _loss_detached(logits, x0, xt, t, mask_id, schedule):
    return dd.masked_diffusion_loss(logits, x0, xt, t, mask_id, schedule).detach()


# --- unmask_step ------------------------------------------------------------------------------
def _step(*, only_masked=True, largest=True, argmax=False, all_at_once=False, conf="drawn",
          swap_orders=False):
    def unmask_step(x, logits, k, mask_id, order, gumbel, u):
        masked = x == mask_id
        drawn = logits.argmax(-1) if argmax else (logits + gumbel).argmax(-1)
        if all_at_once:
            return torch.where(masked, drawn, x)
        use_u = (order == "random") != swap_orders
        logp = logits.log_softmax(-1)
        if use_u:
            prio = u
        elif conf == "drawn":
            prio = logp.gather(-1, drawn[..., None])[..., 0]
        elif conf == "logit":
            prio = logits.gather(-1, drawn[..., None])[..., 0]
        else:
            prio = logp.max(-1).values
        if only_masked:
            prio = prio.masked_fill(~masked, float("-inf") if largest else float("inf"))
        idx = prio.topk(k, dim=1, largest=largest).indices
        chosen = torch.zeros_like(masked).scatter(1, idx, True)
        return torch.where(chosen, drawn, x)
    return unmask_step


def _step_priority_zero(x, logits, k, mask_id, order, gumbel, u):
    drawn = (logits + gumbel).argmax(-1)
    prio = u if order == "random" else logits.log_softmax(-1).gather(-1, drawn[..., None])[..., 0]
    prio = prio.masked_fill(x != mask_id, 0.0)
    chosen = torch.zeros_like(x, dtype=torch.bool).scatter(1, prio.topk(k, dim=1).indices, True)
    return torch.where(chosen, drawn, x)


def _step_own_noise(x, logits, k, mask_id, order, gumbel, u):
    own = -torch.log(-torch.log(torch.rand(gumbel.shape)))
    return dd.unmask_step(x, logits, k, mask_id, order, own, u)


def _step_one_more(x, logits, k, mask_id, order, gumbel, u):
    return dd.unmask_step(x, logits, k + 1, mask_id, order, gumbel, u)


def _step_minus_gumbel(x, logits, k, mask_id, order, gumbel, u):
    return dd.unmask_step(x, logits, k, mask_id, order, -gumbel, u)


STEP_WRONG = [
    (_step(only_masked=False), "a token already revealed keeps its value"),
    (_step(largest=False), "yours took the lowest"),
    (_step(argmax=True), "yours took the argmax of the logits"),
    (_step(all_at_once=True), "reveal only k of them this step"),
    (_step(conf="logit"), "raw logits are not comparable"),
    (_step(conf="max"), "not of the likeliest token there"),
    (_step(swap_orders=True), "ranked by the model's confidence"),
    (_step_priority_zero, "priority -inf, not 0"),
    (_step_own_noise, "draw no random numbers yourself"),
    (_step_one_more, "reveal exactly k = 2 positions in every row; yours revealed [3, 3, 3]"),
    (_step_minus_gumbel, "draw with the Gumbel noise you are given"),
]


def test_step_with_orders_swapped_only_for_confidence():
    """Confidence ranked by u (the random order's priority) is named as such."""
    def confidence_by_u(x, logits, k, mask_id, order, gumbel, u):
        return dd.unmask_step(x, logits, k, mask_id, "random", gumbel, u)
    verdict = run_checker(confidence_by_u, UNMASK_STEP)
    assert verdict.status == "failed" and "ranked by the random draws u" in verdict.message


# --- every checker --------------------------------------------------------------------------
ALL = ([(MASK_TOKENS, w, e) for w, e in MASK_WRONG]
       + [(MASKED_DIFFUSION_LOSS, w, e) for w, e in LOSS_WRONG]
       + [(UNMASK_STEP, w, e) for w, e in STEP_WRONG])
CHECKERS = [MASK_TOKENS, MASKED_DIFFUSION_LOSS, UNMASK_STEP]


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.name)
def test_the_library_answer_passes_as_a_learners(checker):
    verdict = run_checker(learners(checker.reference), checker)
    assert verdict.status == "passed", verdict.message


@pytest.mark.parametrize("checker, wrong, expected", ALL,
                         ids=[f"{c.name}-{i}" for i, (c, _, _) in enumerate(ALL)])
def test_a_typical_wrong_answer_gets_its_own_message(checker, wrong, expected):
    verdict = run_checker(wrong, checker)
    assert verdict.status == "failed" and expected in verdict.message, verdict.message


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.name)
def test_every_checker_names_at_least_seven_mistakes_and_hints_progressively(checker):
    messages = [e for c, _, e in ALL if c is checker]
    assert len(messages) >= 7 and not any("off by up to" in m for m in messages)
    assert (len(checker.hints) >= 2 and checker.hints[0] != checker.hints[1]
            and checker.see.startswith("lesson 17"))


def test_a_loss_cut_off_from_autograd_is_caught():
    verdict = run_checker(_loss_detached, MASKED_DIFFUSION_LOSS)
    assert verdict.status == "failed" and "no gradient" in verdict.message


def test_an_unfinished_exercise_is_todo():
    def mask_tokens(x0, t, u, mask_id, schedule):
        raise NotImplementedError
    assert run_checker(mask_tokens, MASK_TOKENS).status == "unfinished"


def test_changing_the_tokens_in_place_is_caught():
    def mask_tokens(x0, t, u, mask_id, schedule):
        x0[u < (1 - schedule.alpha(t))[:, None]] = mask_id
        return x0
    verdict = run_checker(mask_tokens, MASK_TOKENS)
    assert verdict.status == "failed" and "in place" in verdict.message
