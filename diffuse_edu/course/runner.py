"""Run a lesson without Jupyter: ``python -m diffuse_edu run 01 --scale quick --out runs/01``.

The runner executes the code cells of a solution notebook as plain Python (so it works on a bare
GPU server with no Jupyter installed), saves each figure the lesson shows as a PNG, and writes::

    OUT/metrics.json   the numbers the lesson reported (diffuse_edu.report.metric), the scale,
                       device, seconds, versions, the command and the exercise verdicts
    OUT/NN_<title>.png every figure, in order
    OUT/samples.npz    generated images as uint8 (lessons that generate images)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from diffuse_edu import config, exercises
from diffuse_edu.course import report


class LessonError(config.CourseError, RuntimeError):
    """A lesson cannot run, or a cell of it raised; the message names the cell and the error."""


class LessonNotFound(config.CourseError, FileNotFoundError):
    """No lesson or notebook by that name; the message lists the lessons."""


def lessons_dir() -> Path:
    if config.PROJECT_ROOT is None or not (config.PROJECT_ROOT / "solutions").is_dir():
        raise LessonNotFound("The lessons live in a checkout of diffuse-edu: clone the "
                                "repository and install it with `pip install -e .`.")
    return config.PROJECT_ROOT / "solutions"


def find_lesson(lesson: str | os.PathLike) -> Path:
    """A notebook path, or a lesson number ('1', '01') looked up in ``solutions/``."""
    path = Path(lesson)
    if path.suffix == ".ipynb":
        if not path.is_file():
            raise LessonNotFound(f"No notebook at {path}.")
        return path.resolve()
    if not str(lesson).isdigit():
        raise LessonNotFound(f"A lesson is a number such as 01 or a path to a notebook, not {lesson!r}.")
    matches = sorted(lessons_dir().glob(f"{int(lesson):02d}_*.ipynb"))
    if not matches:
        known = ", ".join(p.stem for p in sorted(lessons_dir().glob("[0-9]*.ipynb")))
        raise LessonNotFound(f"No lesson {lesson}; the lessons are: {known}.")
    return matches[0]


def code_cells(path: Path) -> list[str]:
    """The source of each code cell, in order. A notebook is JSON (nbformat 4): it is read as such,
    so that the runner needs no Jupyter package on a bare GPU server."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise LessonError(f"{path} is not a Jupyter notebook (nbformat 4 JSON): {err}. "
                          f"Restore it with `git checkout -- {path}`.") from err
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c.get("cell_type") == "code"]
    return [s for s in sources if s.strip()]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "figure"


class _FigureSaver:
    """Replaces plt.show: saves every open figure to OUT as NN_<title>.png, then closes it."""

    def __init__(self, out: Path):
        self.out, self.paths = out, []

    def __call__(self, *args, **kwargs) -> None:
        import matplotlib.pyplot as plt

        for num in plt.get_fignums():
            fig = plt.figure(num)
            title = fig._suptitle.get_text() if fig._suptitle else next(
                (ax.get_title() for ax in fig.axes if ax.get_title()), "")
            path = self.out / f"{len(self.paths) + 1:02d}_{_slug(title)}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            self.paths.append(path.name)
        plt.close("all")


def versions() -> dict[str, str]:
    """Versions of Python and the libraries the course depends on."""
    import torch

    found = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "matplotlib", "sklearn", "einops"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "missing"
    found["cuda"] = torch.version.cuda or "none"
    return found


def device_name() -> str:
    import torch

    kind = config.accelerator()
    if kind == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}"
    if kind == "mps":
        return f"mps: Apple GPU ({platform.machine()})"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def run_notebook(path: Path, *, scale: str, out: Path, quiet: bool = False) -> dict:
    """Execute a notebook's code cells headless at ``scale``, writing results to ``out``.

    With ``quiet`` the lesson's printed output is swallowed (the verdicts are in the result).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    env_before = os.environ.get(config.SCALE_ENV)
    os.environ[config.SCALE_ENV] = scale  # subprocesses the lesson starts see it too
    config.set_scale(scale)
    report.reset()
    exercises.VERDICTS.clear()
    saver = _FigureSaver(out)
    shown, plt.show = plt.show, saver
    namespace = {"__name__": "__main__", "display": print}
    start, cwd = time.perf_counter(), Path.cwd()
    error = None
    try:
        cells = code_cells(path)
        os.chdir(path.parent)
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            for i, source in enumerate(cells, start=1):
                try:
                    exec(compile(source, f"<{path.name}, code cell {i}>", "exec"), namespace)
                except Exception as e:
                    error = f"code cell {i}: {type(e).__name__}: {e}"
                    raise LessonError(f"{path.name} failed in {error}") from e
    finally:
        os.chdir(cwd)
        plt.show = shown
        saver()  # figures left open at the end
        summary = _write_results(path, out, scale, time.perf_counter() - start, saver.paths, error)
        config.set_scale(None)
        if env_before is None:
            os.environ.pop(config.SCALE_ENV, None)
        else:
            os.environ[config.SCALE_ENV] = env_before
    return summary


def run_all(*, scale: str, out: Path) -> dict[str, dict]:
    """Every lesson in order, each into ``out/<lesson>``; a failing lesson does not stop the rest."""
    summaries = {}
    for path in sorted(lessons_dir().glob("[0-9]*.ipynb")):
        print(f"== {path.stem}", flush=True)
        try:
            summaries[path.stem] = run_notebook(path, scale=scale, out=out / path.stem)
        except LessonError as e:
            print(f"!! {e}")
            summaries[path.stem] = json.loads((out / path.stem / "metrics.json").read_text())
    return summaries


def _write_results(path: Path, out: Path, scale: str, seconds: float, figures: list[str],
                   error: str | None) -> dict:
    summary = {
        "lesson": path.stem,
        "scale": config.get_scale().value,
        "requested_scale": scale,
        "device": device_name(),
        "seconds": round(seconds, 2),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python -m diffuse_edu"] + sys.argv[1:]) if sys.argv[1:] else None,
        "versions": versions(),
        "metrics": dict(report.METRICS),
        "exercises": exercises.summary(),
        "exercise_details": [dataclasses.asdict(v) for v in exercises.VERDICTS],
        "figures": figures,
        "error": error,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if report.SAMPLES:
        np.savez_compressed(out / "samples.npz", samples=np.concatenate(report.SAMPLES))
    return summary
