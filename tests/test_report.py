"""The verdict helpers every lesson's captions are composed with."""

import pytest

from diffuse_edu.course.report import difference_verdict, paired_verdict, similarity_verdict


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
    with pytest.raises(ValueError, match="same seeds"):  # one value against three would broadcast silently
        paired_verdict([1.0], [2.0, 3.0, 4.0])


def test_identical_arms_without_spread_do_not_show_an_excess():
    # both arms measure exactly alike in every seed (e.g. all 8 modes covered): the claim of an excess fails
    assert paired_verdict([0, 0, 0], [0, 0, 0])[0] == "does not hold"
    assert difference_verdict([8, 8, 8], [8, 8, 8])[0] == "does not hold"
    assert paired_verdict([1, 2, 3], [3, 4, 5])[0] == "holds"  # a constant gain: no spread, a clear excess
    assert difference_verdict([1, 2], [1, 2])[0].startswith("inconclusive")  # equal means, but with spread


@pytest.mark.parametrize("difference, se, margin, expected", [
    (0.20, 0.03, 0.10, "better"), (-0.20, 0.03, 0.10, "worse"), (0.01, 0.02, 0.10, "similar"),
    (0.05, 0.04, 0.10, "inconclusive (within the spread)"),
    # resolved but smaller than the margin: equivalent by the margin's own definition
    (-0.05, 0.01, 0.10, "similar"), (0.06, 0.015, 0.10, "similar"),
    # resolved as a loss, but not shown to exceed the margin: no verdict on "similar"
    (-0.07, 0.026, 0.10, "inconclusive (within the spread)"),
])
def test_similarity_needs_the_whole_interval_inside_the_margin_and_worse_beyond_it(difference, se, margin, expected):
    assert similarity_verdict(difference, se, margin) == expected
