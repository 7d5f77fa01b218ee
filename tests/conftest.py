import pytest
import torch

from diffuse_edu import config


@pytest.fixture(autouse=True)
def _isolate_settings(monkeypatch):
    """Each test starts with no scale or data-folder override of its own."""
    config.set_scale(None)
    config.set_data_dir(None)
    yield
    config.set_scale(None)
    config.set_data_dir(None)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)
