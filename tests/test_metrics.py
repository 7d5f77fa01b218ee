import torch

from diffuse_edu.evaluation.probes import high_frequency_energy


def test_flat_images_have_no_high_frequencies():
    assert high_frequency_energy(torch.full((2, 1, 8, 8), 0.3)).abs().max() < 1e-10


def test_checkerboard_is_all_high_frequency_and_blur_removes_it():
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2 - 1).float()[None, None]
    energy = high_frequency_energy(board)
    total = (board - board.mean()).pow(2).sum()
    # Parseval: all energy sits at the Nyquist frequency
    torch.testing.assert_close(energy[0], total)
    blurred = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(board, (1, 1, 1, 1),
                                                                     mode="circular"), 3, 1)
    assert high_frequency_energy(blurred) < 0.2 * energy


# --- FID, precision and recall (lesson 06) ---------------------------------------------------
import numpy as np
import pytest

from diffuse_edu.evaluation.fid import fid, frechet_distance, mean_and_covariance, sqrtm_psd
from diffuse_edu.evaluation.probes import in_manifold, nearest_neighbour, precision_recall


def _features(n, d, shift=0.0, scale=1.0, seed=0):
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(99),
                      dtype=torch.float64) / d**0.5
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * scale + shift


def test_sqrtm_matches_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    _, cov = mean_and_covariance(_features(500, 12))
    ours = sqrtm_psd(cov)
    torch.testing.assert_close(ours @ ours, cov)
    torch.testing.assert_close(ours, torch.from_numpy(np.real(scipy_linalg.sqrtm(cov.numpy()))),
                               rtol=1e-6, atol=1e-8)


def test_fid_of_a_set_with_itself_is_zero():
    f = _features(400, 16)
    assert abs(fid(f, f)) < 1e-8


def test_fid_closed_form_for_shifted_and_scaled_gaussians():
    """Same covariance S, means differ by m: FID = |m|^2; covariance c^2 S: FID = (1 - c)^2 Tr S."""
    mu, cov = (torch.zeros(3, dtype=torch.float64),
               torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)))
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert frechet_distance(mu, cov, m, cov) == pytest.approx(m.square().sum().item())
    assert frechet_distance(mu, cov, mu, 4 * cov) == pytest.approx(6.0)


def test_fid_matches_torchmetrics_on_the_same_features():
    tm_fid = pytest.importorskip("torchmetrics.image.fid")

    class Given(torch.nn.Module):  # the "feature network" returns what it is given
        num_features = 24

        def forward(self, x):
            return x

    real, fake = _features(600, 24, seed=1), _features(500, 24, shift=0.3, scale=1.2, seed=2)
    metric = tm_fid.FrechetInceptionDistance(feature=Given(), normalize=True)
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs = metric.compute().item()
    assert fid(fake, real) == pytest.approx(theirs, rel=1e-3)


def test_precision_recall_tell_fidelity_from_diversity():
    real = _features(800, 4, seed=3)
    assert precision_recall(real, _features(800, 4, seed=4)) > (0.85, 0.85)  # same distribution
    narrow = _features(800, 4, scale=0.3, seed=5)  # inside the real manifold, but not all of it
    p, r = precision_recall(real, narrow)
    assert p > 0.9 and r < 0.6
    p, r = precision_recall(real, _features(800, 4, shift=6.0, seed=6))  # elsewhere entirely
    assert p < 0.05 and r < 0.05


def test_in_manifold_marks_each_sample_and_averages_to_precision():
    # each one's 1st neighbour: 1 away
    real = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = torch.tensor([[0.5, 0.5], [0.0, 0.9], [3.0, 3.0], [1.0, 2.1]])
    inside = in_manifold(real, queries, k=1)
    assert inside.tolist() == [True, True, False, False] and inside.dtype == torch.bool
    fake = _features(300, 4, shift=1.0, seed=7)
    assert in_manifold(_features(400, 4, seed=3), fake).double().mean().item() == precision_recall(
        _features(400, 4, seed=3), fake)[0]


def test_nearest_neighbour():
    ref = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d, i = nearest_neighbour(torch.tensor([[3.0, 4.5], [0.1, 0.0]]), ref)
    torch.testing.assert_close(d, torch.tensor([0.5, 0.1], dtype=torch.float64))
    assert i.tolist() == [1, 0]


def test_fid_with_spread_is_fid_and_its_spread_shrinks_with_more_samples():
    from diffuse_edu.evaluation.fid import fid_with_spread

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    small, large = (torch.randn(100, 4, generator=g, dtype=torch.float64),
                    torch.randn(1600, 4, generator=g, dtype=torch.float64))
    value, spread = fid_with_spread(small, ref, generator=torch.Generator().manual_seed(1))
    assert value == fid(small, ref) and spread > 0
    assert fid_with_spread(large, ref, generator=torch.Generator().manual_seed(1))[1] < spread / 2


def test_a_paired_fid_difference_resolves_what_the_unpaired_spreads_hide():
    from diffuse_edu.evaluation.fid import fid_with_spread, paired_fid_difference

    g = torch.Generator().manual_seed(0)
    reference = torch.randn(2000, 8, generator=g)
    a = torch.randn(200, 8, generator=g)  # one draw of samples ...
    b = a + 0.15  # ... and the same draw, shifted a little: FID(b) > FID(a), shared noise otherwise
    (fa, sa), (fb, sb) = (fid_with_spread(x, reference,
                                          generator=torch.Generator().manual_seed(1))
                          for x in (a, b))
    diff, sd = paired_fid_difference(a, b, reference, generator=torch.Generator().manual_seed(1))
    assert diff == pytest.approx(fb - fa, rel=1e-6)
    unpaired = (sa**2 + sb**2) ** 0.5
    assert diff < 2 * unpaired  # the two spreads side by side cannot tell the sets apart ...
    assert diff > 2 * sd  # ... the paired difference can
    with pytest.raises(ValueError, match="same noise"):
        paired_fid_difference(a, b[:100], reference)


def test_a_paired_fid_contrast_reads_a_gap_between_measured_points_with_its_paired_noise():
    from diffuse_edu.evaluation.fid import (fid_with_spread, paired_fid_contrast,
                                            paired_fid_difference)

    g = torch.Generator().manual_seed(0)
    reference = torch.randn(2000, 8, generator=g)
    base = torch.randn(200, 8, generator=g)  # one draw of noise shared by every set
    lo, hi, other_lo, other_hi = base + 0.05, base + 0.25, base + 0.1, base + 0.2
    w, v = 0.25, 0.5  # each method read off its curve between two measured points
    sets, weights = [lo, hi, other_lo, other_hi], [1 - w, w, -(1 - v), -v]
    gap, sd = paired_fid_contrast(sets, weights, reference,
                                  generator=torch.Generator().manual_seed(1))
    assert gap == pytest.approx(sum(c * fid(x, reference) for c, x in zip(weights, sets)),
                                rel=1e-6)
    spreads = [fid_with_spread(x, reference, generator=torch.Generator().manual_seed(1))[1]
               for x in sets]
    unpaired = sum((c * s) ** 2 for c, s in zip(weights, spreads)) ** 0.5
    assert sd < unpaired / 3  # the shared noise cancels
    # (-1, 1) is the paired difference, draw for draw
    assert (paired_fid_contrast([lo, hi], [-1, 1], reference,
                                generator=torch.Generator().manual_seed(1))
            == paired_fid_difference(lo, hi, reference,
                                     generator=torch.Generator().manual_seed(1)))
    # a set of weight 0 (a matched point that falls exactly on a measured one) is not computed
    nan_set = torch.full_like(lo, float("nan"))
    assert paired_fid_contrast([lo, nan_set], [1, 0], reference,
                               generator=torch.Generator().manual_seed(1))[0] == pytest.approx(
        fid(lo, reference), rel=1e-6)
    with pytest.raises(ValueError, match="one weight per set"):
        paired_fid_contrast(sets, weights[:3], reference)
    with pytest.raises(ValueError, match="same noise"):
        paired_fid_contrast([lo, hi[:100]], [1, -1], reference)
