import math

import pytest
import torch

from diffuse_edu.models.time_embedding import ScaleShift, TimeEmbedding, sinusoidal_embedding


def test_closed_form():
    t = torch.tensor([0, 3, 500])
    emb = sinusoidal_embedding(t, 8)
    for row, tv in enumerate(t.tolist()):
        for i in range(4):
            w = 10_000 ** (-i / 4)
            assert emb[row, i].item() == pytest.approx(math.sin(tv * w), abs=1e-5)
            assert emb[row, 4 + i].item() == pytest.approx(math.cos(tv * w), abs=1e-5)


def test_odd_dim_and_float_t():
    emb = sinusoidal_embedding(torch.tensor([0.5, 2.0]), 7)
    assert emb.shape == (2, 7) and emb.dtype == torch.float32
    assert torch.all(emb[:, -1] == 0)


def test_matches_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0, 1, 17, 999])
    theirs = embeddings.get_timestep_embedding(t, 32, flip_sin_to_cos=False, downscale_freq_shift=0)
    torch.testing.assert_close(sinusoidal_embedding(t, 32), theirs)


def test_scale_shift_starts_as_identity():
    mod = ScaleShift(emb_dim=6, channels=4)
    h = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(mod(h, torch.randn(2, 6)), h)


def test_time_embedding_shape():
    assert TimeEmbedding(24)(torch.tensor([1, 2, 3])).shape == (3, 24)
