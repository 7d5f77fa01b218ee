"""Student notebooks stay in step with the solutions; both follow the course's conventions."""

import json

import nbformat
import pytest

from diffuse_edu import config
from diffuse_edu.course import builder as notebooks
from diffuse_edu.course import hosted

ROOT = config.PROJECT_ROOT
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_student_notebooks_are_in_sync_with_solutions():
    problems = notebooks.out_of_sync(ROOT / "solutions", ROOT / "notebooks")
    assert not problems, "Run `python -m diffuse_edu build`:\n" + "\n".join(problems)


def test_out_of_sync_notices_an_edit(tmp_path):
    sol, stu = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, sol / "00_a.ipynb")
    assert notebooks.out_of_sync(sol, stu) == [
        "00_a.ipynb: in solutions/ but not built into notebooks/",
        ("00_a.ipynb: its first code cell is not the hosted setup cell "
         "(run `python -m diffuse_edu build`)")]
    (sol / "00_a.ipynb").write_text(notebooks.clean_text(sol / "00_a.ipynb"))
    notebooks.build(sol, stu)
    assert notebooks.out_of_sync(sol, stu) == []
    nb = nbformat.read(sol / "00_a.ipynb", as_version=4)
    assert [c.source for c in nb.cells] == [hosted.setup_cell(), "x = 1"]
    nb.cells[1].source = "x = 2"
    nbformat.write(nb, sol / "00_a.ipynb")
    assert "differs from its solution" in notebooks.out_of_sync(sol, stu)[0]


def test_strip_solutions_keeps_hints_and_indentation():
    source = ("def f(x):\n    '''Doc.'''\n    # BEGIN SOLUTION\n    # HINT: add one.\n"
              "    y = x + 1\n    return y\n    # END SOLUTION\n\nf = check(f, C)")
    assert notebooks.strip_solutions(source) == (
        "def f(x):\n    '''Doc.'''\n    # YOUR CODE HERE\n    # HINT: add one.\n"
        '    raise NotImplementedError("Exercise not finished yet.")\n\nf = check(f, C)')


@pytest.mark.parametrize("source, message", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "END SOLUTION without BEGIN"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside another"),
])
def test_strip_solutions_rejects_broken_markers(source, message):
    with pytest.raises(ValueError, match=message):
        notebooks.strip_solutions(source)


@pytest.mark.parametrize("folder", ["notebooks", "solutions"])
def test_notebooks_are_committed_clean(folder):
    for path in sorted((ROOT / folder).glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert (not cell["outputs"]
                        and cell["execution_count"] is None), f"{path.name} has outputs"
        assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, f"{path.name} metadata"


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_lesson_shape(path):
    """One hyperparameter cell (by_scale), the course's sections, exercises with a checker."""
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert sum("by_scale(" in c for c in code) == 1, "exactly one hyperparameter cell"
    assert "**Goal.**" in text and "## Summary" in text and "Further exercises" in text
    for cell in code:
        if "# BEGIN SOLUTION" in cell:
            assert ("# HINT: stuck? hint(" in cell
                    and "check(" in cell), "an exercise points to hint() and has a checker"
    student = notebooks.student_version(path)
    assert "# BEGIN SOLUTION" not in student and "# END SOLUTION" not in student


def _root_conftest():
    import importlib.util

    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_solution_printing_a_failed_or_unfinished_verdict_is_found():
    find = _root_conftest().unpassed_verdicts
    outputs = [{"output_type": "stream", "name": "stdout",
                "text": "[ok] q_sample passed all 4 checks.\n[x] flow_euler: yours moves the "
                        "other way.\n"},
               {"output_type": "stream", "name": "stdout",
                "text": "[todo] ddim_step is not written yet.\n"},
               {"output_type": "execute_result", "data": {"text/plain": "'[x] in a value'"}},
               {"output_type": "stream", "name": "stdout", "text": "a line with [x] inside\n"}]
    assert (find(outputs)
            == ["[x] flow_euler: yours moves the other way.",
                "[todo] ddim_step is not written yet."])
    assert find([{"output_type": "stream", "text": "[ok] all passed\n"}]) == []


def test_the_judges_are_cached_first_only_for_a_run_with_notebooks():
    runs = _root_conftest().runs_notebooks
    assert (runs(["tests", "notebooks", "solutions"])
            and runs(["solutions/08_guidance.ipynb::Cell 3"]))
    assert runs([str(ROOT / "notebooks")])
    assert not runs(["tests"]) and not runs(["tests/test_recipes.py::test_recipes_by_scale"])


def test_caching_the_judges_first_reports_and_never_stops_the_run(monkeypatch, capsys):
    from types import SimpleNamespace

    from diffuse_edu.course import workshop
    hooks = _root_conftest()
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # as the controller
    session = SimpleNamespace(config=SimpleNamespace(
        args=["notebooks"], pluginmanager=SimpleNamespace(get_plugin=lambda name: None)))
    monkeypatch.setattr(workshop, "prepare_judges", lambda scale: ["a judge", "another"])
    hooks.pytest_sessionstart(session)
    assert ("judges cached before the notebooks" in capsys.readouterr().out
            and len(hooks._judges_seconds) == 1)

    def missing(scale):
        raise FileNotFoundError("MNIST is not in the data folder: run python -m diffuse_edu data "
                                "fetch mnist")
    monkeypatch.setattr(workshop, "prepare_judges", missing)
    hooks.pytest_sessionstart(session)  # no exception: the notebooks say what is missing
    out = capsys.readouterr().out
    assert "could not be cached" in out and "data fetch mnist" in out
    # no notebooks: nothing
    hooks.pytest_sessionstart(SimpleNamespace(config=SimpleNamespace(args=["tests"])))
    assert capsys.readouterr().out == ""


def test_nbval_fails_a_solution_cell_whose_exercise_did_not_pass(tmp_path):
    """The hook in the project's conftest.py, run by pytest on a made-up solutions/ notebook."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "solutions"
    folder.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('[ok] a passed all 2 "
                                                                   "checks.')"),
                                         nbformat.v4.new_code_cell("print('[x] b: off by one.')")])
    nbformat.write(nb, folder / "99_made_up.ipynb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p",
                          "no:cacheprovider", "-o", "addopts=", "--nbval-lax",
                          "--nbval-kernel-startup-timeout=300", "-q",
                          str(folder / "99_made_up.ipynb")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout + run.stderr
    assert ("1 failed, 1 passed" in run.stdout
            and "did not pass its checker" in run.stdout), run.stdout
