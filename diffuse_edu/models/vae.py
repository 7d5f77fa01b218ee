"""A variational autoencoder from scratch (lesson 10), the first stage of latent diffusion.

Kingma & Welling (2014): an encoder maps an image x to a diagonal Gaussian q(z | x) = N(mean,
exp(logvar)) over a smaller latent z; a decoder maps z back to an image. Training maximises the
evidence lower bound, i.e. minimises, per image,

    loss = ||x - decode(z)||^2 + lambda * KL(q(z | x) || N(0, I)),  z = mean + std * eps,

where sampling z through ``reparameterise`` keeps the path from the loss to the encoder
differentiable (their Sec. 2.4) and the KL of two Gaussians has a closed form (their App. B): KL =
1/2 sum(mean^2 + exp(logvar) - 1 - logvar) nats. The summed squared error is the negative
log-likelihood of a Gaussian decoder of variance 1/2 (up to a constant), so lambda = 1 gives the
negative ELBO; the KL weight lambda trades the two terms (the beta of Higgins et al. 2017, renamed
here: beta is the noise schedule's); latent diffusion uses a small one, so the latents stay
informative (Rombach et al. 2022, Sec. 3.1), and rescales the latents to unit variance before
diffusing them (their App. G, Stable Diffusion's 0.18215).

The networks reuse lesson 03's residual blocks, downsampling and upsampling (no time embedding).
:class:`VAEObjective` lets the course's one training loop train it like any other model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse_edu.models.unet import Downsample, ResBlock, Upsample


def reparameterise(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """z = mean + exp(logvar / 2) * noise: a sample of N(mean, exp(logvar)) that gradients flow
    through (Kingma & Welling 2014, Sec. 2.4), lesson 10.

    Shapes: all three alike (B, ...) -> like mean.
    """
    return mean + (0.5 * logvar).exp() * noise


def kl_diagonal_gaussian(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats per example (Kingma & Welling 2014, App. B),
    lesson 10: 1/2 sum over every latent dimension of mean^2 + exp(logvar) - 1 - logvar.

    Shapes: mean, logvar (B, ...) -> (B,).
    """
    return 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(1)


@dataclass(frozen=True)
class VAEConfig:
    """Everything that decides a VAE's shape; saved with every checkpoint."""

    in_channels: int = 1
    channels: tuple[int, ...] = (32, 64)  # width per level; the resolution halves between levels
    latent_channels: int = 4  # channels of z; H and W shrink by 2 ** (levels - 1)
    blocks_per_level: int = 1
    groups: int = 8

    @property
    def factor(self) -> int:
        """How much H and W shrink from image to latent."""
        return 2 ** (len(self.channels) - 1)


class VAE(nn.Module):
    """encode(x) -> (mean, logvar) of q(z | x); decode(z) -> x_hat; forward(x, noise) -> all three.

    Shapes: x (B, in_channels, H, W) with H, W divisible by ``config.factor``; z and its moments
    (B, latent_channels, H / factor, W / factor).
    """

    config_class = VAEConfig  # what checkpoints rebuild it from

    def __init__(self, config: VAEConfig = VAEConfig()):
        super().__init__()
        self.config = cfg = config
        ch, g = cfg.channels, cfg.groups

        def level(c_in: int, c_out: int) -> list[nn.Module]:
            return [ResBlock(c_in if i == 0 else c_out, c_out, None, g,
                             0.0) for i in range(cfg.blocks_per_level)]

        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)]
        for i, c in enumerate(ch):
            enc += level(ch[max(i - 1, 0)], c)
            if i < len(ch) - 1:
                enc.append(Downsample(c))
        enc += [nn.GroupNorm(g, ch[-1]), nn.SiLU(),
                nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)]
        for i in reversed(range(len(ch))):
            dec += level(ch[min(i + 1, len(ch) - 1)], ch[i])
            if i > 0:
                dec.append(Upsample(ch[i]))
        dec += [nn.GroupNorm(g, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.reparameterise_fn: Callable[[Tensor, Tensor, Tensor],
                                         Tensor] = reparameterise  # a learner's, lesson 10

    def _check(self, x: Tensor) -> None:
        c, f = self.config.in_channels, self.config.factor
        if x.ndim != 4 or x.shape[1] != c:
            raise ValueError(f"VAE expects images of shape (B, {c}, H, W), got {tuple(x.shape)}.")
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(f"H and W must be divisible by {f} for {len(self.config.channels)} "
                             f"levels, got {tuple(x.shape[-2:])}.")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The moments of q(z | x): (mean, logvar), logvar clamped to [-30, 20] for stability."""
        self._check(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """x_hat from a latent (no squashing: images live in [-1, 1] and the loss keeps them
        there)."""
        return self.decoder(z)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x_hat, mean, logvar); z is drawn with ``noise`` (default: fresh N(0, I))."""
        mean, logvar = self.encode(x)
        noise = torch.randn_like(mean) if noise is None else noise
        return self.decode(self.reparameterise_fn(mean, logvar, noise)), mean, logvar


def vae_loss(vae: VAE, x: Tensor, noise: Tensor, kl_weight: float = 1.0) -> Tensor:
    """The VAE's training loss per example (lesson 10's exercise): encode, draw z with ``noise``
    through the VAE's reparameterisation, decode, and add the squared error summed over pixels to
    ``kl_weight`` times the KL.

    The summed squared error is the negative log-likelihood of a Gaussian decoder of variance 1/2,
    -log N(x; x_hat, I/2) = ||x - x_hat||^2 + const, so with kl_weight = 1 the loss is the negative
    ELBO (up to that constant). Shapes: x (B, C, H, W), noise like the latents -> (B,).
    """
    mean, logvar = vae.encode(x)
    x_hat = vae.decode(vae.reparameterise_fn(mean, logvar, noise))
    recon = (x_hat.float() - x.float()).square().flatten(1).sum(1)
    return recon + kl_weight * kl_diagonal_gaussian(mean.float(), logvar.float())


@dataclass(frozen=True, eq=False)
class VAEObjective:
    """The VAE's loss as an objective of the course's training loop.

    ``loss_fn(vae, x, noise, kl_weight) -> (B,)`` is :func:`vae_loss` (with ``kl_fn`` as its KL) or
    a learner's. ``draw`` gives the loop the latent noise; the "noise level" it records is 0 for
    every example (a VAE has none).
    """

    latent_shape: tuple[int, int, int]  # (C, H, W) of z for the training images
    kl_weight: float = 1.0  # lambda: 1 is the negative ELBO of a decoder of variance 1/2
    kl_fn: Callable[[Tensor, Tensor], Tensor] = kl_diagonal_gaussian  # a learner's, lesson 10
    loss_fn: Callable[..., Tensor] | None = None  # a learner's vae_loss, lesson 10
    t_max = 1.0

    def draw(self, x0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        b = x0.shape[0]
        noise = torch.randn((b, *self.latent_shape), generator=generator, device=x0.device,
                            dtype=x0.dtype)
        return torch.zeros(b, device=x0.device), noise

    def __call__(self, model: nn.Module, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if t is None or eps is None:
            t, eps = self.draw(x0, generator)
        if self.loss_fn is not None:
            return self.loss_fn(model, x0, eps, self.kl_weight), t
        mean, logvar = model.encode(x0)
        x_hat = model.decode(model.reparameterise_fn(mean, logvar, eps))
        recon = F.mse_loss(x_hat.float(), x0.float(), reduction="none").flatten(1).sum(1)
        return recon + self.kl_weight * self.kl_fn(mean.float(), logvar.float()), t


def encode_latents(vae: VAE, images: Tensor, scale: float) -> Tensor:
    """Images -> the latents a diffusion model trains on (lesson 10's exercise): the posterior
    means of q(z | x), times ``scale`` (unit standard deviation). No gradients.

    Shapes: (N, C, H, W) -> (N, latent_channels, H / factor, W / factor).
    """
    with torch.no_grad():
        return scale * vae.encode(images)[0]


def decode_latents(vae: VAE, latents: Tensor, scale: float) -> Tensor:
    """Latents a diffusion model sampled -> images (lesson 10's exercise): divide by ``scale``
    (undo the scaling) and decode; no clipping of the latents (they have no [-1, 1] range).

    Shapes: (N, latent_channels, h, w) -> (N, C, h * factor, w * factor).
    """
    with torch.no_grad():
        return vae.decode(latents / scale)


@torch.no_grad()
def encode_dataset(vae: VAE, images: Tensor, *, batch_size: int = 1024, sample: bool = False,
                   generator: torch.Generator | None = None) -> Tensor:
    """Latents of ``images``: the means of q(z | x) (or samples of it with ``sample``). Shapes:
    (N, C, H, W) -> (N, latent_channels, H / factor, W / factor)."""
    out = []
    for batch in images.split(batch_size):
        mean, logvar = vae.encode(batch)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device,
                                dtype=mean.dtype)
            mean = vae.reparameterise_fn(mean, logvar, noise)
        out.append(mean)
    return torch.cat(out)


def latent_scale(latents: Tensor) -> float:
    """The factor that gives ``latents`` unit standard deviation (Rombach et al. 2022, App. G:
    Stable Diffusion's 0.18215 is this number for its VAE)."""
    return 1.0 / latents.float().std().clamp_min(1e-8).item()
