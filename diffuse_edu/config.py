"""One place for the two course-wide settings: the scale a lesson runs at and where data lives.

Scale
-----
``quick`` runs every lesson on a laptop CPU in about a minute on built-in data; ``full`` runs the
same source at full size on one GPU. ``auto`` (the default) picks ``full`` when an accelerator is
available: CUDA, then Apple's MPS (see :func:`accelerator`).
The environment variable ``DIFFUSE_EDU_SCALE`` overrides the default; ``set_scale`` overrides both
for the current process.

Each notebook has one hyperparameter cell written with :func:`by_scale`, the two scales' values
side by side::

    hp = by_scale(
        image_size=(16, 32),      # (quick, full)
        n_draws=(4_000, 200_000),
    )
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch


class CourseError(Exception):
    """An error the course expects and explains: its message says what to do about it.

    The command line prints such an error without a traceback; any other exception keeps its
    traceback, since it is a bug to report rather than a problem to fix by hand.
    """


SCALE_ENV = "DIFFUSE_EDU_SCALE"
DATA_ENV = "DIFFUSE_EDU_DATA"
#: 1: the headless runner makes its lessons a smoke run of the full scale on a CPU
#: (diffuse_edu.training.smoke). Nothing else reads it: the library reads :func:`smoke`.
SMOKE_ENV = "DIFFUSE_EDU_SMOKE"
#: by_scale's full values in a smoke run (None: not a smoke run); set by set_smoke_run alone.
_smoke_full_value: Callable[[str, Any, Any], Any] | None = None


def set_smoke_run(full_value: Callable[[str, Any, Any], Any] | None) -> None:
    """Make this process a smoke run of the full scale, in which :func:`by_scale` gives each
    hyperparameter ``full_value(name, quick, full)`` at full scale (None ends it). Called by
    :func:`diffuse_edu.training.smoke.start` (which the headless runner calls when
    ``$DIFFUSE_EDU_SMOKE=1``), not on import."""
    global _smoke_full_value
    _smoke_full_value = full_value


def smoke() -> bool:
    """Is this process a smoke run of the full scale (:func:`set_smoke_run`)?"""
    return _smoke_full_value is not None

#: The project's root when installed from a checkout (editable install), else None.
_ROOT = Path(__file__).resolve().parent.parent
PROJECT_ROOT: Path | None = _ROOT if (_ROOT / "pyproject.toml").exists() else None


class Scale(str, Enum):
    """The two sizes every lesson runs at (``AUTO`` resolves to one of them)."""

    QUICK = "quick"
    FULL = "full"
    AUTO = "auto"


class ScaleError(CourseError, ValueError):
    """An unknown scale name."""


_scale_override: Scale | None = None
_data_dir_override: Path | None = None


class OutOfMemory(CourseError, RuntimeError):
    """The accelerator ran out of memory; the message says how much it has and what to lower."""


def out_of_memory_message(error: BaseException, doing: str, lower: str) -> str | None:
    """What to tell about ``error`` when it is an accelerator's out-of-memory error raised while
    ``doing`` something (None for any other error, and for one already explained): what ran out,
    and the fixes: ``lower`` (the knob of that call), freeing what the kernel still holds, another
    process on the GPU, quick scale."""
    if isinstance(error, OutOfMemory) or not isinstance(error, RuntimeError):
        return None
    if not (isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error)):
        return None
    held = ""
    if torch.cuda.is_available():
        device = torch.cuda.current_device()
        total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        held = (f" ({torch.cuda.get_device_name(device)}: {total:.0f} GiB in all, "
                f"{torch.cuda.memory_allocated(device) / 2 ** 30:.1f} GiB held by this process's "
                "tensors)")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    mps = "MPS" in first
    return (f"The GPU ran out of memory while {doing}{held}: {first}\nWhat to do: lower {lower}; "
            "free what this kernel no longer needs (`del model` for models of earlier sections, "
            f"then `torch.{'mps' if mps else 'cuda'}.empty_cache()`), or restart the kernel; "
            "check " + ("that no other notebook's kernel holds the GPU" if mps else
                                "with `nvidia-smi` that no other process (another notebook's "
                                "kernel) holds the GPU")
            + f"; or run the lesson at quick scale ({SCALE_ENV}=quick).")


@contextlib.contextmanager
def explain_out_of_memory(doing: str, lower: str) -> Iterator[None]:
    """Turn an accelerator's out-of-memory error raised inside the block into :class:`OutOfMemory`
    with :func:`out_of_memory_message`'s text (``lower``: the knob of this call, such as
    ``"the batch size: TrainConfig(batch_size=...)"``). Other errors pass unchanged."""
    try:
        yield
    except RuntimeError as e:
        said = out_of_memory_message(e, doing, lower)
        if said is None:
            raise
        raise OutOfMemory(said) from e


#: The knob named for an out-of-memory error in a lesson's cell (samplers are plain math and do
#: not explain their own: the notebook and the headless runner do it for them).
CELL_MEMORY_KNOB = ("the images this cell trains on or samples at once: its batch_size=, or pass "
                    "the noise in chunks (x.split(256))")


def explain_out_of_memory_in_notebooks() -> None:
    """In a Jupyter kernel, add :func:`out_of_memory_message`'s text under the traceback of any cell
    that runs out of accelerator memory. Outside IPython, or where another custom handler is set,
    nothing changes. Importing the package does not call it: a lesson's first cell of imports
    does, and a headless run explains each cell itself (:mod:`diffuse_edu.course.runner`)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython,
                                                                     "get_ipython") else None
    if shell is None or (shell.custom_exceptions and not getattr(shell, "_diffuse_edu_memory",
                                                                 False)):
        return

    def handler(self, etype, value, tb, tb_offset=None):  # IPython shows nothing itself for these
        self.showtraceback((etype, value, tb), tb_offset=tb_offset)
        said = out_of_memory_message(value, "running this cell", CELL_MEMORY_KNOB)
        if said:
            print(said, file=sys.stderr)

    shell.set_custom_exc((RuntimeError,), handler)
    shell._diffuse_edu_memory = True


def _parse_scale(value: str | Scale) -> Scale:
    try:
        return Scale(str(value.value if isinstance(value, Scale) else value).strip().lower())
    except ValueError:
        raise ScaleError(
            f"Unknown scale {value!r}: use 'quick', 'full' or 'auto' "
            f"(for example `export {SCALE_ENV}=quick`)."
        ) from None


def set_scale(scale: str | Scale | None) -> None:
    """Fix the scale for this process (None goes back to the environment variable)."""
    global _scale_override
    _scale_override = None if scale is None else _parse_scale(scale)


def get_scale() -> Scale:
    """The scale in force: ``set_scale`` > ``$DIFFUSE_EDU_SCALE`` > auto; never AUTO itself."""
    return resolve_scale(_scale_override or _parse_scale(os.environ.get(SCALE_ENV, "auto")))


def resolve_scale(scale: str | Scale | None = None) -> Scale:
    """QUICK or FULL for ``scale`` as a caller gives it: None (the scale in force), a member, or its
    name ("quick", "full", "auto": AUTO is full where an accelerator is present). Every function
    that takes a scale reads it through here, so that "quick" and Scale.QUICK never part ways."""
    if scale is None:
        return get_scale()
    chosen = _parse_scale(scale)
    if chosen is Scale.AUTO:
        return Scale.QUICK if accelerator() == "cpu" else Scale.FULL
    return chosen


def by_scale(scale: str | Scale | None = None, **values: tuple[Any, Any]) -> SimpleNamespace:
    """Pick the quick or full value of each hyperparameter given as ``name=(quick, full)``.

    The result also carries ``scale`` (a :class:`Scale`) so a notebook can print what it uses.
    """
    chosen = resolve_scale(scale)
    picked = {}
    for name, pair in values.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"by_scale: {name} must be a (quick, full) pair, got {pair!r}.")
        picked[name] = pair[0] if chosen is Scale.QUICK else pair[1]
        if chosen is Scale.FULL and _smoke_full_value is not None:  # a smoke run (set_smoke_run)
            picked[name] = _smoke_full_value(name, *pair)
    return SimpleNamespace(scale=chosen, **picked)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """PyTorch's intra-op threads for each of ``jobs`` notebooks (or test workers) run side by side:
    an equal share of the cores, at least one. Two threads each on a loaded 2-core machine ran 10x
    slower than one each, and small models gain little from a second thread."""
    return max(1, (cores or os.cpu_count() or 1) // max(jobs, 1))


def thread_env(jobs: int) -> dict[str, str]:
    """The environment that gives a child process its share (:func:`threads_per_job`) of the
    cores."""
    n = str(threads_per_job(jobs))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def accelerator() -> str:
    """The device type the course runs on: "cuda" when present, then Apple's "mps", else "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def default_device() -> torch.device:
    """The device of :func:`accelerator` (the library itself never moves tensors by itself)."""
    return torch.device(accelerator())


def set_data_dir(path: str | os.PathLike | None) -> None:
    """Point the data loaders at a folder of staged data (None goes back to the default)."""
    global _data_dir_override
    _data_dir_override = None if path is None else Path(path).expanduser().resolve()


def data_dirs() -> list[Path]:
    """Folders searched for staged data sets, in order.

    ``set_data_dir`` > ``$DIFFUSE_EDU_DATA`` > the project's git-ignored ``datasets/cache`` >
    ``../shared/datasets`` beside the project > ``~/.cache/diffuse_edu``.
    """
    dirs: list[Path] = []
    if _data_dir_override is not None:
        dirs.append(_data_dir_override)
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]).expanduser().resolve())
    if PROJECT_ROOT is not None:
        dirs += [PROJECT_ROOT / "datasets" / "cache", PROJECT_ROOT.parent / "shared" / "datasets"]
    dirs.append(Path.home() / ".cache" / "diffuse_edu")
    return list(dict.fromkeys(dirs))


def _writable(folder: Path) -> bool:
    """Writable, and not marked read-only: root may write anywhere, but a folder without write
    bits (a shared data copy) is meant to stay as it is."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def cache_dir() -> Path:
    """Where downloads and course-made files (trained checkpoints, features) are written."""
    if _data_dir_override is not None:
        return _data_dir_override
    if os.environ.get(DATA_ENV):
        env_dir = Path(os.environ[DATA_ENV]).expanduser().resolve()
        if _writable(env_dir if env_dir.exists() else env_dir.parent):
            return env_dir
    if PROJECT_ROOT is not None:
        return PROJECT_ROOT / "datasets" / "cache"
    return Path.home() / ".cache" / "diffuse_edu"
