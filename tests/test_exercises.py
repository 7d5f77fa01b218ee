"""Each checker passes the reference and catches typical wrong answers, each with its own message."""

import pytest
import torch

from diffuse_edu.exercises import VERDICTS, Checker, Mismatch, check, compare, run_checker
from diffuse_edu.exercises.forward_process import Q_SAMPLE
from diffuse_edu.exercises.welcome import TO_UNIT_RANGE


def _ab(schedule, t, x0, *, cast=True, reshape=True):
    ab = schedule.alpha_bar[t]
    ab = ab.to(x0.dtype) if cast else ab
    return ab.reshape(-1, 1, 1, 1) if reshape else ab


Q_SAMPLE_WRONG = {
    "no square roots": (lambda x0, t, s, eps: _ab(s, t, x0) * x0 + (1 - _ab(s, t, x0)) * eps,
                        "take their square roots"),
    "weights swapped": (lambda x0, t, s, eps: (1 - _ab(s, t, x0)).sqrt() * x0 + _ab(s, t, x0).sqrt() * eps,
                        "weights are swapped"),
    "alpha instead of alpha_bar": (
        lambda x0, t, s, eps: s.alphas[t].float().reshape(-1, 1, 1, 1).sqrt() * x0
        + (1 - s.alphas[t].float().reshape(-1, 1, 1, 1)).sqrt() * eps, "instead of alpha_bar_t"),
    "off by one": (lambda x0, t, s, eps: _ab(s, (t - 1).clamp(min=0), x0).sqrt() * x0
                   + (1 - _ab(s, (t - 1).clamp(min=0), x0)).sqrt() * eps, "off by one"),
    "x0 not scaled": (lambda x0, t, s, eps: x0 + (1 - _ab(s, t, x0)).sqrt() * eps, "x0 is not scaled"),
    "float64 result": (lambda x0, t, s, eps: _ab(s, t, x0, cast=False).sqrt() * x0
                       + (1 - _ab(s, t, x0, cast=False)).sqrt() * eps, "dtype torch.float64"),
    "no reshape": (lambda x0, t, s, eps: _ab(s, t, x0, reshape=False).sqrt() * x0
                   + (1 - _ab(s, t, x0, reshape=False)).sqrt() * eps, "reshaping it to (B, 1, 1, 1)"),
}

TO_UNIT_RANGE_WRONG = {
    "[0, 1]": (lambda x: x.float() / 255, "values lie in [0, 1]"),
    "divide by 256": (lambda x: x.float() / 256 * 2 - 1, "divided by 256"),
    "[-0.5, 0.5]": (lambda x: x.float() / 255 - 0.5, "[-0.5, 0.5]"),
    "flipped": (lambda x: 1 - x.float() / 255 * 2, "sign is flipped"),
    "uint8 arithmetic": (lambda x: x // 128, "returned uint8"),
}


def _in_place(x):
    out = x.float() / 255 * 2 - 1
    x.zero_()  # right values, but the caller's pixels are wiped
    return out


@pytest.mark.parametrize("checker", [Q_SAMPLE, TO_UNIT_RANGE], ids=lambda c: c.name)
def test_reference_passes(checker):
    verdict = run_checker(checker.reference, checker)
    assert verdict.status == "passed", verdict.message
    assert verdict.passed_cases == verdict.total_cases >= 3


@pytest.mark.parametrize("name", list(Q_SAMPLE_WRONG))
def test_q_sample_wrong_answers_are_caught(name):
    fn, expected = Q_SAMPLE_WRONG[name]
    verdict = run_checker(fn, Q_SAMPLE)
    assert verdict.status == "failed"
    assert expected in verdict.message, verdict.message


def test_q_sample_messages_are_distinct():
    messages = {run_checker(fn, Q_SAMPLE).message for fn, _ in Q_SAMPLE_WRONG.values()}
    assert len(messages) == len(Q_SAMPLE_WRONG)


@pytest.mark.parametrize("name", list(TO_UNIT_RANGE_WRONG))
def test_to_unit_range_wrong_answers_are_caught(name):
    fn, expected = TO_UNIT_RANGE_WRONG[name]
    verdict = run_checker(fn, TO_UNIT_RANGE)
    assert verdict.status == "failed" and expected in verdict.message, verdict.message


def test_to_unit_range_in_place_change_is_caught():
    verdict = run_checker(_in_place, TO_UNIT_RANGE)
    assert verdict.status == "failed" and "changed its input in place" in verdict.message


def test_q_sample_broadcasting_trap_has_its_own_message():
    """B == W: (B,) broadcasts along the width without an error; the checker still notices."""
    def along_width(x0, t, s, eps):
        if x0.shape[0] != x0.shape[-1]:  # behave on the other cases, fail only on the trap
            return Q_SAMPLE.reference(x0, t, s, eps)
        ab = s.alpha_bar[t].to(x0.dtype)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    verdict = run_checker(along_width, Q_SAMPLE)
    assert verdict.status == "failed" and "along the width" in verdict.message


def test_unfinished_exercise_falls_back_to_the_reference(capsys):
    def todo(x0, t, schedule, eps):
        raise NotImplementedError
    VERDICTS.clear()
    chosen = check(todo, Q_SAMPLE)
    assert chosen is Q_SAMPLE.reference
    out = capsys.readouterr().out
    assert "[todo]" in out and "carries on with the library's version" in out
    assert VERDICTS[-1].status == "unfinished"


def test_wrong_answer_falls_back_and_explains(capsys):
    fn = Q_SAMPLE_WRONG["weights swapped"][0]
    assert check(fn, Q_SAMPLE) is Q_SAMPLE.reference
    out = capsys.readouterr().out
    assert out.startswith("[x] q_sample:") and "Hint:" in out


def test_right_answer_is_kept(capsys):
    def mine(x):
        return x.float() / 127.5 - 1
    assert check(mine, TO_UNIT_RANGE) is mine
    assert "[ok]" in capsys.readouterr().out


def test_compare_reports_type_shape_and_largest_error():
    want = torch.zeros(2, 3)
    for got, pattern in [([0.0], "returned list"), (torch.zeros(3, 2), "shape \\(3, 2\\)"),
                         (torch.zeros(2, 3, dtype=torch.float64), "dtype torch.float64")]:
        with pytest.raises(Mismatch, match=pattern):
            compare(got, want, what="f(x)")
    bad = want.clone()
    bad[1, 2] = 0.5
    with pytest.raises(Mismatch, match="off by up to 0.5 \\(at index \\(1, 2\\)"):
        compare(bad, want, what="f(x)")


def test_a_crash_is_reported_with_the_error():
    checker = Checker("f", lambda x: x, [lambda fn: fn(1)])
    verdict = run_checker(lambda x: x / 0 if isinstance(x, str) else {}["missing"], checker)
    assert verdict.status == "failed" and "KeyError" in verdict.message
