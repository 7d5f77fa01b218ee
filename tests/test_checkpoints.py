import pickle

import pytest
import torch

from diffuse_edu.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from diffuse_edu.schedules import cosine_schedule
from diffuse_edu.training import TrainConfig
from diffuse_edu.unet import UNet, UNetConfig

CFG = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model, ema = UNet(CFG), UNet(CFG)
    path = save_checkpoint(tmp_path / "m.pt", model=model, ema=ema, schedule=cosine_schedule(50),
                           train_config=TrainConfig(steps=7), extra={"fid": 1.5},
                           snapshots=[{"step": 3, "seconds": 0.1, "weights": ema.state_dict()}])
    return path, model, ema


def test_round_trip(saved):
    path, model, ema = saved
    ck = load_checkpoint(path, expect=CFG)
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
    with pytest.raises(CheckpointError, match=r"different model \(channels: \(16, 32\) expected, \(8, 16\) in the file\)"):
        load_checkpoint(path, expect=other)


def test_truncated_file(saved):
    path, _, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupted.*Delete it"):
        load_checkpoint(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "diffuse_edu.checkpoint/1", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint at .*run 05"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a diffuse-edu checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_weights_that_do_not_fit(saved):
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)
    payload["weights"] = {"stem.weight": torch.zeros(1)}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path).build(ema=False)


def test_pickle_error_type_is_what_torch_raises(tmp_path):
    """weights_only refusals surface as pickle.UnpicklingError in this torch version."""
    path = tmp_path / "evil.pt"
    torch.save(Evil(), path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
