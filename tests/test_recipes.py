from dataclasses import replace

import pytest
import torch

from diffuse_edu import config, data
from diffuse_edu.models.unet import UNetConfig
from diffuse_edu.training import recipes
from diffuse_edu.training.loop import TrainConfig


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    config.set_data_dir(tmp_path)
    return replace(recipes.DDPM_QUICK, name="tiny",
                   data=lambda: data.ImageSet(data.load_digits("train").images[:64, :, ::2, ::2].contiguous(),
                                              torch.zeros(64, dtype=torch.long), (), "tiny"),
                   model=UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2),
                   train=TrainConfig(steps=4, batch_size=8, snapshots=2))


def test_missing_checkpoint_is_trained_saved_and_then_loaded(tiny, capsys):
    ck = recipes.pretrained_ddpm(tiny)
    assert "training one now" in capsys.readouterr().out
    assert recipes.checkpoint_path(tiny).is_file() and ck.extra["steps"] == 4 and len(ck.snapshots) == 2
    again = recipes.pretrained_ddpm(tiny)
    assert capsys.readouterr().out == ""  # loaded, not retrained
    assert all(torch.equal(again.weights[k], ck.weights[k]) for k in ck.weights)


def test_out_of_date_or_broken_checkpoints_are_replaced(tiny, capsys):
    recipes.pretrained_ddpm(tiny)
    capsys.readouterr()
    recipes.pretrained_ddpm(replace(tiny, train=replace(tiny.train, steps=5)))
    assert "out of date (made with" in capsys.readouterr().out
    recipes.checkpoint_path(tiny).write_bytes(b"\x00" * 10)
    ck = recipes.pretrained_ddpm(tiny)
    assert "truncated or corrupted" in capsys.readouterr().out and ck.extra["steps"] == 4


def test_recipes_by_scale():
    assert recipes.ddpm_recipe(config.Scale.QUICK) is recipes.DDPM_QUICK
    assert recipes.ddpm_recipe(config.Scale.FULL) is recipes.DDPM_FULL
    assert recipes.DDPM_FULL.train.seconds == 200  # the full-scale budget of lesson 05


def test_workshop_prepares_every_recipe_and_the_classifier(tiny, monkeypatch, capsys):
    from diffuse_edu.course import cli
    monkeypatch.setitem(recipes.RECIPES, config.Scale.QUICK, [tiny])
    seen = []
    monkeypatch.setattr(recipes, "course_classifier", lambda scale, device: seen.append(scale))
    assert cli.main(["workshop", "--scale", "quick"]) == 0
    out = capsys.readouterr().out
    assert "ready: tiny (4 steps" in out and recipes.checkpoint_path(tiny).is_file()
    assert seen == [config.Scale.QUICK]
    before = recipes.checkpoint_path(tiny).stat().st_mtime_ns
    assert cli.main(["workshop", "--scale", "quick", "--retrain"]) == 0
    assert recipes.checkpoint_path(tiny).stat().st_mtime_ns != before


def test_workshop_manifest_is_verified_by_doctor(tiny, monkeypatch, capsys):
    from diffuse_edu.course import cli, doctor

    monkeypatch.setitem(recipes.RECIPES, config.Scale.QUICK, [tiny])
    monkeypatch.setattr(recipes, "course_classifier", lambda scale, device: None)
    assert cli.main(["workshop", "--scale", "quick"]) == 0
    assert "manifest.json (3 files" in capsys.readouterr().out  # .pt, .safetensors, .json
    assert [f.ok for f in doctor._models()] == [True]
    recipes.checkpoint_path(tiny).with_suffix(".safetensors").write_bytes(b"tampered")
    findings = doctor._models()
    assert [(f.ok, f.detail) for f in findings] == [(False, "differs from the manifest (damaged or replaced)")]
    assert "workshop" in findings[0].fix
