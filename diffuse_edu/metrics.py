"""Measuring images (lessons 03 and 06).

So far: how much of an image's energy sits at high spatial frequencies, a measure of fine detail
used to tell a sharp denoiser from a blurry one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def radial_frequency(h: int, w: int, *, device: torch.device | None = None) -> Tensor:
    """|f| of each 2-D FFT bin, as a share of the Nyquist frequency (0 .. sqrt(2)). Shapes: (h, w)."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.fftfreq(w, device=device)[None, :]
    return torch.sqrt(fx**2 + fy**2) / 0.5


def high_frequency_energy(images: Tensor, *, cutoff: float = 0.5) -> Tensor:
    """Mean spectral energy per image above ``cutoff`` x Nyquist, after removing each image's mean.

    Shapes: images (N, C, H, W) -> (N,).
    """
    x = images.float() - images.float().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2 / (x.shape[-1] * x.shape[-2])  # (N, C, H, W)
    mask = radial_frequency(*x.shape[-2:], device=x.device) > cutoff
    return (power * mask).sum(dim=(-3, -2, -1)) / x.shape[-3]


# ----------------------------------------------------------------------------- FID (lesson 06)
def mean_and_covariance(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of feature vectors, in float64. Shapes: (N, D) -> (D,), (D, D)."""
    f = features.double()
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def sqrtm_psd(a: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition.

    a = V diag(l) V^T  ->  V diag(sqrt(max(l, 0))) V^T. Shapes: (D, D) -> (D, D).
    """
    a = (a + a.T) / 2  # remove round-off asymmetry
    vals, vecs = torch.linalg.eigh(a)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982; Heusel et al. 2017, Eq. 6).

    Tr((S1 S2)^(1/2)) is computed as Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), a symmetric PSD root.
    """
    root1 = sqrtm_psd(sigma1)
    cross = sqrtm_psd(root1 @ sigma2 @ root1)
    return ((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross.trace()).item()


def fid(features_a: Tensor, features_b: Tensor) -> float:
    """The Frechet distance between the Gaussians fitted to two sets of features."""
    return frechet_distance(*mean_and_covariance(features_a), *mean_and_covariance(features_b))


def _kth_neighbour_radius(features: Tensor, k: int, batch: int = 2048) -> Tensor:
    """Distance from each vector to its k-th nearest other vector in the same set. Shapes: (N,)."""
    radii = [torch.cdist(chunk, features).kthvalue(k + 1, dim=1).values for chunk in features.split(batch)]
    return torch.cat(radii)


def _inside_any_ball(queries: Tensor, centres: Tensor, radii: Tensor, batch: int = 2048) -> Tensor:
    """For each query, whether it lies within radii[j] of some centre j. Shapes: (M,) bool."""
    return torch.cat([(torch.cdist(q, centres) <= radii[None]).any(1) for q in queries.split(batch)])


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-3) on feature vectors.

    Precision: share of fake samples inside the real manifold (the union of balls around each real
    vector reaching its k-th neighbour); recall: share of real samples inside the fake manifold.
    """
    real, fake = real.double(), fake.double()
    precision = _inside_any_ball(fake, real, _kth_neighbour_radius(real, k)).double().mean().item()
    recall = _inside_any_ball(real, fake, _kth_neighbour_radius(fake, k)).double().mean().item()
    return precision, recall


def nearest_neighbour(queries: Tensor, reference: Tensor, batch: int = 1024) -> tuple[Tensor, Tensor]:
    """L2 distance from each query to its nearest reference, and that reference's index.

    Shapes: queries (M, ...), reference (N, ...) -> (M,), (M,).
    """
    ref = reference.flatten(1).double()
    dists, idxs = [], []
    for chunk in queries.flatten(1).double().split(batch):
        d, i = torch.cdist(chunk, ref).min(dim=1)
        dists.append(d)
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


@torch.no_grad()
def adherence(classifier: torch.nn.Module, images: Tensor, labels: Tensor, batch: int = 1024) -> float:
    """Share of images a classifier assigns to the class they were meant to show (lessons 06, 08)."""
    preds = torch.cat([classifier(b).argmax(1) for b in images.split(batch)])
    return (preds == labels.to(preds.device)).double().mean().item()
