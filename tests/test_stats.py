"""Student's t distribution of the verdicts, against scipy.stats (an independent implementation)."""

import math

import pytest
from scipy import special
from scipy import stats as sp

from diffuse_edu.evaluation import stats


@pytest.mark.parametrize("a, b, x",
                         [(1.0, 0.5, 0.3), (0.5, 0.5, 0.9), (15.0, 0.5, 0.97), (2.5, 7.0, 0.2),
                          (40.0, 0.5, 0.5), (0.3, 0.5, 0.01)])
def test_incomplete_beta_matches_scipy(a, b, x):
    assert stats.betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("df", [1, 2, 2.7, 4, 9, 30, 1000])
@pytest.mark.parametrize("t", [0.0, 0.4, 2.0, 4.3, 12.0, -3.0])
def test_two_sided_p_matches_scipy(t, df):
    assert stats.t_two_sided_p(t, df) == pytest.approx(2 * sp.t.sf(abs(t), df), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("df", [1, 2, 3, 4.6, 10, 60])
def test_critical_values_match_scipy(df):
    assert stats.t_critical(df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-9)
    assert stats.t_critical(df, alpha=0.1) == pytest.approx(sp.t.ppf(0.95, df), rel=1e-9)


def test_three_seeds_need_t_above_4_30_and_infinite_df_is_the_normal():
    assert stats.t_critical(2) == pytest.approx(4.303, abs=1e-3)
    assert stats.t_critical(math.inf) == pytest.approx(1.960, abs=1e-3)
    assert stats.t_two_sided_p(0.5, math.inf) == pytest.approx(2 * sp.norm.sf(0.5))
    with pytest.raises(ValueError, match="degrees of freedom"):
        stats.t_two_sided_p(1.0, 0)


def test_welch_df_matches_the_welch_satterthwaite_equation_and_scipy():
    a, b = [1.0, 2.0, 4.0], [3.0, 3.5, 9.0, 7.0]
    va, vb = sp.tvar(a), sp.tvar(b)
    df = stats.welch_df(va, 3, vb, 4)
    expected = (va / 3 + vb / 4) ** 2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
    assert df == pytest.approx(expected)
    t = (sum(b) / 4 - sum(a) / 3) / (va / 3 + vb / 4) ** 0.5
    assert (stats.t_two_sided_p(t, df)
            == pytest.approx(sp.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-9))
    assert stats.welch_df(0.0, 1, vb, 4) == pytest.approx(3)  # a fixed reference adds no term
