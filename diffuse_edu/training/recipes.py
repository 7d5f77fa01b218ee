"""The course's trained models as data: each recipe says what to train and how, quick and full
settings side by side (lesson 05 on).

Lesson 05 trains the DDPM of :data:`DDPM_QUICK` or :data:`DDPM_FULL`; lesson 08 the
class-conditional ones, lesson 09 the text-conditioned ones and their miniature CLIPs. A recipe is
plain data: the functions that train one, or load it from the cache when it was trained before, are
in :mod:`diffuse_edu.training.pretrained`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from diffuse_edu import data
from diffuse_edu.config import Scale, resolve_scale, smoke
from diffuse_edu.data.captioned import (
    DIGIT_CAPTION_WORDS,
    SHAPE_WORDS,
    captioned_mnist,
    make_shapes,
)
from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.prediction import Target
from diffuse_edu.diffusion.schedules import NoiseSchedule, cosine_schedule
from diffuse_edu.models.clip import MiniCLIPConfig
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.dit import DiTConfig
from diffuse_edu.models.text import build_vocab
from diffuse_edu.models.unet import UNetConfig
from diffuse_edu.models.vae import VAEConfig
from diffuse_edu.training.loop import TrainConfig, smoke_training


@dataclass(frozen=True)
class ClipRecipe:
    """A miniature CLIP (lesson 09) and how to train it."""

    name: str  # file-name stem of its checkpoint
    data: Callable[[], object]  # images with .captions (a ShapeSet or CaptionedImages)
    model: MiniCLIPConfig
    steps: int
    seconds: float | None  # stop early after this much training time (None: the steps alone)
    batch_size: int = 128
    lr: float = 2e-3

    def stamp(self) -> dict:
        return dict(recipe=self.name, steps=self.steps, seconds=self.seconds,
                    batch_size=self.batch_size, lr=self.lr)


@dataclass(frozen=True)
class Recipe:
    """Everything needed to train one of the course's models again."""

    name: str  # file-name stem of its checkpoint
    data: Callable[[], data.ImageSet]  # the training images
    image_shape: tuple[int, int, int]  # (C, H, W) of one training image
    model: UNetConfig
    schedule: Callable[[], NoiseSchedule]
    train: TrainConfig
    sample_steps: int  # DDIM steps used to draw samples from it
    sample_eta: float = 0.0  # DDIM's eta for those samples (1: ancestral, DDPM on a coarser grid)
    target: Target = Target.EPS  # what the network predicts
    text: ClipRecipe | None = None  # lesson 09: captions, read by this CLIP's frozen text encoder
    view_size: int | None = None  # samples are shown and judged at this size,
    # upsampled as the data set is

    def objective(self, schedule: NoiseSchedule) -> DiffusionObjective:
        return DiffusionObjective(schedule, self.target)

    def denoiser(self, model: Callable, schedule: NoiseSchedule, *, clip: float | None = None,
                 fast: bool = True) -> Denoiser:
        """The trained network as a sampler's denoiser, reading its output as ``target``."""
        return Denoiser(model, schedule, self.target, clip, fast=fast)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """Samples at the size the course's classifier and FID judge them (as the data set
        upsamples).

        Shapes: (N, C, H, W) -> (N, C, view_size, view_size), or ``x`` itself without a view size.
        """
        return x if self.view_size is None else data.resize(x, self.view_size)

    @property
    def conditional(self) -> bool:
        """Trained with class labels or captions (and condition dropout, for guidance)."""
        return self.model.num_classes is not None or self.text is not None

    def null_cond(self, text_encoder: torch.nn.Module | None = None) -> Cond:
        """The condition meaning "nothing asked": the extra label ``num_classes``, or for a
        text-conditioned recipe the empty prompt read by ``text_encoder``."""
        if self.text is not None:
            if text_encoder is None:
                raise ValueError(f"{self.name} is conditioned on text: its null condition is the "
                                 "empty prompt, "
                                 "null_cond(text_encoder=pretrained_clip(recipe.text).text).")
            return text_encoder.condition([""]).index(0)
        return Cond(labels=torch.tensor(self.model.num_classes))

    def stamp(self) -> dict:
        """What a checkpoint must have been made with to count as this recipe's."""
        stamp = dict(recipe=self.name, target=self.target.value,
                     train=dataclasses.asdict(self.train))
        return stamp if self.text is None else {**stamp, "text": self.text.stamp()}


#: How the full recipes compile their training step: with CUDA graphs, which replay a step's ~970
#: kernels in one launch; without them the GPU sits idle for much of each step, waiting for the host
#: to launch the next kernel (the measurements: results/bench/).
GPU_COMPILE = "reduce-overhead"

DDPM_QUICK = Recipe(  # lesson 05's quick target: >= 85% of samples recognisable from its 700 steps
    name="ddpm_digits8",
    data=functools.partial(data.load_digits, "train", size=8),  # the digits at their native 8x8 ...
    image_shape=(1, 8, 8),
    model=UNetConfig(in_channels=1, channels=(16, 32, 64), attention_levels=(2,)),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=700, seconds=150, batch_size=256, lr=3e-3, warmup_steps=50,
                      ema_decay=0.99, snapshots=4),  # steps end it; seconds guard a slow machine
    sample_steps=50,  # ancestral: 88% recognisable against 83% for deterministic
    # DDIM-25 (same model, 4 x 256)
    sample_eta=1.0,
    target=Target.V,  # v stays finite at t = T, where an eps-model's x0_hat is
    # amplified 1 / sqrt(ab_T)
    view_size=16,  # ... shown and judged at 16x16, upsampled exactly as data.course_images does
)
DDPM_FULL = Recipe(
    name="ddpm_mnist_v",
    data=functools.partial(data.course_images, "train", Scale.FULL),
    image_shape=(1, 32, 32),
    model=UNetConfig(in_channels=1, channels=(64, 128, 256), blocks_per_level=2,
                     attention_levels=(2,)),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=None, seconds=200, batch_size=256, lr=1e-3, warmup_steps=200,
                      ema_decay=0.9995, compile=GPU_COMPILE, snapshots=4),
    sample_steps=50,
    target=Target.V,
)


CDDPM_QUICK = Recipe(  # lesson 08: class-conditional, labels dropped for 15% of the examples
    name="cddpm_digits",
    data=functools.partial(data.course_images, "train", Scale.QUICK),
    image_shape=(1, 16, 16),
    model=UNetConfig(in_channels=1, channels=(16, 32, 64), attention_levels=(2,), num_classes=10),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=700, seconds=150, batch_size=64, lr=2e-3, warmup_steps=50,
                      ema_decay=0.999,
                      cond_dropout=0.15),  # steps end it; seconds guard a slow machine
    sample_steps=20,
)
CDDPM_FULL = Recipe(
    name="cddpm_mnist",
    data=functools.partial(data.course_images, "train", Scale.FULL),
    image_shape=(1, 32, 32),
    model=UNetConfig(in_channels=1, channels=(64, 128, 256), blocks_per_level=2,
                     attention_levels=(2,), num_classes=10),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=None, seconds=150, batch_size=256, lr=1e-3, warmup_steps=200,
                      ema_decay=0.9995,
                      compile=GPU_COMPILE, cond_dropout=0.15),  # lesson 08 trains two
                      # (digits, fashion) in its job
    sample_steps=50,
)
CDDPM_FULL_FASHION = replace(CDDPM_FULL, name="cddpm_fashion_mnist",
                             data=functools.partial(data.load_fashion_mnist, "train"))


_SHAPE_VOCAB, _DIGIT_VOCAB = (build_vocab([" ".join(SHAPE_WORDS)]),
                              build_vocab([" ".join(DIGIT_CAPTION_WORDS)]))
CLIP_QUICK = ClipRecipe(  # lesson 09's mini-CLIP
    name="clip_shapes16", data=functools.partial(make_shapes, 8000, size=16),
    model=MiniCLIPConfig(_SHAPE_VOCAB, text_width=32, image_widths=(16, 32, 64)), steps=160,
                        seconds=40)  # the steps end it
CLIP_FULL = ClipRecipe(
    name="clip_shapes32", data=functools.partial(make_shapes, 60000, size=32),
    model=MiniCLIPConfig(_SHAPE_VOCAB, text_width=64, text_layers=3, image_size=32), steps=3000,
                       seconds=None,
    batch_size=512, lr=1e-3)
CLIP_FULL_DIGITS = ClipRecipe(
    name="clip_captioned_mnist", data=functools.partial(captioned_mnist, "train"),
    model=MiniCLIPConfig(_DIGIT_VOCAB, text_width=64, image_channels=1, image_size=32), steps=2000,
    seconds=None, batch_size=512, lr=1e-3)

TDDPM_QUICK = Recipe(  # lesson 09: v-prediction (eps-prediction drew colour noise at this budget)
    name="tddpm_shapes16",
    data=CLIP_QUICK.data,
    image_shape=(3, 16, 16),
    model=UNetConfig(in_channels=3, channels=(16, 32, 64), attention_levels=(2,), context_dim=32),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=600, seconds=150, batch_size=64, lr=3e-3, warmup_steps=50,
                      ema_decay=0.995,
                      cond_dropout=0.15),  # steps end it; seconds guard a slow machine
    sample_steps=20, target=Target.V, text=CLIP_QUICK,
)
TDDPM_FULL = Recipe(
    name="tddpm_shapes32",
    data=CLIP_FULL.data,
    image_shape=(3, 32, 32),
    model=UNetConfig(in_channels=3, channels=(64, 128, 256), blocks_per_level=2,
                     attention_levels=(1, 2), context_dim=64),
    schedule=functools.partial(cosine_schedule, 1000),
    train=TrainConfig(steps=None, seconds=150, batch_size=256, lr=1e-3, warmup_steps=200,
                      ema_decay=0.9995,
                      compile=GPU_COMPILE, cond_dropout=0.15),  # lesson 09 trains two
                      # (shapes, digits) in its job
    sample_steps=50, target=Target.V, text=CLIP_FULL,
)
TDDPM_FULL_DIGITS = replace(TDDPM_FULL, name="tddpm_captioned_mnist", data=CLIP_FULL_DIGITS.data,
                            image_shape=(1, 32, 32), model=replace(TDDPM_FULL.model, in_channels=1),
                            text=CLIP_FULL_DIGITS)


# A quick recipe's seconds are a guard, not its plan: its steps end it on this course's machines,
# and a run the clock stops short of them says so and is not cached
# (training.loop.STOPPED_BY_CLOCK).

#: Every recipe whose checkpoint a lesson loads, by scale (``python -m diffuse_edu workshop``).
RECIPES: dict[Scale, list[Recipe]] = {Scale.QUICK: [DDPM_QUICK, CDDPM_QUICK, TDDPM_QUICK],
                                      Scale.FULL: [DDPM_FULL, CDDPM_FULL, CDDPM_FULL_FASHION,
                                                   TDDPM_FULL, TDDPM_FULL_DIGITS]}


def ddpm_recipe(scale: Scale | str | None = None) -> Recipe:
    """The DDPM recipe for ``scale`` (default: the scale in force)."""
    if resolve_scale(scale) is Scale.QUICK:
        return DDPM_QUICK
    return in_force(DDPM_FULL)


def in_force(recipe: Recipe | ClipRecipe) -> Recipe | ClipRecipe:
    """``recipe`` as this process trains it: itself, or in a smoke run of the full scale
    (started by :func:`diffuse_edu.training.smoke.start`) :func:`smoke_recipe`'s version."""
    return smoke_recipe(recipe) if smoke() else recipe


def _levels(channels: tuple[int, ...], groups: int) -> tuple[int, ...]:
    return tuple(min(c, max(groups, 8 * 2**i)) for i, c in enumerate(channels))


def narrow_network(config: object) -> object:
    """A network's configuration as a smoke run of the full scale builds it
    (diffuse_edu.training.smoke): a U-Net's or a VAE's level i at most 8 * 2**i channels, a DiT at 8
    channels a head and 2 blocks, a mini-CLIP's towers at their smallest (its text width, the
    U-Net's context width, stays); anything else as it is. Applying it twice changes nothing
    more."""
    if isinstance(config, (UNetConfig, VAEConfig)):
        return replace(config, channels=_levels(config.channels, config.groups))
    if isinstance(config, DiTConfig):
        return replace(config, width=min(config.width, 8 * config.heads),
                       depth=min(config.depth, 2))
    if isinstance(config, MiniCLIPConfig):  # its text width stays: it is the U-Net's context width
        return replace(config, text_layers=1, image_widths=_levels(config.image_widths, 1),
                       embed_dim=min(config.embed_dim, 16))
    return config


def smoke_recipe(recipe: Recipe | ClipRecipe) -> Recipe | ClipRecipe:
    """``recipe`` as a smoke run of the full scale trains it: its network narrowed, its training a
    couple of steps (its text encoder's recipe too)."""
    if isinstance(recipe, ClipRecipe):
        return replace(recipe, model=narrow_network(recipe.model), steps=2, seconds=None)
    return replace(recipe, model=narrow_network(recipe.model), train=smoke_training(recipe.train),
                   text=None if recipe.text is None else smoke_recipe(recipe.text))
