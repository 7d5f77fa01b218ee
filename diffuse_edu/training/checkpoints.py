"""Saving and loading trained models (lesson 05), safely.

A checkpoint is one file holding plain data only: the model's class name and config, the raw and
EMA weights, the noise schedule, the training config and any numbers worth keeping. It is read
with ``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects, and every
way it can go wrong ends in a :class:`CheckpointError` that says what to do.

The format knows no model class: whoever loads a file names the class to build (any ``nn.Module``
built as ``cls(config)`` whose class attribute ``config_class`` is its config dataclass), and
:func:`load_or_train` serves every cached model of the course the same way.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from diffuse_edu.diffusion.schedules import NoiseSchedule

FORMAT = "diffuse_edu.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says why and what to do."""


@dataclass
class Checkpoint:
    """The contents of a checkpoint file."""

    model_class: type[nn.Module]  # the class it is built as
    model_config: object  # e.g. a UNetConfig
    schedule: NoiseSchedule | None  # None for models that are not denoisers
    weights: dict[str, Tensor]
    ema_weights: dict[str, Tensor] | None
    train_config: dict
    extra: dict = field(default_factory=dict)  # numbers worth keeping (steps, seconds, ...)
    snapshots: list[dict] = field(default_factory=list)  # EMA weights along the way

    def build(self, *, ema: bool = True, device: torch.device | str = "cpu") -> nn.Module:
        """The model with the EMA weights (or the raw ones), in eval mode."""
        model = self.model_class(self.model_config)
        state = self.ema_weights if ema and self.ema_weights is not None else self.weights
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"The weights do not fit a {self.model_class.__name__} built from the "
                                  f"checkpoint's own config ({e}). The file is damaged: retrain.") from e
        return model.to(device).eval()


def _plain_config(config: object) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def save_checkpoint(path: str | Path, *, model: nn.Module, schedule: NoiseSchedule | None,
                    ema: nn.Module | None = None, train_config: object | None = None,
                    extra: dict | None = None, snapshots: list[dict] | None = None) -> Path:
    """Write a checkpoint (atomically: a half-written file never replaces a good one)."""
    model = getattr(model, "_orig_mod", model)  # a compiled model's own module
    name = type(model).__name__
    if not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise TypeError(f"save_checkpoint needs a model with a dataclass .config; {name} has none.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def cpu(m: nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in getattr(m, "_orig_mod", m).state_dict().items()}

    payload = {
        "format": FORMAT, "model_class": name, "model_config": _plain_config(model.config),
        "schedule": {"name": schedule.name, "betas": schedule.betas.cpu()} if schedule else None,
        "weights": cpu(model), "ema_weights": cpu(ema) if ema is not None else None,
        "train_config": _plain_config(train_config) if train_config is not None else {},
        "extra": extra or {}, "snapshots": snapshots or [],
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _read(path: Path) -> dict:
    fix = "Delete it and run the lesson that makes it again (e.g. python -m diffuse_edu run 05)."
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Run lesson 05 (python -m diffuse_edu run 05) "
                              "or let the lesson train one.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():  # not a refused object: the bytes are damaged
            raise CheckpointError(f"{path} is truncated or corrupted (UnpicklingError). {fix}") from e
        raise CheckpointError(f"{path} holds objects other than plain data and weights, so it is not "
                              f"loaded (weights_only=True protects you from running code in it). {fix}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted ({type(e).__name__}). {fix}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a diffuse-edu checkpoint ({FORMAT}). {fix}")
    return payload


def load_checkpoint(path: str | Path, model_class: type[nn.Module], *,
                    expect: object | None = None) -> Checkpoint:
    """Read a checkpoint of a ``model_class``; with ``expect`` (its config), refuse one made for
    another model."""
    path = Path(path)
    payload = _read(path)
    if payload["model_class"] != model_class.__name__:
        raise CheckpointError(f"{path} holds a {payload['model_class']}, not a {model_class.__name__}: "
                              "load it with its own class, or retrain.")
    try:
        config = model_class.config_class(**payload["model_config"])
    except TypeError as e:
        raise CheckpointError(f"{path} was made by another version of diffuse-edu ({e}); retrain.") from e
    if expect is not None and config != expect:
        diffs = [f"{k}: {getattr(expect, k)!r} expected, {getattr(config, k)!r} in the file"
                 for k in _plain_config(expect) if getattr(expect, k) != getattr(config, k)]
        raise CheckpointError(
            f"{path} was made for a different model ({'; '.join(diffs)}). Retrain for this config "
            "(python -m diffuse_edu run 05 --scale ...), or build the checkpoint's own model with "
            "load_checkpoint(path, cls).build().")
    sched = payload["schedule"]
    schedule = NoiseSchedule(sched["betas"], sched["name"]) if sched else None
    return Checkpoint(model_class, config, schedule, payload["weights"], payload["ema_weights"],
                      payload["train_config"], payload["extra"], payload["snapshots"])


def load_or_train(path: Path, model_class: type[nn.Module], config: object, stamp: dict,
                  train: Callable[[], dict]) -> Checkpoint:
    """The checkpoint at ``path`` if it holds a ``model_class`` of ``config`` made with ``stamp``;
    otherwise ``train()`` (which returns :func:`save_checkpoint`'s keyword arguments), saved there.

    ``stamp`` (plain data: a recipe's name, its training settings) is stored in the file's extra;
    a file whose stamp differs is out of date and trained again. Every cached model of the course
    (the DDPM, the classifiers, later the VAE and text encoder) goes through here.
    """
    if path.exists():
        try:
            ck = load_checkpoint(path, model_class, expect=config)
            if ck.extra.get("stamp") == stamp:
                return ck
            print(f"The checkpoint at {path} is out of date (made with {ck.extra.get('stamp')}, "
                  f"wanted {stamp}): training a new one.")
        except CheckpointError as e:
            print(f"{e}\nTraining a new one instead.")
    else:
        print(f"No checkpoint at {path}: training one now.")
    made = train()
    made["extra"] = {**made.get("extra", {}), "stamp": stamp}
    save_checkpoint(path, **made)
    return load_checkpoint(path, model_class, expect=config)
