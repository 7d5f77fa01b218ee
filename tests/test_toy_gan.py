import torch

from diffuse_edu import data
from diffuse_edu.evaluation.toy_gan import sample_gan, train_gan


def test_gan_trains_and_samples():
    g = torch.Generator().manual_seed(0)
    points = data.gaussian_ring(1000, generator=g)
    torch.manual_seed(0)
    gen = train_gan(points, steps=30, batch_size=64, hidden=16, generator=g, show_progress=False)
    out = sample_gan(gen, 50, generator=g)
    assert out.shape == (50, 2) and torch.isfinite(out).all()


def test_mode_coverage_counts_points_near_each_centre():
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    samples = torch.tensor([[0.1, 0.0], [0.0, -0.2], [4.9, 0.1], [2.5, 0.0]])
    assert data.mode_coverage(samples, centres, radius=0.25).tolist() == [2, 1]
