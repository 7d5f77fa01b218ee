"""Grading a classroom: ``python -m diffuse_edu grade FOLDER``.

Every learner notebook in FOLDER (one learner per ``.ipynb`` file, or per sub-folder of notebooks)
runs headless at quick scale, each in its own process with a time limit, through the same runner
as ``python -m diffuse_edu run``. The result is a table of each exercise's verdict per learner, with
the checker's message for failures, written as ``grades.csv`` (one row per exercise) and
``grades.md`` (one row per notebook). A notebook that crashes or runs out of time is a row that says
so; it never stops the grader.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
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


def find_learners(folder: Path) -> dict[str, list[Path]]:
    """Learner -> notebooks: each ``.ipynb`` in ``folder`` is a learner (named by the file), and each
    sub-folder holding notebooks is one (named by the folder)."""
    learners: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".ipynb":
            learners[path.stem] = [path]
        elif path.is_dir() and not path.name.startswith("."):
            books = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if books:
                learners[path.name] = books
    return learners


def grade_notebook(learner: str, path: Path, *, timeout: float) -> Graded:
    """Run one notebook in a child process at quick scale and read what its checkers said."""
    env = {**os.environ, config.SCALE_ENV: "quick", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        try:
            proc = subprocess.run([sys.executable, "-m", "diffuse_edu", "run", str(path), "--scale", "quick",
                                   "--out", str(out)], capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return Graded(learner, path.name, f"timed out after {timeout:.0f} s", time.perf_counter() - start)
        seconds = time.perf_counter() - start
        metrics = out / "metrics.json"
        if not metrics.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return Graded(learner, path.name, f"did not run: {tail[0][:200]}", seconds)
        summary = json.loads(metrics.read_text())
    run = f"crashed in {summary['error']}" if summary.get("error") else "completed"
    details = [{k: v[k] for k in ("name", "status", "message")} for v in summary.get("exercise_details", [])]
    return Graded(learner, path.name, run, seconds, details)


def write_tables(rows: list[Graded], out: Path) -> tuple[Path, Path]:
    """grades.csv (one line per exercise) and grades.md (one line per notebook) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "grades.csv", out / "grades.md"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["learner", "notebook", "run", "seconds", "exercise", "verdict", "message"])
        for r in rows:
            for ex in r.exercises or [{"name": "", "status": "", "message": ""}]:
                w.writerow([r.learner, r.notebook, r.run, f"{r.seconds:.1f}", ex["name"], ex["status"],
                            "" if ex["status"] == "passed" else ex["message"]])
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
    md_path.write_text(text)
    return csv_path, md_path


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def grade(folder: Path, *, timeout: float = 300.0, out: Path | None = None) -> list[Graded]:
    """Grade every learner in ``folder``; write the tables to ``out`` (default ``folder/grades``)."""
    learners = find_learners(folder)
    if not learners:
        raise config.CourseError(f"No notebooks in {folder}: put one .ipynb per learner there, or one "
                                "folder of notebooks per learner.")
    rows = []
    for learner, books in learners.items():
        for path in books:
            print(f"grading {learner}: {path.name} ...", flush=True)
            rows.append(grade_notebook(learner, path, timeout=timeout))
            print(f"  {rows[-1].run}, {sum(e['status'] == 'passed' for e in rows[-1].exercises)}/"
                  f"{len(rows[-1].exercises)} exercises passed ({rows[-1].seconds:.0f} s)", flush=True)
    csv_path, md_path = write_tables(rows, out or folder / "grades")
    print(f"wrote {csv_path} and {md_path}")
    return rows
