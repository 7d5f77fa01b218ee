"""within_margin (lesson 15): equivalence judged on signed differences, the interval printed in
their own sign."""

import pytest

from diffuse_edu.course.equivalence import within_margin


def test_the_interval_is_printed_in_the_differences_own_sign():
    v = within_margin([0.05, 0.06, 0.055], 0.1)
    assert v == "holds"
    low, high = (float(t) for t in v.statistic.split("interval ")[1].split(" against")[0]
                 .split(" to "))
    assert 0.04 < low < 0.055 < high < 0.07  # positive, as the differences are
    assert within_margin([-0.05, -0.06, -0.055], 0.1).statistic.count("-0.0") == 2


def test_signed_differences_of_both_signs_are_not_made_positive():
    """|d| of differences scattered around 0 has a mean far from 0; the signed mean is near it."""
    d = [0.04, -0.05, 0.045, -0.035]
    assert within_margin(d, 0.03) != "does not hold"
    assert within_margin([abs(v) for v in d], 0.03) == "does not hold"


def test_outside_inside_and_open():
    assert within_margin([0.5, 0.52, 0.51], 0.1) == "does not hold"
    assert within_margin([-0.5, -0.52, -0.51], 0.1) == "does not hold"
    assert within_margin([0.0, 0.3, -0.25], 0.1).startswith("inconclusive")
    assert "two one-sided t-tests, 2 df" in str(within_margin([0.0, 0.01, 0.02], 0.1))
    with pytest.raises(ValueError, match="two seeds"):
        within_margin([0.1], 0.1)
    with pytest.raises(ValueError, match="positive"):
        within_margin([0.1, 0.2], 0.0)
