"""Saving and loading trained models (lesson 05), safely.

A checkpoint is one file holding plain data only: the model's class name and config, the raw and
EMA weights, the noise schedule, what the model predicts (eps, x0, v or a flow's velocity), the
training config and any numbers worth keeping. :meth:`Checkpoint.denoiser` rebuilds the model as
the denoiser a sampler runs, read as what it predicts, from the file alone. It is read
with ``torch.load(weights_only=True)``, which refuses to unpickle arbitrary objects, and every
way it can go wrong ends in a :class:`CheckpointError` that says what to do.

The format knows no model class: whoever loads a file names the class to build (any ``nn.Module``
built as ``cls(config)`` whose class attribute ``config_class`` is its config dataclass), and
:func:`load_or_train` serves every cached model of the course the same way.

Beside each ``.pt`` file :func:`save_checkpoint` writes the format the ecosystem shares: the weights
to sample from as ``.safetensors`` and everything else as ``.json``, loadable without pickle by
:func:`load_portable`. :func:`write_manifest` lists files with their sha256 (the workshop command
writes one), and :func:`verify_manifest` checks them on another machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from diffuse_edu.config import CourseError
from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.prediction import Target, as_target
from diffuse_edu.diffusion.schedules import NoiseSchedule
from diffuse_edu.training import distributed

FORMAT = "diffuse_edu.checkpoint/1"


class CheckpointError(CourseError, RuntimeError):
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
    target: str | None = None  # what the model predicts ("eps", "x0", "v",
    # "flow"); None: not a denoiser

    def build(self, *, ema: bool = True, device: torch.device | str = "cpu") -> nn.Module:
        """The model with the EMA weights (or the raw ones), in eval mode, knowing what it predicts
        (``model.predicts``) and the schedule it was trained on (``model.schedule``)."""
        model = self.model_class(self.model_config)
        state = self.ema_weights if ema and self.ema_weights is not None else self.weights
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"The weights do not fit a {self.model_class.__name__} built "
                                  f"from the checkpoint's own config ({e}). The file is damaged: "
                                  "retrain.") from e
        if self.target is not None:
            model.predicts = self.target
        if self.schedule is not None:
            model.schedule = self.schedule  # samplers take it from here, and refuse another
        return model.to(device).eval()

    def denoiser(self, *, ema: bool = True, device: torch.device | str = "cpu",
                 clip: float | None = None, fast: bool = True) -> Denoiser:
        """The model as the D(x; sigma) every sampler runs: its own schedule, read as its own
        target."""
        if self.target is None:
            raise CheckpointError("This checkpoint does not record what its model predicts (an "
                                  "older file, or not a denoiser): retrain it, or wrap the model "
                                  "yourself, e.g. Denoiser(ck.build(), ck.schedule, Target.V).")
        target = as_target(self.target)
        return Denoiser(self.build(ema=ema, device=device),
                        None if target is Target.FLOW else self.schedule, target, clip, fast=fast)


def _plain_config(config: object) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def save_checkpoint(path: str | Path, *, model: nn.Module, schedule: NoiseSchedule | None,
                    ema: nn.Module | None = None, train_config: object | None = None,
                    extra: dict | None = None, snapshots: list[dict] | None = None,
                    target: Target | str | None = None) -> Path:
    """Write a checkpoint (atomically: a half-written file never replaces a good one).

    ``target`` is what the model predicts (default: what the model declares, ``model.predicts``,
    which :func:`~diffuse_edu.training.loop.train` sets). Under torchrun only rank 0 writes; the
    other ranks return the path at once.
    """
    path = Path(path)
    if not distributed.is_main():
        return path
    model = getattr(model, "_orig_mod", model)  # a compiled model's own module
    name = type(model).__name__
    target = target if target is not None else getattr(model, "predicts", None)
    target = as_target(target).value if target is not None else None
    if not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise TypeError(f"save_checkpoint needs a model with a dataclass .config; {name} has none.")
    path.parent.mkdir(parents=True, exist_ok=True)

    def cpu(m: nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in getattr(m, "_orig_mod", m).state_dict().items()}

    payload = {
        "format": FORMAT, "model_class": name, "model_config": _plain_config(model.config),
        "schedule": {"name": schedule.name, "betas": schedule.betas.cpu()} if schedule else None,
        "weights": cpu(model), "ema_weights": cpu(ema) if ema is not None else None,
        "train_config": _plain_config(train_config) if train_config is not None else {},
        "extra": extra or {}, "snapshots": snapshots or [], "target": target,
    }
    tmp = _temporary(path, path.suffix)
    torch.save(payload, tmp)
    tmp.replace(path)
    _save_portable(path, payload)
    return path


def stopped_early_path(path: str | Path) -> Path:
    """Where a model whose training the clock stopped short of its plan is kept instead of ``path``:
    beside it, under a name that no lesson loads (``ddpm.pt`` -> ``ddpm.stopped-early.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.stopped-early{path.suffix}")


def cache_checkpoint(path: str | Path, **fields) -> Path:
    """:func:`save_checkpoint` at ``path``, where later lessons load the model from, unless its
    training stopped short of its planned steps (``extra["stopped_by_clock"]``): such a model is
    saved at :func:`stopped_early_path` instead, so that a later lesson trains it again rather
    than building its results on an undertrained model. Returns where it was saved."""
    extra = fields.get("extra") or {}
    if not extra.get("stopped_by_clock"):
        saved = save_checkpoint(path, **fields)
        early = stopped_early_path(path)
        for stale in (early, early.with_suffix(".safetensors"), early.with_suffix(".json")):
            stale.unlink(missing_ok=True)  # an undertrained model of an earlier run: gone
            # once a full one is saved
        return saved
    early = stopped_early_path(path)
    print(f"Not cached as {Path(path).name}: its training stopped at {extra.get('steps')} of "
          f"{extra.get('planned_steps')} steps. Saved as {early.name}; a later lesson that needs "
          "this model trains it again.")
    return save_checkpoint(early, **fields)


def _temporary(path: Path, suffix: str) -> Path:
    """A name to write ``path`` (with ``suffix``) under before moving it into place: one per process
    and thread, so that two notebooks saving the same model at once never write into one file."""
    return path.with_suffix(f"{suffix}.{os.getpid()}.{threading.get_ident()}.tmp")


PORTABLE_FORMAT = "diffuse_edu.portable/1"


def _jsonable(value: object) -> object:
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


def _save_portable(path: Path, payload: dict) -> None:
    """``path`` as .safetensors (the weights to sample from, EMA if any, and the schedule's betas)
    and .json (the class, configs and numbers); written to temporary names, then moved."""
    from safetensors.torch import save_file

    weights = dict(payload["ema_weights"] or payload["weights"])
    if payload["schedule"] is not None:
        weights["schedule.betas"] = payload["schedule"]["betas"]
    meta = {k: payload[k] for k in ("model_class", "model_config", "train_config", "extra",
                                    "target")}
    meta.update(format=PORTABLE_FORMAT, ema=payload["ema_weights"] is not None,
                schedule=payload["schedule"]["name"] if payload["schedule"] else None)
    for suffix, write in ((".safetensors",
                           lambda f: save_file({k: v.contiguous() for k, v in weights.items()}, f)),
                          (".json",
                           lambda f: Path(f).write_text(json.dumps(meta, indent=1,
                                                                   default=_jsonable)))):
        tmp = _temporary(path, suffix)
        write(str(tmp))
        tmp.replace(path.with_suffix(suffix))


def load_portable(path: str | Path, model_class: type[nn.Module], *,
                  expect: object | None = None) -> Checkpoint:
    """Read the .safetensors + .json pair beside ``path`` (either name, or the .pt's) without
    pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    fix = "Copy the pair again, or retrain (python -m diffuse_edu workshop)."
    if not (meta_path.is_file() and weights_path.is_file()):
        raise CheckpointError(f"No portable checkpoint at {weights_path} with {meta_path.name}. "
                              f"{fix}")
    try:
        meta = json.loads(meta_path.read_text())
        weights = load_file(str(weights_path))
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path.name} or {meta_path.name} is damaged "
                              f"({type(e).__name__}). {fix}") from e
    if meta.get("format") != PORTABLE_FORMAT or meta.get("model_class") != model_class.__name__:
        raise CheckpointError(f"{meta_path} does not describe a {model_class.__name__} "
                              f"({PORTABLE_FORMAT}). {fix}")
    fields = {f.name: f for f in dataclasses.fields(model_class.config_class)}
    plain = {k: tuple(v) if isinstance(v, list) and k in fields else v for k,
             v in meta["model_config"].items()}
    config = _config_from(plain, model_class, path, expect)
    betas = weights.pop("schedule.betas", None)
    schedule = NoiseSchedule(betas, meta["schedule"]) if betas is not None else None
    return Checkpoint(model_class, config, schedule, weights, None, meta["train_config"],
                      meta["extra"], [], meta.get("target"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MANIFEST = "manifest.json"


def write_manifest(folder: Path, files: list[Path]) -> Path:
    """``folder/manifest.json``: each file's path (relative to ``folder``), size and sha256."""
    entries = [dict(path=str(f.relative_to(folder)), bytes=f.stat().st_size, sha256=file_sha256(f))
               for f in sorted(files)]
    out = folder / MANIFEST
    out.write_text(json.dumps({"format": "diffuse_edu.manifest/1", "files": entries},
                              indent=1) + "\n")
    return out


def verify_manifest(folder: Path) -> list[tuple[str, bool, str]]:
    """(path, ok, what is wrong) for every file the manifest in ``folder`` lists."""
    entries = json.loads((folder / MANIFEST).read_text())["files"]
    results = []
    for e in entries:
        f = folder / e["path"]
        if not f.is_file():
            results.append((e["path"], False, "missing"))
        elif f.stat().st_size != e["bytes"] or file_sha256(f) != e["sha256"]:
            results.append((e["path"], False, "differs from the manifest (damaged or replaced)"))
        else:
            results.append((e["path"], True, "ok"))
    return results


def _read(path: Path) -> dict:
    fix = "Delete it and run the lesson that makes it again (e.g. python -m diffuse_edu run 05)."
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Run lesson 05 (python -m diffuse_edu run "
                              "05) or let the lesson train one.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():
            # not a refused object: the bytes are damaged
            raise CheckpointError(f"{path} is truncated or corrupted (UnpicklingError). "
                                  f"{fix}") from e
        raise CheckpointError(f"{path} holds objects other than plain data and weights, so it is "
                              "not loaded (weights_only=True protects you from running code in "
                              f"it). {fix}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupted ({type(e).__name__}). "
                              f"{fix}") from e
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
        raise CheckpointError(f"{path} holds a {payload['model_class']}, not a "
                              f"{model_class.__name__}: load it with its own class, or retrain.")
    config = _config_from(payload["model_config"], model_class, path, expect)
    sched = payload["schedule"]
    schedule = NoiseSchedule(sched["betas"], sched["name"]) if sched else None
    return Checkpoint(model_class, config, schedule, payload["weights"], payload["ema_weights"],
                      payload["train_config"], payload["extra"], payload["snapshots"],
                      payload.get("target"))


def _config_from(plain: dict, model_class: type[nn.Module], path: Path,
                 expect: object | None) -> object:
    """The model's config from plain data; refuse one that differs from ``expect``."""
    try:
        config = model_class.config_class(**plain)
    except TypeError as e:
        raise CheckpointError(f"{path} was made by another version of diffuse-edu ({e}); "
                              "retrain.") from e
    if expect is not None and config != expect:
        diffs = [f"{k}: {getattr(expect, k)!r} expected, {getattr(config, k)!r} in the file"
                 for k in _plain_config(expect) if getattr(expect, k) != getattr(config, k)]
        raise CheckpointError(
            f"{path} was made for a different model ({'; '.join(diffs)}). Retrain for this config "
            "(python -m diffuse_edu run 05 --scale ...), or build the checkpoint's own model with "
            "load_checkpoint(path, cls).build().")
    return config


def load_or_train(path: Path, model_class: type[nn.Module], config: object, stamp: dict,
                  train: Callable[[], dict]) -> Checkpoint:
    """The checkpoint at ``path`` if it holds a ``model_class`` of ``config`` made with ``stamp``;
    otherwise ``train()`` (which returns :func:`save_checkpoint`'s keyword arguments), saved there
    by :func:`cache_checkpoint` (a training the clock stopped short is returned but not cached).

    ``stamp`` (plain data: a recipe's name, its training settings) is stored in the file's extra;
    a file whose stamp differs is out of date and trained again. Every cached model of the course
    (the DDPM, the classifiers, later the VAE and text encoder) goes through here. Two processes
    that need the same missing model (two lessons run side by side) do not both train it: the
    second waits for the first and loads what it saved.
    """
    found = _current(path, model_class, config, stamp, quiet=False)
    if found is not None:
        return found
    with _training_lock(path):
        found = _current(path, model_class, config, stamp,
                         quiet=True)  # made while this process waited?
        if found is not None:
            return found
        made = train()
        made["extra"] = {**made.get("extra", {}), "stamp": stamp}
        saved = cache_checkpoint(path, **made)  # elsewhere when the clock
        # stopped it short of its plan
    distributed.barrier()  # under torchrun: every rank reads what rank 0 wrote
    return load_checkpoint(saved, model_class, expect=config)


def _current(path: Path, model_class: type[nn.Module], config: object, stamp: dict, *,
             quiet: bool) -> Checkpoint | None:
    """The checkpoint at ``path`` if it is usable and made with ``stamp``; else None
    (saying why)."""
    if not path.exists():
        if not quiet:
            print(f"No checkpoint at {path}: training one now.")
        return None
    try:
        ck = load_checkpoint(path, model_class, expect=config)
    except CheckpointError as e:
        if not quiet:
            print(f"{e}\nTraining a new one instead.")
        return None
    if ck.extra.get("stamp") == stamp:
        return ck
    if not quiet:
        print(f"The checkpoint at {path} is out of date (made with {ck.extra.get('stamp')}, "
              f"wanted {stamp}): training a new one.")
    return None


@contextlib.contextmanager
def _training_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``.lock while its model trains (POSIX; elsewhere, and under
    torchrun, where every rank trains together, no lock: each process writes its file
    atomically)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or distributed.active():
        yield
        return
    lock = path.with_suffix(path.suffix + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"Another process is training {path.name}: waiting for it, then loading what it "
                  "saves.")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
