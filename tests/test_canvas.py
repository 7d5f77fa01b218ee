"""Lesson 12's data: brightness, canvases, aspect-ratio buckets (and the loop training on them), and
the probes that read them: subjects side by side, receptive fields, straight paths."""

import pytest
import torch

from diffuse_edu import data
from diffuse_edu.data.canvas import Buckets, place, side_by_side, with_brightness
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.evaluation.probes import receptive_field, straightness, subjects_across
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.loop import TrainConfig, train

DIGITS = data.load_digits("train", size=8).images[:200]


def test_brightness_moves_the_mean_and_keeps_the_range():
    offsets = torch.linspace(-0.5, 0.5, 5)
    out = with_brightness(DIGITS[:5], offsets)
    means = out.flatten(1).mean(1)
    assert (means.diff() > 0).all() and out.min() >= -1 and out.max() <= 1


def test_one_and_two_subjects_are_counted_on_real_canvases():
    g = torch.Generator().manual_seed(0)
    one = place(DIGITS[:100], 16, generator=g)
    two = side_by_side(DIGITS[:100], DIGITS[100:200])
    assert one.shape == (100, 1, 8, 16) and two.shape == (100, 1, 8, 16)
    assert (subjects_across(one) == 1).float().mean() > 0.9
    assert (subjects_across(two) == 2).float().mean() > 0.8
    with pytest.raises(ValueError, match="cannot hold"):
        place(DIGITS[:1], 4)


def test_buckets_draw_one_shape_per_batch_and_train():
    square, wide = DIGITS[:64], place(DIGITS[64:96], 16, generator=torch.Generator().manual_seed(1))
    buckets = Buckets((square, wide), seed=3)
    shapes = [tuple(buckets.draw(8, torch.Generator().manual_seed(i)).shape[-2:])
              for i in range(40)]
    # 2:1 by size
    assert set(shapes) == {(8, 8), (8, 16)} and shapes.count((8, 8)) > shapes.count((8, 16))
    again = Buckets((square, wide), seed=3)
    # the order repeats with the seed
    assert [tuple(again.draw(8).shape[-2:]) for _ in range(40)] == shapes
    torch.manual_seed(0)
    model = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2))
    result = train(model, buckets, DiffusionObjective(cosine_schedule(100)),
                   TrainConfig(steps=6, batch_size=8), show_progress=False)
    assert result.steps == 6
    with pytest.raises(ValueError, match="takes no conditions"):
        from diffuse_edu.models.conditioning import Cond
        train(model, buckets, DiffusionObjective(cosine_schedule(100)),
              TrainConfig(steps=1, batch_size=8),
              cond=Cond(labels=torch.zeros(96, dtype=torch.long)), show_progress=False)


def test_receptive_field_of_a_local_and_a_global_map():
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    field = receptive_field(lambda x, t, c=None: conv(x), torch.randn(1, 1, 8, 8),
                            torch.tensor([1]), (4, 4))
    assert field.shape == (8, 8) and (field > 0).sum() <= 9 and field[4, 4] > 0
    mean_all = lambda x, t, c=None: x.mean().expand_as(x)  # noqa: E731
    assert (receptive_field(mean_all, torch.randn(1, 1, 8, 8), torch.tensor([1]), (0, 0)) > 0).all()


def test_straightness_is_zero_on_a_line_and_grows_with_a_bend():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    times = [1.0, 0.75, 0.5, 0.25, 0.0]
    line = [a + (1 - s) * (b - a) for s in times]
    assert straightness(line, times).abs().max() < 1e-12
    bent = [p + torch.tensor([[0.0, 0.5, 0.0]]) * (s * (1 - s)) * 4 for p, s in zip(line, times)]
    assert (straightness(bent, times) > 0.05).all()
    with pytest.raises(ValueError, match="at least three states"):
        straightness(line[:2], times[:2])
