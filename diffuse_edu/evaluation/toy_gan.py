"""A tiny GAN on 2-D points, the baseline of lesson 02's mode-coverage experiment.

Generator and discriminator are MLPs trained with the non-saturating loss of Goodfellow et al.
2014 (Sec. 3): the discriminator maximises log D(x) + log(1 - D(G(z))), the generator maximises
log D(G(z)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse_edu.progress import progress


def mlp(d_in: int, hidden: int, depth: int, d_out: int) -> nn.Sequential:
    """Linear layers with LeakyReLU between them."""
    layers, width = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, d_out))


def train_gan(
    data: Tensor, *, steps: int, batch_size: int = 256, hidden: int = 128, depth: int = 3,
    latent_dim: int = 2, lr: float = 1e-3, generator: torch.Generator | None = None,
    show_progress: bool = True,
) -> nn.Module:
    """Train a GAN on points ``data`` (N, d); return the generator, a map z (B, latent)
    -> (B, d)."""
    dim = data.shape[1]
    gen, disc = mlp(latent_dim, hidden, depth, dim), mlp(dim, hidden, depth, 1)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
    ones, zeros = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)
    for _ in progress(range(steps), desc="GAN", disable=not show_progress):
        real = data[torch.randint(0, data.shape[0], (batch_size,), generator=generator)]
        fake = gen(torch.randn(batch_size, latent_dim, generator=generator))
        d_loss = (F.binary_cross_entropy_with_logits(disc(real), ones)
                  + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(disc(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
    gen.latent_dim = latent_dim
    return gen.eval()


def sample_gan(gen: nn.Module, n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """n points from a trained generator. Shapes: -> (n, d)."""
    with torch.no_grad():
        return gen(torch.randn(n, gen.latent_dim, generator=generator))
