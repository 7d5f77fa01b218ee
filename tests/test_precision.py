"""The training precision: bfloat16 where a GPU has it, float16 with a gradient scaler where it has
not (a free T4), float32 on a CPU. The scaler's logic is tested here on the CPU; on a GPU,
tests/test_gpu.py forces float16."""

import copy

import pytest
import torch

from diffuse_edu.course import doctor
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training import loop
from diffuse_edu.training.loop import Precision, TrainConfig, adamw, precision_dtype, train_step

CFG = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)


def test_the_precision_follows_the_device(monkeypatch):
    assert precision_dtype(TrainConfig(), "cpu") is None  # every CPU: float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loop, "bf16_supported", lambda device: True)  # an A100 or an H100
    assert precision_dtype(TrainConfig(), "cuda") is torch.bfloat16
    # float16 forced on such a GPU
    assert precision_dtype(TrainConfig(bf16=False), "cuda") is torch.float16
    monkeypatch.setattr(loop, "bf16_supported", lambda device: False)  # a T4: no fast bfloat16
    assert precision_dtype(TrainConfig(), "cuda") is torch.float16
    assert precision_dtype(TrainConfig(fp16=False), "cuda") is None
    assert Precision(torch.float16).name == "float16 autocast with a gradient scaler"


def _step(precision, seed=0):
    torch.manual_seed(seed)
    model = UNet(CFG)
    opt = adamw(model.parameters(), lr=1e-3)
    x0 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    objective = DiffusionObjective(cosine_schedule(100))
    t, eps = objective.draw(x0, torch.Generator().manual_seed(2))
    loss, _, norm = train_step(model, opt, objective, x0, TrainConfig(grad_clip=0.5),
                               params=list(model.parameters()), bf16=False, t=t, eps=eps,
                               precision=precision)
    return model, loss, norm


def test_a_scaled_step_unscales_before_clipping_and_lands_where_the_plain_step_does():
    plain_model, plain_loss, plain_norm = _step(None)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled_model, scaled_loss, scaled_norm = _step(Precision(None, scaler))
    torch.testing.assert_close(scaled_loss, plain_loss)
    # the true norm, not 4096 times it
    torch.testing.assert_close(scaled_norm, plain_norm, rtol=1e-4, atol=1e-6)
    for a, b in zip(plain_model.parameters(), scaled_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert scaler.get_scale() == 2.0**12  # no overflow: the scale stays


def test_a_step_whose_gradients_overflow_is_skipped_and_the_scale_lowered():
    torch.manual_seed(0)
    model = UNet(CFG)
    before = copy.deepcopy(model.state_dict())
    opt = adamw(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def overflowing(model_, x0, **kw):
        out = model_(x0, torch.full((x0.shape[0],), 5))
        # inf in float32
        return (out * 3e38).square().flatten(1).mean(1), torch.full((x0.shape[0],), 5)

    loss, _, _ = train_step(model, opt, overflowing, torch.randn(2, 1, 8, 8), TrainConfig(),
                            params=list(model.parameters()), bf16=False,
                            precision=Precision(None, scaler))
    assert not torch.isfinite(loss).all()
    # the step was skipped
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert scaler.get_scale() < 2.0**12


def test_doctor_says_which_precision_training_uses(monkeypatch):
    assert doctor._precision("cpu").detail.startswith("float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loop, "bf16_supported", lambda device: False)
    finding = doctor._precision("cuda")
    assert ("float16 autocast with a gradient scaler" in finding.detail
            and "no fast bfloat16" in finding.detail)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_float16_forced_on_a_gpu_trains_with_finite_losses():
    from diffuse_edu.training.loop import train

    data = torch.randn(64, 1, 8, 8, device="cuda")
    result = train(UNet(CFG).cuda(), data, DiffusionObjective(cosine_schedule(100)),
                   TrainConfig(steps=30, batch_size=16, bf16=False, fp16=True), show_progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
