import pytest
import torch

pytest.importorskip("diffusers")

from diffuse_edu.evaluation.baseline import diffusers_unet, sample_diffusers, train_diffusers


def test_diffusers_baseline_trains_for_its_budget_and_samples():
    torch.manual_seed(0)
    unet = diffusers_unet(8, 1, (32, 32), 1)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    out = train_diffusers(unet, images, seconds=1.0, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert out["steps"] >= 1 and out["seconds"] >= 1.0 and out["images_per_second"] > 0
    x = sample_diffusers(unet.eval(), 3, (1, 8, 8), steps=3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and x.abs().max() <= 1
