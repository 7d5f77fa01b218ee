"""A smoke run of the full scale on a CPU: does every lesson get through its full-scale code?

``DIFFUSE_EDU_SMOKE=1 python -m diffuse_edu run all --scale full --out /tmp/smoke`` runs each lesson
at full scale as a GPU would (the full data sets, the full-scale branches of the code, the full
configurations' structure), with three things made small so that a CPU gets through in minutes:

* networks narrowed: a U-Net's or a VAE's level ``i`` to at most ``8 * 2**i`` channels (a
  hyperparameter ``channels`` given as a bare tuple of widths too), a DiT to 8
  channels per head and 2 blocks, a mini-CLIP's image tower to its smallest;
* a training run with a time budget or more than 2,000 steps stopped after 2 (one per snapshot
  where it keeps more), a lesson's own step counts at their quick values;
* a hyperparameter that counts things (samples, sampler steps, prompts: :data:`COUNTS`) takes its
  quick value where that is smaller.

The headless runner calls :func:`start` for ``$DIFFUSE_EDU_SMOKE=1``: it is the only switch (the
training loop trains the configuration it is given, and importing this module changes nothing).
A GPU job is short (see ``results/README.md``): a lesson that fails at full scale wastes one. This
finds such failures (a width that does not split into heads, a name only the full branch uses)
before a GPU is lent. Its numbers mean nothing: never keep them in ``results/``, and give it a data
folder of its own (``DIFFUSE_EDU_DATA``) so that its narrowed checkpoints stay out of the cache.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from diffuse_edu import config
from diffuse_edu.models.unet import UNetConfig
from diffuse_edu.training.loop import TrainConfig, smoke_training
from diffuse_edu.training.recipes import ClipRecipe, Recipe, narrow_network, smoke_recipe


def narrow(value: Any) -> Any:
    """``value`` made small for a smoke run, if it is a network's configuration, a training
    configuration or a recipe, or a tuple of them (anything else as it is). Narrowing twice changes
    nothing more."""
    if isinstance(value, TrainConfig):
        return smoke_training(value)
    if isinstance(value, (Recipe, ClipRecipe)):
        return smoke_recipe(value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(narrow(v) for v in value)
    return narrow_network(value)


#: Names of the hyperparameters that count things (samples, steps, images...): in a smoke run these
#: take their quick values where those are smaller. Sizes and the like keep their full values.
COUNTS = re.compile(r"samples|steps|prompts|images|batch|^per_|^n_")


def full_value(name: str, quick: Any, full: Any) -> Any:
    """The value ``by_scale`` gives hyperparameter ``name`` at full scale in a smoke run: a count
    (:data:`COUNTS`) takes the quick value where that is smaller; a configuration is narrowed; the
    rest is the full value."""
    number = (int, float)
    if name == "channels" and isinstance(full, tuple) and all(isinstance(c, int) for c in full):
        return narrow(UNetConfig(channels=full)).channels  # a U-Net's widths, given bare
    if isinstance(quick, TrainConfig) and isinstance(full,
                                                     TrainConfig) and quick.steps and full.steps:
        return narrow(dataclasses.replace(full, steps=min(quick.steps, full.steps)))
    if (COUNTS.search(name) and isinstance(quick, number) and isinstance(full, number)
            and not isinstance(quick, bool) and not isinstance(full, bool) and quick < full):
        return quick
    return narrow(full)


def start() -> None:
    """Make this process a smoke run: :func:`~diffuse_edu.config.by_scale` gives
    :func:`full_value`'s values at full scale, and the recipes a lesson loads are narrowed
    (:func:`~diffuse_edu.training.recipes.in_force`). The headless runner calls it for
    ``$DIFFUSE_EDU_SMOKE=1``; importing this module changes nothing. :func:`stop` ends it."""
    config.set_smoke_run(full_value)


def stop() -> None:
    """End a smoke run started by :func:`start`: full scale is full size again."""
    config.set_smoke_run(None)
