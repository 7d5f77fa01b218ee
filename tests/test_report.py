"""The verdict helpers every lesson's captions are composed with: Student's t for the units there
are."""

import json

import pytest
from scipy import stats as sp

from diffuse_edu.course import report
from diffuse_edu.course.report import (Verdict, difference_verdict, paired_verdict,
                                       similarity_verdict)
from diffuse_edu.training import loop


def _paired_with_t(t: float) -> tuple[list[float], list[float]]:
    """Three units whose differences have mean / (sd / sqrt(3)) = t (sd 1, mean t / sqrt(3))."""
    mean = t / 3**0.5
    return [0.0, 0.0, 0.0], [mean - 1, mean, mean + 1]


def test_three_seeds_at_t_3_are_inconclusive_and_at_t_5_hold():
    # with 2 degrees of freedom the 97.5% point is 4.30: the old 2-standard-error rule said "holds"
    # at t = 3
    for t, word in ((3.0, "inconclusive (within the spread)"), (5.0, "holds"),
                    (-5.0, "does not hold")):
        before, after = _paired_with_t(t)
        verdict, diff, se = paired_verdict(before, after)
        assert diff / se == pytest.approx(t)
        assert verdict == word and verdict.df == 2
        assert verdict.p == pytest.approx(sp.ttest_rel(after, before).pvalue)


def test_the_verdict_text_names_the_test_and_its_degrees_of_freedom():
    verdict = paired_verdict([0.0, 0.0, 0.0], [1.0, 2.0, 3.5])[0]
    text = f"the claim {verdict}."
    assert "paired t-test, 2 df" in text and "t = " in text and "p = " in text
    assert isinstance(verdict, Verdict) and verdict == verdict.word and str.__str__(verdict) in text
    # metrics.json keeps the word
    assert json.dumps({"v": verdict}) == json.dumps({"v": verdict.word})


def test_two_arms_use_welchs_test():
    a, b = [1.0, 2.0, 4.0], [3.0, 5.5, 9.0, 7.0]
    verdict, diff, se = difference_verdict(a, b)
    assert verdict.test == "Welch's t-test" and "Welch's t-test" in str(verdict)
    assert verdict.p == pytest.approx(sp.ttest_ind(b, a, equal_var=False).pvalue)
    assert verdict == ("holds" if verdict.p < 0.05 else "inconclusive (within the spread)")
    # t = 2.45 on 4 df: the 2-standard-error rule said "holds"; Welch's 97.5% point is 2.78
    verdict = difference_verdict([0.0, 1.0, 2.0], [2.0, 3.0, 4.0])[0]
    assert (verdict.startswith("inconclusive") and verdict.df == pytest.approx(4)
            and verdict.t == pytest.approx(2 / (2 / 3) ** 0.5))
    # a fixed reference (one value) against three runs: a one-sample test on 2 df
    verdict = difference_verdict([0.0], [2.0, 3.0, 4.0])[0]
    assert (verdict.df == 2 and verdict == "holds"
            and verdict.p == pytest.approx(sp.ttest_1samp([2, 3, 4], 0).pvalue))
    with pytest.raises(ValueError, match="two runs"):
        difference_verdict([1.0], [2.0])


def test_paired_verdict_uses_the_per_seed_differences():
    # each seed moves both arms alike: unpaired the spread swamps the gain, paired it does not
    before, after = [0.2, 0.5, 0.8], [0.25, 0.56, 0.84]
    assert difference_verdict(before, after)[0].startswith("inconclusive")
    verdict, diff, se = paired_verdict(before, after)
    assert verdict == "holds" and diff == pytest.approx(0.05) and se < 0.01
    assert paired_verdict(after, before)[0] == "does not hold"
    assert paired_verdict([1, 2, 3], [1.1, 1.9, 3.0])[0].startswith("inconclusive")
    with pytest.raises(ValueError, match="two seeds"):
        paired_verdict([1.0], [2.0])
    with pytest.raises(ValueError, match="same seeds"):
        # one value against three would broadcast silently
        paired_verdict([1.0], [2.0, 3.0, 4.0])


def test_identical_arms_without_spread_do_not_show_an_excess():
    # both arms measure exactly alike in every seed (e.g. all 8 modes covered): the claim of an
    # excess fails
    assert paired_verdict([0, 0, 0], [0, 0, 0])[0] == "does not hold"
    assert difference_verdict([8, 8, 8], [8, 8, 8])[0] == "does not hold"
    # a constant gain: no spread, a clear excess
    assert paired_verdict([1, 2, 3], [3, 4, 5])[0] == "holds"
    # equal means, but with spread
    assert difference_verdict([1, 2], [1, 2])[0].startswith("inconclusive")


@pytest.mark.parametrize("difference, se, margin, expected", [
    (0.20, 0.03, 0.10, "better"), (-0.20, 0.02, 0.10, "worse"), (0.01, 0.02, 0.10, "similar"),
    (0.05, 0.04, 0.10, "inconclusive (within the spread)"),
    # resolved but smaller than the margin: equivalent by the margin's own definition
    (-0.05, 0.005, 0.10, "similar"), (0.06, 0.008, 0.10, "similar"),
    # resolved as a loss, but not shown to exceed the margin: no verdict on "similar"
    (-0.07, 0.008, 0.10, "inconclusive (within the spread)"),
    # with 2 df the interval is 4.30 standard errors wide each side: 0.01 +- 0.02 is not inside
    # +-0.08
    (0.01, 0.02, 0.08, "inconclusive (within the spread)"),
])
def test_similarity_needs_the_whole_t_interval_inside_the_margin_and_worse_beyond_it(
        difference, se, margin, expected):
    verdict = similarity_verdict(difference, se, margin, df=2)
    assert verdict == expected and "2 df" in str(verdict) and "interval" in str(verdict)
    # the normal's 1.96 would allow it
    assert similarity_verdict(0.01, 0.02, 0.08, df=1000) == "similar"


def test_a_training_stopped_by_the_clock_is_named_in_every_verdict_until_reset():
    report.reset()
    assert "clock" not in str(paired_verdict([0, 0, 0], [1, 2, 3])[0])
    loop.STOPPED_BY_CLOCK.append(dict(desc="training cddpm_digits", steps=47, planned_steps=700,
                                      seconds=80.0))
    try:
        text = str(paired_verdict([0, 0, 0], [1, 2, 3])[0])
        assert "training cddpm_digits at 47 of 700 steps" in text and "undertrained" in text
    finally:
        report.reset()
    assert not loop.STOPPED_BY_CLOCK


def test_a_verdict_survives_pickle_and_copy_and_refuses_values_that_are_not_finite():
    import copy
    import pickle

    verdict = paired_verdict([0.0, 0.0, 0.0], [1.0, 2.0, 3.5])[0]
    for again in (pickle.loads(pickle.dumps(verdict)), copy.deepcopy(verdict), copy.copy(verdict)):
        assert (again == verdict and str(again) == str(verdict) and again.df == 2
                and again.p == verdict.p)
    with pytest.raises(ValueError, match="not finite"):
        paired_verdict([0.0, 1.0, 2.0], [1.0, float("nan"), 3.0])
    with pytest.raises(ValueError, match="not finite"):
        difference_verdict([0.0, 1.0], [float("inf"), 3.0])
    # the sign of a spread-free difference
    assert similarity_verdict(-0.05, 0.0, 0.1, df=2).t == float("-inf")


def test_a_full_rerun_of_the_same_training_lifts_its_clock_warning():
    import torch

    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.diffusion.schedules import cosine_schedule
    from diffuse_edu.models.unet import UNet, UNetConfig
    from diffuse_edu.training.loop import TrainConfig, train

    report.reset()
    loop.STOPPED_BY_CLOCK.append(dict(desc="again", steps=1, planned_steps=3, seconds=0.1))
    loop.STOPPED_BY_CLOCK.append(dict(desc="other", steps=1, planned_steps=3, seconds=0.1))
    net = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2))
    train(net, torch.randn(8, 1, 8, 8), DiffusionObjective(cosine_schedule(50)),
          TrainConfig(steps=3, batch_size=2), show_progress=False, desc="again")
    assert [r["desc"] for r in loop.STOPPED_BY_CLOCK] == ["other"]
    report.reset()
