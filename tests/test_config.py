import json

import pytest
import torch

from diffuse_edu import config
from diffuse_edu.config import Scale, by_scale, get_scale, set_scale


def test_env_variable_picks_the_scale(monkeypatch):
    monkeypatch.setenv(config.SCALE_ENV, "full")
    assert get_scale() is Scale.FULL
    monkeypatch.setenv(config.SCALE_ENV, "QUICK ")
    assert get_scale() is Scale.QUICK


def test_set_scale_overrides_the_environment(monkeypatch):
    monkeypatch.setenv(config.SCALE_ENV, "full")
    set_scale("quick")
    assert get_scale() is Scale.QUICK


def test_auto_follows_cuda(monkeypatch):
    monkeypatch.setenv(config.SCALE_ENV, "auto")
    monkeypatch.setattr(config.torch.cuda, "is_available", lambda: False)
    assert get_scale() is Scale.QUICK
    monkeypatch.setattr(config.torch.cuda, "is_available", lambda: True)
    assert get_scale() is Scale.FULL


def test_bad_scale_names_the_fix(monkeypatch):
    monkeypatch.setenv(config.SCALE_ENV, "medium")
    with pytest.raises(ValueError, match="use 'quick', 'full' or 'auto'"):
        get_scale()


def test_by_scale_picks_one_side():
    quick = by_scale("quick", steps=(10, 1000), size=(16, 32))
    full = by_scale("full", steps=(10, 1000), size=(16, 32))
    assert (quick.steps, quick.size, quick.scale) == (10, 16, Scale.QUICK)
    assert (full.steps, full.size, full.scale) == (1000, 32, Scale.FULL)


def test_by_scale_rejects_a_single_value():
    with pytest.raises(TypeError, match="must be a \\(quick, full\\) pair"):
        by_scale("quick", steps=10)


def test_data_dirs_order(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path / "env"))
    config.set_data_dir(tmp_path / "set")
    dirs = config.data_dirs()
    assert dirs[:2] == [(tmp_path / "set").resolve(), (tmp_path / "env").resolve()]
    assert config.cache_dir() == (tmp_path / "set").resolve()


def test_a_read_only_data_folder_is_not_used_as_the_cache(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv(config.DATA_ENV, str(shared))
    assert config.cache_dir() == shared.resolve()
    # as the staged copy beside the project: no write bits (root could still write)
    shared.chmod(0o555)
    try:
        assert config.cache_dir() != shared.resolve()
    finally:
        shared.chmod(0o755)


@pytest.mark.parametrize(("cuda", "mps", "expected"),
                         [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.delenv(config.SCALE_ENV, raising=False)
    set_scale(None)
    assert config.accelerator() == expected and config.default_device().type == expected
    assert get_scale() is (Scale.QUICK if expected == "cpu" else Scale.FULL)
    assert by_scale(n=(1, 2)).n == (1 if expected == "cpu" else 2)


class _Hungry(torch.nn.Module):
    """A network whose forward pass runs out of accelerator memory, as a too-large batch would."""

    def __init__(self, error: Exception):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.error = error

    def forward(self, x, t, cond=None):
        raise self.error


_ERRORS = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.19 GiB "
                           "total capacity)"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB)"),
]


@pytest.mark.parametrize("error", _ERRORS)
def test_out_of_memory_while_training_or_extracting_features_names_what_to_lower(error):
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.diffusion.schedules import cosine_schedule
    from diffuse_edu.evaluation.features import extract
    from diffuse_edu.training.loop import TrainConfig, train

    with pytest.raises(config.OutOfMemory) as caught:
        train(_Hungry(error), torch.randn(16, 1, 8, 8), DiffusionObjective(cosine_schedule(100)),
              TrainConfig(steps=2, batch_size=4, compile=False), show_progress=False)
    said = str(caught.value)
    assert said.startswith("The GPU ran out of memory while training: ")
    assert "lower the batch size (now 4): TrainConfig(batch_size=...)" in said
    assert str(error).splitlines()[0] in said and "DIFFUSE_EDU_SCALE=quick" in said
    mps = "MPS" in str(error)
    assert ("torch.mps.empty_cache()" in said) == mps and ("nvidia-smi" in said) == (not mps)
    assert isinstance(caught.value, config.CourseError) and caught.value.__cause__ is error

    classifier = _Hungry(error)
    classifier.features = lambda x: classifier(x, None)
    with pytest.raises(config.OutOfMemory, match=r"(?s)running the classifier.*lower batch_size="):
        extract(classifier, torch.randn(4, 1, 8, 8))


@pytest.mark.parametrize("error", _ERRORS)
def test_out_of_memory_in_a_notebook_cell_or_a_headless_lesson_names_what_to_lower(
        error, tmp_path, capsys):
    """The samplers are plain math (they import only torch): the kernel and the runner explain for
    them."""
    from IPython.core.interactiveshell import InteractiveShell

    from diffuse_edu.course.runner import LessonError, run_notebook
    from diffuse_edu.diffusion.samplers import sample_ddim
    from diffuse_edu.diffusion.schedules import cosine_schedule

    with pytest.raises(type(error)):  # unchanged where it is raised
        sample_ddim(_Hungry(error), torch.randn(4, 1, 8, 8), cosine_schedule(100), steps=5)

    shell = InteractiveShell.instance()
    try:
        config.explain_out_of_memory_in_notebooks()
        shell.user_ns["error"] = error
        assert shell.run_cell("raise error").error_in_exec is error
        shown = capsys.readouterr()
        assert str(error) in shown.out  # the traceback as ever, then what to do
        assert "The GPU ran out of memory while running this cell" in shown.err
        assert "lower the images this cell trains on or samples at once" in shown.err
        shell.run_cell("raise RuntimeError('shape mismatch')")
        shown = capsys.readouterr()
        assert "shape mismatch" in shown.out and "ran out of memory" not in shown.out + shown.err
    finally:
        InteractiveShell.clear_instance()

    lesson = tmp_path / "99_memory.ipynb"
    lesson.write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": f"raise RuntimeError({str(error)!r})", "metadata": {},
         "outputs": [], "execution_count": None}], "metadata": {}, "nbformat": 4,
                                  "nbformat_minor": 5}))
    with pytest.raises(LessonError, match="(?s)while running code cell 1.*samples at once"):
        run_notebook(lesson, scale="quick", out=tmp_path / "out", quiet=True)


def test_other_errors_pass_through_the_out_of_memory_explainer():
    with pytest.raises(ValueError, match="not memory"):
        with config.explain_out_of_memory("sampling", "the batch"):
            raise ValueError("not memory")
    with pytest.raises(RuntimeError, match="shape mismatch") as caught:
        with config.explain_out_of_memory("sampling", "the batch"):
            raise RuntimeError("shape mismatch")
    assert not isinstance(caught.value, config.OutOfMemory)


def test_importing_the_package_changes_nothing_global():
    """In a fresh interpreter with IPython loaded (a kernel): importing every module of the library
    (the smoke run's too) sets no exception handler, starts no smoke run whatever the environment
    says, and the progress bar's notebook test imports nothing. The handler and the smoke run are
    explicit calls: explain_out_of_memory_in_notebooks() and diffuse_edu.training.smoke.start()."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "import diffuse_edu, diffuse_edu.progress, diffuse_edu.training.smoke\n"
        "import diffuse_edu.course.runner\n"
        "from diffuse_edu import config\n"
        "assert shell.custom_exceptions == (), shell.custom_exceptions\n"
        "assert not config.smoke() and config.by_scale('full', n=(1, 5)).n == 5\n"
        "config.explain_out_of_memory_in_notebooks()\n"
        "assert shell.custom_exceptions == (RuntimeError,)  # the explicit call\n"
        "del sys.modules['IPython']\n"
        "assert not diffuse_edu.progress.in_notebook() and 'IPython' not in sys.modules\n"
    )
    env = {**os.environ, config.SMOKE_ENV: "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
