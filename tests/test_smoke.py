"""The smoke run of the full scale (diffuse_edu.training.smoke): small networks, a couple of
training steps and quick counts, with the full scale's code paths and configurations' structure."""

import pytest
import torch

from diffuse_edu import config
from diffuse_edu.models.dit import DiTConfig
from diffuse_edu.models.unet import UNetConfig
from diffuse_edu.models.vae import VAEConfig
from diffuse_edu.training import recipes, smoke
from diffuse_edu.training.loop import TrainConfig, train


@pytest.fixture
def smoking():
    smoke.start()
    yield
    smoke.stop()


def test_networks_are_narrowed_once_and_keep_their_structure():
    unet = UNetConfig(channels=(64, 128, 256), blocks_per_level=2, attention_levels=(2,),
                      num_classes=10)
    small = smoke.narrow(unet)
    assert (small.channels == (8, 16, 32) and small.blocks_per_level == 2
            and small.attention_levels == (2,))
    assert small.num_classes == 10 and smoke.narrow(small) == small  # twice changes nothing more
    dit = smoke.narrow(DiTConfig(width=384, depth=8, heads=6, patch=2))
    assert (dit.width, dit.depth, dit.heads, dit.patch) == (48, 2, 6, 2)
    assert (smoke.narrow(VAEConfig(channels=(64, 128, 128), latent_channels=4)).channels
            == (8, 16, 32))
    recipe = smoke.narrow(recipes.TDDPM_FULL)
    assert (recipe.model.channels == (8, 16, 32)
            and recipe.model.context_dim == recipes.TDDPM_FULL.model.context_dim)
    assert recipe.train.steps == 2 and recipe.train.seconds is None and not recipe.train.compile
    # they must meet
    assert recipe.text.steps == 2 and recipe.text.model.text_width == recipe.model.context_dim


def test_by_scale_gives_quick_counts_and_narrow_configurations_at_full_scale(smoking):
    hp = config.by_scale("full", samples=(160, 5000), steps=(20, 50), seeds=(3, 3),
                         digits=(False, True), size=(16, 32), lr=(3e-4, 1e-3),
                         channels=((16, 32, 64), (32, 64, 128)),
                         unet=(UNetConfig(channels=(16, 32)), UNetConfig(channels=(64, 128, 256))),
                         train=(TrainConfig(steps=90), TrainConfig(steps=2000, snapshots=4)))
    assert (hp.samples, hp.steps, hp.seeds, hp.digits) == (160, 20, 3, True)
    assert (hp.size, hp.lr) == (32, 1e-3)  # not counts: the full values, smaller quick ones or not
    assert hp.unet.channels == (8, 16, 32) and hp.train.steps == 90  # the quick count of steps
    assert hp.channels == (8, 16, 32)  # a U-Net's widths given bare (lessons 03 and 04)


def test_a_smoke_run_is_started_by_an_explicit_call_not_by_the_environment(monkeypatch):
    monkeypatch.setenv(config.SMOKE_ENV, "1")  # the runner's switch; the library never reads it
    assert not config.smoke() and config.by_scale("full", samples=(160, 5000)).samples == 5000
    assert recipes.in_force(recipes.DDPM_FULL) is recipes.DDPM_FULL
    smoke.start()
    try:
        assert config.smoke() and config.by_scale("full", samples=(160, 5000)).samples == 160
        assert config.by_scale("quick", samples=(160, 5000)).samples == 160
        narrowed = recipes.in_force(recipes.DDPM_FULL).train
        assert narrowed.steps == recipes.DDPM_FULL.train.snapshots  # one step per snapshot
    finally:
        smoke.stop()
    assert not config.smoke() and config.by_scale("full", samples=(160, 5000)).samples == 5000


def test_training_trains_the_configuration_it_is_given_in_a_smoke_run_too(monkeypatch, smoking):
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.diffusion.schedules import cosine_schedule
    from diffuse_edu.models.unet import UNet

    monkeypatch.setenv(config.SMOKE_ENV, "1")
    net = UNet(UNetConfig(channels=(8, 16), groups=4, attention_levels=()))
    data, objective = torch.rand(16, 1, 8, 8), DiffusionObjective(cosine_schedule(100))
    budget = TrainConfig(steps=3, seconds=300, batch_size=4, warmup_steps=1)
    assert train(net, data, objective, budget, show_progress=False).steps == 3  # it was cut to 2
    narrowed = smoke.narrow(TrainConfig(steps=None, seconds=300, batch_size=4))
    result = train(net, data, objective, narrowed, show_progress=False)
    assert result.steps == 2  # a time budget, narrowed: two steps
    # many steps: one per snapshot
    assert smoke.narrow(TrainConfig(steps=5000, snapshots=4)).steps == 4
    # a lesson's own count: its curves count on it
    assert smoke.narrow(TrainConfig(steps=1500)).steps == 1500


def test_the_runner_makes_a_lesson_a_smoke_run_for_the_variable_and_ends_it(monkeypatch, tmp_path):
    import json

    import nbformat

    from diffuse_edu.course import runner

    cell = ("import diffuse_edu as de\nfrom diffuse_edu.course.report import metric\n"
            "metric('samples', de.by_scale(samples=(160, 5000)).samples)")
    path = tmp_path / "07_demo.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), path)
    for smoking, samples in (("1", 160), ("0", 5000)):
        monkeypatch.setenv(config.SMOKE_ENV, smoking)
        runner.run_notebook(path, scale="full", out=tmp_path / smoking, quiet=True)
        metrics = json.loads((tmp_path / smoking / "metrics.json").read_text())["metrics"]
        assert metrics["samples"] == samples
        assert not config.smoke()  # ended with the lesson
