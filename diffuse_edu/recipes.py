"""The settings of the course's trained models, quick and full side by side (lesson 05 on).

Lesson 05 trains the DDPM of :data:`DDPM_QUICK` or :data:`DDPM_FULL` and saves it where
:func:`checkpoint_path` says; later lessons call :func:`pretrained_ddpm`, which loads that file or,
when it is missing or unusable, trains the same recipe afresh and saves it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from diffuse_edu import data
from diffuse_edu.checkpoints import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from diffuse_edu.config import Scale, cache_dir, get_scale
from diffuse_edu.schedules import NoiseSchedule, cosine_schedule
from diffuse_edu.training import TrainConfig, train
from diffuse_edu.unet import UNet, UNetConfig


@dataclass(frozen=True)
class Recipe:
    """Everything needed to train one of the course's models again."""

    name: str  # file-name stem of its checkpoint
    data: Callable[[], data.ImageSet]  # the training images
    model: UNetConfig
    schedule: Callable[[], NoiseSchedule]
    train: TrainConfig
    sample_steps: int  # DDIM steps used to draw samples from it


DDPM_QUICK = Recipe(
    name="ddpm_digits",
    data=functools.partial(data.load_digits, "train"),
    model=UNetConfig(in_channels=1, channels=(16, 32, 64), attention_levels=(2,)),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=700, seconds=50, batch_size=64, lr=2e-3, warmup_steps=50,
                      ema_decay=0.999, snapshots=4),
    sample_steps=25,
)
DDPM_FULL = Recipe(
    name="ddpm_mnist",
    data=functools.partial(data.load_mnist, "train"),
    model=UNetConfig(in_channels=1, channels=(64, 128, 256), blocks_per_level=2, attention_levels=(2,)),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=None, seconds=200, batch_size=256, lr=1e-3, warmup_steps=200,
                      ema_decay=0.9995, compile=True, snapshots=4),
    sample_steps=50,
)


#: Every recipe whose checkpoint a lesson loads, by scale (``python -m diffuse_edu workshop``).
RECIPES: dict[Scale, list[Recipe]] = {Scale.QUICK: [DDPM_QUICK], Scale.FULL: [DDPM_FULL]}


def ddpm_recipe(scale: Scale | None = None) -> Recipe:
    """The DDPM recipe for ``scale`` (default: the scale in force)."""
    return DDPM_QUICK if (scale or get_scale()) is Scale.QUICK else DDPM_FULL


def checkpoint_path(recipe: Recipe) -> Path:
    """Where the checkpoint of ``recipe`` lives (in the git-ignored cache)."""
    return cache_dir() / "checkpoints" / f"{recipe.name}.pt"


def checkpoint_extra(recipe: Recipe, images: torch.Tensor, result) -> dict:
    """What a recipe's checkpoint records beside the weights (checked by :func:`pretrained_ddpm`)."""
    return dict(recipe=recipe.name, images=len(images), steps=result.steps, seconds=result.seconds,
                images_per_second=result.images_per_second)


def train_recipe(recipe: Recipe, *, device: torch.device | str = "cpu", seed: int = 0) -> Checkpoint:
    """Train ``recipe`` from scratch, save its checkpoint and return it."""
    torch.manual_seed(seed)  # the initial weights
    images = recipe.data().images.to(device)
    schedule = recipe.schedule()
    result = train(UNet(recipe.model).to(device), images, schedule, recipe.train,
                   generator=torch.Generator(device).manual_seed(seed), desc=f"training {recipe.name}")
    path = save_checkpoint(checkpoint_path(recipe), model=result.model, ema=result.ema,
                           schedule=schedule, train_config=recipe.train, snapshots=result.snapshots,
                           extra=checkpoint_extra(recipe, images, result))
    return load_checkpoint(path, expect=recipe.model)


def _matches(ck: Checkpoint, recipe: Recipe) -> str | None:
    """Why ``ck`` was not made by ``recipe`` (None when it was)."""
    if ck.extra.get("recipe") != recipe.name:
        return f"it was made by {ck.extra.get('recipe')!r}, not {recipe.name!r}"
    if ck.train_config != {f: getattr(recipe.train, f) for f in ck.train_config}:
        return "its training settings differ from the recipe's"
    return None


def pretrained_ddpm(recipe: Recipe | None = None, *, device: torch.device | str = "cpu") -> Checkpoint:
    """Lesson 05's checkpoint for ``recipe`` (default: the scale in force), trained if missing."""
    recipe = recipe or ddpm_recipe()
    path = checkpoint_path(recipe)
    if path.exists():
        try:
            ck = load_checkpoint(path, expect=recipe.model)
            why = _matches(ck, recipe)
            if why is None:
                return ck
            print(f"The checkpoint at {path} is out of date ({why}): training a new one.")
        except CheckpointError as e:
            print(f"{e}\nTraining a new one instead.")
    else:
        print(f"No checkpoint at {path} (lesson 05 makes it): training one now.")
    return train_recipe(recipe, device=device)
