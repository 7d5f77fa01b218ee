"""Checker for lesson 06: the square root of a symmetric positive semi-definite matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.evaluation.fid import sqrtm_psd
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare


def _psd(d: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank, generator=g, dtype=torch.float64)
    return a @ a.T / rank


def _mistakes(a: torch.Tensor) -> list[Mistake]:
    vals, vecs = torch.linalg.eigh(a)
    root_vals = vals.clamp_min(0).sqrt()
    return [
        Mistake("you took the square root of each entry; the matrix square root R satisfies R @ R "
                "= A (use the eigendecomposition).", a.clamp_min(0).sqrt()),
        Mistake("the eigenvalues were not square-rooted: V diag(l) V^T is A itself.", a.clone()),
        Mistake("V and V^T are swapped: A = V diag(l) V^T, with the eigenvectors in V's columns.",
                (vecs.T * root_vals) @ vecs),
        Mistake("that is the inverse square root (1 / sqrt(l)); take sqrt(l).",
                (vecs * vals.clamp_min(1e-12).rsqrt()) @ vecs.T),
        Mistake("that is the Cholesky factor L (L L^T = A, lower triangular); the square root is "
                "the symmetric R with R @ R = A.",
                torch.linalg.cholesky(a + 1e-12 * torch.eye(len(a), dtype=a.dtype))),
        Mistake("the eigenvalues were squared; take their square roots.",
                (vecs * vals.square()) @ vecs.T),
        Mistake("that is diag(sqrt(l)) in the eigenvectors' basis: rotate it back, V "
                "diag(sqrt(l)) V^T.",
                torch.diag(root_vals)),
    ]


def _values(fn: Callable) -> None:
    a = _psd(6, 6, 0)
    got = fn(a.clone())
    if isinstance(got, torch.Tensor) and got.is_complex():
        raise Mismatch("sqrtm returned complex numbers: torch.linalg.eig treats any matrix; for a "
                       "symmetric one use torch.linalg.eigh, whose eigenvalues are real and whose "
                       "eigenvectors are orthonormal (V^T undoes V).")
    compare(got, sqrtm_psd(a), what="sqrtm of a 6 x 6 covariance matrix",
            mistakes=_mistakes(a), rtol=1e-6, atol=1e-8)


def _squares_back(fn: Callable) -> None:
    a = _psd(10, 10, 1)
    r = fn(a.clone())
    if isinstance(r, torch.Tensor) and r.shape == a.shape:
        compare(r @ r, a, what="R @ R for your root R of a 10 x 10 matrix", rtol=1e-6, atol=1e-8,
                otherwise="R @ R should give back A.")


def _rank_deficient(fn: Callable) -> None:
    a = _psd(8, 3, 2)  # rank 3: five eigenvalues are 0 up to round-off, some slightly negative
    r = fn(a.clone())
    if isinstance(r, torch.Tensor) and torch.isnan(r).any():
        raise Mismatch("a covariance of rank 3 (8 x 8) gave NaN: round-off makes some zero "
                       "eigenvalues slightly negative; clamp them at 0 before the square root.")
    compare(r, sqrtm_psd(a), what="sqrtm of a rank-deficient 8 x 8 covariance",
            rtol=1e-5, atol=1e-7)


SQRTM_PSD = Checker(
    "sqrtm_psd", sqrtm_psd, [_values, _squares_back, _rank_deficient],
    hints=(
        ('A symmetric matrix is diagonal in the basis of its eigenvectors, and torch.linalg.eigh '
         'gives both.'),
        ('Take the square root where the matrix is diagonal, then rotate back with the '
         'eigenvectors. Round-off can make a zero eigenvalue slightly negative: its square root '
         'must not become NaN.'),
    ),
    see="lesson 06, section 1: V sqrt(max(lambda, 0)) V^T from the eigendecomposition",
)
