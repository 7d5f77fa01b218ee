"""The course's cached models: each trained once, then loaded (lesson 05 on).

Later lessons call :func:`pretrained_ddpm`, which loads a recipe's checkpoint or, when it is
missing, unusable or made with other settings, trains the recipe afresh and saves it;
:func:`course_classifier` and :func:`classifier_for` do the same for the feature networks of lessons
05-11, :func:`pretrained_clip` for lesson 09's miniature CLIPs and :func:`shape_judge` for its
attribute classifier. All go through :func:`diffuse_edu.training.checkpoints.load_or_train`, and
every file lives where :func:`cached_path` says. The recipes themselves are data, in
:mod:`diffuse_edu.training.recipes`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from diffuse_edu import data
from diffuse_edu.config import Scale, cache_dir
from diffuse_edu.data.captioned import ATTRIBUTE_GROUPS, make_shapes
from diffuse_edu.diffusion.schedules import NoiseSchedule
from diffuse_edu.evaluation.features import train_classifier
from diffuse_edu.models.classifier import Classifier, ClassifierConfig
from diffuse_edu.models.clip import MiniCLIP, contrastive_loss
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.unet import UNet
from diffuse_edu.training.checkpoints import Checkpoint, load_or_train
from diffuse_edu.training.contrastive import train_clip
from diffuse_edu.training.loop import TrainResult, train
from diffuse_edu.training.recipes import ClipRecipe, Recipe, ddpm_recipe, in_force

#: The folder of the cache (under :func:`diffuse_edu.config.cache_dir`) that holds every cached
#: model.
MODELS = "checkpoints"


def cached_path(name: str, *, folder: Path | None = None) -> Path:
    """Where the cached model ``name`` lives: ``folder`` (default: the cache's checkpoints folder)
    / ``name``.pt, with its portable .safetensors and .json beside it. The one path rule."""
    return (folder or cache_dir() / MODELS) / f"{name}.pt"


def checkpoint_path(recipe: Recipe | ClipRecipe) -> Path:
    """Where the checkpoint of ``recipe`` lives (in the git-ignored cache)."""
    return cached_path(recipe.name)



def checkpoint_fields(recipe: Recipe, result: TrainResult, schedule: NoiseSchedule,
                      images: torch.Tensor) -> dict:
    """What :func:`save_checkpoint` takes for a run of ``recipe``, stamped so that
    :func:`pretrained_ddpm` accepts it (lesson 05 saves its own run this way)."""
    extra = dict(images=len(images), steps=result.steps, seconds=result.seconds,
                 stamp=recipe.stamp(),
                 first_step_seconds=result.first_step_seconds,
                 images_per_second=result.images_per_second,
                 planned_steps=result.planned_steps, stopped_by_clock=result.stopped_by_clock)
    return dict(model=result.model, ema=result.ema, schedule=schedule, train_config=recipe.train,
                snapshots=result.snapshots, extra=extra, target=recipe.target)


def train_recipe(recipe: Recipe, *, device: torch.device | str = "cpu", seed: int = 0,
                 text_encoder: torch.nn.Module | None = None,
                 prepare: Callable[[torch.nn.Module], object] | None = None,
                 **train_kwargs) -> dict:
    """Train ``recipe`` from scratch; return what :func:`save_checkpoint` takes.

    A text-conditioned recipe reads its captions through ``text_encoder`` (default: the cached
    mini-CLIP's). ``prepare(network)`` runs on the fresh network before training (lesson 09 puts
    the learner's cross-attention block in); ``train_kwargs`` go to
    :func:`~diffuse_edu.training.loop.train` (a learner's ``drop_fn``, say).
    """
    train_set = recipe.data()
    images, schedule, cond, null = train_set.images.to(device), recipe.schedule(), None, None
    if recipe.text is not None:  # the frozen text encoder's features of every caption, once
        encoder = (text_encoder if text_encoder is not None
                   else pretrained_clip(recipe.text, device=device).text)
        cond, null = encoder.condition(train_set.captions), recipe.null_cond(encoder)
    elif recipe.conditional:
        cond, null = Cond(labels=train_set.labels.to(device)), recipe.null_cond()
    torch.manual_seed(seed)  # the initial weights
    network = UNet(recipe.model).to(device)
    if prepare is not None:
        prepare(network)
    result = train(network, images, recipe.objective(schedule), recipe.train,
                   cond=cond, null_cond=null, generator=torch.Generator(device).manual_seed(seed),
                   desc=f"training {recipe.name}", **train_kwargs)
    return checkpoint_fields(recipe, result, schedule, images)


def pretrained_ddpm(recipe: Recipe | None = None, *,
                    device: torch.device | str = "cpu") -> Checkpoint:
    """Lesson 05's checkpoint for ``recipe`` (default: the scale in force), trained if missing."""
    recipe = in_force(recipe or ddpm_recipe())
    made_now = []  # filled when load_or_train has to train, so the line can say it was loaded

    def make() -> dict:
        made_now.append(True)
        return train_recipe(recipe, device=device)

    ck = load_or_train(checkpoint_path(recipe), UNet, recipe.model, recipe.stamp(), make)
    print(trained_how_far(recipe.name, ck.extra, cached=not made_now))
    return ck


def trained_how_far(name: str, extra: dict, *, cached: bool = False) -> str:
    """One line saying how far a checkpoint's model was trained, from its ``extra``: the steps
    against its plan, and a warning where the clock stopped it short. ``cached``: the model was
    loaded from the cache, so its training time is when it was made, not now."""
    steps, planned, seconds = extra.get("steps"), extra.get("planned_steps"), extra.get("seconds")
    text = f"{name}: trained {steps} steps" + (f" of the {planned} planned" if planned else "")
    timed = isinstance(seconds, (int, float))
    if cached:
        text += (f" (made in {seconds:.0f} s; loaded from the cache now)" if timed
                 else " (loaded from the cache)")
    elif timed:
        text += f" ({seconds:.0f} s)"
    if extra.get("stopped_by_clock"):
        text += ": the clock stopped it short of its plan, so it is undertrained (and not cached)"
    return text


def course_classifier(scale: Scale | str | None = None, *, device: torch.device | str = "cpu",
                      steps: int = 400, folder: Path | None = None) -> Classifier:
    """The feature network of the course at ``scale`` (digits quick, MNIST full), trained once.

    It trains on the training split only, so the held-out split measures its accuracy.
    """
    return classifier_for(data.course_images("train", scale), device=device, steps=steps,
                          folder=folder)


def classifier_for(train_set: data.ImageSet, *, device: torch.device | str = "cpu",
                   steps: int = 400, folder: Path | None = None) -> Classifier:
    """A classifier (features for FID, judge of class adherence) for any image set, trained once."""
    images, labels = train_set.images.to(device), train_set.labels.to(device)
    config = ClassifierConfig(in_channels=images.shape[1], num_classes=len(train_set.classes))
    name = f"classifier_{train_set.name}_{images.shape[1]}x{images.shape[-1]}"
    path = cached_path(name, folder=folder)

    def fit() -> dict:
        g = torch.Generator().manual_seed(0)
        model = train_classifier(images, labels, config, steps=steps, generator=g)
        return dict(model=model, schedule=None, extra={"data": train_set.name})

    stamp = dict(recipe=name, steps=steps, images=len(images))
    return load_or_train(path, Classifier, config, stamp, fit).build(device=device)


def train_clip_recipe(recipe: ClipRecipe, *, device: torch.device | str = "cpu", seed: int = 0,
                      loss_fn: Callable[..., torch.Tensor] = contrastive_loss) -> dict:
    """Train lesson 09's miniature CLIP for ``recipe`` with ``loss_fn`` (the library's contrastive
    loss, or a learner's); return what :func:`save_checkpoint` takes."""
    train_set = recipe.data()
    torch.manual_seed(seed)
    model = MiniCLIP(recipe.model).to(device)
    ids, mask = model.text.tokenize(train_set.captions)
    losses = train_clip(model, train_set.images.to(device), ids, mask, steps=recipe.steps,
                        seconds=recipe.seconds, batch_size=recipe.batch_size, lr=recipe.lr,
                        generator=torch.Generator(device).manual_seed(seed), loss_fn=loss_fn)
    return dict(model=model, schedule=None,
                extra=dict(steps=len(losses), final_loss=losses[-1], losses=losses,
                                                       stamp=recipe.stamp(),
                           planned_steps=recipe.steps,
                                                       stopped_by_clock=len(losses) < recipe.steps))


def pretrained_clip(recipe: ClipRecipe, *, device: torch.device | str = "cpu",
                    seed: int = 0) -> MiniCLIP:
    """Lesson 09's miniature CLIP for ``recipe``, trained once and cached (eval mode)."""
    recipe = in_force(recipe)
    return load_or_train(checkpoint_path(recipe), MiniCLIP, recipe.model, recipe.stamp(),
                         lambda: train_clip_recipe(recipe, device=device,
                                                   seed=seed)).build(device=device)


def shape_judge(size: int = 16, *, device: torch.device | str = "cpu", steps: int = 200,
                folder: Path | None = None) -> Classifier:
    """Lesson 09's attribute classifier for one-shape images of ``size``: colour, shape, size and
    position, one group of logits each. Trained once on its own shapes, held-out pairs included."""
    config = ClassifierConfig(in_channels=3, num_classes=sum(ATTRIBUTE_GROUPS), widths=(16, 32, 64))
    name = f"shape_judge_{size}"
    path = cached_path(name, folder=folder)

    def fit() -> dict:
        # 9 seen pairs and 3 held-out ones, about 500 images each: no colour hints at a shape
        seen, rare = (make_shapes(n, size=size, seed=7, split=split, two_shapes=0.0)
                      for n, split in ((4500, "train"), (1500, "held_out")))
        images = torch.cat([seen.images, rare.images]).to(device)
        labels = torch.cat([seen.objects[:, 0], rare.objects[:, 0]]).to(device)
        model = train_classifier(images, labels, config, steps=steps, groups=ATTRIBUTE_GROUPS,
                                 shift=0, generator=torch.Generator().manual_seed(0))
        return dict(model=model, schedule=None, extra={"data": "shapes, one per image"})

    stamp = dict(recipe=name, steps=steps, data="balanced pairs")
    return load_or_train(path, Classifier, config, stamp, fit).build(device=device)
