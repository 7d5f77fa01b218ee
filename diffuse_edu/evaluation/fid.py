"""The Frechet Inception Distance (lesson 06; Heusel et al. 2017), on any feature vectors.

FID fits a Gaussian to the features of each set of images and measures the Frechet (2-Wasserstein)
distance between the two Gaussians. Lower is closer; it depends on the feature network and on the
number of images, so compare only numbers made the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def mean_and_covariance(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of feature vectors, in float64. Shapes: (N, D) -> (D,),
    (D, D)."""
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def sqrtm_psd(a: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, by
    eigendecomposition.

    a = V diag(l) V^T  ->  V diag(sqrt(max(l, 0))) V^T. Shapes: (D, D) -> (D, D).
    """
    a = (a + a.T) / 2  # remove round-off asymmetry
    vals, vecs = torch.linalg.eigh(a)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor, *,
                     sqrtm: Callable[[Tensor], Tensor] = sqrtm_psd) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982; Heusel et al. 2017,
    Eq. 6).

    Tr((S1 S2)^(1/2)) is computed as Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), a symmetric PSD root, with
    ``sqrtm`` (:func:`sqrtm_psd`, or lesson 06's learner's).
    """
    root1 = sqrtm(sigma1)
    cross = sqrtm(root1 @ sigma2 @ root1)
    return ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross.trace()).item()


def fid(features_a: Tensor, features_b: Tensor, *,
        sqrtm: Callable[[Tensor], Tensor] = sqrtm_psd) -> float:
    """The Frechet distance between the Gaussians fitted to two sets of features."""
    return frechet_distance(*mean_and_covariance(features_a), *mean_and_covariance(features_b),
                            sqrtm=sqrtm)


def fid_with_spread(features: Tensor, reference: Tensor, *, draws: int = 20,
                    generator: torch.Generator | None = None) -> tuple[float, float]:
    """FID and its bootstrap standard deviation: the samples' features resampled with replacement
    ``draws`` times. Use the spread to call a difference between two FIDs real or within noise.

    Shapes: features (N, D), reference (M, D) -> (fid, std).
    """
    ref_stats = mean_and_covariance(reference)
    return _with_bootstrap(lambda rows: frechet_distance(*mean_and_covariance(features[rows]),
                                                         *ref_stats),
                           features, draws, generator)


def _with_bootstrap(statistic: Callable[[Tensor | slice], float], features: Tensor, draws: int,
                    generator: torch.Generator | None) -> tuple[float, float]:
    """``statistic`` of all rows, and its standard deviation over ``draws`` resamplings of the
    rows."""
    n = features.shape[0]
    boot = [statistic(torch.randint(0, n, (n,),
                                    generator=generator).to(features.device)) for _ in range(draws)]
    return statistic(slice(None)), torch.tensor(boot, dtype=torch.float64).std().item()


def paired_fid_difference(features_a: Tensor, features_b: Tensor, reference: Tensor, *,
                          draws: int = 20,
                          generator: torch.Generator | None = None) -> tuple[float, float]:
    """FID(b) - FID(a) for two sample sets drawn from the same noise (row i of each from the same
    starting point and condition), and the bootstrap standard deviation of that difference with the
    same rows resampled for both. Pairing cancels the noise the two sets share, so it resolves
    differences that the two unpaired spreads of ``fid_with_spread`` would hide. It is
    :func:`paired_fid_contrast` with weights (-1, 1).

    Shapes: features_a (N, D), features_b (N, D), reference (M, D) -> (difference, std).
    """
    return paired_fid_contrast([features_a, features_b], [-1.0, 1.0], reference, draws=draws,
                               generator=generator)


def paired_fid_contrast(features: Sequence[Tensor], weights: Sequence[float], reference: Tensor,
                        *, draws: int = 20,
                        generator: torch.Generator | None = None) -> tuple[float, float]:
    """sum_k weights[k] * FID(features[k]) for sample sets all drawn from the same noise (row i of
    each from the same starting point and condition), and the bootstrap standard deviation of that
    sum with the same rows resampled for every set, so that the noise the sets share cancels.

    Two methods compared at a matched value of something else (adherence, say), each read off its
    curve between the two measured points that bracket it, ``FID = (1 - w) FID(lo) + w FID(hi)``:
    the gap is the contrast of four sets with weights ``(1 - w, w, -(1 - v), -v)``. Sets with weight
    0 are not computed. :func:`paired_fid_difference` is weights (-1, 1).

    Shapes: features k (N, D) each, reference (M, D) -> (contrast, std).
    """
    if len(features) != len(weights) or not len(features):
        raise ValueError(f"paired_fid_contrast weighs each sample set once: got "
                         f"{len(features)} sets and {len(weights)} weights; give one weight per "
                         "set (at least one).")
    shapes = {tuple(f.shape) for f in features}
    if len(shapes) > 1:
        raise ValueError(f"Paired sets need the same shape, got {sorted(shapes)}: draw every set "
                         "from the same noise, in the same order.")
    ref_stats = mean_and_covariance(reference)
    used = [(float(w), f) for w, f in zip(weights, features) if w != 0]

    def contrast(rows: Tensor | slice) -> float:
        total = 0.0
        for w, f in used:
            total += w * frechet_distance(*mean_and_covariance(f[rows]), *ref_stats)
        return total

    return _with_bootstrap(contrast, features[0], draws, generator)
