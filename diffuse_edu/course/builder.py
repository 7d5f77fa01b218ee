"""Student notebooks are built from the solution notebooks (``python -m diffuse_edu build``).

In a solution notebook the answer to an exercise sits between two marker lines::

    def q_sample(x0, t, schedule, eps):
        # BEGIN SOLUTION
        # HINT: index schedule.alpha_bar with t ...
        alpha_bar = ...
        return ...
        # END SOLUTION

The student version keeps everything outside the markers, keeps the ``# HINT:`` lines, and
replaces the rest of the answer with ``raise NotImplementedError``. Outputs, execution counts and
all but the kernel metadata are stripped, and every lesson's first code cell is the hosted-notebook
setup cell (the same in every lesson). :func:`out_of_sync` lists student notebooks that differ
from what the build would write (the test suite fails on any).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat

from diffuse_edu.course import hosted

BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
HINT = re.compile(r"^\s*# HINT:")
#: An exercise's check line: ``name = check(name, CHECKER)``.
CHECK = re.compile(r"^(\w+) = check\((\w+), (\w+)\)\s*$")
#: Each lesson's exercises, in order, with their checkers (written by the build, read by the
#: grader).
MANIFEST = Path(__file__).with_name("lessons.json")

KERNEL_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def strip_solutions(source: str, *, where: str = "cell") -> str:
    """Replace each marked answer in ``source`` with its hints and a NotImplementedError."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.splitlines(), start=1):
        begin = BEGIN.match(line)
        if begin:
            if inside:
                raise ValueError(f"{where}, line {number}: BEGIN SOLUTION inside another one.")
            inside, indent = True, begin.group(1)
            out.append(f"{indent}# YOUR CODE HERE")
        elif END.match(line):
            if not inside:
                raise ValueError(f"{where}, line {number}: END SOLUTION without BEGIN.")
            inside = False
            out.append(f'{indent}raise NotImplementedError("Exercise not finished yet.")')
        elif not inside or HINT.match(line):
            out.append(line)
    if inside:
        raise ValueError(f"{where}: BEGIN SOLUTION is never closed.")
    return "\n".join(out)


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Strip outputs, execution counts and metadata in place, and make the first code cell the
    hosted-notebook setup cell (:mod:`diffuse_edu.course.hosted`); return the notebook."""
    nb.metadata = nbformat.from_dict(KERNEL_METADATA)
    nb.cells = hosted.with_setup_cell(nb.cells, nbformat.v4.new_code_cell)
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({})
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.pop("id", None)
    nb.nbformat, nb.nbformat_minor = 4, 4
    return nb


def clean_text(path: Path) -> str:
    """The text of notebook ``path`` with outputs and metadata stripped (solutions are kept so)."""
    return nbformat.writes(clean(nbformat.read(path, as_version=4))) + "\n"


def student_version(solution: Path) -> str:
    """The text of the student notebook built from ``solution``."""
    nb = clean(nbformat.read(solution, as_version=4))
    for i, cell in enumerate(nb.cells, start=1):
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, where=f"{solution.name}, cell {i}")
    return nbformat.writes(nb) + "\n"


def build(solutions: Path, notebooks: Path) -> list[Path]:
    """Write a student version of every solution notebook; return the paths written."""
    notebooks.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(solutions.glob("*.ipynb")):
        target = notebooks / path.name
        target.write_text(student_version(path))
        written.append(target)
    return written


def out_of_sync(solutions: Path, notebooks: Path) -> list[str]:
    """Problems between ``solutions/`` and ``notebooks/``; empty when the build would change
    nothing."""
    problems = []
    wanted = {p.name for p in solutions.glob("*.ipynb")}
    have = {p.name for p in notebooks.glob("*.ipynb")}
    problems += [f"{n}: in notebooks/ but not in solutions/" for n in sorted(have - wanted)]
    problems += [f"{n}: in solutions/ but not built into notebooks/" for n in sorted(wanted - have)]
    for name in sorted(wanted):
        cells = nbformat.read(solutions / name, as_version=4).cells
        if hosted.first_code_cell(cells) != hosted.setup_cell():
            problems.append(f"{name}: its first code cell is not the hosted setup cell "
                            "(run `python -m diffuse_edu build`)")
    for name in sorted(wanted & have):
        if (notebooks / name).read_text() != student_version(solutions / name):
            problems.append(f"{name}: differs from its solution "
                            "(run `python -m diffuse_edu build`)")
    return problems


def _checker_module(constant: str) -> str:
    """The module of diffuse_edu.exercises that defines the checker ``constant``."""
    import importlib
    import pkgutil

    from diffuse_edu import exercises

    for info in sorted(pkgutil.iter_modules(exercises.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{exercises.__name__}.{info.name}")
        if isinstance(vars(module).get(constant), exercises.Checker):
            return module.__name__
    raise ValueError(f"No checker called {constant} in diffuse_edu.exercises.")


def lesson_exercises(solution: Path) -> list[dict[str, str]]:
    """The exercises of the lesson ``solution``, in order: each one's name and its checker
    (``module:CONSTANT``), read from the check lines of its exercise cells."""
    found = []
    for cell in nbformat.read(solution, as_version=4).cells:
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                if match := CHECK.match(line):
                    name, constant = match.group(1), match.group(3)
                    found.append({"name": name,
                                  "checker": f"{_checker_module(constant)}:{constant}"})
    return found


def exercise_manifest(solutions: Path) -> dict[str, list[dict[str, str]]]:
    """Lesson (its notebook's stem) -> its exercises, for every lesson in ``solutions``."""
    return {path.stem: lesson_exercises(path) for path in sorted(solutions.glob("[0-9]*.ipynb"))}


def manifest_text(solutions: Path) -> str:
    return json.dumps(exercise_manifest(solutions), indent=1) + "\n"


def read_manifest() -> dict[str, list[dict[str, str]]]:
    """The lessons' exercises as the last build wrote them (empty where the file is missing)."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
