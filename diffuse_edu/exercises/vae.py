"""Checkers for lesson 10: the reparameterisation trick and the KL of a diagonal Gaussian."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.models.vae import kl_diagonal_gaussian, reparameterise


def _moments(seed: int, shape=(3, 2, 4, 5), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g).to(dtype)
    logvar = (torch.randn(shape, generator=g) * 1.5).to(dtype)
    noise = torch.randn(shape, generator=g).to(dtype)
    return mean, logvar, noise


def _reparam_case(seed: int, dtype=torch.float32) -> Callable:
    def case(fn: Callable) -> None:
        mean, logvar, noise = _moments(seed, dtype=dtype)
        what = f"reparameterise(mean, logvar, noise) of shape {tuple(mean.shape)}, {dtype}"
        mistakes = [
            Mistake("the noise is scaled by the variance exp(logvar); scale it by the standard deviation "
                    "exp(logvar / 2).", mean + logvar.exp() * noise),
            Mistake("logvar is a log-variance, not a standard deviation: the scale is exp(logvar / 2).",
                    mean + logvar * noise),
            Mistake("the noise is scaled by exp(logvar) ** 2; the standard deviation is exp(logvar / 2).",
                    mean + (2 * logvar).exp() * noise),
            Mistake("the mean is missing: z = mean + std * noise.", (0.5 * logvar).exp() * noise),
            Mistake("that is the mean alone: the sample needs the scaled noise added.", mean),
        ]
        compare(fn(mean.clone(), logvar.clone(), noise.clone()), reparameterise(mean, logvar, noise), what=what,
                mistakes=mistakes)
    return case


def _reparam_gradient(fn: Callable) -> None:
    mean, logvar, noise = _moments(7)
    mean.requires_grad_(True)
    logvar.requires_grad_(True)
    z = fn(mean, logvar, noise)
    if not isinstance(z, torch.Tensor) or not z.requires_grad:
        raise Mismatch("the sample carries no gradient back to mean and logvar: build z from them with tensor "
                       "operations (no .detach(), no torch.normal, no torch.no_grad()) - that is the trick.")
    z.sum().backward()
    compare(logvar.grad, 0.5 * (0.5 * logvar.detach()).exp() * noise,
            what="the gradient of sum(z) with respect to logvar",
            otherwise="dz/dlogvar must be exp(logvar / 2) * noise / 2: z depends on logvar only through the scale.")


def _reparam_zero_noise(fn: Callable) -> None:
    mean, logvar, _ = _moments(3)
    compare(fn(mean, logvar, torch.zeros_like(mean)), mean, what="reparameterise with noise = 0",
            otherwise="with zero noise the sample must be the mean itself.")


REPARAMETERISE = Checker(
    "reparameterise", reparameterise,
    [_reparam_case(0), _reparam_case(1, torch.float64), _reparam_zero_noise, _reparam_gradient],
    hints=("A sample of N(mean, sigma^2) is the mean plus sigma times standard noise; the encoder gives you "
           "log(sigma^2), not sigma.",
           "Turn the log-variance into a standard deviation (a square root is a halving in log space) and keep "
           "every operation on the tensors, so that gradients reach mean and logvar."),
    see="Kingma & Welling 2014, Sec. 2.4, in lesson 10, section 1: mean + exp(logvar / 2) noise",
)


def _kl_mistakes(mean, logvar) -> list[Mistake]:
    terms = mean.square() + logvar.exp() - 1 - logvar
    return [
        Mistake("the KL is averaged over the latent dimensions; it is their sum (nats per example).",
                0.5 * terms.flatten(1).mean(1)),
        Mistake("the factor 1/2 is missing.", terms.flatten(1).sum(1)),
        Mistake("the -1 is missing: a posterior equal to the prior N(0, I) must have KL = 0.",
                0.5 * (mean.square() + logvar.exp() - logvar).flatten(1).sum(1)),
        Mistake("the sign of logvar is flipped: the term is - logvar.",
                0.5 * (mean.square() + logvar.exp() - 1 + logvar).flatten(1).sum(1)),
        Mistake("that is the KL summed over the whole batch; return one value per example, shape (B,).",
                0.5 * terms.sum().expand(mean.shape[0])),
        Mistake("logvar was used as the variance itself; the variance is exp(logvar).",
                0.5 * (mean.square() + logvar - 1 - logvar.clamp_min(1e-6).log()).flatten(1).sum(1)),
        Mistake("exp(logvar / 2) is the standard deviation sigma; the KL's term is the variance sigma^2 = exp(logvar).",
                0.5 * (mean.square() + (0.5 * logvar).exp() - 1 - logvar).flatten(1).sum(1)),
        Mistake("the mean enters squared: mean^2, not mean.",
                0.5 * (mean + logvar.exp() - 1 - logvar).flatten(1).sum(1)),
        Mistake("the log term is log sigma^2 = logvar, not log sigma = logvar / 2.",
                0.5 * (mean.square() + logvar.exp() - 1 - 0.5 * logvar).flatten(1).sum(1)),
    ]


def _kl_case(seed: int, shape=(3, 2, 4, 5), dtype=torch.float32) -> Callable:
    def case(fn: Callable) -> None:
        mean, logvar, _ = _moments(seed, shape, dtype)
        got = fn(mean.clone(), logvar.clone())
        if isinstance(got, torch.Tensor) and got.ndim == 0:
            raise Mismatch("kl_diagonal_gaussian returned one number for the whole batch; return one per example "
                           f"(shape ({shape[0]},)), summed over the latent dimensions.")
        compare(got, kl_diagonal_gaussian(mean, logvar), what=f"kl_diagonal_gaussian on latents of shape {shape}",
                mistakes=_kl_mistakes(mean, logvar))
    return case


def _kl_prior(fn: Callable) -> None:
    zeros = torch.zeros(2, 4, 3, 3)
    compare(fn(zeros, zeros), torch.zeros(2), what="kl_diagonal_gaussian(mean = 0, logvar = 0), the prior itself",
            otherwise="the KL of N(0, I) from itself must be exactly 0.")


KL_DIAGONAL_GAUSSIAN = Checker(
    "kl_diagonal_gaussian", kl_diagonal_gaussian,
    [_kl_case(0), _kl_case(1, (4, 8)), _kl_case(2, (2, 4, 2, 2), torch.float64), _kl_prior],
    hints=("Each latent dimension is an independent Gaussian, so the KL is a sum of one-dimensional KLs, each a "
           "function of that dimension's mean and log-variance only.",
           "Take the one-dimensional KL of N(m, s^2) from N(0, 1) in the lesson's Math section, with s^2 = "
           "exp(logvar) and log s^2 = logvar; then sum it over every axis but the batch."),
    see="Kingma & Welling 2014, App. B, in lesson 10, section 1: 1/2 sum(mean^2 + exp(logvar) - 1 - logvar)",
)
