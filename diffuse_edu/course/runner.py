"""Run a lesson without Jupyter: ``python -m diffuse_edu run 01 --scale quick --out runs/01``.

The runner executes the code cells of a solution notebook as plain Python (so it works on a bare
GPU server with no Jupyter installed), saves each figure the lesson shows as a PNG, and writes::

    OUT/metrics.json   the numbers the lesson reported (diffuse_edu.report.metric), the scale,
                       device, seconds, versions, the command, the exercise verdicts and a stamp
                       (the lesson's source and the library's, hashed)
    OUT/NN_<title>.png every figure, in order
    OUT/<lesson>.ipynb the executed notebook: every cell with its printed output and its figures
                       embedded, readable on a code host (figures downscaled past 5 MB in all)
    OUT/samples.npz    generated images as uint8 (lessons that generate images)

``run all`` skips a lesson whose OUT/metrics.json has the same stamp and scale and no error, so a
long full-scale run can resume across jobs; ``force`` runs it again. With a budget, a lesson still
running when the budget ends is stopped there and recorded as unfinished (with how long it ran),
so that a GPU job of limited time always ends with its results written.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from diffuse_edu import config, exercises
from diffuse_edu.course import report
from diffuse_edu.course.hosted import cell_text
from diffuse_edu.training.loop import STOPPED_BY_CLOCK


class LessonError(config.CourseError, RuntimeError):
    """A lesson cannot run, or a cell of it raised; the message names the cell and the error."""


class OutOfBudget(BaseException):
    """Raised inside a lesson's cell when the run passes its time limit (a BaseException, so that no
    ``except Exception`` in a lesson or in the library swallows it)."""


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise :class:`OutOfBudget` in this thread once ``seconds`` have passed (a POSIX timer; where
    there is none, or off the main thread, no limit)."""
    if (seconds is None or not hasattr(signal, "setitimer")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return

    def stop(signum, frame):
        raise OutOfBudget

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


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
        raise LessonNotFound("A lesson is a number such as 01 or a path to a notebook, not "
                             f"{lesson!r}.")
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
    sources = [cell_text(c) for c in cells if c.get("cell_type") == "code"]
    return [s for s in sources if s.strip()]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "figure"


_FIGURE_NAME = re.compile(r"\d\d_[a-z0-9_]+\.png")


def _clear_previous_run(out: Path) -> None:
    """Remove what an earlier run wrote to ``out`` under names this run may not write again: its
    figures (their names carry their titles, which can hold measured numbers) and its samples, so
    that the folder never mixes two runs. Other files are left alone."""
    for path in out.iterdir():
        if (_FIGURE_NAME.fullmatch(path.name) or path.name == "samples.npz") and path.is_file():
            path.unlink()


class _FigureSaver:
    """Replaces plt.show: saves every open figure to OUT as NN_<title>.png, then closes it."""

    def __init__(self, out: Path):
        # every figure saved, in order (the cells' outputs take them from here)
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


def stamp(path: Path) -> dict[str, str]:
    """What a lesson's results depend on: its notebook's cells and the library's source, hashed, and
    the library's version. Results with the same stamp (and scale) are current."""
    from diffuse_edu import __version__

    lesson = hashlib.sha256()
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        text = cell_text(cell)
        lesson.update(cell.get("cell_type", "").encode() + b"\0" + text.encode() + b"\0")
    library = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for source in sorted(package.rglob("*.py")):
        library.update(str(source.relative_to(package)).encode() + b"\0" + source.read_bytes())
    return {"lesson": lesson.hexdigest()[:16], "library": library.hexdigest()[:16],
            "version": __version__}


def _recorded(out: Path, scale: str) -> dict | None:
    """The run recorded in ``out/metrics.json`` when it ran at ``scale`` (None if none can be
    read)."""
    try:
        done = json.loads((out / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return done if scale in (done.get("requested_scale"), done.get("scale")) else None


def is_current(path: Path, out: Path, scale: str) -> bool:
    """Whether ``out`` holds a finished run of ``path`` at ``scale`` with today's stamp."""
    done = _recorded(out, scale)
    return done is not None and done.get("stamp") == stamp(path) and not done.get("error")


class _Tee(io.TextIOBase):
    """Writes to the cell's record and, unless quiet, to the real stdout."""

    def __init__(self, echo: io.TextIOBase | None):
        self.echo, self.buffer_ = echo, io.StringIO()

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        if self.echo is not None:
            self.echo.write(text)
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()


def run_notebook(path: Path, *, scale: str, out: Path, quiet: bool = False,
                 time_limit: float | None = None) -> dict:
    """Execute a notebook's code cells headless at ``scale``, writing results to ``out``.

    With ``quiet`` the lesson's printed output is swallowed (the verdicts are in the result). With
    ``time_limit`` (seconds) a lesson still running then is stopped: its results are written with
    ``"unfinished": true`` and the error says where it stopped (:class:`LessonError` is raised).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the lesson runs in its own folder: a relative out would move with it
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous_run(out)
    env_before = os.environ.get(config.SCALE_ENV)
    os.environ[config.SCALE_ENV] = scale  # subprocesses the lesson starts see it too
    config.set_scale(scale)
    report.reset()
    exercises.VERDICTS.clear()
    saver = _FigureSaver(out)
    shown, plt.show = plt.show, saver
    namespace = {"__name__": "__main__", "display": print}
    start, cwd = time.perf_counter(), Path.cwd()
    # outputs: code cell number -> (printed text, figure file names, error)
    error, outputs = None, {}
    unfinished, i, tee, shown_before = False, 0, _Tee(None), 0
    smoking = os.environ.get(config.SMOKE_ENV) == "1" and not config.smoke()
    if smoking:  # a smoke run of the full scale: by_scale's full values and the recipes made small
        from diffuse_edu.training import smoke

        smoke.start()
    try:
        cells = code_cells(path)
        os.chdir(path.parent)
        with _time_limit(time_limit):
            for i, source in enumerate(cells, start=1):
                tee, shown_before = _Tee(None if quiet else sys.stdout), len(saver.paths)
                try:
                    with contextlib.redirect_stdout(tee), config.explain_out_of_memory(
                            f"running code cell {i}", config.CELL_MEMORY_KNOB):
                        exec(compile(source, f"<{path.name}, code cell {i}>", "exec"), namespace)
                        saver()  # figures the cell left open belong to it
                except (Exception, SystemExit) as e:
                    # a cell that calls exit() stopped the lesson too
                    error = f"code cell {i}: {type(e).__name__}: {e}"
                    outputs[i] = (tee.buffer_.getvalue(), saver.paths[shown_before:], error)
                    raise LessonError(f"{path.name} failed in {error}") from e
                outputs[i] = (tee.buffer_.getvalue(), saver.paths[shown_before:], None)
    except OutOfBudget:
        unfinished = True
        error = (f"code cell {i}: stopped at the time limit after "
                 f"{time.perf_counter() - start:.0f} s, before the lesson finished (run it alone, "
                 "on a machine held longer)")
        outputs[i] = (tee.buffer_.getvalue(), saver.paths[shown_before:], error)
        raise LessonError(f"{path.name}: {error}") from None
    finally:
        os.chdir(cwd)
        plt.show = shown
        saver()  # figures left open at the end
        summary = _write_results(path, out, scale, time.perf_counter() - start, saver.paths, error,
                                 unfinished)
        write_executed(path, out, outputs)
        config.set_scale(None)
        if smoking:
            smoke.stop()
        if env_before is None:
            os.environ.pop(config.SCALE_ENV, None)
        else:
            os.environ[config.SCALE_ENV] = env_before
    return summary


#: Past this size an executed notebook's figures are embedded at half their resolution.
NOTEBOOK_LIMIT = 5 * 1024 * 1024


def write_executed(path: Path, out: Path,
                   outputs: dict[int, tuple[str, list[str], str | None]]) -> Path:
    """``out/<lesson>.ipynb``: the notebook with each code cell's printed text and figures (read
    back from ``out``) as its outputs, the cells not run left empty. Past :data:`NOTEBOOK_LIMIT` the
    figures are embedded at half resolution."""
    nb = json.loads(path.read_text(encoding="utf-8"))

    def build(shrink: bool) -> str:
        number = 0
        for cell in nb["cells"]:
            if cell.get("cell_type") != "code":
                continue
            if not cell_text(cell).strip():
                cell.update(outputs=[], execution_count=None)
                continue
            number += 1
            printed, figures, failed = outputs.get(number, ("", [], None))
            cell_outputs: list[dict] = []
            if printed:
                cell_outputs.append({"output_type": "stream", "name": "stdout", "text": printed})
            for name in figures:
                cell_outputs.append({"output_type": "display_data", "metadata": {},
                                     "data": {"image/png": _png(out / name, shrink),
                                              "text/plain": [name]}})
            if failed:
                cell_outputs.append({"output_type": "error", "ename": failed.split(":")[1].strip(),
                                     "evalue": failed, "traceback": [failed]})
            cell.update(outputs=cell_outputs, execution_count=number if number in outputs else None)
        return json.dumps(nb, indent=1) + "\n"

    text = build(shrink=False)
    if len(text.encode()) > NOTEBOOK_LIMIT:
        text = build(shrink=True)
    target = out / path.name
    target.write_text(text, encoding="utf-8")
    return target


def _png(file: Path, shrink: bool) -> str:
    """A PNG file as base64, optionally at half its width and height."""
    if not shrink:
        return base64.b64encode(file.read_bytes()).decode()
    import matplotlib.pyplot as plt

    image = plt.imread(file)[::2, ::2]
    buffer = io.BytesIO()
    plt.imsave(buffer, image, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def run_all(*, scale: str, out: Path, force: bool = False,
            budget: float | None = None) -> dict[str, dict]:
    """Every lesson in order, each into ``out/<lesson>``; a failing lesson does not stop the rest.
    A lesson whose results there are current (:func:`is_current`) is skipped unless ``force`` (its
    summary, read back, says ``"skipped": "current"``).

    With ``budget`` (seconds), no lesson starts once the budget is spent, nor one whose last run in
    ``out`` took longer than what is left: the run stops there (later lessons load what earlier
    ones cache), and the same call resumes it in the next job. A lesson still running when the
    budget ends is stopped and recorded as unfinished; later calls pass over it (summary
    ``"skipped": "too long"``) and go on with the next lessons, unless at least twice the time it
    ran is left."""
    summaries, start = {}, time.perf_counter()
    for path in sorted(lessons_dir().glob("[0-9]*.ipynb")):
        done = out / path.stem / "metrics.json"
        if not force and is_current(path, out / path.stem, scale):
            print(f"== {path.stem}: results in {out / path.stem} are current (same lesson, same "
                  "library): skipped",
                  flush=True)
            summaries[path.stem] = {**json.loads(done.read_text()), "skipped": "current"}
            continue
        left = None if budget is None else budget - (time.perf_counter() - start)
        if left is not None:
            last_run = _recorded(out / path.stem, scale) or {}
            seconds = last_run.get("seconds")
            last = float(seconds) if isinstance(seconds, (int, float)) else None
            stopped = bool(last_run.get("unfinished")) and last_run.get("stamp") == stamp(path)
            if left > 0 and stopped and last is not None and 2 * last > left:
                print(f"== {path.stem}: passed over: its last run was stopped unfinished after "
                      f"{last:.0f} s, and {left:.0f} s are left. Run it alone on a machine held "
                      f"longer: python -m diffuse_edu run {path.stem[:2]} --scale {scale} --out "
                      f"{out / path.stem}", flush=True)
                summaries[path.stem] = {**last_run, "skipped": "too long"}
                continue
            if left <= 0 or (last is not None and last > left and not stopped):
                took = f"; its last run here took {last:.0f} s" if last is not None else ""
                print(f"== {path.stem}: not started, {max(left, 0):.0f} s left of the "
                      f"{budget:.0f} s budget{took}. Run the same command again to go on from "
                      "here.", flush=True)
                break
        print(f"== {path.stem}", flush=True)
        try:
            summaries[path.stem] = run_notebook(path, scale=scale, out=out / path.stem,
                                                time_limit=left)
        except LessonError as e:
            print(f"!! {e}")
            summaries[path.stem] = json.loads(done.read_text())
    return summaries


def _write_results(path: Path, out: Path, scale: str, seconds: float, figures: list[str],
                   error: str | None, unfinished: bool = False) -> dict:
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
        # stopped at the time limit: ``seconds`` is how long it ran, not what it needs
        "unfinished": unfinished,
        # trainings the clock stopped short of their planned steps: the verdicts above say so too
        "stopped_by_clock": list(STOPPED_BY_CLOCK),
        "stamp": stamp(path),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if report.SAMPLES:
        np.savez_compressed(out / "samples.npz", samples=np.concatenate(report.SAMPLES))
    return summary
