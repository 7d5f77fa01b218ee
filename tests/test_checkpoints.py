import pickle

import pytest
import torch

from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.classifier import Classifier
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_or_train,
    save_checkpoint,
)
from diffuse_edu.training.loop import TrainConfig

CFG = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model, ema = UNet(CFG), UNet(CFG)
    path = save_checkpoint(tmp_path / "m.pt", model=model, ema=ema, schedule=cosine_schedule(50),
                           train_config=TrainConfig(steps=7), extra={"fid": 1.5},
                           snapshots=[{"step": 3, "seconds": 0.1, "weights": ema.state_dict()}])
    return path, model, ema


def test_a_v_model_is_sampled_right_from_its_checkpoint_alone(tmp_path):
    """A checkpoint records what its model predicts: the rebuilt model samples as it was trained."""
    from diffuse_edu.diffusion.denoisers import Denoiser
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.diffusion.prediction import Target
    from diffuse_edu.diffusion.samplers import sample_ddim
    from diffuse_edu.training.loop import train

    torch.manual_seed(0)
    schedule = cosine_schedule(50)
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    result = train(UNet(CFG), images, DiffusionObjective(schedule, Target.V),
                   TrainConfig(steps=2, batch_size=8), show_progress=False)
    path = save_checkpoint(tmp_path / "v.pt", model=result.model, ema=result.ema, schedule=schedule)
    ck = load_checkpoint(path, UNet)
    assert ck.target == "v"
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    right = sample_ddim(Denoiser(result.ema, schedule, Target.V), x, schedule, steps=5)
    torch.testing.assert_close(sample_ddim(ck.denoiser(), x, ck.schedule, steps=5), right)
    # the network says "v"
    torch.testing.assert_close(sample_ddim(ck.build(), x, ck.schedule, steps=5), right)
    as_eps = sample_ddim(Denoiser(ck.build(), schedule, Target.EPS), x, schedule, steps=5)
    assert (as_eps - right).abs().max() > 1e-3  # read as eps it would be another (wrong) sampler


def test_a_checkpoint_without_a_target_says_how_to_wrap_it(saved):
    path, *_ = saved
    ck = load_checkpoint(path, UNet)
    assert ck.target is None  # an untrained UNet declares nothing
    with pytest.raises(CheckpointError, match="does not record what its model predicts"):
        ck.denoiser()


def test_round_trip(saved):
    path, model, ema = saved
    ck = load_checkpoint(path, UNet, expect=CFG)
    assert ck.model_config == CFG and ck.train_config["steps"] == 7 and ck.extra == {"fid": 1.5}
    torch.testing.assert_close(ck.schedule.alpha_bar, cosine_schedule(50).alpha_bar)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 40])
    torch.testing.assert_close(ck.build(ema=False)(x, t), model.eval()(x, t))
    torch.testing.assert_close(ck.build()(x, t), ema.eval()(x, t))
    assert ck.snapshots[0]["step"] == 3
    assert not list(path.parent.glob("*.tmp"))


def test_other_config_is_refused_with_the_difference(saved):
    path, _, _ = saved
    other = UNetConfig(channels=(16, 32), attention_levels=(1,), groups=4, heads=2)
    with pytest.raises(CheckpointError,
                       match=r"different model \(channels: \(16, 32\) expected, "
                             r"\(8, 16\) in the file\)"):
        load_checkpoint(path, UNet, expect=other)


def test_truncated_file(saved):
    path, _, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted.*Delete it"):
        load_checkpoint(path, UNet)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path, UNet)


class Evil:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "diffuse_edu.checkpoint/1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path, UNet)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint at .*run 05"):
        load_checkpoint(tmp_path / "none.pt", UNet)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a diffuse-edu checkpoint"):
        load_checkpoint(tmp_path / "other.pt", UNet)


def test_weights_that_do_not_fit(saved):
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["weights"] = {"stem.weight": torch.zeros(1)}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path, UNet).build(ema=False)


def test_pickle_error_type_is_what_torch_raises(tmp_path):
    """weights_only refusals surface as pickle.UnpicklingError in this torch version."""
    path = tmp_path / "evil.pt"
    torch.save(Evil(), path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_the_caller_names_the_class_and_another_class_is_refused(saved):
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="holds a UNet, not a Classifier"):
        load_checkpoint(path, Classifier)


def test_a_compiled_models_own_module_is_saved(tmp_path):
    model = UNet(CFG)
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule holds
    path = save_checkpoint(tmp_path / "c.pt", model=wrapper, schedule=None)
    assert set(load_checkpoint(path, UNet).weights) == set(model.state_dict())


def test_load_or_train_trains_once_then_loads_and_retrains_on_a_new_stamp(tmp_path, capsys):
    calls = []

    def fit():
        calls.append(1)
        return dict(model=UNet(CFG), schedule=None, extra={"n": len(calls)})

    path = tmp_path / "lt.pt"
    first = load_or_train(path, UNet, CFG, {"recipe": "a"}, fit)
    again = load_or_train(path, UNet, CFG, {"recipe": "a"}, fit)
    assert (len(calls) == 1 and again.extra == {"n": 1, "stamp": {"recipe": "a"}}
            and first.extra == again.extra)
    load_or_train(path, UNet, CFG, {"recipe": "b"}, fit)
    assert len(calls) == 2 and "out of date" in capsys.readouterr().out
    other = UNetConfig(channels=(16, 32), attention_levels=(1,), groups=4, heads=2)
    fits_other = lambda: dict(model=UNet(other), schedule=None)
    assert load_or_train(path, UNet, other, {"recipe": "b"}, fits_other).model_config == other
    assert "different model" in capsys.readouterr().out


def test_a_training_the_clock_stopped_short_is_reported_and_never_cached(tmp_path, capsys):
    from diffuse_edu.course import report
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.training import loop
    from diffuse_edu.training.checkpoints import stopped_early_path
    from diffuse_edu.training.loop import train

    report.reset()
    schedule, data = cosine_schedule(100), torch.randn(32, 1, 8, 8)

    def fit(seconds):
        config = TrainConfig(steps=10_000, seconds=seconds, batch_size=4, snapshots=0)
        result = train(UNet(CFG), data, DiffusionObjective(schedule), config, show_progress=False,
                       generator=torch.Generator().manual_seed(0), desc="tiny")
        return dict(model=result.model, ema=result.ema, schedule=schedule, train_config=config,
                    extra=dict(steps=result.steps, planned_steps=result.planned_steps,
                               stopped_by_clock=result.stopped_by_clock))

    path = tmp_path / "short.pt"
    ck = load_or_train(path, UNet, CFG, {"recipe": "short"}, lambda: fit(0.05))
    out = capsys.readouterr().out
    assert ck.extra["stopped_by_clock"] and ck.extra["steps"] < 10_000
    assert f"stopped at {ck.extra['steps']} of 10000 steps" in out and "not cached" in out.lower()
    # kept aside, under a name no lesson loads
    assert not path.exists() and stopped_early_path(path).exists()
    assert loop.STOPPED_BY_CLOCK == [dict(desc="tiny", steps=ck.extra["steps"],
                                          planned_steps=10_000,
                                          seconds=loop.STOPPED_BY_CLOCK[0]["seconds"])]
    assert "tiny at" in str(report.paired_verdict([0, 0, 0], [1, 2, 3])[0])  # every verdict says so
    # not loaded: trained again
    again = load_or_train(path, UNet, CFG, {"recipe": "short"}, lambda: fit(0.05))
    assert again.extra["steps"] < 10_000 and "No checkpoint" in capsys.readouterr().out
    from diffuse_edu.course.workshop import model_files

    cache = tmp_path / "cache"
    (cache / "checkpoints").mkdir(parents=True)
    for name in ("m.pt", "m.stopped-early.pt", "m.stopped-early.safetensors"):
        (cache / "checkpoints" / name).write_bytes(b"x")
    # an undertrained model is never in a manifest
    assert [f.name for f in model_files(cache)] == ["m.pt"]
    full = load_or_train(path, UNet, CFG, {"recipe": "short"},
                         lambda: {**fit(0.05), "extra": {"steps": 1}})
    assert path.exists() and full.extra["steps"] == 1
    # the undertrained files of the earlier runs are gone
    assert not list(tmp_path.glob("*.stopped-early.*"))
    report.reset()  # the next lesson starts with a clean record
    assert not loop.STOPPED_BY_CLOCK


def test_a_training_that_reaches_its_steps_is_not_stopped_by_the_clock():
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.training.loop import train

    result = train(UNet(CFG), torch.randn(8, 1, 8, 8), DiffusionObjective(cosine_schedule(100)),
                   TrainConfig(steps=3, seconds=600, batch_size=2, snapshots=0),
                   show_progress=False)
    assert (result.steps == 3 and result.planned_steps == 3 and not result.stopped_by_clock
            and result.shortfall() is None)
    timed = train(UNet(CFG), torch.randn(8, 1, 8, 8), DiffusionObjective(cosine_schedule(100)),
                  TrainConfig(steps=None, seconds=0.05, batch_size=2, snapshots=0),
                  show_progress=False)
    # a time budget alone is the plan ("train for the 5 minutes we have")
    assert not timed.stopped_by_clock


CHILD = """
import sys, time
from pathlib import Path
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.checkpoints import load_or_train

path, log = Path(sys.argv[1]), Path(sys.argv[2])
cfg = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)

def fit():
    with log.open("a") as f:
        f.write("trained\\n")
    time.sleep(3)  # long enough for the other process to arrive while this one trains
    return dict(model=UNet(cfg), schedule=None)

load_or_train(path, UNet, cfg, {"recipe": "shared"}, fit)
print("loaded")
"""


def test_two_processes_that_need_the_same_model_train_it_once(tmp_path):
    """Two lessons side by side (parallel CI) that need the same missing model: one trains, the
    other waits."""
    import subprocess
    import sys

    path, log = tmp_path / "shared.pt", tmp_path / "log.txt"
    args = [sys.executable, "-c", CHILD, str(path), str(log)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert all(p.returncode == 0 for p in (first, second)) and all("loaded" in o for o in outs)
    assert log.read_text().splitlines() == ["trained"]  # once, not twice
    assert sum("waiting for it" in o for o in outs) <= 1


def test_the_portable_pair_loads_without_pickle_and_gives_the_same_model(saved):
    from diffuse_edu.training.checkpoints import load_portable

    path, _, ema = saved
    assert path.with_suffix(".safetensors").is_file() and path.with_suffix(".json").is_file()
    ck = load_portable(path.with_suffix(".safetensors"), UNet, expect=CFG)
    assert ck.model_config == CFG and ck.train_config["steps"] == 7 and ck.extra == {"fid": 1.5}
    torch.testing.assert_close(ck.schedule.alpha_bar, cosine_schedule(50).alpha_bar)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 40])
    torch.testing.assert_close(ck.build()(x, t), ema.eval()(x, t))
    import json

    from safetensors.torch import load_file

    assert (set(load_file(str(path.with_suffix(".safetensors"))))
            == set(ema.state_dict()) | {"schedule.betas"})
    assert json.loads(path.with_suffix(".json").read_text())["model_config"]["channels"] == [8, 16]


def test_a_damaged_or_foreign_portable_pair_is_refused(saved):
    from diffuse_edu.training.checkpoints import load_portable

    path, _, _ = saved
    with pytest.raises(CheckpointError, match="does not describe a Classifier"):
        load_portable(path, Classifier)
    path.with_suffix(".safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="damaged"):
        load_portable(path, UNet)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="No portable checkpoint"):
        load_portable(path, UNet)


def test_manifest_catches_missing_and_changed_files(saved):
    from diffuse_edu.training.checkpoints import verify_manifest, write_manifest

    path, _, _ = saved
    files = [path, path.with_suffix(".safetensors"), path.with_suffix(".json")]
    write_manifest(path.parent, files)
    assert all(ok for _, ok, _ in verify_manifest(path.parent))
    path.with_suffix(".json").write_text("{}")
    path.with_suffix(".safetensors").unlink()
    status = {p: why for p, ok, why in verify_manifest(path.parent) if not ok}
    assert (status
            == {"m.json": "differs from the manifest (damaged or replaced)",
                "m.safetensors": "missing"})


def test_a_network_built_from_a_checkpoint_samples_on_its_own_schedule_and_refuses_another(
        tmp_path):
    from diffuse_edu.diffusion.samplers import sample_ddim
    from diffuse_edu.diffusion.schedules import linear_schedule

    schedule = cosine_schedule(50)
    net = UNet(CFG)
    net.predicts = "v"
    ck = load_checkpoint(save_checkpoint(tmp_path / "own.pt", model=net, schedule=schedule), UNet)
    built = ck.build()
    assert built.schedule.same_as(schedule)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sample_ddim(built, x, None, steps=4),
                                   sample_ddim(built, x, schedule, steps=4))
        # a Denoiser carries it too
        torch.testing.assert_close(sample_ddim(ck.denoiser(), x, None, steps=4),
                                   sample_ddim(built, x, schedule, steps=4))
    with pytest.raises(ValueError,
                       match="trained on the 'cosine.*but the sampler was given 'linear"):
        sample_ddim(built, x, linear_schedule(50), steps=4)
