"""Hosted notebooks: every lesson's first code cell installs the course where it is missing."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import nbformat

import diffuse_edu
from diffuse_edu import config
from diffuse_edu.course import hosted

ROOT = config.PROJECT_ROOT
LESSONS = (sorted((ROOT / "solutions").glob("[0-9]*.ipynb"))
           + sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")))


def test_every_lesson_starts_with_the_same_setup_cell():
    assert len(LESSONS) >= 30
    for path in LESSONS:
        cells = nbformat.read(path, as_version=4).cells
        assert hosted.first_code_cell(cells) == hosted.setup_cell(), path.name
        assert sum(hosted.MARK in c.source for c in cells) == 1, path.name


def test_the_cell_installs_the_notebooks_own_version_from_the_projects_repository():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == diffuse_edu.__version__
    assert project["urls"]["Repository"] == hosted.REPOSITORY
    assert f'"{hosted.install_source()}"' in hosted.setup_cell()
    assert hosted.install_source().endswith(f"@v{diffuse_edu.__version__}")


def test_readme_links_every_lesson_to_colab_and_kaggle():
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        row = next(line for line in readme.splitlines() if line.startswith(f"| {path.stem[:2]} "))
        assert f"[Colab]({hosted.colab_url(path.stem)})" in row, path.stem
        assert f"[Kaggle]({hosted.kaggle_url(path.stem)})" in row, path.stem
        assert (f"/blob/v{diffuse_edu.__version__}/notebooks/{path.name}"
                in hosted.colab_url(path.stem))


def _run(python, script, env, cwd):
    result = subprocess.run([str(python), "-c", script], env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_cell_is_silent_where_the_course_is_installed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSE_EDU_SOURCE"}
    assert _run(sys.executable, hosted.setup_cell(), env, tmp_path) == ""


def test_the_cell_installs_the_course_in_a_fresh_environment(tmp_path):
    """A fresh virtual environment that has the course's dependencies but not the course; the cell
    installs it from a copy of this checkout (no network), then the library imports."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # venv's bundled setuptools is older than this project's build needs: use the environment's.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True,
                   timeout=300)
    # The dependencies: this environment's packages, seen through symlinks, without the course.
    deps = tmp_path / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not re.match(r"_*(editable|diffuse_edu)", entry.name) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    fresh_site = _run(python, "import sysconfig; print(sysconfig.get_paths()['purelib'])", {},
                      tmp_path)
    (Path(fresh_site.strip()) / "course-dependencies.pth").write_text(f"{deps}\n")
    # The install source: the package's files, copied (a hosted kernel gets them from the
    # repository).
    source = tmp_path / "source"
    shutil.copytree(ROOT / "diffuse_edu", source / "diffuse_edu",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DIFFUSE_EDU_SOURCE": str(source),
           "DIFFUSE_EDU_SCALE": "quick", "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1",
           "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    assert "No module named" in subprocess.run([str(python), "-c", "import diffuse_edu"], env=env,
                                               cwd=tmp_path, capture_output=True, text=True).stderr
    said = _run(python,
                hosted.setup_cell()
                + "\nprint('download:', os.environ.get('DIFFUSE_EDU_DOWNLOAD'))",
                env, tmp_path)
    assert f"installing {source}" in said
    # full scale's data
    assert "download: 1" in said and "downloaded when a lesson first needs them" in said
    assert (f"installed diffuse-edu {diffuse_edu.__version__}; this lesson will run at quick "
            "scale" in said)
    where = _run(python, "import diffuse_edu; print(diffuse_edu.__file__)", env, tmp_path)
    assert where.startswith(str(venv)), "the course is imported from the fresh environment"
    assert (_run(python, hosted.setup_cell(), env, tmp_path)
            == ""), "once installed, the cell is silent"


def test_the_hosted_cell_and_the_data_loaders_name_the_same_download_switch(monkeypatch, capsys,
                                                                            tmp_path):
    """A hosted machine at full scale has no data folder: with the switch the cell sets, a missing
    set is fetched (and says so); without it, the message says what to run."""
    import numpy as np
    import pytest

    from diffuse_edu.data import staged

    assert hosted.DOWNLOAD_ENV == staged.DOWNLOAD_ENV
    monkeypatch.setattr(staged, "find_staged", lambda name: None)
    monkeypatch.setattr(staged, "_find_torchvision", lambda card: None)
    fetched = []
    arrays = {k: np.zeros((2, 28, 28) if k.startswith("x") else (2,), np.uint8)
              for k in staged._KERAS_KEYS}
    monkeypatch.setattr(staged, "fetch",
                        lambda name: fetched.append(name) or tmp_path / "mnist.npz")
    monkeypatch.setattr(staged, "read_npz", lambda path, card: arrays)
    monkeypatch.delenv(staged.DOWNLOAD_ENV, raising=False)
    with pytest.raises(staged.DataMissingError, match="data fetch mnist"):
        staged.load_keras_arrays("mnist")
    monkeypatch.setenv(staged.DOWNLOAD_ENV, "1")
    assert staged.load_keras_arrays("mnist") is arrays and fetched == ["mnist"]
    assert "MNIST is not on this machine: downloading it" in capsys.readouterr().out
