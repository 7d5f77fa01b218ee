"""How fast the course trains and samples on this machine: ``python -m diffuse_edu bench``.

Prints, for lesson 05's recipe at the chosen scale: training images per second and the TFLOP/s
they amount to (forward FLOPs x 3 for the forward and backward passes), the first step apart
(compilation, set-up); then seconds per 10,000 samples for each sampler, through the path the
lessons use (on a GPU: compiled, bfloat16) and, for DDIM, also eager float32. With ``--quality``
it trains the recipe for a while, draws samples both ways and compares their FID over seeds,
so that a faster path is seen not to change the samples. It is a benchmark, not a test: numbers
depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from diffuse_edu.config import CourseError, Scale, default_device, resolve_scale
from diffuse_edu.diffusion.samplers import (
    generate,
    sample_ddim,
    sample_dpmpp_2m,
    sample_euler,
    sample_heun,
)
from diffuse_edu.evaluation.profiling import count_flops
from diffuse_edu.models.unet import UNet
from diffuse_edu.training.loop import train
from diffuse_edu.training.recipes import Recipe, ddpm_recipe

#: sampler name -> (function, steps, network evaluations)
SAMPLERS: dict[str, tuple[Callable, int, int]] = {
    "ddim-50": (sample_ddim, 50, 50),
    "dpmpp_2m-20": (sample_dpmpp_2m, 20, 20),
    "euler-50": (sample_euler, 50, 50),
    "heun-25": (sample_heun, 25, 49),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    import os
    import platform

    return f"cpu: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def bench_training(recipe: Recipe, device: torch.device, *, steps: int, compile: bool | str,
                   batch_size: int | None = None, warmup_steps: int = 3, profile_steps: int = 0,
                   compile_loss: bool = False) -> dict:
    """Images/s of ``recipe``'s training step on random images of its shape (pixels do not matter).

    ``warmup_steps`` first (compilation, CUDA-graph capture, cuDNN's set-up), timed apart; then
    ``steps`` timed; then, with ``profile_steps``, that many more under the profiler (see
    :func:`kernel_breakdown`). ``compile`` is a bool or a ``torch.compile`` mode; ``compile_loss``
    compiles the objective around the model (``TrainConfig.compile_loss``).
    """
    images = torch.rand(4096, *recipe.image_shape,
                        generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    config = replace(recipe.train, steps=steps, seconds=None, snapshots=0, compile=compile,
                     compile_loss=compile_loss, batch_size=batch_size or recipe.train.batch_size)
    torch.manual_seed(0)
    model = UNet(recipe.model).to(device)
    forward_flops = count_flops(model, images[:1], torch.tensor([500], device=device))
    objective = recipe.objective(recipe.schedule())

    def run(n: int):
        return train(model, images, objective, replace(config, steps=n),
                     generator=torch.Generator(device).manual_seed(n), show_progress=False)

    start = time.perf_counter()
    run(warmup_steps)
    _sync(device)
    warmup = time.perf_counter() - start
    result = run(steps)
    row = dict(batch_size=config.batch_size, steps=result.steps, compile=compile,
               compile_loss=compile_loss, warmup_steps=warmup_steps,
               warmup_seconds=round(warmup, 2),
               images_per_second=round(result.images_per_second, 1),
               gflop_per_image_forward=round(forward_flops / 1e9, 3),
               tflops_achieved=round(result.images_per_second * 3 * forward_flops / 1e12, 2))
    if profile_steps:
        step_ms = 1e3 * config.batch_size / result.images_per_second
        row["profile"] = kernel_breakdown(lambda: run(profile_steps), device, steps=profile_steps,
                                          step_ms=step_ms)
    return row


def _compile_loss_arm(recipe: Recipe, device: torch.device, baseline: dict, *, compile: bool | str,
                      steps: int, profile_steps: int) -> dict:
    """The training benchmark with ``compile_loss`` (noising, target and loss inside the compiled
    graph), against ``baseline`` (the model compiled alone). Not yet the recipe's way: a failure
    here is reported as a row, so that the rest of the benchmark still runs."""
    try:
        row = bench_training(recipe, device, steps=steps, compile=compile,
                             batch_size=baseline["batch_size"], profile_steps=profile_steps,
                             compile_loss=True)
    except Exception as e:  # noqa: BLE001 (an experimental arm: its failure is a result)
        print(f"training, objective compiled in: failed ({type(e).__name__}: "
              f"{str(e).splitlines()[0][:200]})")
        return dict(error=f"{type(e).__name__}: {e}"[:2000])
    row["speedup_over_model_only"] = round(
        row["images_per_second"] / baseline["images_per_second"], 3)
    print(f"training  {row['images_per_second']:>9,.0f} images/s  {row['tflops_achieved']:>7.2f} "
          f"TFLOP/s  with the objective compiled in (x{row['speedup_over_model_only']} the model "
          "compiled alone"
          + (f"; {row['profile']['launches_per_step']} kernels a step"
             if profile_steps and row["profile"]["busy_fraction"]
             else "")
          + ")")
    return row


#: kernel name fragments -> what the kernel does, tried in order (cuDNN's convolutions are
#: named like sm90_xmma_fprop_implicit_gemm_..., Inductor's fused kernels triton_...)
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("optimiser, clipping, EMA", ("adam", "multi_tensor", "foreach", "lerp", "norm_kernel")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "cudnn", "winograd", "implicit")),
    ("fused elementwise / GroupNorm (Triton)", ("triton",)),
    ("matrix products", ("gemm", "cutlass", "cublas", "xmma", "matmul")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def kernel_breakdown(work: Callable[[], object], device: torch.device, *, steps: int,
                     step_ms: float) -> dict:
    """Where a training step's time goes: run ``work`` (``steps`` steps) under the profiler and sum
    the device time of its kernels (on the CPU: of its operators) per step and per kind. Compared
    with ``step_ms``, the unprofiled wall time of a step, it says whether the device is busy (the
    arithmetic is the limit) or waits for the host to launch work (overhead is the limit)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        work()
        _sync(device)
    rows = []
    for event in prof.key_averages():
        us = (getattr(event, "self_device_time_total", None)
              or getattr(event, "self_cuda_time_total", 0)) if cuda else event.self_cpu_time_total
        if us > 0 and (not cuda or str(getattr(event, "device_type", "")).endswith("CUDA")):
            rows.append((event.key, us / 1e3 / steps, event.count // steps))
    busy = sum(ms for _, ms, _ in rows)
    kinds: dict[str, float] = {}
    for name, ms, _ in rows:
        kind = kernel_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + ms
    top = sorted(rows, key=lambda r: -r[1])[:12]
    return dict(step_ms_wall=round(step_ms, 3), step_ms_busy=round(busy, 3),
                busy_fraction=round(busy / step_ms, 3) if cuda else None,
                launches_per_step=sum(n for _, _, n in rows) if cuda else None,
                by_kind_ms={k: round(v, 3)
                            for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                top=[dict(name=n[:90], ms_per_step=round(ms, 4), calls_per_step=c)
                     for n, ms, c in top])


def bench_sampling(model: torch.nn.Module, recipe: Recipe, device: torch.device, *, n: int,
                   batch_size: int, names: list[str], fast: bool) -> dict:
    """Seconds per 10,000 samples for each sampler; the first (compiling) batch is timed apart."""
    schedule = recipe.schedule()
    denoiser = recipe.denoiser(model.eval(), schedule, fast=fast)
    rows = {}
    for name in names:
        sampler, steps, nfe = SAMPLERS[name]
        g = torch.Generator(device).manual_seed(0)
        start = time.perf_counter()
        # warm-up: compiles on a GPU
        generate(sampler, denoiser, schedule, batch_size, recipe.image_shape, batch_size=batch_size,
                 generator=g, device=device, steps=steps, clip=1.0)
        _sync(device)
        warm = time.perf_counter() - start
        start = time.perf_counter()
        x = generate(sampler, denoiser, schedule, n, recipe.image_shape, batch_size=batch_size,
                     generator=g, device=device, steps=steps, clip=1.0)
        _sync(device)
        seconds = time.perf_counter() - start
        rows[name] = dict(nfe=nfe, samples=n, batch_size=batch_size, seconds=round(seconds, 3),
                          seconds_per_10k=round(seconds * 10_000 / n, 2),
                          warmup_seconds=round(warm, 2), finite=bool(torch.isfinite(x).all()))
    return rows


def sampling_levers(model: torch.nn.Module, recipe: Recipe, device: torch.device, *, n: int,
                    batch_size: int) -> dict:
    """DDIM-50 through the fast path with one thing changed at a time, beside the plain row (the
    aim: 10,000 samples in at most 5 s on an H100): the network's weights in channels_last layout
    (as training leaves a model; the plain row samples a fresh model in the default layout, as a
    loaded checkpoint is), and batches twice as large. Measured, not yet the library's way: a
    failure (out of memory, say) is a row, so that the rest of the benchmark still runs."""
    arms = {"ddim-50 channels_last weights": (
                copy.deepcopy(model).to(memory_format=torch.channels_last), batch_size),
            f"ddim-50 batch {2 * batch_size:,}": (model, 2 * batch_size)}
    rows = {}
    for name, (net, batch) in arms.items():
        try:
            rows[name] = bench_sampling(net, recipe, device, n=max(n, batch), batch_size=batch,
                                        names=["ddim-50"], fast=True)["ddim-50"]
        except Exception as e:  # noqa: BLE001 (an experimental arm: its failure is a result)
            print(f"sampling  {name}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            rows[name] = dict(batch_size=batch, error=f"{type(e).__name__}: {e}"[:2000])
    return rows


def bench_quality(recipe: Recipe, scale: Scale, device: torch.device, *, train_seconds: float,
                  n: int, seeds: int, batch_size: int) -> dict:
    """FID of DDIM-50 samples drawn eagerly in float32 and through the fast path, over seeds."""
    from diffuse_edu.data import course_images
    from diffuse_edu.evaluation.features import extract
    from diffuse_edu.evaluation.fid import fid
    from diffuse_edu.training.pretrained import course_classifier

    images = recipe.data().images.to(device)
    schedule = recipe.schedule()
    torch.manual_seed(0)
    result = train(UNet(recipe.model).to(device), images, recipe.objective(schedule),
                   replace(recipe.train, steps=None, seconds=train_seconds, snapshots=0),
                   generator=torch.Generator(device).manual_seed(0), show_progress=False)
    classifier = course_classifier(scale, device=device)
    reference = extract(classifier, course_images("test", scale).images.to(device))
    out = dict(train_seconds=round(result.seconds, 1), train_steps=result.steps, samples=n)
    for label, fast in (("eager_fp32", False), ("fast_path", True)):
        denoiser = recipe.denoiser(result.ema.eval(), schedule, fast=fast)
        fids = []
        for seed in range(seeds):
            x = generate(sample_ddim, denoiser, schedule, n, recipe.image_shape,
                         batch_size=batch_size, steps=50, clip=1.0,
                         generator=torch.Generator(device).manual_seed(100 + seed), device=device)
            fids.append(fid(extract(classifier, recipe.view(x.clamp(-1, 1))), reference))
        mean = sum(fids) / len(fids)
        spread = (sum((f - mean) ** 2 for f in fids) / max(len(fids) - 1, 1)) ** 0.5
        out[label] = dict(fid_per_seed=[round(f, 3) for f in fids], mean=round(mean, 3),
                          std=round(spread, 3))
    gap = abs(out["fast_path"]["mean"] - out["eager_fp32"]["mean"])
    within = max(out["fast_path"]["std"], out["eager_fp32"]["std"])
    out["verdict"] = ("unchanged (means within one seed std)" if gap <= within
                      else f"differs by {gap:.2f} FID, more than the seed std {within:.2f}")
    return out


def run(*, scale: Scale | None = None, train_steps: int | None = None, samples: int | None = None,
        sample_batch: int | None = None, samplers: list[str] | None = None,
        compile: bool | str | None = None, train_batch: int | None = None, profile: bool = False,
        quality: bool = False, quality_seconds: float | None = None,
        out: Path | None = None) -> dict:
    """Run the benchmark and print it; return (and with ``out``, write) the numbers as a dict."""
    samplers = [] if samplers == ["none"] else samplers
    unknown = [n for n in samplers or () if n not in SAMPLERS]
    if unknown:
        raise CourseError(f"Unknown sampler(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(SAMPLERS)}.")
    counts = dict(train_steps=train_steps, samples=samples, sample_batch=sample_batch,
                  train_batch=train_batch)
    wrong = [f"{k} = {v}" for k, v in counts.items()
             if v is not None and (not isinstance(v, int) or v < 1)]
    if wrong or (quality_seconds is not None and not quality_seconds > 0):
        raise CourseError("bench needs positive counts and seconds, got "
                          f"{', '.join(wrong) or quality_seconds}: leave an option out for its "
                          "default.")
    scale = resolve_scale(scale)
    device = default_device()
    recipe = ddpm_recipe(scale)
    quick = scale is Scale.QUICK
    if compile is None:  # the recipe's way on a GPU (at least torch.compile), eager on the CPU
        compile = (recipe.train.compile or True) if device.type == "cuda" else False
    report = dict(device=device_label(device), scale=scale.value, recipe=recipe.name,
                  torch=torch.__version__, when=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print(f"diffuse-edu bench: {report['device']}, {scale.value} scale ({recipe.name}), torch "
          f"{torch.__version__}")
    profile_steps = (5 if quick else 20) if profile else 0
    report["training"] = bench_training(recipe, device,
                                        steps=(30 if quick else 300) if train_steps is None
                                        else train_steps, compile=compile,
                                        batch_size=train_batch, profile_steps=profile_steps)
    t = report["training"]
    how = "" if not compile else f", compiled{'' if compile is True else ' ' + compile}"
    print(f"training  {t['images_per_second']:>9,.0f} images/s  {t['tflops_achieved']:>7.2f} "
          f"TFLOP/s  (batch {t['batch_size']}, {t['gflop_per_image_forward']} GFLOP/image "
          f"forward; first {t['warmup_steps']} steps {t['warmup_seconds']} s{how})")
    if profile:
        p = t["profile"]
        unit = "device" if device.type == "cuda" else "CPU operator"
        print(f"profile   a step: {p['step_ms_wall']:.2f} ms wall, {p['step_ms_busy']:.2f} ms of "
              f"{unit} time"
              + (f" ({p['busy_fraction']:.0%} busy, {p['launches_per_step']} kernels)"
                 if p["busy_fraction"] else ""))
        for kind, ms in p["by_kind_ms"].items():
            print(f"          {ms:8.3f} ms  {kind}")
        for row in p["top"]:
            print(f"          {row['ms_per_step']:8.3f} ms  x{row['calls_per_step']:<4} "
                  f"{row['name']}")
    if compile:
        # the next lever, measured beside the recipe's way: the objective compiled with the model
        report["training_compile_loss"] = _compile_loss_arm(recipe, device, t, compile=compile,
                                                            steps=t["steps"],
                                                            profile_steps=profile_steps)
    torch.manual_seed(0)
    model = UNet(recipe.model).to(device)
    n = (64 if quick else 10_000) if samples is None else samples
    batch = (64 if quick else 2_500) if sample_batch is None else sample_batch
    names = list(SAMPLERS) if samplers is None else samplers
    report["sampling"] = bench_sampling(model, recipe, device, n=n, batch_size=batch, names=names,
                                        fast=True)
    if device.type == "cuda" and "ddim-50" in names:
        eager = bench_sampling(model, recipe, device, n=min(n, 2_000), batch_size=min(batch, 1_000),
                               names=["ddim-50"], fast=False)
        report["sampling"]["ddim-50 eager fp32"] = eager["ddim-50"]
        for name, row in sampling_levers(model, recipe, device, n=n, batch_size=batch).items():
            report.setdefault("sampling_failed" if "error" in row else "sampling", {})[name] = row
    for name, row in report["sampling"].items():
        print(f"sampling  {name:<20} {row['seconds_per_10k']:>8.2f} s per 10,000 samples  "
              f"({row['nfe']} NFE, batch {row['batch_size']}, warm-up {row['warmup_seconds']} s)")
    if quality:
        report["quality"] = bench_quality(recipe, scale, device,
                                          train_seconds=(20 if quick else 60)
                                          if quality_seconds is None else quality_seconds,
                                          n=256 if quick else 2_000, seeds=3, batch_size=batch)
        q = report["quality"]
        print(f"quality   DDIM-50 FID eager fp32 {q['eager_fp32']['mean']:.2f} +- "
              f"{q['eager_fp32']['std']:.2f}, fast path {q['fast_path']['mean']:.2f} +- "
              f"{q['fast_path']['std']:.2f}: {q['verdict']}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return report
