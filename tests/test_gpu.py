"""Checks that need CUDA (skipped elsewhere): no host-device sync in a training step or a sampler
step (torch.cuda.set_sync_debug_mode("error") turns any sync into an error), and the fast path."""

import pytest
import torch

from diffuse_edu.diffusion.denoisers import Denoiser
from diffuse_edu.diffusion.objectives import DiffusionObjective, FlowMatching
from diffuse_edu.diffusion.prediction import Target
from diffuse_edu.diffusion.samplers import sample_ddim, sample_dpmpp_2m, sample_euler, sample_heun
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.conditioning import Cond, drop_condition
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.ema import EMA
from diffuse_edu.training.loop import TrainConfig, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CFG = UNetConfig(channels=(16, 32), attention_levels=(1,), num_classes=10)


class SyncError:
    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("objective", [DiffusionObjective(cosine_schedule(1000)),
                                       DiffusionObjective(cosine_schedule(1000), Target.V,
                                                          continuous=True),
                                       FlowMatching()])
def test_a_training_step_does_not_sync(objective):
    device = torch.device("cuda")
    model = UNet(CFG).to(device).to(memory_format=torch.channels_last)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    ema = EMA(model, 0.999)
    x0 = torch.randn(8, 1, 16, 16, device=device)
    g = torch.Generator(device).manual_seed(0)
    cond = drop_condition(Cond(labels=torch.arange(8, device=device)),
                          Cond(labels=torch.tensor(10, device=device)), 0.1, generator=g)
    config = TrainConfig(steps=1, grad_clip=1.0)
    # warm-up
    train_step(model, opt, objective, x0, config, params=params, bf16=True, cond=cond, generator=g)
    with SyncError():
        for _ in range(2):
            train_step(model, opt, objective, x0, config, params=params, bf16=True, cond=cond,
                       generator=g)
            ema.update(model)


@pytest.mark.parametrize("sampler", [sample_ddim, sample_euler, sample_heun, sample_dpmpp_2m])
def test_a_sampler_does_not_sync(sampler):
    device = torch.device("cuda")
    model = UNet(CFG).to(device).eval()
    schedule = cosine_schedule(1000)
    denoiser = Denoiser(model, schedule, fast=False)
    x = torch.randn(4, 1, 16, 16, device=device)
    sampler(denoiser, x, schedule, steps=3, clip=1.0)  # warm-up (the schedule's tables move once)
    with SyncError():
        out = sampler(denoiser, x, schedule, steps=3, clip=1.0)
    assert out.shape == x.shape


def test_the_fast_path_agrees_with_float32():
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = UNet(CFG).to(device).eval()
    schedule = cosine_schedule(1000)
    x = torch.randn(16, 1, 16, 16, device=device, generator=torch.Generator(device).manual_seed(0))
    slow = sample_ddim(Denoiser(model, schedule, fast=False), x, schedule, steps=10, clip=1.0)
    fast = sample_ddim(Denoiser(model, schedule), x, schedule, steps=10, clip=1.0)
    assert fast.dtype == torch.float32 and (fast - slow).abs().mean() < 0.05


def test_training_with_cuda_graphs_follows_the_compiled_run():
    """The full recipes train through CUDA graphs: condition dropout, the EMA, snapshots and a
    callback that samples from the EMA weights all work, and the run follows compiled training."""
    from dataclasses import replace

    from diffuse_edu.training.loop import train

    device = torch.device("cuda")
    data = torch.rand(64, 1, 16, 16, device=device) * 2 - 1
    labels = torch.arange(64, device=device) % 10
    objective = DiffusionObjective(cosine_schedule(1000), Target.V)
    config = TrainConfig(steps=12, batch_size=16, ema_decay=0.9, cond_dropout=0.2, snapshots=2,
                         compile=True)
    seen = []

    def run(mode):
        torch.manual_seed(0)
        return train(UNet(CFG).to(device), data, objective, replace(config, compile=mode),
                     cond=Cond(labels=labels),
                     null_cond=Cond(labels=torch.tensor(10, device=device)),
                     generator=torch.Generator(device).manual_seed(0), show_progress=False,
                     callback_every=5,
                     callback=lambda step, s, ema: seen.append(
                         ema.model(data[:2], torch.tensor([5, 9], device=device),
                                   Cond(labels=labels[:2])).isfinite().all().item()))

    plain, graphs = run(True), run("reduce-overhead")
    assert graphs.steps == 12 and len(graphs.snapshots) == 2 and seen == [True] * 4
    assert abs(graphs.losses[0] - plain.losses[0]) < 1e-2 * plain.losses[0]
    assert torch.tensor(graphs.losses).isfinite().all()


def test_the_objective_compiled_in_trains_like_the_model_compiled_alone():
    """compile_loss (the objective and the model as one graph) replayed as CUDA graphs, with
    condition dropout and the EMA, follows training with the model compiled alone."""
    from dataclasses import replace

    from diffuse_edu.training.loop import train

    device = torch.device("cuda")
    data = torch.rand(64, 1, 16, 16, device=device) * 2 - 1
    labels = torch.arange(64, device=device) % 10
    objective = DiffusionObjective(cosine_schedule(1000), Target.V)
    config = TrainConfig(steps=12, batch_size=16, ema_decay=0.9, cond_dropout=0.2,
                         compile="reduce-overhead")

    def run(**how):
        torch.manual_seed(0)
        return train(UNet(CFG).to(device), data, objective, replace(config, **how),
                     cond=Cond(labels=labels),
                     null_cond=Cond(labels=torch.tensor(10, device=device)),
                     generator=torch.Generator(device).manual_seed(0), show_progress=False)

    alone, fused = run(), run(compile_loss=True)
    assert fused.steps == 12 and torch.tensor(fused.losses).isfinite().all()
    assert abs(fused.losses[0] - alone.losses[0]) < 1e-2 * alone.losses[0]
