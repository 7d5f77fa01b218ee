"""Preparing a workshop: ``python -m diffuse_edu workshop [--scale S] [--retrain]``.

Before a room of learners opens the lessons, train (or load, where it is cached and current) every
model the lessons load from the cache at one scale, so that nobody waits for one; then write a
manifest of the files with their sha256, which ``python -m diffuse_edu doctor`` checks on each
laptop the folder is copied to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from diffuse_edu import config, data
from diffuse_edu.training import distributed, pretrained, recipes
from diffuse_edu.training.checkpoints import write_manifest

#: Suffixes of a cached model's files: the checkpoint and its portable pair.
MODEL_FILES = (".pt", ".safetensors", ".json")


def cached_models(scale: config.Scale | str) -> list[tuple[str, Callable[[torch.device], object]]]:
    """Every cached model the lessons load at ``scale``: (what it is, a function that loads it, or
    trains and caches it when missing). The text-conditioned recipes bring their CLIPs along."""
    scale = config.resolve_scale(scale)
    return [(recipe.name, lambda device, r=recipe: pretrained.pretrained_ddpm(r, device=device))
            for recipe in recipes.RECIPES[scale]] + judges(scale)


def judges(scale: config.Scale | str) -> list[tuple[str, Callable[[torch.device], object]]]:
    """The classifiers that measure the lessons' samples at ``scale`` (no lesson teaches them;
    several lessons load them), as (what it is, load or train and cache)."""
    scale = config.resolve_scale(scale)
    shape_size = 16 if scale is config.Scale.QUICK else 32
    models: list[tuple[str, Callable[[torch.device], object]]] = [
        (f"the {scale.value}-scale feature classifier (lessons 05-14)",
         lambda device: pretrained.course_classifier(scale, device=device)),
        (f"lesson 09's attribute judge ({shape_size}x{shape_size} shapes)",
         lambda device: pretrained.shape_judge(shape_size, device=device))]
    if scale is config.Scale.FULL:
        models.append(("lesson 08's Fashion-MNIST classifier",
                       lambda device: pretrained.classifier_for(data.load_fashion_mnist("train"),
                                                                device=device)))
    return models


def prepare_judges(scale: config.Scale | str, device: torch.device | str = "cpu") -> list[str]:
    """Load, or train and cache, every model of :func:`judges`; returns what each is. The test suite
    runs it before the notebooks, so that the first lesson to need a judge does not pay for it (a
    learner going through the lessons in order has it from lesson 05)."""
    chosen = judges(scale)
    for _, load in chosen:
        load(torch.device(device))
    return [what for what, _ in chosen]


def model_files(cache: Path) -> list[Path]:
    """The cached models' files in ``cache`` (and in the ``features`` folder older versions
    used)."""
    return sorted(f for sub in (pretrained.MODELS, "features") for f in (cache / sub).glob("*")
                  # not undertrained ones
                  if f.suffix in MODEL_FILES and f.is_file() and ".stopped-early." not in f.name)


def prepare(scale: config.Scale, *, retrain: bool = False,
            device: torch.device | None = None) -> Path | None:
    """Load or train every model of :func:`cached_models`; with ``retrain``, delete every cached
    model first. Returns the manifest written (None on ranks other than 0 under torchrun)."""
    config.set_scale(scale)
    device = device or config.default_device()
    cache = config.cache_dir()
    if retrain and distributed.is_main():
        for f in model_files(cache):
            f.unlink()
        print(f"deleted the cached models in {cache}: training every one afresh")
    distributed.barrier()
    for what, load in cached_models(scale):
        ck = load(device)
        extra = getattr(ck, "extra", None)
        detail = (f" ({extra.get('steps')} steps, {extra.get('seconds') or 0:.0f} s)" if extra
                  else "")
        print(f"ready: {what}{detail}")
    if not distributed.is_main():
        return None
    files = model_files(cache)
    manifest = write_manifest(cache, files)
    print(f"wrote {manifest} ({len(files)} files with their sha256): copy {cache} to each laptop, "
          f"then `python -m diffuse_edu doctor` checks them")
    return manifest
