from dataclasses import replace

import pytest
import torch

from diffuse_edu import config, data
from diffuse_edu.course import workshop
from diffuse_edu.models.unet import UNetConfig
from diffuse_edu.training import pretrained, recipes
from diffuse_edu.training.loop import TrainConfig


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    config.set_data_dir(tmp_path)
    return replace(recipes.DDPM_QUICK, name="tiny",
                   data=lambda: data.ImageSet(
                       data.load_digits("train").images[:64, :, ::2, ::2].contiguous(),
                       torch.zeros(64, dtype=torch.long), (), "tiny"),
                   model=UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2),
                   train=TrainConfig(steps=4, batch_size=8, snapshots=2))


def test_missing_checkpoint_is_trained_saved_and_then_loaded(tiny, capsys):
    ck = pretrained.pretrained_ddpm(tiny)
    made = capsys.readouterr().out
    assert "training one now" in made and "loaded from the cache" not in made
    assert (pretrained.checkpoint_path(tiny).is_file() and ck.extra["steps"] == 4
            and len(ck.snapshots) == 2)
    again = pretrained.pretrained_ddpm(tiny)
    out = capsys.readouterr().out
    # loaded, not retrained
    assert out.startswith("tiny: trained 4 steps of the 4 planned") and "training" not in out
    assert "loaded from the cache" in out  # its seconds are when it was made, not now
    assert all(torch.equal(again.weights[k], ck.weights[k]) for k in ck.weights)


def test_out_of_date_or_broken_checkpoints_are_replaced(tiny, capsys):
    pretrained.pretrained_ddpm(tiny)
    capsys.readouterr()
    pretrained.pretrained_ddpm(replace(tiny, train=replace(tiny.train, steps=5)))
    assert "out of date (made with" in capsys.readouterr().out
    pretrained.checkpoint_path(tiny).write_bytes(b"\x00" * 10)
    ck = pretrained.pretrained_ddpm(tiny)
    assert "truncated or corrupted" in capsys.readouterr().out and ck.extra["steps"] == 4


def test_a_model_the_clock_stopped_short_says_so_when_loaded():
    line = pretrained.trained_how_far("cddpm_digits",
                                      dict(steps=47, planned_steps=700, seconds=80.2,
                                                         stopped_by_clock=True))
    assert (line.startswith("cddpm_digits: trained 47 steps of the 700 planned (80 s)")
            and "undertrained" in line)
    assert "undertrained" not in pretrained.trained_how_far("x", dict(steps=700, planned_steps=700))


def test_quick_recipes_are_planned_in_steps_with_a_generous_clock_guard():
    for recipe in recipes.RECIPES[config.Scale.QUICK]:
        # steps end them; the seconds only guard a slow machine
        assert recipe.train.steps is not None and recipe.train.seconds >= 150
    assert recipes.CLIP_QUICK.seconds >= 2 * 16


def test_recipes_by_scale():
    assert recipes.ddpm_recipe(config.Scale.QUICK) is recipes.DDPM_QUICK
    assert recipes.ddpm_recipe(config.Scale.FULL) is recipes.DDPM_FULL
    assert recipes.DDPM_FULL.train.seconds == 200  # the full-scale budget of lesson 05


def test_a_scale_by_name_is_the_same_scale(monkeypatch):
    """"quick" once gave the full recipe (a str enum equals its member's name but is not it), so a
    test meant for the 8x8 model sampled the 7.8 M-parameter 32x32 one, 170x slower."""
    assert recipes.ddpm_recipe("quick") is recipes.DDPM_QUICK
    assert recipes.ddpm_recipe(" Full ") is recipes.DDPM_FULL
    monkeypatch.setattr(config, "accelerator", lambda: "cpu")
    assert recipes.ddpm_recipe("auto") is recipes.DDPM_QUICK
    assert config.resolve_scale("auto") is config.Scale.QUICK
    assert ([what for what, _ in workshop.judges("quick")]
            == [what for what, _ in workshop.judges(config.Scale.QUICK)])
    with pytest.raises(config.ScaleError, match="use 'quick', 'full' or 'auto'"):
        recipes.ddpm_recipe("fast")


def _quick_workshop(monkeypatch, tiny, seen):
    """The workshop at quick scale with the tiny recipe; the classifier and judge only recorded."""
    monkeypatch.setitem(recipes.RECIPES, config.Scale.QUICK, [tiny])
    monkeypatch.setattr(pretrained, "course_classifier",
                        lambda scale, device: seen.append(("classifier", scale)))
    monkeypatch.setattr(pretrained, "shape_judge",
                        lambda size, device: seen.append(("judge", size)))


def test_workshop_prepares_every_model_the_lessons_load(tiny, monkeypatch, capsys):
    from diffuse_edu.course import cli
    seen = []
    _quick_workshop(monkeypatch, tiny, seen)
    assert cli.main(["workshop", "--scale", "quick"]) == 0
    out = capsys.readouterr().out
    assert "ready: tiny (4 steps" in out and pretrained.checkpoint_path(tiny).is_file()
    assert seen == [("classifier", config.Scale.QUICK), ("judge", 16)]


def test_prepare_judges_loads_only_the_judges(tiny, monkeypatch):
    """What the test suite caches before the notebooks: the judges, never a lesson's own model."""
    from diffuse_edu.course import workshop
    seen = []
    _quick_workshop(monkeypatch, tiny, seen)
    names = workshop.prepare_judges(config.Scale.QUICK)
    assert seen == [("classifier", config.Scale.QUICK), ("judge", 16)]
    assert (len(names) == 2 and "feature classifier" in names[0]
            and "attribute judge (16x16" in names[1])
    assert not pretrained.checkpoint_path(tiny).exists()


def test_workshop_retrain_deletes_every_cached_model(tiny, monkeypatch, capsys):
    from diffuse_edu.course import cli
    _quick_workshop(monkeypatch, tiny, [])
    assert cli.main(["workshop", "--scale", "quick"]) == 0
    cache = config.cache_dir()
    stray = [pretrained.cached_path("classifier_digits_1x16"),
             cache / "features" / "shape_judge_16.pt"]
    for path in stray:  # models of other kinds, and one where older versions kept features
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".pt", ".safetensors", ".json"):
            path.with_suffix(suffix).write_bytes(b"old")
    before = pretrained.checkpoint_path(tiny).stat().st_mtime_ns
    assert cli.main(["workshop", "--scale", "quick", "--retrain"]) == 0
    assert pretrained.checkpoint_path(tiny).stat().st_mtime_ns != before
    assert not any(p.with_suffix(s).exists() for p in stray
                   for s in (".pt", ".safetensors", ".json"))


def test_workshop_manifest_is_verified_by_doctor(tiny, monkeypatch, capsys):
    from diffuse_edu.course import cli, doctor

    _quick_workshop(monkeypatch, tiny, [])
    assert cli.main(["workshop", "--scale", "quick"]) == 0
    assert "manifest.json (3 files" in capsys.readouterr().out  # .pt, .safetensors, .json
    assert [f.ok for f in doctor._models()] == [True]
    pretrained.checkpoint_path(tiny).with_suffix(".safetensors").write_bytes(b"tampered")
    findings = doctor._models()
    assert ([(f.ok, f.detail) for f in findings]
            == [(False, "differs from the manifest (damaged or replaced)")])
    assert "workshop" in findings[0].fix
