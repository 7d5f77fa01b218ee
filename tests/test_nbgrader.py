"""`export nbgrader` writes a course that nbgrader itself accepts and grades as expected."""

import json
import os
import subprocess
import sys

import pytest

from diffuse_edu import config
from diffuse_edu.course import cli
from diffuse_edu.course import nbgrader as export_nbgrader
from diffuse_edu.course.builder import BEGIN, CHECK, END, HINT

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
        checked = sum(1 for c in solution["cells"] if c["cell_type"] == "code"
                      for line in _source(c).splitlines() if CHECK.match(line))
        # a point each
        assert len(graded) == checked and all(m["points"] == 1 and m["locked"] for m in graded)
        for cell in nb["cells"]:
            if cell["metadata"]["nbgrader"]["solution"]:
                # the hints sit above the answer, kept by the release
                lines = _source(cell).splitlines()
                begins = [i for i, line in enumerate(lines) if BEGIN.match(line)]
                inside = [i for b in begins for i in range(b, len(lines)) if HINT.match(lines[i])
                          and not any(END.match(x) for x in lines[b:i])]
                assert not inside, (f"{path.name}: a HINT line inside an answer is lost in the "
                                    "release")
        assert len({m["grade_id"] for m in metas}) == len(metas), f"{path.name}: grade ids repeat"
        assert all(m["locked"] for m in metas if not m["solution"]), "every other cell is read-only"


def test_an_exercise_cell_without_its_check_is_refused():
    with pytest.raises(ValueError, match="must end with"):
        export_nbgrader.exercise_cells("def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END "
                                       "SOLUTION\n", 3)


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
    assert "# HINT:" in json.dumps(release)  # the hints survive nbgrader's release
    for student, nb in (("ada", complete), ("ben", release)):
        folder = course / "submitted" / student / LESSON
        folder.mkdir(parents=True)
        (folder / f"{LESSON}.ipynb").write_text(json.dumps(nb))
    # cat and dee worked in the course's own notebooks/ (no nbgrader ids): brought in by the
    # course's command
    worked = json.loads((config.PROJECT_ROOT / "notebooks" / f"{LESSON}.ipynb").read_text())
    unfinished = tmp_path / "dee" / f"{LESSON}.ipynb"
    unfinished.parent.mkdir()
    unfinished.write_text(json.dumps(worked))
    for cell in worked["cells"]:
        text = _source(cell)
        if "NotImplementedError" in text and "= check(" in text:
            cell["source"] = text.replace('raise NotImplementedError("Exercise not finished yet.")',
                                          "return pixels.float() / 255 * 2 - 1")
    done = tmp_path / "cat" / f"{LESSON}.ipynb"
    done.parent.mkdir()
    done.write_text(json.dumps(worked))
    for student, path in (("cat", done), ("dee", unfinished)):
        assert cli.main(["export", "nbgrader-submission", str(course), "--notebook", str(path),
                         "--student", student]) == 0
    _nbgrader(course, "autograde", LESSON)

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        ada = gradebook.find_submission(LESSON, "ada")
        ben = gradebook.find_submission(LESSON, "ben")
        assert ada.max_score == len(answers) > 0
        assert ada.score == ada.max_score, "the complete notebook gets every point"
        assert ben.score == 0, "the unfinished notebook gets none"
        # worked in notebooks/
        assert gradebook.find_submission(LESSON, "cat").score == ada.max_score
        assert gradebook.find_submission(LESSON, "dee").score == 0


def test_a_two_exercise_cell_gives_a_point_per_exercise_and_keeps_its_hints():
    source = ("def f(x):\n    # BEGIN SOLUTION\n    # HINT: add one.\n    return x + 1\n    # END "
              "SOLUTION\n\ndef g(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n\nf "
              "= check(f, F)\ng = check(g, G)\n")
    answer, checks, *graded = export_nbgrader.exercise_cells(source, 4)
    assert _source(answer).splitlines()[1:3] == ["    # HINT: add one.", "    # BEGIN SOLUTION"]
    assert (_source(checks) == "f = check(f, F)\ng = check(g, G)"
            and not checks["metadata"]["nbgrader"]["grade"])
    assert [(c["metadata"]["nbgrader"]["grade_id"], c["metadata"]["nbgrader"]["points"])
            for c in graded] == [
        ("f_passed", 1), ("g_passed", 1)]
    assert ['require_passed("f")' in _source(graded[0]),
            'require_passed("g")' in _source(graded[1])] == [True, True]


def test_a_submission_from_another_lesson_is_refused_with_a_message(tmp_path):
    course = tmp_path / "course"
    release = course / "release" / LESSON / f"{LESSON}.ipynb"
    release.parent.mkdir(parents=True)
    release.write_text(json.dumps(export_nbgrader.nbgrader_notebook(
        config.PROJECT_ROOT / "solutions" / f"{LESSON}.ipynb")))
    other = config.PROJECT_ROOT / "notebooks" / "01_forward_process.ipynb"
    with pytest.raises(config.CourseError, match="right lesson"):
        export_nbgrader.import_submission(other, course, "eve", lesson=LESSON)
    with pytest.raises(config.CourseError, match="generate_assignment 07_samplers"):
        export_nbgrader.import_submission(other, course, "eve", lesson="07_samplers")


def test_the_exported_config_pins_the_quick_scale_and_a_cell_timeout_that_fits_it(
        tmp_path, monkeypatch):
    from traitlets.config import Config

    export_nbgrader.export(config.PROJECT_ROOT / "solutions", tmp_path / "course")
    # so that the end of the test restores what was there
    monkeypatch.setenv("DIFFUSE_EDU_SCALE", "unset")
    monkeypatch.delenv("DIFFUSE_EDU_SCALE")
    c = Config()
    exec((tmp_path / "course" / "nbgrader_config.py").read_text(), {"get_config": lambda: c})
    # nbgrader's default, 30 s, stopped lesson 05
    assert c.Execute.timeout == export_nbgrader.CELL_TIMEOUT_S >= 300
    import os

    assert (os.environ["DIFFUSE_EDU_SCALE"] == "quick"
            and c.CourseDirectory.course_id == "diffuse-edu")
