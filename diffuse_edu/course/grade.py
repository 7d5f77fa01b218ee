"""Grading a classroom: ``python -m diffuse_edu grade FOLDER``.

Every learner notebook in FOLDER (one learner per ``.ipynb`` file, or per sub-folder of notebooks)
runs headless at quick scale through the same runner as ``python -m diffuse_edu run``, each in its
own process, with a time limit and a memory limit, in a **scratch copy** of the learner's own files:
a notebook that writes beside itself, or to ``../``, changes only its copy, never another
learner's files nor the grade table. The result is a table of each exercise's verdict per learner,
with the checker's message for failures, written as ``grades.csv`` (one row per exercise) and
``grades.md`` (one row per notebook). A notebook that crashes, runs out of time or memory, or is not
a notebook at all is a row that says so; it never stops the grader.

Grading runs the learners' code with the grader's rights. The scratch copy protects the classroom
folder from a careless notebook, not from a hostile one (an absolute path reaches anywhere):
grade untrusted submissions inside a container or a virtual machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from diffuse_edu import config


@dataclass
class Graded:
    """One learner's notebook, run and judged."""

    learner: str
    notebook: str
    run: str  # "completed", "crashed in code cell N: ...", "timed out after S s", ...
    seconds: float
    exercises: list[dict] = field(default_factory=list)  # name, status, message (from the checkers)


def find_learners(folder: Path, *, skip: Path | None = None) -> dict[str, list[Path]]:
    """Learner -> notebooks: each ``.ipynb`` in ``folder`` is a learner (named by the file), and each
    sub-folder holding notebooks is one (named by the folder), but ``skip`` (the grader's own output,
    which keeps the executed notebooks)."""
    if not folder.is_dir():
        raise config.CourseError(f"{folder} is not a folder: give grade the class folder, with one .ipynb per "
                                 "learner or one folder of notebooks per learner.")
    learners: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".ipynb":
            learners[path.stem] = [path]
        elif path.is_dir() and not path.name.startswith(".") and (skip is None or path.resolve() != skip.resolve()):
            books = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if books:
                learners[path.name] = books
    return learners


def notebook_problem(path: Path) -> str | None:
    """Why ``path`` is not a notebook the runner can run (None when it is one)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "not a notebook: the file is not text (UTF-8)"
    except json.JSONDecodeError as e:
        return f"not a notebook: not valid JSON ({e.msg} at line {e.lineno}); the file may be truncated"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        return "not a notebook: valid JSON, but not a Jupyter notebook (nbformat 4, a list of cells)"
    return None


def _resident_mb(pid: int) -> float:
    """The process's resident memory in MB (Linux /proc; 0 where that is not available)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _address_limit(memory_mb: float):
    """Where /proc is missing (macOS): a limit on the child's address space, set before it starts."""
    if Path("/proc/self/status").exists():
        return None

    def limit() -> None:
        import resource

        cap = int(memory_mb * 4 * 2**20)  # importing torch reserves several times what it uses
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return limit


def run_limited(args: list[str], *, env: dict, timeout: float, memory_mb: float,
                log: Path | None = None) -> tuple[str | None, float]:
    """Run ``args``; kill it past ``timeout`` seconds or ``memory_mb`` of resident memory. Returns
    (why it was stopped, or None when it ended by itself; seconds). Its standard error goes to the
    file ``log`` (default: nowhere): never to a pipe, which a chatty notebook fills (64 KiB) and
    then waits on forever."""
    start = time.perf_counter()
    with open(log if log is not None else os.devnull, "wb") as errors:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=errors,
                                preexec_fn=_address_limit(memory_mb))
        return _watch(proc, start, timeout=timeout, memory_mb=memory_mb)


def _watch(proc: subprocess.Popen, start: float, *, timeout: float, memory_mb: float) -> tuple[str | None, float]:
    """Wait for ``proc``, killing it past ``timeout`` seconds or ``memory_mb`` of resident memory."""
    stopped = None
    while proc.poll() is None:
        if time.perf_counter() - start > timeout:
            stopped = f"timed out after {timeout:.0f} s"
        elif _resident_mb(proc.pid) > memory_mb:
            stopped = f"out of memory (over {memory_mb:.0f} MB)"
        if stopped:
            proc.kill()
            break
        time.sleep(0.1)
    proc.wait()
    return stopped, time.perf_counter() - start


def grade_notebook(learner: str, path: Path, *, timeout: float, memory_mb: float = 4000.0,
                   files: Path | None = None, side_by_side: int = 1, keep: Path | None = None) -> Graded:
    """Run one notebook in a child process at quick scale, in a scratch copy of ``files`` (the
    learner's folder; default: the notebook alone), and read what its checkers said. With
    ``side_by_side`` notebooks running at once, it gets its share of the cores (one thread each
    on two cores; config.threads_per_job). With ``keep``, the executed notebook (its outputs and
    figures: feedback for the learner, and something to audit) is kept as ``keep/learner/NAME``."""
    problem = notebook_problem(path)
    if problem:
        return Graded(learner, path.name, problem, 0.0)
    env = {**os.environ, config.SCALE_ENV: "quick", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
           **(config.thread_env(side_by_side) if side_by_side > 1 else {})}
    with tempfile.TemporaryDirectory() as tmp:
        scratch, out = Path(tmp) / "work" / learner, Path(tmp) / "results"
        if files is not None and files.is_dir():
            shutil.copytree(files, scratch)
            copy = scratch / path.relative_to(files)
        else:
            scratch.mkdir(parents=True)
            copy = scratch / path.name
            shutil.copyfile(path, copy)
        log = Path(tmp) / "stderr.txt"
        stopped, seconds = run_limited([sys.executable, "-m", "diffuse_edu", "run", str(copy), "--scale", "quick",
                                        "--out", str(out)], env=env, timeout=timeout, memory_mb=memory_mb, log=log)
        metrics = out / "metrics.json"
        executed = out / path.name
        if keep is not None and executed.is_file():
            (keep / learner).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(executed, keep / learner / path.name)
        if stopped:
            return Graded(learner, path.name, stopped, seconds)
        if not metrics.is_file():
            tail = log.read_text(errors="replace").strip()[-300:] if log.is_file() else ""
            return Graded(learner, path.name, "did not run (the runner wrote no results)"
                          + (f"; it said: {tail}" if tail else ""), seconds)
        summary = json.loads(metrics.read_text())
    error = summary.get("error") or ""
    run = ("out of memory (" + error + ")" if "MemoryError" in error
           else f"crashed in {error}" if error else "completed")
    details = [{k: v[k] for k in ("name", "status", "message")} for v in summary.get("exercise_details", [])]
    return Graded(learner, path.name, run, seconds, details)


def write_tables(rows: list[Graded], out: Path) -> tuple[Path, Path]:
    """grades.csv (one line per exercise) and grades.md (one line per notebook) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "grades.csv", out / "grades.md"
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["learner", "notebook", "run", "seconds", "exercise", "verdict", "message"])
    for r in rows:
        for ex in r.exercises or [{"name": "", "status": "", "message": ""}]:
            w.writerow([_inert(c) for c in (r.learner, r.notebook, r.run, f"{r.seconds:.1f}", ex["name"], ex["status"],
                                            "" if ex["status"] == "passed" else ex["message"])])
    _replace(csv_path, table.getvalue())
    lines = ["| learner | notebook | run | passed | exercises |", "| --- | --- | --- | --- | --- |"]
    failures = []
    for r in rows:
        done = sum(ex["status"] == "passed" for ex in r.exercises)
        verdicts = ", ".join(f"{ex['name']}: {ex['status']}" for ex in r.exercises) or "none checked"
        lines.append(f"| {r.learner} | {r.notebook} | {_cell(r.run)} | {done}/{len(r.exercises)} | {verdicts} |")
        failures += [f"- {r.learner}, {r.notebook}, `{ex['name']}`: {ex['message']}"
                     for ex in r.exercises if ex["status"] == "failed"]
    text = "\n".join(lines) + "\n"
    if failures:
        text += "\nWhat the checkers said about failed exercises:\n\n" + "\n".join(failures) + "\n"
    _replace(md_path, text)
    return csv_path, md_path


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a file beside it, then renamed over it. The rename replaces
    whatever ``path`` is, a link a learner's notebook planted included, and never writes through it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _inert(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula (=, +, -, @, a tab or a
    carriage return: a learner can name a file or an exercise so) gets a leading apostrophe."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def grade(folder: Path, *, timeout: float = 300.0, memory_mb: float = 4000.0,
          out: Path | None = None, jobs: int = 1) -> list[Graded]:
    """Grade every learner in ``folder``, ``jobs`` notebooks at a time (each holds up to ``memory_mb``);
    write the tables to ``out`` (default ``folder/grades``), rows in the learners' order."""
    tables = out or folder / "grades"  # also the executed notebooks, under executed/LEARNER/
    learners = find_learners(folder, skip=tables)
    if not learners:
        raise config.CourseError(f"No notebooks in {folder}: put one .ipynb per learner there, or one "
                                "folder of notebooks per learner.")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise config.CourseError(f"grade needs at least one job at a time, got jobs = {jobs!r}.")
    books = [(learner, path, folder / learner if (folder / learner).is_dir() else None)  # a learner's folder, copied whole
             for learner, paths in learners.items() for path in paths]
    print(f"grading {len(books)} notebook(s) of {len(learners)} learner(s), {min(jobs, len(books))} at a time ...",
          flush=True)

    def one(book: tuple[str, Path, Path | None]) -> Graded:
        learner, path, own = book
        row = grade_notebook(learner, path, timeout=timeout, memory_mb=memory_mb, files=own,
                             side_by_side=min(jobs, len(books)), keep=tables / "executed")
        print(f"  {learner}, {path.name}: {row.run}, {sum(e['status'] == 'passed' for e in row.exercises)}/"
              f"{len(row.exercises)} exercises passed ({row.seconds:.0f} s)", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each notebook runs in its own process
        rows = list(pool.map(one, books))
    csv_path, md_path = write_tables(rows, tables)
    print(f"wrote {csv_path} and {md_path}")
    return rows
