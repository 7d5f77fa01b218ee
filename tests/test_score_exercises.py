"""Lesson 15's checkers: the library's answers pass, and typical wrong answers (at least seven per
exercise) each get their own message. tests/test_exercises.py counts these lists
(_LISTED_ELSEWHERE)."""

import math

import pytest
import torch

from diffuse_edu.diffusion import score as sc
from diffuse_edu.exercises import as_learners, run_checker
from diffuse_edu.exercises.score import (
    ANNEALED_LANGEVIN,
    DSM_LOSS,
    HUTCHINSON_DIVERGENCE,
    LANGEVIN_STEP,
    REVERSE_SDE_STEP,
)

learners = as_learners  # the reference as a learner's own copy (the library's own is refused)


def full(sigma, x):
    return torch.full((x.shape[0],), sigma, dtype=x.dtype)


def full_float32(sigma, x):  # the learner's slip: torch.full without x's dtype
    return torch.full((x.shape[0],), sigma)


# --- dsm_loss -------------------------------------------------------------------------------------
def _dsm(*, weight=2, target_sign=-1, target_power=1, noise_power=1, reduce="mean", at_clean=False,
         reshape=True, scalar=False):
    def dsm_loss(score, x0, sigma, eps):
        s = sigma[:, None] if reshape else sigma
        x = x0 if at_clean else x0 + s**noise_power * eps
        sq = (score(x, sigma) - target_sign * eps / s**target_power).square()
        per = (sq.mean(1) if reduce == "mean" else sq.sum(1)) * sigma**weight
        return per.mean() if scalar else per
    return dsm_loss


def _dsm_random(score, x0, sigma, eps):
    s = sigma[:, None]
    e = torch.randn_like(x0)
    return sigma**2 * (score(x0 + s * e, sigma) + e / s).square().mean(1)


DSM_WRONG = [
    (_dsm(weight=0), "weight w(sigma) = sigma^2 is missing"),
    (_dsm(weight=1), "the weight is sigma; it is sigma^2"),
    (_dsm(target_sign=1), "the target points the wrong way"),
    (_dsm(target_power=0), "not -eps: the score of the noised data"),
    (_dsm(target_power=2), "divides once too often"),
    (_dsm(noise_power=2), "not its variance"),
    (_dsm(reduce="sum"), "not sum: the loss per example is a mean"),
    (_dsm(at_clean=True), "asked at the clean x0"),
    (_dsm(reshape=False), "reshape it to (B, 1)"),
    (_dsm(scalar=True), "returned one number"),
    (_dsm_random, "draw no random numbers yourself"),
]


def _dsm_detached(score, x0, sigma, eps):
    return sc.dsm_loss(score, x0, sigma, eps).detach()


# --- langevin_step --------------------------------------------------------------------------------
def _step(*, half=0.5, noise=lambda a: math.sqrt(a), sign=1, as_float=False, fresh=False,
          level=full, swapped=False):
    def langevin_step(score, x, sigma, step_size, z):
        s = (score(level(sigma, x), x) if swapped
             else score(x, sigma if as_float else level(sigma, x)))
        noise_z = torch.randn_like(x) if fresh else z
        return x + sign * half * step_size * s + noise(step_size) * noise_z
    return langevin_step


LANGEVIN_WRONG = [
    (_step(half=1.0), "the half is missing"),
    (_step(noise=lambda a: a), "the square root is missing"),
    (_step(sign=-1), "Langevin climbs the density"),
    (_step(noise=lambda a: 0.0), "the noise term sqrt(step_size) z is missing"),
    (_step(noise=lambda a: math.sqrt(2 * a)), "not sqrt(2 * step_size) * z"),
    (_step(noise=lambda a: math.sqrt(a / 2)), "the half belongs to the score term only"),
    (_step(fresh=True), "use the noise z you are given"),
    (_step(level=full_float32), "torch.full takes dtype= and device="),
    (_step(swapped=True), "called as score(sigma, x)"),
]


# --- annealed_langevin ----------------------------------------------------------------------------
def _right_size(eps, s, sigmas):
    return eps * s**2 / sigmas[-1] ** 2


def _annealed(*, size=_right_size, backwards=False, once=False, global_rng=False, extra=0):
    def annealed_langevin(score, x, sigmas, *, steps, eps, generator=None):
        for sigma in (sigmas[::-1] if backwards else sigmas):
            a = size(eps, sigma, sigmas)
            z = torch.randn(x.shape, generator=generator)
            for k in range(steps + extra):
                if k and not once:
                    z = (torch.randn(x.shape) if global_rng
                         else torch.randn(x.shape, generator=generator))
                x = sc.langevin_step(score, x, sigma, a, z)
        return x
    return annealed_langevin


ANNEALED_WRONG = [
    (_annealed(size=lambda eps, s, sigmas: eps), "uses eps at every level"),
    (_annealed(size=lambda eps, s, sigmas: eps * s / sigmas[-1]), "scales with sigma_i / sigma_L"),
    (_annealed(size=lambda eps, s, sigmas: eps * sigmas[-1] ** 2 / s**2), "yours is inverted"),
    (_annealed(size=lambda eps, s, sigmas: eps * s**2 / sigmas[0] ** 2),
     "yours divides by the first"),
    (_annealed(backwards=True), "runs them backwards"),
    (_annealed(once=True), "reuses one z for all the steps of a level"),
    (_annealed(global_rng=True), "not from PyTorch's global one"),
    (_annealed(extra=1), "one score evaluation each"),
]


# --- reverse_sde_step -----------------------------------------------------------------------------
def _sde(*, drift=lambda s, n: s**2 - n**2, noise=lambda s, n: math.sqrt(s**2 - n**2), sign=1,
         at_next=False, as_float=False, fresh=False, level=full, swapped=False):
    def reverse_sde_step(score, x, sigma, sigma_next, z):
        at = sigma_next if at_next else sigma
        s = score(at, x) if swapped else score(x, at if as_float else level(at, x))
        zz = torch.randn_like(x) if fresh else z
        return x + sign * drift(sigma, sigma_next) * s + noise(sigma, sigma_next) * zz
    return reverse_sde_step


SDE_WRONG = [
    (_sde(drift=lambda s, n: 0.5 * (s**2 - n**2), noise=lambda s, n: 0.0),
     "the probability-flow ODE's step"),
    (_sde(noise=lambda s, n: 0.0), "the noise is missing"),
    (_sde(noise=lambda s, n: s - n), "yours is sigma - sigma_next"),
    (_sde(drift=lambda s, n: s - n), "not (sigma - sigma_next) score"),
    (_sde(sign=-1), "add the score term, do not subtract it"),
    (_sde(at_next=True), "not at sigma_next"),
    (_sde(noise=lambda s, n: s**2 - n**2), "not (sigma^2 - sigma_next^2) z"),
    (_sde(fresh=True), "use the noise z you are given"),
    (_sde(level=full_float32), "torch.full takes dtype= and device="),
    (_sde(swapped=True), "called as score(sigma, x)"),
]


def _sde_sigma_like_a_column(score, x, sigma, sigma_next, z):  # right on (B, 2), wrong on images
    s = score(x, torch.full_like(x[:, 0], sigma))
    d = sigma**2 - sigma_next**2
    return x + d * s + math.sqrt(d) * z


def _hutch_without_enable_grad(score, x, sigma, z):  # right with autograd on, fails under no_grad
    x = x.detach().requires_grad_(True)
    f = -sigma * score(x, full(sigma, x))
    (vjp,) = torch.autograd.grad(f, x, grad_outputs=z)
    return f.detach(), (vjp * z).flatten(1).sum(1)


def test_answers_right_on_the_first_cases_but_wrong_where_the_lesson_runs_them_are_caught():
    """A learner's trial: these passed every case, then crashed the lesson (its digits run the SDE
    step on (B, 1, 8, 8) images; its samplers call the divergence under torch.no_grad())."""
    from diffuse_edu.exercises import run_checker

    sde = run_checker(_sde_sigma_like_a_column, REVERSE_SDE_STEP)
    assert sde.status == "failed" and sde.passed_cases == 3 and "shape (3, 8, 8)" in sde.message
    hutch = run_checker(_hutch_without_enable_grad, HUTCHINSON_DIVERGENCE)
    assert hutch.status == "failed" and "torch.enable_grad()" in hutch.message


# --- hutchinson_divergence ------------------------------------------------------------------------
def _hutch(*, scale=lambda s: -s, reduce="sum", times_z=True, of_score=False, evaluations=1,
           keep_shape=False, batch_sum=False, level=full, in_place=False, sum_dim1=False):
    def hutchinson_divergence(score, x, sigma, z):
        with torch.enable_grad():
            x = x.requires_grad_(True) if in_place else x.detach().requires_grad_(True)
            for _ in range(evaluations - 1):
                score(x, level(sigma, x))
            s = score(x, level(sigma, x))
            f = scale(sigma) * s
            probe = z if times_z else torch.ones_like(z)
            (vjp,) = torch.autograd.grad(s if of_score else f, x, grad_outputs=probe)
        prod = vjp * z if times_z else vjp
        if keep_shape:
            return f.detach(), prod
        if batch_sum:
            return f.detach(), prod.sum()
        if sum_dim1:  # right on (B, 2), wrong on (B, 1, 8, 8) images
            return f.detach(), prod.sum(1)
        return f.detach(), (prod.flatten(1).sum(1) if reduce == "sum" else prod.flatten(1).mean(1))
    return hutchinson_divergence


def _hutch_no_tuple(score, x, sigma, z):
    return sc.hutchinson_divergence(score, x, sigma, z)[1]


HUTCH_WRONG = [
    (_hutch(reduce="mean"), "yours takes their mean"),
    (_hutch(times_z=False), "grad_outputs=z"),
    (_hutch(of_score=True), "the divergence is of the drift f = -sigma score, not of the score"),
    (_hutch(scale=lambda s: -1.0), "the factor sigma is missing"),
    (_hutch(scale=lambda s: s), "dx/dsigma points down it"),
    (_hutch(scale=lambda s: -2 * s), "the reverse SDE's drift in sigma"),
    (_hutch(evaluations=2), "asked the score 2 times"),
    (_hutch(keep_shape=True), "came back with x's shape"),
    (_hutch(batch_sum=True), "came back as one number"),
    (_hutch_no_tuple, "returns two things"),
    (_hutch(level=full_float32), "torch.full takes dtype= and device="),
    (_hutch(in_place=True), "switched on gradient tracking of the x it was given"),
    (_hutch(sum_dim1=True), "reduce over all of an example's numbers"),
]

WRONG = [(DSM_LOSS, DSM_WRONG), (LANGEVIN_STEP, LANGEVIN_WRONG),
         (ANNEALED_LANGEVIN, ANNEALED_WRONG), (REVERSE_SDE_STEP, SDE_WRONG),
         (HUTCHINSON_DIVERGENCE, HUTCH_WRONG)]
ALL = [(checker, w, m) for checker, listed in WRONG for w, m in listed]
CHECKERS = [DSM_LOSS, LANGEVIN_STEP, ANNEALED_LANGEVIN, REVERSE_SDE_STEP, HUTCHINSON_DIVERGENCE]


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.name)
def test_the_library_answer_passes_as_a_learners(checker):
    verdict = run_checker(learners(checker.reference), checker)
    assert verdict.status == "passed", verdict.message


@pytest.mark.parametrize("checker, wrong, expected", ALL,
                         ids=[f"{c.name}-{m[:30]}" for c, _, m in ALL])
def test_a_typical_wrong_answer_gets_its_own_message(checker, wrong, expected):
    verdict = run_checker(wrong, checker)
    assert verdict.status == "failed" and expected in verdict.message, verdict.message


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.name)
def test_every_checker_names_at_least_seven_mistakes_and_hints_progressively(checker):
    messages = {run_checker(w, c).message for c, w, _ in ALL if c is checker}
    assert len(messages) >= 7 and not any("off by up to" in m for m in messages)
    assert (len(checker.hints) >= 2 and checker.hints[0] != checker.hints[1]
            and "lesson 15" in checker.see)


def test_a_dsm_loss_cut_off_from_autograd_is_caught():
    verdict = run_checker(_dsm_detached, DSM_LOSS)
    assert verdict.status == "failed" and "no gradient" in verdict.message


def test_an_unfinished_exercise_is_todo():
    def langevin_step(score, x, sigma, step_size, z):
        raise NotImplementedError
    assert run_checker(langevin_step, LANGEVIN_STEP).status == "unfinished"


@pytest.mark.parametrize("checker, right", [
    (LANGEVIN_STEP, _step(as_float=True)),
    (REVERSE_SDE_STEP, _sde(as_float=True)),
], ids=["langevin_step", "reverse_sde_step"])
def test_a_level_given_as_a_python_number_passes(checker, right):
    """The lesson's score models take the level as a number too (it passes floats): accepted."""
    verdict = run_checker(right, checker)
    assert verdict.status == "passed", verdict.message


# The key line of each exercise, as a learner would write it: no message, hint or pointer of
# a checker may contain it (they say what is wrong and where to look, not the answer).
KEY_LINES = {
    "dsm_loss": ["(score(x0 + sigma eps, sigma) + eps / sigma)^2", "sigma^2 * mean("],
    "langevin_step": ["x + (step_size / 2) score(x, sigma) + sqrt(step_size) z"],
    "annealed_langevin": ["x = langevin_step(score, x, sigma_i, a_i, z)"],
    "reverse_sde_step": ["x + (sigma^2 - sigma_next^2) score(x, sigma) + sqrt("],
    "hutchinson_divergence": ["the vector-Jacobian product of f with z, times z, summed"],
}


def _unexplained(checker):
    """A wrong answer none of the listed mistakes explains: the reference plus a small offset."""
    def wrong(*args, **kwargs):
        out = checker.reference(*args, **kwargs)
        if isinstance(out, tuple):
            return out[0], out[1] + 0.37
        return out + 0.37
    return wrong


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.name)
def test_no_message_hint_or_pointer_spells_the_solution(checker):
    texts = [run_checker(w, c).message for c, w, _ in ALL if c is checker]
    unexplained = run_checker(_unexplained(checker), checker)
    assert unexplained.status == "failed"
    texts += [unexplained.message, *checker.hints, checker.see]
    for key in KEY_LINES[checker.name]:
        assert not any(key in t for t in texts), [t for t in texts if key in t]
    assert "lesson" in unexplained.message or "Math" in unexplained.message


def test_the_old_catch_all_messages_would_fail_the_key_line_test():
    """The key lines above are what the catch-alls said before the learner trial."""
    old = ("does not match Song & Ermon's step (section 2): x + (step_size / 2) score(x, sigma) "
           "+ sqrt(step_size) z.")
    assert any(k in old for k in KEY_LINES["langevin_step"])
