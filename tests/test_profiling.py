import torch
from torch import nn

from diffuse_edu.evaluation.profiling import (
    count_flops,
    count_parameters,
    flops_by_module,
    group_by_part,
    shape_table,
)
from diffuse_edu.models.unet import Stage, UNet, UNetConfig


def test_linear_flops_are_two_per_multiply_add():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    assert count_flops(net, torch.zeros(3, 10)) == 2 * 3 * (10 * 20 + 20 * 5)
    by = flops_by_module(net, torch.zeros(3, 10))
    assert by["0"] == 2 * 3 * 200 and by["2"] == 2 * 3 * 100


def test_group_by_part_sums_leaves_once():
    values = {"": 10, "a": 6, "a.0": 2, "a.1": 4, "b": 4}
    assert group_by_part(values) == {"a": 6, "b": 4}
    assert (group_by_part({"enc.0.x": 1, "enc.1.y": 2, "mid.z": 3}, deeper=("enc",))
            == {"enc.0": 1, "enc.1": 2, "mid": 3})


def test_shape_table_follows_the_unet():
    model = UNet(UNetConfig())
    rows = shape_table(model, torch.zeros(1, 1, 16, 16), torch.tensor([3]), kinds=(Stage,))
    assert ([r.name for r in rows]
            == ["encoder.0.0", "encoder.1.0", "encoder.2.0", "middle", "decoder.1.0",
                "decoder.0.0"])
    assert rows[3].shape == (1, 64, 4, 4) and rows[-1].shape == (1, 16, 16, 16)
    assert sum(count_parameters(m) for m in model.children()) == count_parameters(model)
