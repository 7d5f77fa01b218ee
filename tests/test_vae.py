"""Lesson 10's VAE: shapes, the two formulas against torch.distributions, and training through the
course's one training loop."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffuse_edu import data
from diffuse_edu.models.vae import (
    VAE,
    VAEConfig,
    VAEObjective,
    encode_dataset,
    kl_diagonal_gaussian,
    latent_scale,
    reparameterise,
)
from diffuse_edu.training.loop import TrainConfig, train


def test_shapes_and_a_clear_error_for_the_wrong_input():
    vae = VAE(VAEConfig(channels=(16, 32, 32), latent_channels=3))
    x = torch.randn(2, 1, 16, 16)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 3, 4, 4) and vae.config.factor == 4
    x_hat, m, lv = vae(x)
    assert x_hat.shape == x.shape
    with pytest.raises(ValueError, match="divisible by 4"):
        vae.encode(torch.randn(2, 1, 10, 10))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        vae.encode(torch.randn(2, 3, 16, 16))


def test_kl_and_reparameterisation_agree_with_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    std = (0.5 * logvar).exp()
    want = kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(kl_diagonal_gaussian(mean, logvar), want, atol=1e-5)
    assert torch.equal(kl_diagonal_gaussian(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_reparameterised_samples_have_the_posteriors_moments():
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.tensor([0.5, -1.0]), torch.tensor([0.0, -2.0])
    z = reparameterise(mean.expand(200_000, 2), logvar.expand(200_000, 2),
                       torch.randn(200_000, 2, generator=g))
    assert torch.allclose(z.mean(0), mean, atol=0.01)
    assert torch.allclose(z.std(0), (0.5 * logvar).exp(), atol=0.01)


def test_the_training_loop_trains_a_vae_and_latents_rescale_to_unit_variance():
    images = data.load_digits("train").images[:512]
    vae = VAE(VAEConfig(channels=(16, 32), latent_channels=2))
    objective = VAEObjective(latent_shape=(2, 8, 8), kl_weight=0.1)
    torch.manual_seed(0)
    result = train(vae, images, objective,
                   TrainConfig(steps=60, batch_size=64, lr=2e-3, warmup_steps=5, ema_decay=None),
                   generator=torch.Generator().manual_seed(0), show_progress=False)
    assert sum(result.losses[-10:]) / 10 < 0.5 * sum(result.losses[:5]) / 5
    latents = encode_dataset(vae.eval(), images)
    assert latents.shape == (512, 2, 8, 8)
    scaled = latents * latent_scale(latents)
    assert abs(scaled.std().item() - 1) < 1e-4


def test_a_learners_pieces_run_inside_the_vae_and_its_objective():
    """Lesson 10 trains its VAEs with the learner's reparameterise and kl_diagonal_gaussian."""
    calls = []

    def my_reparameterise(mean, logvar, noise):
        calls.append("reparameterise")
        return reparameterise(mean, logvar, noise)

    def my_kl(mean, logvar):
        calls.append("kl")
        return 2 * kl_diagonal_gaussian(mean, logvar)  # a wrong KL must change the loss

    vae = VAE(VAEConfig(channels=(8, 8), latent_channels=2, groups=4))
    vae.reparameterise_fn = my_reparameterise
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    objective = VAEObjective((2, 4, 4), kl_weight=1.0)
    t, eps = objective.draw(x, torch.Generator().manual_seed(0))
    plain, _ = objective(vae, x, t=t, eps=eps)
    doubled, _ = VAEObjective((2, 4, 4), kl_weight=1.0, kl_fn=my_kl)(vae, x, t=t, eps=eps)
    assert calls == ["reparameterise", "reparameterise", "kl"]
    mean, logvar = vae.encode(x)
    assert torch.allclose(doubled - plain, kl_diagonal_gaussian(mean, logvar), atol=1e-4)


def test_vae_loss_is_the_objective_and_a_learners_loss_is_used():
    from diffuse_edu.models.vae import decode_latents, encode_latents, vae_loss

    torch.manual_seed(0)
    vae = VAE(VAEConfig(in_channels=1, channels=(8, 8), latent_channels=2, groups=4))
    x, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 2, 4, 4)
    library, _ = VAEObjective((2, 4, 4), kl_weight=0.3)(vae, x, t=torch.zeros(3), eps=noise)
    torch.testing.assert_close(vae_loss(vae, x, noise, 0.3), library)
    seen = []
    mine, _ = VAEObjective((2, 4, 4), 0.3,
                           loss_fn=lambda v, xx, n, w: seen.append(w) or vae_loss(v, xx, n, w))(
        vae, x, t=torch.zeros(3), eps=noise)
    assert seen == [0.3] and torch.equal(mine, library)
    z = encode_latents(vae, x, 0.5)
    assert not z.requires_grad
    torch.testing.assert_close(z, 0.5 * vae.encode(x)[0].detach())
    torch.testing.assert_close(decode_latents(vae, z, 0.5), vae.decode(vae.encode(x)[0]).detach())
