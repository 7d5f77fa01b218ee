"""The course as an nbgrader course directory: ``python -m diffuse_edu export nbgrader DIR``.

nbgrader (Jupyter's grading tool) reads notebooks whose cells carry metadata saying what each cell
is. The export writes ``DIR/source/<lesson>/<lesson>.ipynb`` for every lesson, from the complete
versions in ``solutions/``, with nbgrader's cell metadata (schema version 3):

* each exercise becomes a **solution cell** (its ``grade_id`` the exercise's name) holding the code
  between ``# BEGIN SOLUTION`` and ``# END SOLUTION``, the markers nbgrader replaces with a stub in
  the learners' version, exactly as ``python -m diffuse_edu build`` does;
* each exercise's check becomes an **autograded cell** worth one point, locked: it runs the
  course's checker and asserts that the exercise passed (:func:`diffuse_edu.exercises.require_passed`);
* every other cell is **locked** (read-only), so learners cannot change the experiments.

``DIR/nbgrader_config.py`` names the course, lists the lessons and sets the stub nbgrader writes.
Then, in DIR: ``nbgrader generate_assignment 03_unet``, release, collect, and ``nbgrader autograde
03_unet``.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffuse_edu.course.builder import BEGIN, CHECK, KERNEL_METADATA
from diffuse_edu.course.hosted import cell_text

SCHEMA = 3
STUB = 'raise NotImplementedError("Exercise not finished yet.")'


#: nbgrader's limit on one cell while it autogrades (seconds): the slowest quick-scale cell takes about
#: two minutes alone on two cores, several times that on a grader running many kernels at once.
CELL_TIMEOUT_S = 600


def _meta(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = True,
          points: int | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA, "solution": solution,
            "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def _cell(kind: str, source: str, metadata: dict) -> dict:
    cell = {"cell_type": kind, "metadata": metadata, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def exercise_cells(source: str, index: int) -> list[dict]:
    """An exercise cell as nbgrader wants it: the solution, then its locked, autograded check."""
    lines = source.rstrip("\n").splitlines()
    checks = [i for i, line in enumerate(lines) if CHECK.match(line)]
    if not checks:
        raise ValueError(f"cell {index}: an exercise cell must end with `name = check(name, CHECKER)`.")
    names = [CHECK.match(lines[i]).group(1) for i in checks]
    solution = "\n".join(lines[: checks[0]]).rstrip("\n")
    tests = "\n".join(lines[checks[0]:]) + "\n" + "\n".join(f'require_passed("{n}")' for n in names)
    tests = "from diffuse_edu.exercises import require_passed\n\n" + tests
    return [_cell("code", solution, _meta(names[0], solution=True, locked=False)),
            _cell("code", tests, _meta(f"{names[0]}_check", grade=True, points=len(names)))]


def nbgrader_notebook(solution: Path) -> dict:
    """The nbgrader source version of a solution notebook."""
    nb = json.loads(solution.read_text(encoding="utf-8"))
    cells = []
    for i, cell in enumerate(nb["cells"], start=1):
        source = cell_text(cell)
        if cell["cell_type"] == "code" and any(BEGIN.match(line) for line in source.splitlines()):
            cells += exercise_cells(source, i)
        else:
            cells.append(_cell(cell["cell_type"], source, _meta(f"{solution.stem}-cell-{i}")))
    return {"cells": cells, "metadata": dict(KERNEL_METADATA), "nbformat": 4, "nbformat_minor": 4}


def export(solutions: Path, out: Path) -> list[Path]:
    """Write the nbgrader course directory ``out`` from ``solutions``; return the notebooks written."""
    written, lessons = [], []
    for path in sorted(solutions.glob("[0-9]*.ipynb")):
        target = out / "source" / path.stem / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nbgrader_notebook(path), indent=1) + "\n")
        written.append(target)
        lessons.append(path.stem)
    config = [
        "# nbgrader's settings for the diffuse-edu course (written by `python -m diffuse_edu export nbgrader`).",
        "c = get_config()  # noqa: F821 (nbgrader provides it)",
        'c.CourseDirectory.course_id = "diffuse-edu"',
        f"# lessons: {', '.join(lessons)}",
        f'c.ClearSolutions.code_stub = {{"python": {"# YOUR CODE HERE" + chr(10) + STUB!r}}}',
        "c.ClearSolutions.enforce_metadata = True",
        "# Autograding runs each lesson at quick scale (its kernels inherit this), where a cell trains for",
        "# up to two minutes: nbgrader's default of 30 s per cell would stop lesson 05 four times.",
        "import os  # noqa: E402",
        'os.environ.setdefault("DIFFUSE_EDU_SCALE", "quick")',
        f"c.Execute.timeout = {CELL_TIMEOUT_S}",
    ]
    (out / "nbgrader_config.py").write_text("\n".join(config) + "\n")
    return written
