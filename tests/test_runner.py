"""The headless runner, the command line and the environment check."""

import json

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
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), path)
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


def test_a_failing_cell_is_named(tmp_path):
    path = _notebook(tmp_path, "x = 1", "raise KeyError('boom')")
    with pytest.raises(runner.LessonError, match="code cell 2: KeyError"):
        runner.run_notebook(path, scale="quick", out=tmp_path / "out")
    assert "code cell 2" in json.loads((tmp_path / "out" / "metrics.json").read_text())["error"]


def test_find_lesson():
    assert runner.find_lesson("1").name == "01_forward_process.ipynb"
    assert runner.find_lesson("00").name == "00_welcome.ipynb"
    with pytest.raises(FileNotFoundError, match="No lesson 99; the lessons are: 00_welcome"):
        runner.find_lesson("99")
    with pytest.raises(ValueError, match="a lesson is a number|A lesson is a number"):
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
    assert not topics["full scale on CPU"].ok and "DIFFUSE_EDU_SCALE=quick" in topics["full scale on CPU"].fix
