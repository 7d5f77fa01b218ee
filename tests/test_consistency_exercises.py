"""Lesson 16's checkers: the library's answers pass, and typical wrong answers (at least seven per
exercise) each get their own message. tests/test_exercises.py counts these lists
(_LISTED_ELSEWHERE)."""

import math

import pytest
import torch

from diffuse_edu.diffusion import consistency as cm
from diffuse_edu.diffusion.samplers import euler_step
from diffuse_edu.exercises import as_learners, run_checker
from diffuse_edu.exercises.consistency import CD_LOSS, CONSISTENCY_FUNCTION, CONSISTENCY_SAMPLER

learners = as_learners  # the reference as a learner's own copy (the library's own is refused)


# --- consistency_function -------------------------------------------------------------------------
def _f(*, skip="cm", out="cm", swap=False, sd_power=2, root_shift=False, no_root=False,
       only="", eps=0.0, c_in=False, sign=1, where=False):
    def consistency_function(raw, x, sigma, *, sigma_min, sigma_data):
        s = sigma.reshape(-1, 1, 1, 1)
        sd = sigma_data**sd_power
        shifted = s - sigma_min
        c_skip = sd / ((shifted if skip == "cm" else s) ** 2 + sd) + eps
        num = sigma_data * (shifted if out == "cm" else s)
        den = (shifted**2 + sd) if root_shift else (s**2 + sd)
        c_out = num / (den if no_root else den.sqrt())
        if swap:
            c_skip, c_out = c_out, c_skip
        if where:  # EDM's coefficients with the boundary patched in
            e_skip = sigma_data**2 / (s**2 + sigma_data**2)
            e_out = s * sigma_data / (s**2 + sigma_data**2).sqrt()
            return torch.where(s == sigma_min, x, e_skip * x + e_out * raw(x, sigma))
        f = raw(x / (s**2 + sigma_data**2).sqrt() if c_in else x, sigma)
        c_out = sign * c_out
        return {"F": f, "no skip": c_out * f}.get(only, c_skip * x + c_out * f)
    return consistency_function


def _f_no_reshape(raw, x, sigma, *, sigma_min, sigma_data):
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / (sigma**2 + sigma_data**2).sqrt()
    return c_skip * x + c_out * raw(x, sigma)


F_WRONG = [
    (_f(skip="edm", out="edm"), "those are EDM's c_skip and c_out"),
    (_f(out="edm"), "c_out is EDM's"),
    (_f(skip="edm"), "c_skip is EDM's"),
    (_f(swap=True), "c_skip and c_out are swapped"),
    (_f(sd_power=1), "sigma_data enters squared"),
    (_f(root_shift=True), "sigma itself, not sigma - sigma_min"),
    (_f(only="F"), "that is F alone"),
    (_f(only="no skip"), "the skip connection is missing"),
    (_f(no_root=True), "c_out lost its square root"),
    (_f(eps=1e-7), "the boundary condition fails"),
    (_f(c_in=True), "`raw` takes x itself"),
    (_f(sign=-1), "c_out has the wrong sign"),
    (_f(where=True), "with torch.where putting x back"),
]


def test_consistency_function_reference_passes():
    ref = learners(cm.consistency_function)
    assert run_checker(ref, CONSISTENCY_FUNCTION).status == "passed"
    assert run_checker(_f(), CONSISTENCY_FUNCTION).status == "passed"


@pytest.mark.parametrize("wrong, expected", F_WRONG, ids=[e for _, e in F_WRONG])
def test_consistency_function_names_each_mistake(wrong, expected):
    verdict = run_checker(wrong, CONSISTENCY_FUNCTION)
    assert verdict.status == "failed" and expected in verdict.message, verdict.message


def test_consistency_function_without_reshape_crashes_with_a_named_cause():
    verdict = run_checker(_f_no_reshape, CONSISTENCY_FUNCTION)
    assert verdict.status == "failed" and "raised RuntimeError" in verdict.message


# --- consistency_sampler --------------------------------------------------------------------------
def _sampler(*, scale=True, std="root", from_noisy=False, at_previous=False, one_z=False,
             extra=False, no_last=False, global_rng=False, float_sigma=False, root_start=False):
    def consistency_sampler(f, x, sigmas, *, sigma_min, generator=None):
        b = x.shape[0]

        def lvl(s):
            return s if float_sigma else torch.full((b,), s)

        top = math.sqrt(sigmas[0] ** 2 - sigma_min**2) if root_start else sigmas[0]
        y = top * x if scale else x
        out, prev, z0 = f(y, lvl(sigmas[0])), sigmas[0], None
        for s in (sigmas if extra else sigmas[1:]):
            z = torch.randn(x.shape) if global_rng else torch.randn(x.shape, generator=generator)
            z0 = z if z0 is None else z0
            z = z0 if one_z else z
            width = {"root": math.sqrt(s**2 - sigma_min**2), "sigma": s,
                     "var": s**2 - sigma_min**2,
                     "gap": math.sqrt(max(prev**2 - s**2, 0.0))}[std]
            y = (y if from_noisy else out) + width * z
            if no_last and s == sigmas[-1]:
                return y
            out, prev = f(y, lvl(prev if at_previous else s)), s
        return out
    return consistency_sampler


SAMPLER_WRONG = [
    (_sampler(scale=False), "scaled to the top level"),
    (_sampler(std="sigma"), "not sigma: f's output sits"),
    (_sampler(std="var"), "a square root is missing"),
    (_sampler(from_noisy=True), "re-noise the denoised image"),
    (_sampler(at_previous=True), "denoise at that level"),
    (_sampler(one_z=True), "reused the first draw"),
    (_sampler(extra=True), "evaluates f once a level"),
    (_sampler(no_last=True), "evaluates f once a level"),
    (_sampler(global_rng=True), "not from the global random state"),
    (_sampler(float_sigma=True), "one level per example"),
    (_sampler(std="gap"), "sqrt(previous^2 - sigma^2) is the gap"),
    (_sampler(root_start=True), "is the re-noising rule, not the first step's"),
]


def test_sampler_shape_message_prints_the_shape_not_the_tensor():
    verdict = run_checker(_sampler(float_sigma=True), CONSISTENCY_SAMPLER)
    assert "of shape ()" in verdict.message or "of shape 8.0" in verdict.message, verdict.message
    assert "tensor(" not in verdict.message and "device=x.device" in verdict.message


def test_consistency_sampler_reference_passes():
    assert run_checker(learners(cm.consistency_sampler), CONSISTENCY_SAMPLER).status == "passed"
    assert run_checker(_sampler(), CONSISTENCY_SAMPLER).status == "passed"


@pytest.mark.parametrize("wrong, expected", SAMPLER_WRONG, ids=[e for _, e in SAMPLER_WRONG])
def test_consistency_sampler_names_each_mistake(wrong, expected):
    verdict = run_checker(wrong, CONSISTENCY_SAMPLER)
    assert verdict.status == "failed" and expected in verdict.message, verdict.message


# --- cd_loss --------------------------------------------------------------------------------------
def _cd(*, target_level="next", step=True, vs_teacher=False, target_is_student=False,
        sign=1, student_level="sigma", reduce="mean", slope="d", grad_target=False,
        scalar=False, detached=False, ct_target=False, student_at="sigma", swapped=False,
        column_levels=False):
    def cd_loss(student, target, teacher, x0, noise, sigma, sigma_next):
        s, sn = sigma.reshape(-1, 1, 1, 1), sigma_next.reshape(-1, 1, 1, 1)
        x = x0 + (s if student_level == "sigma" else sn) * noise  # the natural wrong version
        with torch.no_grad():
            den = teacher(x, sigma)
            d = (x - den) / s if slope == "d" else den
            x_hat = x + sign * (sn - s) * d if step else x
            if swapped:
                x_hat = euler_step(x, sn, s, den)
            if ct_target:
                x_hat = x0 + sn * noise
        net = student if target_is_student else target
        if grad_target:
            want = net(x_hat, sigma_next)
        else:
            with torch.no_grad():
                want = den if vs_teacher else net(x_hat, sigma if target_level == "sigma"
                                                   else sn if column_levels else sigma_next)
        level = sigma_next if student_at == "next" else s if column_levels else sigma
        sq = (student(x, level) - want).square().flatten(1)
        per = sq.mean(1) if reduce == "mean" else sq.sum(1)
        per = per.detach() if detached else per
        return per.mean() if scalar else per
    return cd_loss


CD_WRONG = [
    (_cd(target_level="sigma"), "ask it at sigma_next"),
    (_cd(step=False), "the teacher's ODE step is missing"),
    (_cd(vs_teacher=True), "compares the student with the teacher's denoised image"),
    (_cd(target_is_student=True), "not the student itself"),
    (_cd(sign=-1), "the Euler step goes the wrong way"),
    (_cd(student_level="next"), "not x0 + sigma_next noise"),
    (_cd(reduce="sum"), "a mean over each example's entries, not a sum"),
    (_cd(slope="D"), "not D itself"),
    (_cd(grad_target=True), "the target network received gradients"),
    (_cd(scalar=True), "returned one number"),
    (_cd(detached=True), "returned a loss with no gradient"),
    (_cd(ct_target=True), "consistency training's stand-in"),
    (_cd(student_at="next"), "the student is asked at sigma, the level of its input"),
    (_cd(swapped=True), "euler_step's levels are swapped"),
    (_cd(column_levels=True), "with sigma or sigma_next as given, shape (B,)"),
]


def test_cd_loss_reference_passes():
    assert run_checker(learners(cm.cd_loss), CD_LOSS).status == "passed"
    assert run_checker(_cd(), CD_LOSS).status == "passed"


@pytest.mark.parametrize("wrong, expected", CD_WRONG, ids=[e for _, e in CD_WRONG])
def test_cd_loss_names_each_mistake(wrong, expected):
    verdict = run_checker(wrong, CD_LOSS)
    assert verdict.status == "failed" and expected in verdict.message, verdict.message


@pytest.mark.parametrize("wrongs", [F_WRONG, SAMPLER_WRONG, CD_WRONG])
def test_each_listed_mistake_has_its_own_message(wrongs):
    checker = {id(F_WRONG): CONSISTENCY_FUNCTION, id(SAMPLER_WRONG): CONSISTENCY_SAMPLER,
               id(CD_WRONG): CD_LOSS}[id(wrongs)]
    messages = [run_checker(w, checker).message for w, _ in wrongs]
    distinct = {e for _, e in wrongs}
    assert len(distinct) >= 7
    assert len(set(messages)) >= len(distinct)
