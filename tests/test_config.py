import pytest

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
    shared.chmod(0o555)  # as the staged copy beside the project: no write bits (root could still write)
    try:
        assert config.cache_dir() != shared.resolve()
    finally:
        shared.chmod(0o755)


@pytest.mark.parametrize(("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.delenv(config.SCALE_ENV, raising=False)
    set_scale(None)
    assert config.accelerator() == expected and config.default_device().type == expected
    assert get_scale() is (Scale.QUICK if expected == "cpu" else Scale.FULL)
    assert by_scale(n=(1, 2)).n == (1 if expected == "cpu" else 2)
