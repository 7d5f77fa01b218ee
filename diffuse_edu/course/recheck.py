"""The grader checks each exercise again, outside the learner's run:
``python -m diffuse_edu.course.recheck NOTEBOOK LESSON OUT.json``.

A learner's notebook records its own verdicts, in its own process, where its code could change them
(append a verdict, replace the checker). Where it is cheap, the grader does not take that on trust:
in a fresh process it runs only the notebook's import statements and its exercise cells (each
without its check line), then judges each exercise with the checker the lesson names (from the
course's manifest, never from the notebook). An exercise whose function needs what other cells
made (a variable, a trained model) is reported as not re-checked, with why: that says nothing
against it.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from diffuse_edu.course.builder import CHECK, read_manifest
from diffuse_edu.course.hosted import cell_text

NOT_RECHECKED = "not re-checked"


IMPORTS = (ast.Import, ast.ImportFrom)
DEFINITIONS = (*IMPORTS, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _only(source: str, kinds: tuple[type, ...]) -> str:
    """The top-level statements of ``kinds`` in a cell (the rest of the cell is not run again)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    kept = [node for node in tree.body if isinstance(node, kinds)]
    return ast.unparse(ast.Module(body=kept, type_ignores=[]))


def _checker(spec: str):
    import importlib

    module, constant = spec.split(":")
    return getattr(importlib.import_module(module), constant)


def recheck(notebook: dict, exercises: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Exercise name -> {"status", "message"} from checking ``notebook``'s exercise cells again."""
    # before any of the learner's code runs
    from diffuse_edu.exercises import borrowed_verdict, run_checker

    checkers = {e["name"]: _checker(e["checker"]) for e in exercises}
    scope: dict = {"__name__": "__main__"}
    found: dict[str, dict[str, str]] = {}
    for index, cell in enumerate(notebook.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        lines = cell_text(cell).splitlines()
        names = [m.group(1) for line in lines
                 if (m := CHECK.match(line)) and m.group(1) in checkers]
        if not names:
            try:
                exec(compile(_only(cell_text(cell), IMPORTS),  # noqa: S102
                             f"<cell {index}: imports>", "exec"), scope)
            except Exception:  # noqa: BLE001, S110
                pass  # an import that fails here fails the exercise below
            continue
        body = "\n".join(line for line in lines if not CHECK.match(line))
        try:  # its definitions alone first: the cell's other lines may use what earlier cells made
            exec(compile(_only(body, DEFINITIONS), f"<cell {index}>", "exec"), scope)  # noqa: S102
            if not all(callable(scope.get(n)) for n in names):
                # defined some other way: the whole cell
                exec(compile(body, f"<cell {index}>", "exec"), scope)  # noqa: S102
        except Exception as e:  # noqa: BLE001
            why = f"its cell needs what other cells made ({type(e).__name__}: {e})"
            found.update({n: {"status": NOT_RECHECKED, "message": why} for n in names})
            continue
        for name in names:
            fn, checker = scope.get(name), checkers[name]
            if not callable(fn):
                found[name] = {"status": NOT_RECHECKED,
                               "message": f"its cell defines no function {name}"}
                continue
            verdict = borrowed_verdict(fn, checker) or run_checker(fn, checker)
            if verdict.status == "failed" and "raised NameError" in verdict.message:
                found[name] = {"status": NOT_RECHECKED,
                               "message": "it uses names that other cells define "
                                          f"({verdict.message})"}
            else:
                found[name] = {"status": verdict.status, "message": verdict.message}
            scope[name] = fn if verdict.status == "passed" else checker.reference  # as check() does
    return found


def main(argv: list[str]) -> int:
    notebook, lesson, out = argv
    exercises = read_manifest().get(lesson, [])
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    Path(out).write_text(json.dumps(recheck(nb, exercises)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
