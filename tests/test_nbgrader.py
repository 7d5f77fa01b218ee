"""`export nbgrader` writes a course that nbgrader itself accepts and grades as expected."""

import json
import os
import subprocess
import sys

import pytest

from diffuse_edu import config
from diffuse_edu.course import nbgrader as export_nbgrader
from diffuse_edu.course.builder import BEGIN

LESSON = "00_welcome"


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _nbgrader(course, *args):
    env = dict(os.environ, DIFFUSE_EDU_SCALE="quick")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_every_exercise_becomes_a_solution_cell_and_a_graded_check():
    for path in sorted((config.PROJECT_ROOT / "solutions").glob("[0-9]*.ipynb")):
        solution = json.loads(path.read_text())
        exercises = sum(1 for c in solution["cells"] if c["cell_type"] == "code"
                        and any(BEGIN.match(line) for line in _source(c).splitlines()))
        nb = export_nbgrader.nbgrader_notebook(path)
        metas = [c["metadata"]["nbgrader"] for c in nb["cells"]]
        assert all(m["schema_version"] == 3 for m in metas)
        assert sum(m["solution"] for m in metas) == exercises, path.name
        graded = [m for m in metas if m["grade"]]
        assert len(graded) == exercises and all(m["points"] >= 1 and m["locked"] for m in graded)
        assert len({m["grade_id"] for m in metas}) == len(metas), f"{path.name}: grade ids repeat"
        assert all(m["locked"] for m in metas if not m["solution"]), "every other cell is read-only"


def test_an_exercise_cell_without_its_check_is_refused():
    with pytest.raises(ValueError, match="must end with"):
        export_nbgrader.exercise_cells("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n", 3)


def test_nbgrader_generates_and_autogrades_a_lesson(tmp_path):
    course = tmp_path / "course"
    export_nbgrader.export(config.PROJECT_ROOT / "solutions", course)
    assert (course / "nbgrader_config.py").exists()
    _nbgrader(course, "generate_assignment", LESSON)
    release = json.loads((course / "release" / LESSON / f"{LESSON}.ipynb").read_text())
    source = json.loads((course / "source" / LESSON / f"{LESSON}.ipynb").read_text())
    answers = {c["metadata"]["nbgrader"]["grade_id"]: _source(c) for c in source["cells"]
               if c["metadata"]["nbgrader"]["solution"]}
    stubs = [c for c in release["cells"] if c["metadata"].get("nbgrader", {}).get("solution")]
    assert stubs and all("NotImplementedError" in _source(c) for c in stubs)
    assert all("BEGIN SOLUTION" not in _source(c) for c in release["cells"])

    complete = json.loads(json.dumps(release))
    for cell in complete["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("solution"):
            cell["source"] = answers[meta["grade_id"]]  # the markers are comments: harmless
    for student, nb in (("ada", complete), ("ben", release)):
        folder = course / "submitted" / student / LESSON
        folder.mkdir(parents=True)
        (folder / f"{LESSON}.ipynb").write_text(json.dumps(nb))
    _nbgrader(course, "autograde", LESSON)

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        ada = gradebook.find_submission(LESSON, "ada")
        ben = gradebook.find_submission(LESSON, "ben")
        assert ada.max_score == len(answers) > 0
        assert ada.score == ada.max_score, "the complete notebook gets every point"
        assert ben.score == 0, "the unfinished notebook gets none"


def test_the_exported_config_pins_the_quick_scale_and_a_cell_timeout_that_fits_it(tmp_path, monkeypatch):
    from traitlets.config import Config

    export_nbgrader.export(config.PROJECT_ROOT / "solutions", tmp_path / "course")
    monkeypatch.setenv("DIFFUSE_EDU_SCALE", "unset")  # so that the end of the test restores what was there
    monkeypatch.delenv("DIFFUSE_EDU_SCALE")
    c = Config()
    exec((tmp_path / "course" / "nbgrader_config.py").read_text(), {"get_config": lambda: c})
    assert c.Execute.timeout == export_nbgrader.CELL_TIMEOUT_S >= 300  # nbgrader's default, 30 s, stopped lesson 05
    import os

    assert os.environ["DIFFUSE_EDU_SCALE"] == "quick" and c.CourseDirectory.course_id == "diffuse-edu"
