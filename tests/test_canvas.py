"""Lesson 12's data: brightness, canvases, aspect-ratio buckets (and the loop training on them), and
the probes that read them: subjects side by side, receptive fields, straight paths."""

import pytest
import torch

from diffuse_edu import data
from diffuse_edu.data.canvas import Buckets, place, side_by_side, with_brightness
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.evaluation.features import recognisable
from diffuse_edu.evaluation.probes import (
    digits_per_half,
    ink_share,
    near_data,
    receptive_field,
    straightness,
    subjects_across,
)
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training import recipes
from diffuse_edu.training.loop import TrainConfig, train
from diffuse_edu.training.pretrained import course_classifier

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


def test_digits_per_half_needs_ink_and_a_sure_judge_in_each_half():
    """The counter's logic, with stand-in judges: a half counts when it holds half a digit's ink
    and the judge is sure of it; a sure judge alone, or ink alone, is not enough."""
    digit, empty = torch.full((1, 1, 8, 8), -1.0), torch.full((1, 1, 8, 8), -1.0)
    digit[..., 1:7, 3:5] = 1.0  # 12 of 64 pixels: ink share 0.1875
    faint = torch.full((1, 1, 8, 8), -1.0)
    faint[..., 2:4, 3:5] = 1.0  # 4 pixels: 0.0625, under half of 0.1875
    canvases = torch.cat([side_by_side(digit, digit), side_by_side(digit, empty),
                          side_by_side(faint, digit), side_by_side(empty, empty)])
    sure = lambda h: torch.ones(len(h))  # noqa: E731
    unsure = lambda h: torch.zeros(len(h))  # noqa: E731
    assert digits_per_half(canvases, sure, digit_ink=0.1875).tolist() == [2, 1, 1, 0]
    assert digits_per_half(canvases, unsure, digit_ink=0.1875).tolist() == [0, 0, 0, 0]
    left_only = lambda h: (h[..., :4] > 0).flatten(1).any(1).float()  # noqa: E731
    assert digits_per_half(canvases, left_only, digit_ink=0.1875).tolist() == [2, 1, 1, 0]
    with pytest.raises(ValueError, match="odd"):
        digits_per_half(canvases[..., :15], sure, digit_ink=0.1875)


def _ink_runs(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """Square canvases holding an ink run that is no digit, as a model's wide samples draw them:
    a filled square, a horizontal dash or a smudge (random pixels of a 6 x 6 patch inked)."""
    out = torch.full((n, 1, 8, 8), -1.0)
    for i in range(n):
        r, c = torch.randint(0, 3, (2,), generator=generator).tolist()
        if kind == "square":
            out[i, :, 1 + r:5 + r, 1 + c:5 + c] = 1.0
        elif kind == "dash":
            out[i, :, 2 + r:4 + r, :] = 1.0
        else:
            patch = out[i, 0, 1:7, 1:7]
            patch[torch.rand(6, 6, generator=generator) < 0.6] = 1.0
    return out


def test_near_data_passes_real_digits_and_rejects_blobs_whatever_the_judge():
    """The typicality gate is calibrated on real data, so it holds with any judge: even a judge
    that is sure of everything counts a digit beside a blob as one digit."""
    train_digits = data.load_digits("train", size=8).images
    digits = data.load_digits("test", size=8).images
    gate = near_data(train_digits, digits, quantile=0.99)
    assert gate(digits).mean() >= 0.98
    g = torch.Generator().manual_seed(0)
    n, ink = len(digits) // 2, ink_share(digits).mean().item()
    sure = lambda h: torch.ones(len(h))  # noqa: E731
    for kind in ("square", "dash", "smudge"):
        blobs = _ink_runs(kind, n, g)
        assert gate(blobs).mean() < 0.02, f"a {kind} passed as a digit"
        counted = digits_per_half(side_by_side(digits[:n], blobs), sure, digit_ink=ink,
                                  typical=gate)
        assert (counted == 2).float().mean() < 0.02
    noise = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
    assert gate(noise).mean() < 0.02, "noise passed as a digit"
    with pytest.raises(ValueError, match="differ in shape"):
        near_data(train_digits, digits[..., :4])
    with pytest.raises(ValueError, match="halves of a wide canvas"):
        gate(side_by_side(digits[:2], digits[2:4]))
    with pytest.raises(ValueError, match="quantile"):
        near_data(train_digits, digits, quantile=99)


def test_digits_per_half_on_generated_like_canvases():
    """Issue 47: the two-subject counter of lesson 12 checked on canvases like a model's wide
    samples, built from real held-out digits and synthetic ink runs. The ink-run counter calls a
    digit beside any blob two subjects; the judge per half must not. The course's classifier alone
    is no guard: trained from other seeds or thread counts it was sure of a filled square 20-73%
    of the time (a fresh CI cache's judge called a digit beside a square two digits on 61% of
    canvases), so the counter also asks that each half lie as near the training digits as real
    digits do (``near_data``)."""
    classifier, recipe = course_classifier("quick"), recipes.DDPM_QUICK
    judge = lambda h: recognisable(classifier, recipe.view(h))  # noqa: E731
    digits = data.load_digits("test", size=8).images
    typical = near_data(data.load_digits("train", size=8).images, digits)
    ink, n = ink_share(digits).mean().item(), len(digits) // 2
    left, right = digits[:n], digits[n:2 * n]
    g = torch.Generator().manual_seed(0)
    count = lambda c: digits_per_half(c, judge, digit_ink=ink, typical=typical)  # noqa: E731
    two = count(side_by_side(left, right))
    assert (two == 2).float().mean() > 0.75, "two real digits side by side should mostly count 2"
    alone = count(place(left, 16, generator=g))
    assert (alone == 2).float().mean() < 0.05, "one digit placed on a wide canvas counted as two"
    for kind in ("square", "dash", "smudge"):
        canvases = side_by_side(left, _ink_runs(kind, n, g))
        runs_two = (subjects_across(canvases) == 2).float().mean().item()
        judged_two = (count(canvases) == 2).float().mean().item()
        assert runs_two > 0.9, f"the ink-run counter should call a digit beside a {kind} two"
        assert judged_two < 0.05, (f"the judge per half called a digit beside a {kind} two "
                                   f"digits on {judged_two:.0%} of canvases")
    noise = torch.rand(n, 1, 8, 16, generator=g) * 2 - 1
    assert (count(noise) == 2).float().mean() < 0.05


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
