"""Checkers for lesson 17: the masking forward process, the masked diffusion loss (the
continuous-time ELBO's weighted cross-entropy) and the unmasking step of the sampler (random and
most-confident-first orders).

Conventions (:mod:`diffuse_edu.diffusion.discrete`): tokens (B, L) int64 in 0 .. V - 1, [MASK] the
id ``mask_id``; a schedule's ``alpha(t)`` is the probability that a token is kept at time t.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuse_edu.diffusion.discrete import (
    COSINE,
    LINEAR,
    MaskSchedule,
    mask_tokens,
    masked_diffusion_loss,
    unmask_step,
)
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, require_gradient


def _same_twice(fn: Callable, args: Callable[[], tuple], name: str, what: str) -> object:
    """Call ``fn`` twice with fresh copies of the same arguments, the global generator reseeded in
    between: a function that draws its own random numbers gives two different answers."""
    torch.manual_seed(0)
    got = fn(*args())
    torch.manual_seed(1)
    again = fn(*args())
    if (isinstance(got, Tensor) and isinstance(again, Tensor) and got.shape == again.shape
            and not torch.equal(got, again)):
        raise Mismatch(f"two calls of {name} with the same arguments gave different results: "
                       f"{what}")
    return got


# --- 1. the forward process ---------------------------------------------------------------------

def _mask_case(seed: int, batch: int, length: int, vocab: int, schedule: MaskSchedule, *,
               top: int | None = None) -> Callable:
    """``top``: the data tokens drawn below it only (x0 lacks V - 1: catches x0.max() + 1)."""
    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x0 = torch.randint(0, top or vocab, (batch, length), generator=g)
        t = torch.rand(batch, generator=g) * 0.8 + 0.1
        u = torch.rand(batch, length, generator=g)
        mask_id = vocab
        a = schedule.alpha(t)

        def masked_where(where: Tensor, fill: int = mask_id) -> Tensor:
            return torch.where(where, torch.full_like(x0, fill), x0)
        mistakes = [
            Mistake("the masking probability is 1 - alpha(t): alpha(t) is the probability that a "
                    "token is KEPT (alpha(0) = 1 leaves the data as it is).",
                    masked_where(u < a[:, None])),
            Mistake("mask where u < 1 - alpha(t), not where u > ...: the lesson's convention is "
                    "that a token is masked when its uniform draw falls below the masking "
                    "probability.", masked_where(u > (1 - a)[:, None])),
            Mistake("a masked token becomes the [MASK] id mask_id, not 0 (0 is a data token).",
                    masked_where(u < (1 - a)[:, None], 0)),
            Mistake("a masked token becomes the [MASK] id mask_id, not -1: the model embeds it, "
                    "so it must be a valid row of the embedding (mask_id = V).",
                    masked_where(u < (1 - a)[:, None], -1)),
            Mistake("mask where u < 1 - alpha(t); yours masks where u > alpha(t), which masks as "
                    "often but with other draws (the lesson's convention: below 1 - alpha(t)).",
                    masked_where(u > a[:, None])),
        ]
        if int(x0.max()) + 1 != mask_id:
            mistakes.append(Mistake(
                f"use the mask_id you are given (here {mask_id}), not x0.max() + 1: a batch need "
                "not hold every token value.", masked_where(u < (1 - a)[:, None],
                                                            int(x0.max()) + 1)))
        if mask_id != 2:
            mistakes.append(Mistake(
                f"use the argument mask_id (here {mask_id}), not the notebook's global MASK = 2.",
                masked_where(u < (1 - a)[:, None], 2)))
        if schedule.name != "linear":
            mistakes.append(Mistake(
                "the masking probability is 1 - alpha(t) from the schedule you are given "
                "(schedule.alpha(t)); t itself is that probability only for the linear schedule.",
                masked_where(u < t[:, None])))
        if batch == length:  # t unreshaped runs along the positions instead of the examples
            mistakes.append(Mistake(
                "t has shape (B,) and the tokens (B, L): give the probability shape (B, 1) "
                "(t[:, None]) so that each example's t applies along its positions; yours ran "
                "along the positions.", masked_where(u < (1 - a)[None, :])))
        got = _same_twice(fn, lambda: (x0.clone(), t.clone(), u.clone(), mask_id, schedule),
                          "mask_tokens",
                          "use the uniform draws u you are given; draw no random numbers yourself.")
        compare(got, mask_tokens(x0, t, u, mask_id, schedule), mistakes=mistakes,
                what=f"mask_tokens on {batch} sequences of {length} tokens, {schedule.name} "
                     "schedule",
                otherwise="does not match the lesson's forward process (section 1): mask_id where "
                          "u < 1 - alpha(t) of that example, the token of x0 elsewhere.")
    return case


def _mask_extremes(fn: Callable) -> None:
    x0 = torch.randint(0, 3, (2, 5), generator=torch.Generator().manual_seed(3))
    u = torch.rand(2, 5, generator=torch.Generator().manual_seed(4))
    got = fn(x0.clone(), torch.tensor([1e-9, 1.0]), u, 3, LINEAR)
    if isinstance(got, Tensor) and got.shape == x0.shape:
        if not torch.equal(got[0], x0[0]):
            raise Mismatch("mask_tokens at t = 0 changed tokens: alpha(0) = 1, so no token is "
                           "masked and x_0 is the data.")
        if not (got[1] == 3).all():
            raise Mismatch("mask_tokens at t = 1 left tokens unmasked: alpha(1) = 0, so every "
                           "token becomes mask_id.")


MASK_TOKENS = Checker(
    "mask_tokens",
    mask_tokens,
    [_mask_case(1, 4, 4, 5, LINEAR), _mask_case(0, 3, 6, 2, LINEAR),
     _mask_case(2, 3, 7, 4, COSINE), _mask_case(4, 3, 6, 4, LINEAR, top=2), _mask_extremes],
    hints=(
        (
            "Each token is masked on its own, with the probability that its example's time gives; "
            "compare its uniform draw with that probability."
        ),
        (
            "schedule.alpha(t) is the probability of being kept, shape (B,): the masking "
            "probability needs shape (B, 1) to meet u (B, L). torch.where picks mask_id or the "
            "token."
        ),
    ),
    see="lesson 17, section 1: x_t = mask_id where u < 1 - alpha(t), else x0",
)


# --- 2. the objective -------------------------------------------------------------------------

def _loss_inputs(seed: int, batch: int, length: int, vocab: int,
                 schedule: MaskSchedule) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, vocab, (batch, length), generator=g)
    t = torch.rand(batch, generator=g) * 0.8 + 0.1
    xt = mask_tokens(x0, t, torch.rand(batch, length, generator=g), vocab, schedule)
    xt[0, 0] = vocab  # at least one masked
    xt[0, -1] = x0[0, -1]  # and one kept
    logits = torch.randn(batch, length, vocab, generator=g) * 1.5
    return logits, x0, xt, t


class _NoWeight:
    """A schedule without ``weight``: the learner's loss writes the ELBO weight itself."""

    def __init__(self, schedule: MaskSchedule):
        self.name, self.alpha = schedule.name, schedule.alpha
        self.alpha_prime = schedule.alpha_prime


def _explain_loss_crash(fn: Callable, *args) -> object:
    """Call the learner's loss; the usual crashes come back as a Mismatch naming the fix."""
    try:
        return fn(*args)
    except (RuntimeError, IndexError, ValueError) as err:
        text = str(err)
        if "out of bounds" in text:
            raise Mismatch("the cross-entropy's target is x0, the clean tokens: xt holds "
                           "mask_id, which is not one of the V classes.") from err
        if "Expected target size" in text or "expected target" in text.lower():
            raise Mismatch("F.cross_entropy wants the classes on dim 1: pass "
                           "logits.transpose(1, 2) (B, V, L) with the targets x0 (B, L).") from err
        if "Index tensor must have the same number of dimensions" in text:
            raise Mismatch("gather along the vocabulary needs an index with that dim too: "
                           "logits.log_softmax(-1).gather(-1, x0[..., None])[..., 0].") from err
        if "must match the size of tensor" in text:
            raise Mismatch("the weight has shape (B,) and the cross-entropy (B, L): sum over the "
                           "positions first, or multiply by w[:, None].") from err
        raise


def _loss_case(seed: int, batch: int, length: int, vocab: int, schedule: MaskSchedule) -> Callable:
    def case(fn: Callable) -> None:
        logits, x0, xt, t = _loss_inputs(seed, batch, length, vocab, schedule)
        mask_id = vocab
        nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        masked = (xt == mask_id).float()
        kept = 1 - masked
        w = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))
        picked = logits.gather(-1, x0[..., None])[..., 0]
        mistakes = [
            Mistake("the weight -alpha'(t) / (1 - alpha(t)) is missing: without it the loss is "
                    "not the ELBO (the linear schedule's weight is 1 / t).", (nll * masked).sum(1)),
            Mistake("the loss sums the cross-entropy over the MASKED positions only: the kept "
                    "positions are given, and the model is not asked to predict them.",
                    w * nll.sum(1)),
            Mistake("the loss sums over the masked positions of x_t (xt == mask_id); yours sums "
                    "over the kept ones.", w * (nll * kept).sum(1)),
            Mistake("the ELBO sums the masked positions' cross-entropy; yours averages it over "
                    "them (the mean over masked positions loses the count that the weight "
                    "balances).", w * (nll * masked).sum(1) / masked.sum(1).clamp_min(1)),
            Mistake("your loss is negative: the weight -alpha'(t) / (1 - alpha(t)) is positive "
                    "(alpha falls, so alpha'(t) < 0) and the cross-entropy is MINUS "
                    "log softmax(logits)[x0].", -w * (nll * masked).sum(1)),
            Mistake("return nats per sequence: the objective divides by L itself; yours divides "
                    "by L.", w * (nll * masked).sum(1) / length),
            Mistake("return nats per sequence: the objective divides by L (and bits per token "
                    "divide by ln 2 later); yours divides by L ln 2.",
                    w * (nll * masked).sum(1) / (length * torch.log(torch.tensor(2.0)))),
            Mistake("the cross-entropy is -LOG softmax(logits)[x0]; yours used the probability "
                    "softmax(logits)[x0] itself.",
                    w * (-logits.softmax(-1).gather(-1, x0[..., None])[..., 0] * masked).sum(1)),
            Mistake("the cross-entropy is -log softmax(logits)[x0]: the logits need a "
                    "log_softmax (or F.cross_entropy) first.", w * (-picked * masked).sum(1)),
            Mistake("the weight is -alpha'(t) / (1 - alpha(t)); yours divides by alpha(t) (for "
                    "the linear schedule that is 1 / (1 - t), where the weight is 1 / t).",
                    (-schedule.alpha_prime(t) / schedule.alpha(t)) * (nll * masked).sum(1)),
        ]
        if schedule.name != "linear":
            mistakes.append(Mistake(
                "the weight comes from the schedule you are given, -alpha'(t) / (1 - alpha(t)); "
                "1 / t is the linear schedule's only.", (nll * masked).sum(1) / t))
            mistakes.append(Mistake(
                "the weight is -alpha'(t) / (1 - alpha(t)); yours is 1 / (1 - alpha(t)) without "
                "alpha'(t) (the same only for the linear schedule, where -alpha' = 1).",
                (nll * masked).sum(1) / (1 - schedule.alpha(t))))
        what = f"masked_diffusion_loss on {batch} sequences of {length}, {schedule.name} schedule"
        got = _explain_loss_crash(fn, logits.clone(), x0.clone(), xt.clone(), t.clone(), mask_id,
                                  _NoWeight(schedule))
        if isinstance(got, Tensor) and got.ndim == 0:
            raise Mismatch(f"{what} returned one number; return the loss per example, shape (B,) "
                           "(the objective averages over the batch).")
        compare(got, masked_diffusion_loss(logits, x0, xt, t, mask_id, schedule),
                mistakes=mistakes, what=what,
                otherwise="does not match the lesson's loss (section 2): per example, the weight "
                          "-alpha'(t) / (1 - alpha(t)) times the sum over masked positions of "
                          "-log softmax(logits)[x0].")
    return case


def _loss_is_differentiable(fn: Callable) -> None:
    logits, x0, xt, t = _loss_inputs(5, 2, 4, 3, LINEAR)
    logits.requires_grad_(True)
    require_gradient(fn(logits, x0, xt, t, 3, _NoWeight(LINEAR)), "masked_diffusion_loss",
                     "the logits")


MASKED_DIFFUSION_LOSS = Checker(
    "masked_diffusion_loss",
    masked_diffusion_loss,
    [_loss_case(0, 3, 6, 2, LINEAR), _loss_case(1, 2, 5, 4, COSINE), _loss_is_differentiable],
    hints=(
        (
            "Only the masked positions carry a term: the cross-entropy of the true token under the "
            "model's distribution there. Add them up per example, then weight by the schedule's "
            "weight at that example's t."
        ),
        (
            "F.cross_entropy with reduction='none' gives one value per position once the classes "
            "sit on dim 1, as it expects; (xt == mask_id) picks the masked positions. The weight "
            "needs schedule.alpha and schedule.alpha_prime, and is positive."
        ),
    ),
    see="lesson 17, section 2: -alpha'(t) / (1 - alpha(t)) * sum over masked i of -log p(x0_i)",
)


# --- 3. the sampler's step --------------------------------------------------------------------

def _step_inputs(seed: int, batch: int, length: int, vocab: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch, length), generator=g)
    # the same number of masked positions in every row, as in the sampler
    for row in range(batch):
        x[row, torch.randperm(length, generator=g)[: length // 2 + 1]] = vocab
    logits = torch.randn(batch, length, vocab, generator=g) * 2
    gumbel = -torch.log(-torch.log(torch.rand(batch, length, vocab, generator=g)))
    u = torch.rand(batch, length, generator=g)
    return x, logits, gumbel, u


def _reveal(x: Tensor, drawn: Tensor, priority: Tensor, k: int, mask_id: int, *,
            only_masked: bool = True, largest: bool = True) -> Tensor:
    masked = x == mask_id
    if only_masked:
        priority = priority.masked_fill(~masked, float("-inf") if largest else float("inf"))
    idx = priority.topk(k, dim=1, largest=largest).indices
    chosen = torch.zeros_like(masked).scatter(1, idx, True)
    return torch.where(chosen, drawn, x)


def _step_case(seed: int, order: str, k: int) -> Callable:
    def case(fn: Callable) -> None:
        batch, length, vocab = 3, 8, 3
        x, logits, gumbel, u = _step_inputs(seed, batch, length, vocab)
        mask_id = vocab
        drawn = (logits + gumbel).argmax(-1)
        logp = logits.log_softmax(-1)
        conf = logp.gather(-1, drawn[..., None])[..., 0]
        prio = u if order == "random" else conf
        mistakes = [
            Mistake("the revealed positions must be masked ones: a token already revealed keeps "
                    "its value (give the unmasked positions priority -inf before picking the top "
                    "k).", _reveal(x, drawn, prio, k, mask_id, only_masked=False)),
            Mistake("reveal the k HIGHEST-priority masked positions; yours took the lowest.",
                    _reveal(x, drawn, prio, k, mask_id, largest=False)),
            Mistake("the revealed token is drawn from softmax(logits) with the Gumbel noise you "
                    "are given (argmax(logits + gumbel)); yours took the argmax of the logits, "
                    "which always picks the likeliest token.",
                    _reveal(x, logits.argmax(-1), prio if order == "random"
                            else logp.max(-1).values, k, mask_id)),
            Mistake("every masked position revealed at once: reveal only k of them this step.",
                    torch.where(x == mask_id, drawn, x)),
            Mistake("give the revealed positions priority -inf, not 0: the log-probabilities are "
                    "below 0, so a revealed position with priority 0 still wins a place.",
                    _reveal(x, drawn, prio.masked_fill(x != mask_id, 0.0), k, mask_id,
                            only_masked=False)),
        ]
        if order == "confidence":
            mistakes += [
                Mistake("the confidence is the model's log-probability of the token drawn there "
                        "(log_softmax, then gather); raw logits are not comparable between "
                        "positions.", _reveal(x, drawn, logits.gather(-1, drawn[..., None])[..., 0],
                                              k, mask_id)),
                Mistake("the confidence is the probability of the token drawn at the position, "
                        "not of the likeliest token there.",
                        _reveal(x, drawn, logp.max(-1).values, k, mask_id)),
                Mistake("order='confidence' ranks by the model's confidence; yours ranked by "
                        "the random draws u (the random order).", _reveal(x, drawn, u, k,
                                                                            mask_id)),
            ]
        else:
            mistakes.append(Mistake("order='random' ranks the masked positions by the uniform "
                                    "draws u; yours ranked by the model's confidence.",
                                    _reveal(x, drawn, conf, k, mask_id)))
        got = _same_twice(fn, lambda: (x.clone(), logits.clone(), k, mask_id, order,
                                       gumbel.clone(), u.clone()), "unmask_step",
                          "draw with the Gumbel noise and the draws u you are given; draw no "
                          "random numbers yourself.")
        what = f"unmask_step(order={order!r}, k={k}) on {batch} rows of {length}"
        try:
            compare(got, unmask_step(x, logits, k, mask_id, order, gumbel, u), mistakes=mistakes,
                    what=what, otherwise=_STEP_OTHERWISE)
        except Mismatch as err:
            if _STEP_OTHERWISE in str(err):
                _step_structure(got, x, drawn, k, mask_id, what)
            raise
    return case


_STEP_OTHERWISE = ("does not match the lesson's step (section 3): draw argmax(logits + gumbel) "
                   "everywhere, then the k masked positions of highest priority (u, or the drawn "
                   "token's log-probability) take their drawn token.")


def _step_structure(got: Tensor, x: Tensor, drawn: Tensor, k: int, mask_id: int,
                    what: str) -> None:
    """The step's shape of answer, checked part by part, for a more precise message."""
    if not isinstance(got, Tensor) or got.shape != x.shape:
        return
    revealed = x != mask_id
    if not torch.equal(got[revealed], x[revealed]):
        raise Mismatch(f"{what}: positions already revealed changed; they keep their tokens.")
    new = (x == mask_id) & (got != mask_id)
    counts = new.sum(1).tolist()
    if any(c != k for c in counts):
        raise Mismatch(f"{what}: reveal exactly k = {k} positions in every row; yours revealed "
                       f"{counts} per row.")
    if not torch.equal(got[new], drawn[new]):
        raise Mismatch(f"{what}: the revealed tokens are not argmax(logits + gumbel): draw with "
                       "the Gumbel noise you are given.")


UNMASK_STEP = Checker(
    "unmask_step",
    unmask_step,
    [_step_case(0, "random", 2), _step_case(1, "confidence", 2), _step_case(2, "confidence", 1),
     _step_case(3, "random", 5)],
    hints=(
        (
            "Three parts: a token drawn at every position, a priority for every position, and the "
            "k masked positions with the highest priority take their drawn token; nothing else "
            "changes."
        ),
        (
            "Gumbel-max: argmax(logits + gumbel, -1) draws from the softmax. For the confidence, "
            "gather the log_softmax at the drawn token. Unmasked positions must never win (what "
            "priority loses to every log-probability?); topk along the positions picks the k, and "
            "scatter turns their indices into a boolean mask."
        ),
    ),
    see="lesson 17, section 3: the k masked positions of highest priority take argmax(logits + "
        "gumbel)",
)
