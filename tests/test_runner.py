"""The headless runner, the command line and the environment check."""

import base64
import json
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from diffuse_edu import config
from diffuse_edu.course import cli, doctor, runner

LESSON = '''
import matplotlib.pyplot as plt
import torch
import diffuse_edu as de
from diffuse_edu.course.report import metric, save_samples
from diffuse_edu.course.plotting import show
hp = de.by_scale(n=(4, 8))
metric("n", hp.n)
metric("mean", torch.tensor(0.5))
fig, ax = plt.subplots()
ax.plot([0, 1], [0, 1])
ax.set(title="A line", xlabel="x", ylabel="y")
show(fig, "A caption.")
save_samples(torch.zeros(hp.n, 1, 4, 4))
'''


def _notebook(tmp_path, *cells):
    path = tmp_path / "07_demo.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]),
                   path)
    return path


def test_run_writes_metrics_figures_and_samples(tmp_path):
    out = tmp_path / "out"
    summary = runner.run_notebook(_notebook(tmp_path, LESSON), scale="full", out=out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == {"n": 8, "mean": 0.5}
    assert saved["scale"] == "full" and saved["error"] is None
    assert {"device", "seconds", "versions", "figures"} <= set(saved)
    assert saved["figures"] == ["01_a_line.png"] and (out / "01_a_line.png").stat().st_size > 1000
    samples = np.load(out / "samples.npz")["samples"]
    assert samples.shape == (8, 4, 4) and samples.dtype == np.uint8
    assert summary["lesson"] == "07_demo"


def test_a_rerun_leaves_no_figure_or_samples_of_the_run_before(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("05_the_model_after_37_s.png", "samples.npz", "notes.txt", "my_plot.png"):
        (out / name).write_bytes(b"old")
    runner.run_notebook(_notebook(tmp_path, "x = 1"), scale="quick", out=out, quiet=True)
    assert (sorted(p.name for p in out.iterdir())
            == ["07_demo.ipynb", "metrics.json", "my_plot.png", "notes.txt"])


def test_a_training_stopped_by_the_clock_is_in_metrics_json_and_the_next_lesson_starts_clean(
        tmp_path):
    short = """
import torch
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.loop import TrainConfig, train
from diffuse_edu.course.report import metric, paired_verdict
net = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2))
train(net, torch.randn(16, 1, 8, 8), DiffusionObjective(cosine_schedule(100)),
      TrainConfig(steps=100_000, seconds=0.05, batch_size=4), show_progress=False, desc="tiny")
metric("claim", str(paired_verdict([0, 0, 0], [1, 2, 3])[0]))
"""
    out = tmp_path / "out"
    runner.run_notebook(_notebook(tmp_path, short), scale="quick", out=out, quiet=True)
    saved = json.loads((out / "metrics.json").read_text())
    [stopped] = saved["stopped_by_clock"]
    assert (stopped["desc"] == "tiny" and stopped["planned_steps"] == 100_000
            and stopped["steps"] < 100_000)
    assert f"tiny at {stopped['steps']} of 100000 steps" in saved["metrics"]["claim"]
    runner.run_notebook(_notebook(tmp_path, "x = 1"), scale="quick", out=out, quiet=True)
    assert json.loads((out / "metrics.json").read_text())["stopped_by_clock"] == []


def test_a_cell_that_exits_is_a_stop_not_a_finished_lesson(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(runner.LessonError, match="code cell 2: SystemExit"):
        runner.run_notebook(_notebook(tmp_path, "x = 1", "raise SystemExit(3)", "y = 2"),
                            scale="quick", out=out, quiet=True)
    assert json.loads((out / "metrics.json").read_text())["error"].startswith("code cell 2: "
                                                                              "SystemExit")


def test_a_failing_cell_is_named(tmp_path):
    path = _notebook(tmp_path, "x = 1", "raise KeyError('boom')")
    with pytest.raises(runner.LessonError, match="code cell 2: KeyError"):
        runner.run_notebook(path, scale="quick", out=tmp_path / "out")
    assert "code cell 2" in json.loads((tmp_path / "out" / "metrics.json").read_text())["error"]


def test_the_runner_reads_notebooks_as_json_and_names_a_broken_one(tmp_path):
    path = _notebook(tmp_path, "x = 1", "", "# two\nlines")
    assert runner.code_cells(path) == ["x = 1", "# two\nlines"]  # the GPU server has no nbformat
    path.write_text('{"cells": [', encoding="utf-8")
    with pytest.raises(runner.LessonError, match="not a Jupyter notebook.*git checkout --"):
        runner.code_cells(path)


def test_find_lesson():
    assert runner.find_lesson("1").name == "01_forward_process.ipynb"
    assert runner.find_lesson("00").name == "00_welcome.ipynb"
    with pytest.raises(FileNotFoundError, match="No lesson 99; the lessons are: 00_welcome"):
        runner.find_lesson("99")
    with pytest.raises(runner.LessonNotFound, match="A lesson is a number"):
        runner.find_lesson("forward")


def test_cli_run_and_check(tmp_path, capsys):
    path = _notebook(tmp_path, LESSON)
    assert cli.main(["run", str(path), "--scale", "quick", "--out", str(tmp_path / "o")]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["metrics"]["n"] == 4
    exercise = _notebook(tmp_path, (
        "from diffuse_edu.exercises import check\n"
        "from diffuse_edu.exercises.welcome import TO_UNIT_RANGE\n"
        "def to_unit_range(x):\n    raise NotImplementedError\n"
        "to_unit_range = check(to_unit_range, TO_UNIT_RANGE)"))
    capsys.readouterr()
    assert cli.main(["check", str(exercise)]) == 1
    out = capsys.readouterr().out
    assert "unfinished  to_unit_range" in out and "0 of 1 exercises pass" in out


def test_cli_reports_errors_without_a_traceback(capsys):
    assert cli.main(["run", "does_not_exist.ipynb"]) == 2
    assert "No notebook at" in capsys.readouterr().err


def test_the_cli_explains_the_librarys_errors_and_keeps_the_traceback_of_a_bug(monkeypatch, capsys):
    from diffuse_edu.course import bench

    def library_error(**_):
        raise config.CourseError("what to do about it")

    monkeypatch.setattr(bench, "run", library_error)
    assert cli.main(["bench", "--scale", "quick"]) == 2
    assert capsys.readouterr().err == "error: what to do about it\n"

    def bug(**_):
        raise ValueError("a bug in the library")

    monkeypatch.setattr(bench, "run", bug)
    with pytest.raises(ValueError, match="a bug in the library"):  # not hidden behind "error: ..."
        cli.main(["bench", "--scale", "quick"])


@pytest.mark.parametrize("argv", [["bench", "--train-steps", "0"], ["bench", "--samples", "-3"],
                                  ["bench", "--sample-batch", "x"],
                                  ["grade", ".", "--timeout", "0"],
                                  ["grade", ".", "--timeout", "-1"]])
def test_out_of_range_options_are_refused_by_name(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    option = next(a for a in argv if a.startswith("--"))
    assert (("must be above 0" in err or "is not a whole number" in err)
            and f"argument {option}:" in err)


def test_bench_refuses_zero_counts_from_python_too():
    from diffuse_edu.course import bench
    with pytest.raises(config.CourseError, match="train_steps = 0"):
        bench.run(scale=config.Scale.QUICK, train_steps=0)


def test_cli_build_check_passes_on_the_repository(capsys):
    assert cli.main(["build", "--check"]) == 0
    assert "matches" in capsys.readouterr().out


def test_doctor_flags_missing_data_with_a_fix(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(config, "PROJECT_ROOT", None)
    monkeypatch.setattr(config.Path, "home", lambda: tmp_path)
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    findings = {f.topic: f for f in doctor.diagnose()}
    mnist = findings["data: mnist"]
    assert not mnist.ok and "data fetch mnist" in mnist.fix and "data stage FOLDER" in mnist.fix
    assert findings["data: digits"].ok and findings["scale"].ok
    assert doctor.report(list(findings.values())) is False
    assert "-> online: python -m diffuse_edu data fetch mnist" in capsys.readouterr().out


def test_doctor_warns_about_full_scale_on_cpu(monkeypatch):
    monkeypatch.setenv(config.SCALE_ENV, "full")
    monkeypatch.setattr(config.torch.cuda, "is_available", lambda: False)
    topics = {f.topic: f for f in doctor.diagnose()}
    assert (not topics["full scale on CPU"].ok
            and "DIFFUSE_EDU_SCALE=quick" in topics["full scale on CPU"].fix)


def test_readme_results_table_is_what_the_results_folder_says():
    from diffuse_edu.course import results

    root = config.PROJECT_ROOT
    table = results.current_table(root)
    assert f"{results.BEGIN}\n{table}\n{results.END}" in (root / "README.md").read_text(), (
        "README.md's results table is out of date: run `python -m diffuse_edu build`")


def test_results_table_rows_and_readme_update(tmp_path):
    import json

    from diffuse_edu.course import results

    (tmp_path / "results" / "05_training").mkdir(parents=True)
    (tmp_path / "results" / "05_training" / "metrics.json").write_text(json.dumps(dict(
        scale="full", device="cuda: NVIDIA H100", finished="2026-11-26 20:00:00 UTC", seconds=321.0,
        command="python -m diffuse_edu run all --scale full --out results/", error=None,
        stamp=dict(lesson="abc"), metrics={"claim/a_b": "holds",
                                           "claims/c": {"x": "holds", "y": "inconclusive (within)",
                                                        "n": 3, "flag": False}})))
    (tmp_path / "results" / "06_fid").mkdir()
    (tmp_path / "results" / "06_fid" / "metrics.json").write_text(json.dumps(dict(scale="quick")))
    table = results.results_table(["05_training", "06_fid", "07_samplers"], tmp_path / "results")
    assert ("| 05_training | [recorded](results/05_training/metrics.json) | cuda: NVIDIA H100 | "
            "2026-11-26 20:00:00 UTC | 5.3 | a b: holds<br>c: 1 holds, 1 inconclusive |") in table
    assert "(an earlier version" not in table
    newer = results.results_table(["05_training"], tmp_path / "results", {"05_training": "def"})
    assert "metrics.json) (an earlier version of the lesson) |" in newer
    # quick never counts
    assert "| 06_fid | not yet run |" in table and "| 07_samplers | not yet run |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.BEGIN}\nold\n{results.END}\noutro\n")
    assert results.update_readme(readme, table) and not results.update_readme(readme, table)
    assert readme.read_text() == f"intro\n{results.BEGIN}\n{table}\n{results.END}\noutro\n"


def test_run_all_runs_every_lesson_and_a_failure_does_not_stop_the_rest(
        tmp_path, monkeypatch, capsys):
    lessons = tmp_path / "solutions"
    lessons.mkdir()
    for name, source in (("00_fine", "x = 1"), ("01_broken", "1 / 0"), ("02_fine", "y = 2")):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(source)]
        nbformat.write(nb, lessons / f"{name}.ipynb")
    monkeypatch.setattr(runner, "lessons_dir", lambda: lessons)
    assert cli.main(["run", "all", "--scale", "quick", "--out", str(tmp_path / "out")]) == 1
    done = {p.parent.name: json.loads(p.read_text())
            for p in (tmp_path / "out").glob("*/metrics.json")}
    assert set(done) == {"00_fine", "01_broken", "02_fine"}
    assert (done["01_broken"]["error"].startswith("code cell 1: ZeroDivisionError")
            and done["02_fine"]["error"] is None)
    assert "2 of 3 lessons ran; failed: 01_broken" in capsys.readouterr().out


def test_run_writes_the_executed_notebook_with_printed_text_figures_and_errors(tmp_path):
    out = tmp_path / "out"
    path = _notebook(tmp_path, "print('hello')", LESSON, "print('last'); 1 / 0")
    with pytest.raises(runner.LessonError):
        runner.run_notebook(path, scale="quick", out=out, quiet=True)
    executed = nbformat.read(out / "07_demo.ipynb", as_version=4)
    first, second, third = (c for c in executed.cells if c.cell_type == "code")
    assert first.outputs[0]["text"] == "hello\n" and first.execution_count == 1
    assert second.outputs[0]["output_type"] == "display_data"
    png = base64.b64decode(second.outputs[0]["data"]["image/png"])
    assert png[:4] == b"\x89PNG" and png == (out / "01_a_line.png").read_bytes()
    assert third.outputs[0]["text"] == "last\n" and third.outputs[1]["output_type"] == "error"
    nbformat.validate(executed)


def test_a_large_executed_notebook_embeds_its_figures_smaller(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "NOTEBOOK_LIMIT", 1000)
    out = tmp_path / "out"
    runner.run_notebook(_notebook(tmp_path, LESSON), scale="quick", out=out, quiet=True)
    embedded = base64.b64decode(
        nbformat.read(out / "07_demo.ipynb", as_version=4).cells[0].outputs[0]["data"]["image/png"])
    assert 0 < len(embedded) < (out / "01_a_line.png").stat().st_size


def _course(tmp_path, monkeypatch, *names):
    """A course of one-cell lessons ``names`` that the runner takes for the real one."""
    lessons = tmp_path / "solutions"
    lessons.mkdir()
    for name in names:
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]),
                       lessons / f"{name}.ipynb")
    monkeypatch.setattr(runner, "lessons_dir", lambda: lessons)
    return lessons


def test_run_all_skips_lessons_whose_results_are_current(tmp_path, monkeypatch, capsys):
    lessons = _course(tmp_path, monkeypatch, "00_a", "01_b")
    out = tmp_path / "out"
    runner.run_all(scale="quick", out=out)
    assert (json.loads((out / "00_a" / "metrics.json").read_text())["stamp"]
            == runner.stamp(lessons / "00_a.ipynb"))
    capsys.readouterr()
    nb = nbformat.read(lessons / "01_b.ipynb", as_version=4)
    nb.cells[0].source = "x = 2"  # the lesson changed: its results are out of date
    nbformat.write(nb, lessons / "01_b.ipynb")
    runner.run_all(scale="quick", out=out)
    said = capsys.readouterr().out
    assert "00_a: results in" in said and "are current" in said and "== 01_b\n" in said
    # another scale is not current
    assert not runner.is_current(lessons / "00_a.ipynb", out / "00_a", "full")
    runner.run_all(scale="quick", out=out, force=True)
    assert "are current" not in capsys.readouterr().out


def test_run_all_within_a_budget_starts_no_lesson_that_will_not_fit_and_resumes(
        tmp_path, monkeypatch, capsys):
    _course(tmp_path, monkeypatch, "00_a", "01_b", "02_c")
    out = tmp_path / "out"
    (out / "01_b").mkdir(parents=True)  # an earlier, interrupted attempt at 01_b that took 500 s
    (out / "01_b" / "metrics.json").write_text(json.dumps(dict(seconds=500.0, scale="quick",
                                                               requested_scale="quick",
                                                               error="code cell 3: "
                                                                     "KeyboardInterrupt")))
    done = runner.run_all(scale="quick", out=out, budget=100)
    said = capsys.readouterr().out
    # 01_b would not fit in what is left; 02_c waits for it (in order)
    assert list(done) == ["00_a"]
    assert ("01_b: not started" in said and "its last run here took 500 s" in said
            and "Run the same command again" in said)
    assert not (out / "02_c").exists()
    done = runner.run_all(scale="quick", out=out, budget=1000)  # the next job goes on from there
    said = capsys.readouterr().out
    assert (list(done) == ["00_a", "01_b", "02_c"] and "00_a: results in" in said
            and "== 01_b\n" in said)
    assert all(not s.get("error") for s in done.values())


def test_a_lesson_still_running_at_the_end_of_the_budget_is_stopped_recorded_and_then_passed_over(
        tmp_path, monkeypatch, capsys):
    """A GPU job must end with its results written: a lesson that outlives the budget is stopped in
    its cell (even one that catches every Exception), recorded as unfinished with what it printed,
    and the next jobs go on with the lessons after it."""
    from diffuse_edu.course import cli

    lessons = _course(tmp_path, monkeypatch, "00_a", "01_slow", "02_c")
    nb = nbformat.read(lessons / "01_slow.ipynb", as_version=4)
    nb.cells = [nbformat.v4.new_code_cell("print('training...')\nimport time\nwhile True:\n    "
                                          "try:\n        time.sleep(0.05)\n    except Exception:\n"
                                          "        pass")]
    nbformat.write(nb, lessons / "01_slow.ipynb")
    out = tmp_path / "out"
    started = time.perf_counter()
    done = runner.run_all(scale="quick", out=out, budget=2.0)
    assert time.perf_counter() - started < 30  # stopped at the budget, not left to run
    record = json.loads((out / "01_slow" / "metrics.json").read_text())
    assert (record["unfinished"] and 1.0 < record["seconds"] < 25
            and "stopped at the time limit" in record["error"])
    executed = nbformat.read(out / "01_slow" / "01_slow.ipynb", as_version=4)
    assert "training..." in "".join(o.get("text", "") for o in executed.cells[0].outputs)
    assert list(done) == ["00_a", "01_slow"] and not (out / "02_c").exists()
    capsys.readouterr()

    again = 1.5 * record["seconds"]  # less than twice what it ran: passed over
    done = runner.run_all(scale="quick", out=out, budget=again)
    said = capsys.readouterr().out
    assert "01_slow: passed over" in said and "run 01 --scale quick" in said
    assert done["01_slow"]["skipped"] == "too long" and not done["02_c"].get("error")
    assert runner.is_current(lessons / "02_c.ipynb", out / "02_c", "quick")

    monkeypatch.setattr(cli, "_update_results_table", lambda out: None)
    assert (cli.main(["run", "all", "--scale", "quick", "--out", str(out), "--budget", str(again)])
            == 0)
    assert "passed over as too long for this budget: 01_slow" in capsys.readouterr().out


def test_a_lesson_stopped_unfinished_reads_so_in_the_results_table(tmp_path):
    from diffuse_edu.course import results

    (tmp_path / "12_x").mkdir()
    (tmp_path / "12_x" / "metrics.json").write_text(json.dumps(dict(
        scale="full", seconds=420.0, unfinished=True, device="cuda: H100", metrics={},
        error="code cell 9: stopped at the time limit after 420 s, before the lesson finished")))
    row = results.results_table(["12_x"], tmp_path).splitlines()[-1]
    assert ("did not finish: code cell 9: stopped at the time limit" in row
            and "more than 7.0" in row)


def test_a_relative_out_folder_is_where_the_caller_stands_not_where_the_lesson_runs(
        tmp_path, monkeypatch):
    """`run all --out results/` from the project root: the lesson runs in solutions/, its files go
    to results/."""
    lessons, caller = tmp_path / "solutions", tmp_path / "root"
    lessons.mkdir()
    caller.mkdir()
    path = _notebook(lessons, LESSON)
    monkeypatch.chdir(caller)
    summary = runner.run_notebook(path, scale="quick", out=Path("results") / "07_demo", quiet=True)
    assert summary["error"] is None and summary["figures"]
    for name in ["metrics.json", "07_demo.ipynb", *summary["figures"]]:
        assert (caller / "results" / "07_demo" / name).is_file(), name
    assert not (lessons / "results").exists()


def test_cli_run_all_says_what_ran_what_was_current_and_what_is_left(tmp_path, monkeypatch, capsys):
    from diffuse_edu.course import cli

    _course(tmp_path, monkeypatch, "00_a", "01_b")
    out = str(tmp_path / "out")
    assert cli.main(["run", "all", "--scale", "quick", "--out", out, "--budget", "600"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("2 of 2 lessons ran")
    assert cli.main(["run", "all", "--scale", "quick", "--out", out, "--budget", "600"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("0 of 0 lessons ran; 2 already current "
                                                     "(skipped)")
    with pytest.raises(SystemExit):
        cli.main(["run", "all", "--out", out, "--budget", "0"])
    assert "--budget" in capsys.readouterr().err
