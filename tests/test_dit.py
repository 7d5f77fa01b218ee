"""Lesson 12's Diffusion Transformer: patches, adaLN-Zero (identity at init), the U-Net's
interface."""

import pytest
import torch

from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.prediction import Target
from diffuse_edu.diffusion.samplers import sample_ddim
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.dit import (
    DiT,
    DiTBlock,
    DiTConfig,
    patchify,
    position_embedding,
    unpatchify,
    use_dit_pieces,
)
from diffuse_edu.training.loop import TrainConfig, train

SMALL = DiTConfig(in_channels=1, patch=2, width=32, depth=2, heads=4)


def test_patchify_and_unpatchify_are_inverse_and_tokens_are_patches():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float).reshape(2, 3, 4, 6)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 6, 12)
    torch.testing.assert_close(unpatchify(tokens, 2, 4, 6), x)
    # token 1 is the second 2x2 block of the first row of blocks; its features run p1, p2, then
    # channels
    expected = torch.stack([x[0, c, i, 2 + j] for i in range(2) for j in range(2)
                            for c in range(3)])
    torch.testing.assert_close(tokens[0, 1], expected)
    with pytest.raises(ValueError, match="divisible by the patch size 2"):
        patchify(torch.zeros(1, 1, 5, 4), 2)


def test_a_fresh_adaln_zero_block_is_the_identity_and_a_fresh_dit_outputs_zero():
    block = DiTBlock(32, 4, 4.0, zero=True)
    x, c = torch.randn(2, 7, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, c), x)
    model = DiT(SMALL)
    out = model(torch.randn(3, 1, 8, 8), torch.randint(1, 1000, (3,)))
    assert out.shape == (3, 1, 8, 8) and out.abs().max() == 0
    default = DiT(DiTConfig(**{**SMALL.__dict__, "adaln_zero": False}))
    assert default(torch.randn(3, 1, 8, 8), torch.randint(1, 1000, (3,))).abs().max() > 0


def test_the_dit_has_the_unets_interface_any_size_and_labels():
    torch.manual_seed(0)
    model = DiT(DiTConfig(in_channels=3, patch=4, width=32, depth=1, heads=2, num_classes=10,
                          adaln_zero=False))
    for h, w in ((8, 8), (8, 16), (12, 4)):
        assert model(torch.randn(2, 3, h, w), torch.tensor([1, 500])).shape == (2, 3, h, w)
    a = model(torch.zeros(1, 3, 8, 8), torch.tensor([5]), Cond(labels=torch.tensor([3])))
    b = model(torch.zeros(1, 3, 8, 8), torch.tensor([5]), Cond(labels=torch.tensor([4])))
    assert (a - b).abs().max() > 0  # the label matters
    with pytest.raises(ValueError, match="expects images of shape"):
        model(torch.zeros(1, 1, 8, 8), torch.tensor([5]))


def test_positions_are_distinct_and_bounded():
    pos = position_embedding(3, 5, 16)
    assert pos.shape == (15, 16) and pos.abs().max() <= 1
    assert torch.cdist(pos, pos).add(torch.eye(15)).min() > 0  # no two positions alike
    with pytest.raises(ValueError, match="divisible by 4"):
        position_embedding(2, 2, 6)


def test_the_training_loop_trains_a_dit_and_samplers_run_it():
    torch.manual_seed(0)
    schedule = cosine_schedule(100)
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    model = DiT(SMALL)
    result = train(model, images, DiffusionObjective(schedule, Target.V),
                   TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5),
                   show_progress=False)
    assert sum(result.losses[-10:]) < sum(result.losses[:10]) and model.predicts == "v"
    out = sample_ddim(result.ema, torch.randn(4, 1, 8, 8), schedule, steps=5)
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()


def test_a_learners_pieces_run_inside_the_dit():
    calls = {"patchify": 0, "block": 0}

    def my_patchify(x, p):
        calls["patchify"] += 1
        return patchify(x, p)

    def my_block(block, x, c):
        calls["block"] += 1
        return x
    model = DiT(SMALL)
    counts = use_dit_pieces(model, patchify=my_patchify, block=my_block)
    assert counts == {"patchify": 1, "block": 2}
    model(torch.randn(1, 1, 8, 8), torch.tensor([3]))
    assert calls == {"patchify": 1, "block": 2}
