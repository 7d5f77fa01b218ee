"""The standard stack as a baseline (lesson 05, full scale): diffusers' UNet2DModel + DDPMScheduler.

The same images, the same wall-clock budget and the same DDIM-50 sampling as the course's model,
scored with the same FID features, so that the comparison is about the model and its training.
diffusers is needed only here (``pip install diffusers``).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse_edu.diffusion.denoisers import bf16_supported
from diffuse_edu.progress import progress


def diffusers_unet(sample_size: int, channels: int, widths: tuple[int, ...],
                   layers_per_block: int) -> nn.Module:
    """A UNet2DModel as diffusers' unconditional training example builds it (attention at the
    bottom)."""
    from diffusers import UNet2DModel

    down = ["DownBlock2D"] * (len(widths) - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (len(widths) - 1)
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=widths, layers_per_block=layers_per_block,
                       down_block_types=tuple(down), up_block_types=tuple(up),
                       norm_num_groups=min(32, *widths))  # diffusers' 32 groups,
                       # or fewer for narrow widths


def train_diffusers(unet: nn.Module, images: Tensor, *, seconds: float, batch_size: int,
                    lr: float = 1e-4,
                    bf16: bool = True, generator: torch.Generator | None = None) -> dict:
    """Train with DDPMScheduler.add_noise and AdamW for ``seconds`` of wall time (no EMA, no
    compile), under bfloat16 autocast where ``bf16`` and the device has it fast (the check the
    course's training uses, :func:`~diffuse_edu.diffusion.denoisers.bf16_supported`), else in
    float32. The result says which (``precision``)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    device = images.device
    autocast = bf16 and bf16_supported(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    steps, start, spent = 0, time.perf_counter(), 0.0
    bar = progress(desc="diffusers baseline")
    while spent < seconds:
        idx = torch.randint(0, len(images), (batch_size,), generator=generator, device=device)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = torch.randint(0, 1000, (batch_size,), generator=generator, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            pred = unet(scheduler.add_noise(x0, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        bar.update(1)
        if device.type == "cuda" and steps % 25 == 0:
            torch.cuda.synchronize()
        spent = time.perf_counter() - start
    bar.close()
    return dict(steps=steps, seconds=spent, images_per_second=steps * batch_size / spent,
                precision="bfloat16 autocast" if autocast else "float32")


@torch.no_grad()
def sample_diffusers(unet: nn.Module, n: int, shape: tuple[int, ...], *, steps: int = 50,
                     batch_size: int = 1000, generator: torch.Generator | None = None) -> Tensor:
    """n samples with diffusers' DDIMScheduler (eta = 0) in ``steps`` steps, clipped to [-1, 1]."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(steps)
    device = next(unet.parameters()).device
    out = []
    for start in range(0, n, batch_size):
        x = torch.randn((min(batch_size, n - start), *shape), generator=generator, device=device)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def compare_with_diffusers(result, samples: Tensor, images: Tensor, recipe, *,
                           classifier: nn.Module, reference: Tensor, device: torch.device) -> dict:
    """Train the baseline for the course model's wall time and score both with FID.

    ``classifier`` gives the features; ``reference`` are the held-out images FID compares with.
    """
    from diffuse_edu.evaluation.features import extract
    from diffuse_edu.evaluation.fid import fid
    from diffuse_edu.evaluation.profiling import count_flops

    c, h = images.shape[1], images.shape[-1]
    torch.manual_seed(0)
    unet = diffusers_unet(h, c, recipe.model.channels, recipe.model.blocks_per_level).to(device)
    g = torch.Generator(device).manual_seed(1)
    base = train_diffusers(unet, images, seconds=result.seconds, batch_size=recipe.train.batch_size,
                           generator=g)
    base_samples = sample_diffusers(unet.eval(), len(samples), (c, h, h), steps=50, generator=g)
    ref = extract(classifier, reference.to(device))
    one = images[:1]
    ours_flops = count_flops(result.ema, one, torch.tensor([500], device=device))
    base_flops = count_flops(lambda x, t: unet(x, t).sample, one,
                             torch.tensor([500], device=device))
    ours_fid, base_fid = fid(extract(classifier, samples),
                             ref), fid(extract(classifier, base_samples), ref)
    return {
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "train_seconds_ours": result.seconds, "train_seconds_diffusers": base["seconds"],
        "precision_diffusers": base["precision"],
        "images_per_second_ours": result.images_per_second,
            "images_per_second_diffusers": base["images_per_second"],
        "gflops_per_image_ours": ours_flops / 1e9, "gflops_per_image_diffusers": base_flops / 1e9,
        "fid_ours": ours_fid, "fid_diffusers": base_fid,
            "fid_ratio_diffusers_over_ours": base_fid / ours_fid,
    }
