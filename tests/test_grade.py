"""The classroom grader: real, broken, unfinished, crashing and hanging notebooks each get a row."""

import csv
import os
from pathlib import Path

import nbformat
import pytest

from diffuse_edu.course import cli
from diffuse_edu.course.grade import find_learners

SETUP = ("from diffuse_edu.exercises import check\nfrom diffuse_edu.exercises.welcome import "
         "TO_UNIT_RANGE")
HANGS = "import time\ntime.sleep(600)"
ANSWERS = {
    "right": "return x.float() / max_value * 2 - 1",
    "wrong": "return x.float() / max_value",
    "todo": "raise NotImplementedError",
}


def _notebook(path, answer, *extra_cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP),
                nbformat.v4.new_code_cell("def to_unit_range(x, max_value=255.0):\n    "
                                          f"{ANSWERS[answer]}\n\nto_unit_range = "
                                          "check(to_unit_range, TO_UNIT_RANGE)"),
                *(nbformat.v4.new_code_cell(c) for c in extra_cells)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def _classroom(room, *, hanging=True):
    _notebook(room / "ada.ipynb", "right")
    _notebook(room / "bob.ipynb", "wrong")
    _notebook(room / "cy" / "00_welcome.ipynb", "todo")  # a learner with a folder of notebooks
    _notebook(room / "cy" / "01_more.ipynb", "right", "1 / 0")
    if hanging:
        _notebook(room / "dee.ipynb", "right", HANGS)
    # writes outside its folder: another learner's work, the grade table
    _notebook(room / "eve.ipynb", "right",
              "from pathlib import Path\nPath('../zed.ipynb').write_text('gone')\n"
              "Path('../grades').mkdir(exist_ok=True)\n"
              "Path('../grades/grades.csv').write_text('eve,all passed')")
    _notebook(room / "fay.ipynb", "right",
              "chunks = []\nwhile True:\n    chunks.append(bytearray(50_000_000))")
    # cut off mid-file
    (room / "gus.ipynb").write_text('{"cells": [{"cell_type": "code", "source": "x = 1"')
    _notebook(room / "zed.ipynb", "right")
    (room / "notes.txt").write_text("not a notebook")
    return room


@pytest.fixture
def classroom(tmp_path):
    return _classroom(tmp_path / "room")


def test_learners_are_files_or_folders(classroom):
    found = find_learners(classroom)
    assert list(found) == ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "zed"]
    assert [p.name for p in found["cy"]] == ["00_welcome.ipynb", "01_more.ipynb"]


def test_every_notebook_gets_a_row_and_the_grader_survives(tmp_path):
    """Real kernels, one at a time. The time limit is generous: a kernel's first start on a loaded
    machine took more than 25 s in CI; the hanging notebook has its own test below."""
    classroom, out = _classroom(tmp_path / "room", hanging=False), tmp_path / "grades"
    zed_before = (classroom / "zed.ipynb").read_text()
    assert cli.main(["grade", str(classroom), "--timeout", "300", "--memory", "1500", "--out",
                     str(out)]) == 0
    rows = list(csv.DictReader((out / "grades.csv").open()))
    assert (list(dict.fromkeys(r["learner"] for r in rows))
            == ["ada", "bob", "cy", "eve", "fay", "gus", "zed"])
    by = {(r["learner"], r["notebook"]): r for r in rows}
    assert (by["ada", "ada.ipynb"]["run"] == "completed"
            and by["ada", "ada.ipynb"]["verdict"] == "passed")
    assert (by["bob", "bob.ipynb"]["verdict"] == "failed"
            and "to_unit_range" in by["bob", "bob.ipynb"]["message"])
    assert by["cy", "00_welcome.ipynb"]["verdict"] == "unfinished"
    crashed = by["cy", "01_more.ipynb"]
    assert (crashed["run"].startswith("crashed in code cell 3: ZeroDivisionError")
            and crashed["verdict"] == "passed")
    assert by["eve", "eve.ipynb"]["run"] == "completed"  # its writes landed in its scratch copy ...
    assert ((classroom / "zed.ipynb").read_text() == zed_before
            and not (classroom / "grades").exists())
    assert (by["zed", "zed.ipynb"]["run"] == "completed"
            and by["zed", "zed.ipynb"]["verdict"] == "passed")  # ... not here
    assert by["fay", "fay.ipynb"]["run"] == "out of memory (its processes held over 1500 MB)"
    assert by["gus", "gus.ipynb"]["run"].startswith("not a notebook: not valid JSON")
    assert by["gus", "gus.ipynb"]["verdict"] == ""  # not "completed, 0/0 exercises passed"
    md = (out / "grades.md").read_text()
    assert "| bob | bob.ipynb | completed | 0/1 | to_unit_range: failed |" in md
    assert "What the checkers said" in md and "bob, bob.ipynb, `to_unit_range` (failed):" in md
    # the grader checked the cell again, in its own process
    assert by["ada", "ada.ipynb"]["rechecked"] == "yes"


def test_a_hanging_notebook_is_stopped_at_the_time_limit_and_the_next_one_graded(tmp_path):
    room, out = tmp_path / "room", tmp_path / "grades"
    _notebook(room / "dee.ipynb", "right", HANGS)
    (room / "gus.ipynb").write_text("{")
    assert cli.main(["grade", str(room), "--timeout", "6", "--out", str(out)]) == 0
    by = {r["learner"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert by["dee"]["run"] == "timed out after 6 s" and by["dee"]["verdict"] == ""
    assert float(by["dee"]["seconds"]) < 30 and by["gus"]["run"].startswith("not a notebook")


def test_jobs_grade_side_by_side_and_keep_the_learners_order(classroom, tmp_path, monkeypatch):
    """(Real kernels side by side would make the time limits above depend on the machine's load.)"""
    import threading
    import time

    from diffuse_edu.course import grade as grading

    running, most = [], []
    lock = threading.Lock()

    def fake(learner, path, **kwargs):
        assert kwargs["side_by_side"] == min(jobs_now[0], 4)
        with lock:
            running.append(learner)
            most.append(len(running))
        time.sleep(0.3 if learner == "ada" else 0.05)  # the first finishes last
        with lock:
            running.remove(learner)
        return grading.Graded(learner, path.name, "completed", 0.1)

    monkeypatch.setattr(grading, "grade_notebook", fake)
    jobs_now = [3]
    rows = grading.grade(classroom, jobs=3, out=tmp_path / "grades")
    assert [(r.learner, r.notebook) for r in rows][:4] == [("ada", "ada.ipynb"),
                                                           ("bob", "bob.ipynb"),
                                                           ("cy", "00_welcome.ipynb"),
                                                           ("cy", "01_more.ipynb")]
    assert max(most) == 3
    most.clear()
    jobs_now[0] = 1
    # the default: one
    assert len(grading.grade(classroom, out=tmp_path / "one")) == len(rows) and max(most) == 1


def test_notebooks_graded_side_by_side_get_one_thread_each_on_two_cores(classroom, tmp_path,
                                                                        monkeypatch):
    from diffuse_edu.course import grade as grading

    seen = []
    monkeypatch.setattr(grading, "run_limited",
                        lambda args, *, env, **kw: (seen.append(env), ("stopped", 0.0))[1])
    monkeypatch.setattr(grading.os, "cpu_count", lambda: 2)
    grading.grade_notebook("ada", classroom / "ada.ipynb", timeout=5, side_by_side=2)
    grading.grade_notebook("ada", classroom / "ada.ipynb", timeout=5, side_by_side=3)
    # alone: the machine's default
    grading.grade_notebook("ada", classroom / "ada.ipynb", timeout=5)
    assert [e.get("OMP_NUM_THREADS") for e in seen] == ["1", "1", os.environ.get("OMP_NUM_THREADS")]
    assert seen[0]["MKL_NUM_THREADS"] == "1"


def test_jobs_must_be_a_positive_count(classroom, capsys):
    with pytest.raises(SystemExit):
        cli.main(["grade", str(classroom), "--jobs", "0"])
    assert "--jobs" in capsys.readouterr().err


def test_an_empty_folder_says_what_to_put_there(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path)]) == 2
    assert "one .ipynb per learner" in capsys.readouterr().err


def test_a_notebook_that_writes_much_to_stderr_is_graded_not_hung(tmp_path):
    """Its standard error goes to a file: a pipe nobody reads fills at 64 KiB and the child waits
    forever."""
    from diffuse_edu.course import grade as grading

    room = tmp_path / "room"
    room.mkdir()
    _notebook(room / "hal.ipynb", "right",
              "import sys\nfor _ in range(40):\n    sys.stderr.write('w' * 10_000 + '\\n')")
    [row] = grading.grade(room, timeout=300, out=tmp_path / "grades")
    assert row.run == "completed" and [e["status"] for e in row.exercises] == ["passed"]


def test_run_limited_keeps_what_the_child_wrote_to_stderr(tmp_path):
    import sys

    from diffuse_edu.course.grade import run_limited

    log = tmp_path / "err.txt"
    stopped, _ = run_limited([sys.executable, "-c",
                              "import sys; sys.stderr.write('x' * 200_000 + 'end')"],
                             env=dict(os.environ), timeout=60, memory_mb=4000, log=log)
    assert stopped is None and log.read_text().endswith("end") and log.stat().st_size == 200_003


def test_grade_on_a_missing_folder_says_so_without_a_traceback(tmp_path, capsys):
    assert cli.main(["grade", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err
    assert "is not a folder" in err and "Traceback" not in err


def test_a_formula_in_a_learners_name_or_message_lands_in_the_csv_as_text(tmp_path):
    from diffuse_edu.course.grade import Graded, write_tables

    rows = [Graded("=HYPERLINK(\"http://x\")", "@a.ipynb", "completed", 1.0,
                   [{"name": "+cmd", "status": "failed", "message": "-1 is wrong"}])]
    csv_path, _ = write_tables(rows, tmp_path)
    [row] = list(csv.DictReader(csv_path.open()))
    assert row["learner"] == "'=HYPERLINK(\"http://x\")" and row["notebook"] == "'@a.ipynb"
    assert (row["exercise"] == "'+cmd" and row["message"] == "'-1 is wrong"
            and row["seconds"] == "1.0")


def test_the_tables_are_written_whole_over_a_planted_link_and_the_executed_notebooks_kept(tmp_path):
    from diffuse_edu.course import grade as grading

    room, out = tmp_path / "room", tmp_path / "room-grades"  # beside the class folder by default
    room.mkdir()
    _notebook(room / "ada.ipynb", "right")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    (out / "grades.csv").symlink_to(victim)  # planted by a notebook run earlier
    [row] = grading.grade(room, timeout=300)
    assert victim.read_text() == "keep me" and not (out / "grades.csv").is_symlink()
    assert "ada" in (out / "grades.csv").read_text() and row.run == "completed"
    kept = out / "executed" / "ada" / "ada.ipynb"
    # the learner's notebook, run, with its outputs
    assert kept.is_file() and "passed" in kept.read_text()
    # the kept notebooks are no learner
    assert list(grading.find_learners(room, skip=out)) == ["ada"]
    # no temporary left
    assert sorted(p.name for p in out.iterdir()) == ["executed", "grades.csv", "grades.md"]


def test_hostile_and_unusual_notebooks_each_get_a_row_that_says_what_happened(tmp_path):
    """A detached process, a parent-killer, a memory hog in a child process, a deleted check line, a
    stop mid-notebook, a forged verdict and the library's own answer: one grading run, one at a
    time."""
    import time

    from diffuse_edu.course import grade as grading

    room, out, alive = tmp_path / "room", tmp_path / "out", tmp_path / "alive.txt"
    daemon = tmp_path / "daemon.py"
    daemon.write_text("import pathlib, time\nwhile True:\n    "
                      f"pathlib.Path({str(alive)!r}).write_text(str(time.time()))\n    "
                      "time.sleep(0.2)\n")
    detach = (f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, {str(daemon)!r}], "
              "start_new_session=True)\ntime.sleep(1)")
    _notebook(room / "dan.ipynb", "right", detach)
    _notebook(room / "hog.ipynb", "right",
              "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'b = "
              "bytearray(1_500_000_000); b[::4096] = b\"x\" * len(b[::4096]); import time; "
              "time.sleep(60)'])\ntime.sleep(60)")
    nb = nbformat.v4.new_notebook()
    # its check line deleted
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(
        f"def to_unit_range(x, max_value=255.0):\n    {ANSWERS['right']}")]
    nbformat.write(nb, room / "mia.ipynb")
    _notebook(room / "pat.ipynb", "right",
              "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    nb = nbformat.v4.new_notebook()  # stops itself before its exercise
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell("raise SystemExit"),
                nbformat.v4.new_code_cell("def to_unit_range(x, max_value=255.0):\n    "
                                          f"{ANSWERS['right']}\n\nto_unit_range = "
                                          "check(to_unit_range, TO_UNIT_RANGE)")]
    nbformat.write(nb, room / "sam.ipynb")
    # a verdict appended by hand
    _notebook(room / "fox.ipynb", "wrong",
              "from diffuse_edu import exercises\n"
              "exercises.VERDICTS.append(exercises.Verdict('to_unit_range', 'passed', 'all good', "
              "3, 3))")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP),
                nbformat.v4.new_code_cell("to_unit_range = check(TO_UNIT_RANGE.reference, "
                                          "TO_UNIT_RANGE)")]
    nbformat.write(nb, room / "lib.ipynb")
    _notebook(room / "zed.ipynb", "right")
    rows = {r.learner: r for r in grading.grade(room, timeout=240, memory_mb=1200, out=out)}
    status = {name: {e["name"]: e["status"] for e in r.exercises} for name, r in rows.items()}
    assert rows["dan"].run == "completed" and status["dan"] == {"to_unit_range": "passed"}
    seen = alive.read_text()
    time.sleep(1.0)
    assert alive.read_text() == seen  # the detached process died with its notebook
    assert rows["hog"].run.startswith("out of memory")  # its child's memory counted with it
    assert (status["mia"] == {"to_unit_range": "missing"}
            and "no check line" in rows["mia"].exercises[0]["message"])
    assert rows["pat"].run.startswith("stopped: something killed the process that ran it")
    assert (rows["sam"].run.startswith("stopped in code cell")
            and status["sam"] == {"to_unit_range": "missing"})
    assert "stopped before it" in rows["sam"].exercises[0]["message"]
    fox = rows["fox"].exercises[0]
    assert (fox["status"] == "failed" and fox["rechecked"] == "disagreed"
            and "checked its cell again" in fox["message"])
    assert (status["lib"] == {"to_unit_range": "library"}
            and "library's own answer" in rows["lib"].exercises[0]["message"])
    # graded after them all
    assert rows["zed"].run == "completed" and status["zed"] == {"to_unit_range": "passed"}
    assert "| pat | pat.ipynb | stopped: something killed" in (out / "grades.md").read_text()
    mark = f"{grading.RUN_ENV}=".encode()
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            left += [environ] if mark in environ.read_bytes() else []
        except OSError:
            continue
    assert not left  # no process of any graded notebook is left running


def _sandboxes() -> list[str]:
    import shutil
    import subprocess

    found = ["bwrap"] if shutil.which("bwrap") else []
    if shutil.which("unshare") and subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--mount-proc",
             "true"],
            capture_output=True, check=False).returncode == 0:
        found.append("unshare")
    return found


@pytest.mark.parametrize("tool", _sandboxes() or [pytest.param("none", marks=pytest.mark.skip(
    reason="neither bubblewrap nor unprivileged user namespaces here"))])
def test_isolated_notebooks_see_only_their_own_copy_and_no_other_process(tmp_path, monkeypatch,
                                                                         tool):
    from diffuse_edu.course import grade as grading

    monkeypatch.setattr(grading, "sandbox_tool", lambda: tool)
    room, out = tmp_path / "room", tmp_path / "out"
    _notebook(room / "ada.ipynb", "right")
    spy = ("import os\nfrom pathlib import Path\nprint('SAW ADA', "
           f"Path({str(room / 'ada.ipynb')!r}).exists())\nprint('PROCESSES', sum(p.isdigit() for "
           "p in os.listdir('/proc')))\nprint('PARENT', os.getppid())\ntry:\n    "
           f"Path({str(room / 'ada.ipynb')!r}).write_text('gone')\nexcept OSError:\n    pass")
    _notebook(room / "spy.ipynb", "right", spy)
    ada_before = (room / "ada.ipynb").read_text()
    rows = {r.learner: r for r in grading.grade(room, timeout=240, out=out, isolate=True)}
    assert rows["ada"].run == "completed" and rows["ada"].exercises[0]["status"] == "passed"
    assert rows["spy"].run == "completed"
    seen = (out / "executed" / "spy" / "spy.ipynb").read_text()
    assert "SAW ADA False" in seen  # another learner's notebook is out of sight ...
    # ... and out of reach by its absolute path
    assert (room / "ada.ipynb").read_text() == ada_before
    # its parent: the sandbox's own first process, not the grader
    assert "PARENT 0" in seen or "PARENT 1" in seen
    count = int(seen.split("PROCESSES ")[1].split("\\n")[0].split('"')[0])
    assert count < 10  # its own few, not the machine's


def test_the_lesson_manifest_lists_what_the_solutions_check_and_names_a_renamed_notebook(tmp_path):
    from diffuse_edu import config
    from diffuse_edu.course import builder
    from diffuse_edu.course.grade import lesson_of

    root = config.PROJECT_ROOT
    manifest = builder.read_manifest()
    assert (manifest
            == builder.exercise_manifest(root / "solutions")), "run `python -m diffuse_edu build`"
    assert [e["name"] for e in manifest["07_samplers"]] == ["ddim_step", "heun_step"]
    assert lesson_of(root / "notebooks" / "05_training.ipynb", manifest) == "05_training"
    renamed = tmp_path / "my work.ipynb"
    renamed.write_text((root / "notebooks" / "12_beyond_the_unet.ipynb").read_text())
    assert lesson_of(renamed, manifest) == "12_beyond_the_unet"


def test_the_grader_checks_every_solution_again_and_agrees():
    """The second check runs each exercise cell alone: every solution's answer passes it, and none
    is taken for the library's own answer."""
    import json

    from diffuse_edu import config
    from diffuse_edu.course.builder import read_manifest
    from diffuse_edu.course.recheck import recheck

    for lesson, exercises in read_manifest().items():
        nb = json.loads((config.PROJECT_ROOT / "solutions" / f"{lesson}.ipynb").read_text())
        found = recheck(nb, exercises)
        assert ({k: v["status"] for k, v in found.items()}
                == {e["name"]: "passed" for e in exercises}), lesson


def test_the_librarys_own_answer_is_flagged_not_passed(capsys):
    import torch

    from diffuse_edu import exercises
    from diffuse_edu.exercises.welcome import TO_UNIT_RANGE

    ref = TO_UNIT_RANGE.reference

    def wrapper(x, max_value=255.0):  # the learner's name, the library's work
        return ref(x, max_value)

    def own(x, max_value=255.0):
        return x.float() / max_value * 2 - 1

    for fn in (ref, wrapper):
        assert exercises.check(fn, TO_UNIT_RANGE) is ref
        assert exercises.VERDICTS[-1].status == "library"
    assert "[library]" in capsys.readouterr().out
    assert exercises.check(own, TO_UNIT_RANGE) is own and exercises.VERDICTS[-1].status == "passed"
    # the checkers' own tests still run it
    assert exercises.run_checker(ref, TO_UNIT_RANGE).status == "passed"
    assert torch.equal(own(torch.tensor([0, 255])), torch.tensor([-1.0, 1.0]))
