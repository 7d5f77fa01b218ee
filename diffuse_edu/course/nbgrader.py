"""The course as an nbgrader course directory: ``python -m diffuse_edu export nbgrader DIR``.

nbgrader (Jupyter's grading tool) reads notebooks whose cells carry metadata saying what each cell
is. The export writes ``DIR/source/<lesson>/<lesson>.ipynb`` for every lesson, from the complete
versions in ``solutions/``, with nbgrader's cell metadata (schema version 3):

* each exercise becomes a **solution cell** (its ``grade_id`` the exercise's name) holding the code
  between ``# BEGIN SOLUTION`` and ``# END SOLUTION``, the markers nbgrader replaces with a stub in
  the learners' version, exactly as ``python -m diffuse_edu build`` does
  (its ``# HINT:`` lines above the markers, so that the release keeps them);
* its check line becomes a locked cell that runs the course's checker, and each exercise an
  **autograded cell** worth one point, locked, that asserts it passed
  (:func:`diffuse_edu.exercises.require_passed`);
* every other cell is **locked** (read-only), so learners cannot change the experiments.

``DIR/nbgrader_config.py`` names the course, lists the lessons and sets the stub nbgrader writes.
Then, in DIR: ``nbgrader generate_assignment 03_unet``, release, collect, and ``nbgrader autograde
03_unet``.

A learner who worked in the course's own ``notebooks/`` (no nbgrader cell ids: nbgrader would score
it 0 without a word) is brought in with ``python -m diffuse_edu export nbgrader-submission
NOTEBOOK DIR --student ID``: their answers go into the release's solution cells, by exercise, as
``DIR/submitted/ID/<lesson>/<lesson>.ipynb``, ready for ``nbgrader autograde``.
"""

from __future__ import annotations

import json
from pathlib import Path

from diffuse_edu.course.builder import BEGIN, CHECK, END, HINT, KERNEL_METADATA
from diffuse_edu.config import CourseError
from diffuse_edu.course.hosted import cell_text

SCHEMA = 3
STUB = 'raise NotImplementedError("Exercise not finished yet.")'


#: nbgrader's limit on one cell while it autogrades (seconds): the slowest quick-scale cell takes
#: about two minutes alone on two cores, several times that on a grader running many kernels at
#: once.
CELL_TIMEOUT_S = 600


def _meta(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = True,
          points: int | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": SCHEMA,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def _cell(kind: str, source: str, metadata: dict) -> dict:
    cell = {"cell_type": kind, "metadata": metadata, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def hints_outside(solution: str) -> str:
    """``solution`` with each ``# HINT:`` line of a marked answer moved above its ``BEGIN SOLUTION``
    line: nbgrader's release replaces everything between the markers, and the learners keep the
    hints (as ``python -m diffuse_edu build`` keeps them)."""
    out: list[str] = []
    begin = None  # where the open answer's BEGIN line sits in out
    for line in solution.splitlines():
        if BEGIN.match(line):
            begin = len(out)
        elif END.match(line):
            begin = None
        elif begin is not None and HINT.match(line):
            out.insert(begin, line)
            begin += 1
            continue
        out.append(line)
    return "\n".join(out)


def exercise_cells(source: str, index: int) -> list[dict]:
    """An exercise cell as nbgrader wants it: the solution (its hints above the answer), a locked
    cell that runs the course's checks, and one locked, autograded cell per exercise, worth a point
    each (a cell with two exercises is not all-or-nothing)."""
    lines = source.rstrip("\n").splitlines()
    checks = [i for i, line in enumerate(lines) if CHECK.match(line)]
    if not checks:
        raise ValueError(f"cell {index}: an exercise cell must end with `name = check(name, "
                         "CHECKER)`.")
    names = [CHECK.match(lines[i]).group(1) for i in checks]
    solution = hints_outside("\n".join(lines[: checks[0]]).rstrip("\n"))
    run_checks = "\n".join(lines[checks[0]:])
    return [_cell("code", solution, _meta(names[0], solution=True, locked=False)),
            _cell("code", run_checks, _meta(f"{names[0]}_checks")),
            *(_cell("code",
                    f'from diffuse_edu.exercises import require_passed\n\nrequire_passed("{n}")',
                    _meta(f"{n}_passed", grade=True, points=1)) for n in names)]


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
    """Write the nbgrader course directory ``out`` from ``solutions``; return the notebooks
    written."""
    written, lessons = [], []
    for path in sorted(solutions.glob("[0-9]*.ipynb")):
        target = out / "source" / path.stem / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nbgrader_notebook(path), indent=1) + "\n")
        written.append(target)
        lessons.append(path.stem)
    config = [
        ("# nbgrader's settings for the diffuse-edu course "
         "(written by `python -m diffuse_edu export nbgrader`)."),
        "c = get_config()  # noqa: F821 (nbgrader provides it)",
        'c.CourseDirectory.course_id = "diffuse-edu"',
        f"# lessons: {', '.join(lessons)}",
        f'c.ClearSolutions.code_stub = {{"python": {"# YOUR CODE HERE" + chr(10) + STUB!r}}}',
        "c.ClearSolutions.enforce_metadata = True",
        ("# Autograding runs each lesson at quick scale (its kernels inherit this), "
         "where a cell trains for"),
        "# up to two minutes: nbgrader's default of 30 s per cell would stop lesson 05 four times.",
        "import os  # noqa: E402",
        'os.environ.setdefault("DIFFUSE_EDU_SCALE", "quick")',
        f"c.Execute.timeout = {CELL_TIMEOUT_S}",
    ]
    (out / "nbgrader_config.py").write_text("\n".join(config) + "\n")
    return written


def submission(notebook: Path, release: Path) -> tuple[dict, list[str]]:
    """The release notebook ``release`` with each solution cell holding the learner's answer from
    ``notebook`` (a course notebook from ``notebooks/``, worked on), found by its check line.
    Returns the notebook and the exercises the learner's notebook has no cell for (left as
    released: unfinished)."""
    try:
        mine = json.loads(notebook.read_text(encoding="utf-8"))
        cells = [cell_text(c) for c in mine["cells"] if c.get("cell_type") == "code"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CourseError(f"{notebook} is not a readable notebook ({e}).") from e
    answers = {}
    for source in cells:
        lines = source.rstrip("\n").splitlines()
        checks = [i for i, line in enumerate(lines) if CHECK.match(line)]
        if checks:
            answers[CHECK.match(lines[checks[0]]).group(1)] = (
                "\n".join(lines[: checks[0]]).rstrip("\n"))
    nb = json.loads(release.read_text(encoding="utf-8"))
    missing = []
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            if meta["grade_id"] in answers:
                cell["source"] = answers[meta["grade_id"]]
            else:
                missing.append(meta["grade_id"])
    if len(missing) == sum(bool(c.get("metadata", {}).get("nbgrader", {}).get("solution"))
                           for c in nb["cells"]):
        raise CourseError(f"{notebook} has none of the exercises of {release.stem} (no `name = "
                          "check(name, ...)` line of this lesson): is it the right lesson?")
    return nb, missing


def import_submission(notebook: Path, course: Path, student: str,
                      lesson: str | None = None) -> Path:
    """Write ``notebook`` (a learner's course notebook) as ``course/submitted/student/<lesson>/``
    for ``nbgrader autograde``; ``lesson`` defaults to the notebook's file name."""
    lesson = lesson or notebook.stem
    release = course / "release" / lesson / f"{lesson}.ipynb"
    if not release.is_file():
        raise CourseError(f"No release of {lesson} in {course}: run `nbgrader generate_assignment "
                          f"{lesson}` there first (or name the lesson with --lesson if the file "
                          "was renamed).")
    nb, missing = submission(notebook, release)
    target = course / "submitted" / student / lesson / f"{lesson}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(nb, indent=1) + "\n")
    if missing:
        print(f"{notebook.name}: no cell for {', '.join(missing)}; left unfinished (no points).")
    return target
