"""The training loop (lesson 05), one for every objective, every model and every condition.

One step (Ho et al. 2020, Alg. 1, whatever the objective): draw a batch, let the objective draw
noise levels and noise and return the loss per example, step the optimiser. Around it, what the
field has found to matter:

* an exponential moving average (EMA) of the weights (:mod:`diffuse_edu.training.ema`);
* a linear learning-rate warm-up, and clipping of the gradient's global norm;
* condition dropout: a share of the examples trained with the null condition, so that one network
  learns p(x | c) and p(x) for classifier-free guidance (Ho & Salimans 2022, Alg. 1);
* a trainable-parameter filter (LoRA, lesson 13) that the optimiser, clipping and EMA respect;
* channels_last memory layout (on a GPU, and on CPUs with oneDNN); on a GPU also bfloat16
  autocast (float16 with a gradient scaler on GPUs without fast bfloat16, such as a T4), fused
  AdamW and, optionally, torch.compile, with its kernels replayed as CUDA graphs
  (mode "reduce-overhead": without them a small U-Net's GPU waits for the host to launch ~970
  kernels a step), and no host-device synchronisation inside a step;
* under torchrun, several GPUs (:mod:`diffuse_edu.training.distributed`): every rank draws the same
  global batch and trains on its share of it, so the run follows the one-process trajectory;
* a budget in steps, in seconds of wall-clock time ("train for the 5 minutes we have"), or both;
  the first step (which compiles, where asked) is timed apart and not charged to the budget;
* the loss recorded per range of noise levels, and snapshots of the EMA weights along the way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from diffuse_edu.config import explain_out_of_memory
from diffuse_edu.data.canvas import Buckets
from diffuse_edu.diffusion.denoisers import bf16_supported
from diffuse_edu.diffusion.objectives import DiffusionObjective, given_or_drawn
from diffuse_edu.diffusion.prediction import Target
from diffuse_edu.diffusion.schedules import NoiseSchedule
from diffuse_edu.evaluation.probes import bucket_edges
from diffuse_edu.models.conditioning import Cond, drop_condition
from diffuse_edu.progress import progress
from diffuse_edu.training import distributed
from diffuse_edu.training.ema import EMA, ema_update


@dataclass(frozen=True)
class TrainConfig:
    """How to train; saved with every checkpoint."""

    steps: int | None = 1_000  # stop after this many steps (None: the time budget alone)
    seconds: float | None = None  # stop after this much wall-clock time (None: the steps alone)
    batch_size: int = 64
    lr: float = 2e-3  # peak learning rate (AdamW)
    warmup_steps: int = 50  # linear learning-rate warm-up from 0 to lr
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0  # maximum global gradient norm (None: no clipping)
    ema_decay: float | None = 0.999  # final EMA decay, reached through the warm-up (None: no EMA)
    cond_dropout: float = 0.0  # share of examples trained with the null condition (guidance)
    bf16: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    fp16: bool = True  # on a CUDA GPU without bf16 (a T4), or with bf16 off: float16
    # autocast and a gradient scaler
    channels_last: bool = True  # channels_last memory layout on CUDA and on CPUs
    # with oneDNN (~10% faster)
    compile: bool | str = False  # torch.compile the model for the training steps; a string is the
    # mode ("reduce-overhead": its kernels replayed as CUDA graphs, one launch per step instead of
    # hundreds)
    compile_loss: bool = False  # with compile: compile the objective around the model, so that
    # noising, the target and the loss (and their gradients) fuse into the compiled graph instead of
    # running as separate elementwise kernels (one process only; not yet measured on a GPU: see
    # `bench`)
    loss_buckets: int = 10  # ranges of noise levels in which the training loss is recorded
    snapshots: int = 0  # EMA snapshots kept at evenly spaced points of the budget

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("TrainConfig needs a budget: steps, seconds, or both.")
        problems = [
            (self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1),
             ("steps must be a whole number of at least 1 (or None for a time budget alone), got "
              f"{self.steps!r}")),
            (self.seconds is not None and not 0 < self.seconds < float("inf"),
             ("seconds must be positive and finite (or None for a step budget alone), got "
              f"{self.seconds!r}")),
            (not isinstance(self.batch_size, int) or self.batch_size < 1,
             f"batch_size must be a whole number of at least 1, got {self.batch_size!r}"),
            (not self.lr > 0, f"lr must be positive, got {self.lr!r}"),
            (self.warmup_steps < 0, f"warmup_steps must be 0 or more, got {self.warmup_steps!r}"),
            (self.weight_decay < 0, f"weight_decay must be 0 or more, got {self.weight_decay!r}"),
            (self.grad_clip is not None and not self.grad_clip > 0,
             f"grad_clip must be positive (or None: no clipping), got {self.grad_clip!r}"),
            (self.ema_decay is not None and not 0 <= self.ema_decay < 1,
             f"ema_decay must lie in [0, 1) (or None: no EMA), got {self.ema_decay!r}"),
            (not 0 <= self.cond_dropout < 1,
             f"cond_dropout is a probability below 1, got {self.cond_dropout!r}"),
            (self.loss_buckets < 1, f"loss_buckets must be at least 1, got {self.loss_buckets!r}"),
            (self.snapshots < 0, f"snapshots must be 0 or more, got {self.snapshots!r}"),
        ]
        wrong = [message for bad, message in problems if bad]
        if wrong:
            raise ValueError("TrainConfig: " + "; ".join(wrong) + ".")


@dataclass
class TrainResult:
    """What a training run produced and measured."""

    model: nn.Module  # the raw weights at the end
    ema: nn.Module  # the EMA weights: sample from these (the raw model when there is no EMA)
    losses: list[float]  # the batch loss of every step
    grad_norms: list[float]  # the gradient's global norm of every step, before clipping
    bucket_edges: Tensor  # (buckets + 1,) bucket k covers noise levels in (edges[k], edges[k + 1]]
    loss_by_bucket: Tensor  # (buckets,) mean training loss per range over the last 20% of steps
    steps: int
    seconds: float  # training time, without the first step
    images_per_second: float  # over ``seconds``
    first_step_seconds: float = 0.0  # the first step alone (compilation, cuDNN set-up)
    snapshots: list[dict] = field(default_factory=list)  # {"step", "seconds", "weights"} (CPU)
    planned_steps: int | None = None  # the config's step budget (None: a time budget alone)

    @property
    def stopped_by_clock(self) -> bool:
        """The time limit ended a run planned in steps before it reached them (a loaded machine)."""
        return self.planned_steps is not None and self.steps < self.planned_steps

    def shortfall(self) -> dict | None:
        """What :data:`STOPPED_BY_CLOCK` records of this run, or None when it reached its plan."""
        return None if not self.stopped_by_clock else dict(
            steps=self.steps, planned_steps=self.planned_steps, seconds=round(self.seconds, 1))


#: The trainings of this process that the clock stopped before their planned steps, as {"desc",
#: "steps", "planned_steps", "seconds"}: the verdicts of ``course.report`` name them and the
#: headless runner writes them to ``metrics.json`` (it empties the list before each lesson).
STOPPED_BY_CLOCK: list[dict] = []


def shortfall_text() -> str:
    """One line naming this process's trainings stopped by the clock, or ''."""
    if not STOPPED_BY_CLOCK:
        return ""
    each = "; ".join(f"{r['desc']} at {r['steps']} of {r['planned_steps']} steps"
                     for r in STOPPED_BY_CLOCK)
    return (f"the clock stopped training short of its plan ({each}): these results come from "
            "undertrained models")


def record_training(desc: str, *, steps: int, planned_steps: int | None, seconds: float,
                    limit: float | None) -> None:
    """Note how a training of this process ended: a full run lifts an earlier warning for ``desc``
    (a learner running the cell again); a run the clock stopped short of ``planned_steps`` is
    recorded in :data:`STOPPED_BY_CLOCK` and warned about. The one place every training loop reports
    to."""
    STOPPED_BY_CLOCK[:] = [r for r in STOPPED_BY_CLOCK if r["desc"] != desc]
    if planned_steps is None or steps >= planned_steps:
        return
    STOPPED_BY_CLOCK.append(dict(desc=desc, steps=steps, planned_steps=planned_steps,
                                 seconds=round(seconds, 1)))
    print(f"Warning: {desc} stopped at {steps} of {planned_steps} steps, when its {limit:g} s ran "
          "out (a slow or busy machine?). Its results come from an undertrained model, and it is "
          "not cached for later lessons. Run the lesson alone, or raise the time limit, to train "
          "it fully.")


def smoke_training(config: TrainConfig) -> TrainConfig:
    """``config`` as a smoke run of the full scale trains (diffuse_edu.training.smoke): uncompiled;
    a run with a time budget or more than 2,000 steps stops after 2 steps (or one per snapshot),
    while a few steps a lesson counts on (its callbacks, its loss curves) stay. Applying it twice
    changes nothing more."""
    if config.seconds is None and config.steps is not None and config.steps <= 2_000:
        return replace(config, compile=False)
    steps = max(2, config.snapshots)
    return replace(config, steps=min(config.steps or steps, steps), seconds=None, compile=False,
                   warmup_steps=min(config.warmup_steps, 1))


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to config.lr over config.warmup_steps, then constant."""
    return config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))


def _budget_fraction(step: int, elapsed: float, config: TrainConfig) -> float:
    """How much of the budget is spent (the larger of the step and time shares)."""
    shares = []
    if config.steps is not None:
        shares.append(step / config.steps)
    if config.seconds is not None:
        shares.append(elapsed / config.seconds)
    return max(shares)


@dataclass(frozen=True)
class Precision:
    """How a training step computes: autocast to ``dtype`` (None: float32 throughout), and for
    float16 a gradient scaler (Micikevicius et al. 2018): float16's narrow range would flush small
    gradients to zero, so the loss is scaled up before the backward pass and the gradients down
    before clipping and the step, which the scaler skips (lowering the scale) when a gradient
    overflowed."""

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bfloat16 autocast",
                torch.float16: "float16 autocast with a gradient scaler",
                None: "float32"}[self.dtype]


def precision_dtype(config: TrainConfig, device: torch.device | str) -> torch.dtype | None:
    """The autocast type training uses on ``device``: bfloat16 where the GPU has it fast (Ampere and
    later) and ``config.bf16``; else float16 on any CUDA GPU with ``config.fp16`` (Colab's free T4
    has no fast bfloat16: float32 there is about 4x slower); else None, float32 (every CPU)."""
    device = torch.device(device)
    if config.bf16 and bf16_supported(device):
        return torch.bfloat16
    if config.fp16 and device.type == "cuda" and torch.cuda.is_available():
        return torch.float16
    return None


def train_step(step_model: Callable, opt: torch.optim.Optimizer, objective: Callable, x0: Tensor,
               config: TrainConfig, *, params: list[Tensor], bf16: bool, cond: Cond | None = None,
               generator: torch.Generator | None = None, t: Tensor | None = None,
               eps: Tensor | None = None,
               precision: Precision | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One optimiser step; returns (loss per example (B,), noise levels (B,), the gradient's global
    norm before clipping ()), all detached.

    ``t`` and ``eps`` are drawn by the objective unless given. ``precision`` (default: bfloat16
    autocast where ``bf16``, else float32) may autocast to float16 with a gradient scaler: the
    gradients are unscaled before they are measured and clipped. Without a scaler no value is read
    back from the device, so on a GPU the host can queue the next step at once (the scaler's check
    for overflow reads one).
    """
    precision = precision or Precision(torch.bfloat16 if bf16 else None)
    with torch.autocast(x0.device.type, dtype=precision.dtype or torch.bfloat16,
                        enabled=precision.dtype is not None):
        per_example, t = objective(step_model, x0, cond=cond, generator=generator, t=t, eps=eps)
    opt.zero_grad(set_to_none=True)
    scaler = precision.scaler
    (per_example.mean() if scaler is None else scaler.scale(per_example.mean())).backward()
    if scaler is not None:
        scaler.unscale_(opt)  # clipping and the reported norm see the true gradients
    # inf: measure, do not clip
    limit = config.grad_clip if config.grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, limit, foreach=True)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)  # skipped when a gradient is inf or NaN
        scaler.update()
    return per_example.detach(), t, grad_norm.detach()


def training_step(model: Callable, optimizer: torch.optim.Optimizer, x0: Tensor, t: Tensor,
                  eps: Tensor,
                  schedule: NoiseSchedule, grad_clip: float | None = None) -> tuple[Tensor, Tensor]:
    """One step of Algorithm 1 (Ho et al. 2020) with the v target (Salimans & Ho 2022), lesson 05.

    x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps; loss = |model(x_t, t) - v|^2 per example with
    v = sqrt(ab_t) eps - sqrt(1 - ab_t) x0; then zero the gradients, backpropagate the batch mean,
    clip the gradient's global norm at ``grad_clip`` (None: no clipping) and step the optimiser.
    Returns (the loss per example (B,), the global norm before clipping ()), both detached.

    Shapes: x0 (B, C, H, W), t (B,) integer steps, eps like x0.
    """
    per_example, _ = DiffusionObjective(schedule, Target.V)(model, x0, t=t, eps=eps)
    optimizer.zero_grad(set_to_none=True)
    per_example.mean().backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params,
                                          grad_clip if grad_clip is not None else float("inf"))
    optimizer.step()
    return per_example.detach(), norm.detach()


def as_step_fn(step: Callable) -> Callable:
    """A lesson-05 ``training_step(model, optimizer, x0, t, eps, schedule, grad_clip)`` as the
    loop's ``step_fn`` (the signature of :func:`train_step`), for a v-prediction objective. It
    autocasts to bfloat16 where the loop does; where the loop would use float16, it runs in float32
    (the learner's step steps the optimiser itself, so no gradient scaler can stand in between)."""
    def step_fn(step_model: Callable, opt: torch.optim.Optimizer, objective: Callable, x0: Tensor,
                config: TrainConfig, *, params: list[Tensor], bf16: bool, cond: Cond | None = None,
                generator: torch.Generator | None = None, t: Tensor | None = None,
                eps: Tensor | None = None,
                precision: Precision | None = None) -> tuple[Tensor, Tensor, Tensor]:
        # a learner's step calls optimizer.step() itself, so it cannot take a gradient scaler: under
        # float16 it runs in float32 (bfloat16 needs no scaler)
        if getattr(objective, "target", None) is not Target.V or cond is not None:
            raise ValueError("A lesson-05 training step trains an unconditional v-prediction "
                             "model: use it with DiffusionObjective(schedule, Target.V) and no "
                             "conditions.")
        if t is None or eps is None:
            t, eps = objective.draw(x0, generator)
        with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, norm = step(step_model, opt, x0, t, eps, objective.schedule, config.grad_clip)
        return loss.detach(), t, torch.as_tensor(norm).detach()
    return step_fn


def adamw(params: Iterable[Tensor], **kwargs) -> torch.optim.AdamW:
    """AdamW with its fused kernel where the parameters live on the CPU or a CUDA GPU: one kernel
    for all parameters instead of a dozen small ones per tensor, which matters because the small
    quick-scale networks spend much of a step in the optimiser. Other devices get PyTorch's default
    implementation."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point
                                 for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


def _setup(model: nn.Module, data: Tensor | Buckets, config: TrainConfig,
           trainable: Callable[[str], bool] | None) -> tuple[Callable, Tensor | Buckets,
                                                             list[Tensor], torch.optim.Optimizer]:
    """The model to step (laid out and compiled), the data, the trained parameters, the
    optimiser."""
    cuda = data.device.type == "cuda"
    images = isinstance(data, Buckets) or data.ndim == 4
    if config.channels_last and images and (cuda or torch.backends.mkldnn.is_available()):
        model = model.to(memory_format=torch.channels_last)
        if isinstance(data, Buckets):
            data = Buckets(tuple(s.contiguous(memory_format=torch.channels_last)
                                 for s in data.sets), data.seed)
        else:
            data = data.contiguous(memory_format=torch.channels_last)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or trainable(name))
        if p.requires_grad:
            params.append(p)
    if not params:
        raise ValueError("The trainable filter leaves no parameter to train.")
    opt = adamw(params, lr=config.lr, weight_decay=config.weight_decay)
    net = model
    if distributed.active():  # gradients averaged over the ranks; the weights start as rank 0's
        net = nn.parallel.DistributedDataParallel(model,
                                                  device_ids=[data.device.index] if cuda else None)
    if config.compile and not _loss_compiled(config):
        net = torch.compile(net, mode=compile_mode(config.compile, ddp=distributed.active()))
    return net, data, params, opt


def _loss_compiled(config: TrainConfig) -> bool:
    """Does this run compile the objective with the model inside (``compile_loss``)?"""
    return bool(config.compile) and config.compile_loss and not distributed.active()


class CompiledLoss:
    """An objective compiled together with the model it trains: ``objective(model, x0, ...)`` as one
    graph, so that mixing x0 with the noise, the target and the squared error fuse with the
    network's own kernels, forward and backward. Everything else (``draw``, ``target``,
    ``t_max``...) is the objective's. The noise levels and noise are drawn outside the graph (random
    draws stay eager).
    """

    def __init__(self, objective: Callable, model: nn.Module, mode: str | None):
        self.objective = objective
        self._loss = torch.compile(lambda x0, t, eps,
                                   cond: objective(model, x0, cond=cond, t=t, eps=eps)[0],
                                   mode=mode)

    def __getattr__(self, name: str):
        if name == "objective":  # not set yet (a copy being built): no endless lookup
            raise AttributeError(name)
        return getattr(self.objective, name)

    def __call__(self, model: Callable, x0: Tensor, *, cond: Cond | None = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(loss per example (B,), t (B,)), as the objective's; ``model`` is the one compiled in."""
        t, eps = given_or_drawn(self.objective.draw, x0, generator, t, eps)
        return self._loss(x0, t, eps, cond), t


#: torch.compile modes that replay the step as CUDA graphs.
GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(compile: bool | str, *, ddp: bool) -> str | None:
    """The torch.compile mode a training run uses for ``TrainConfig.compile``.

    Under DistributedDataParallel, CUDA graphs give way to plain compilation: compiled DDP replayed
    as CUDA graphs has known crashes in PyTorch, and no two-GPU test of the course has passed with
    it yet (the one-GPU recipes keep their graphs).
    """
    mode = compile if isinstance(compile, str) else None
    if ddp and mode in GRAPH_MODES:
        if distributed.is_main():
            print("Under torchrun the training step is compiled without CUDA graphs (mode "
                  f"{mode!r} -> default): DDP with CUDA graphs is not yet tested here.")
        return None
    return mode


def train(model: nn.Module, data: Tensor | Buckets, objective: Callable, config: TrainConfig, *,
          cond: Cond | None = None, null_cond: Cond | None = None,
          trainable: Callable[[str], bool] | None = None, generator: torch.Generator | None = None,
          callback: Callable[[int, float, EMA | None], None] | None = None, callback_every: int = 0,
          desc: str = "training", show_progress: bool = True, step_fn: Callable = train_step,
          ema_fn: Callable[..., None] = ema_update,
          drop_fn: Callable[..., Cond] = drop_condition) -> TrainResult:
    """Train ``model`` on ``data`` (N, ...) with ``objective``, on the data's device, within the
    budget.

    ``data`` may also be :class:`~diffuse_edu.data.canvas.Buckets` (images of several shapes, each
    batch from one: aspect-ratio bucketing, lesson 12).

    ``objective`` is one of :mod:`diffuse_edu.diffusion.objectives`. ``cond`` holds each example's
    condition (fields indexed like data); with ``config.cond_dropout`` > 0, ``null_cond`` replaces
    it for that share of examples. ``trainable(name)`` picks the parameters to train (default: all);
    the others are frozen. ``callback(step, seconds, ema)`` runs every ``callback_every`` steps (its
    time is not counted). ``step_fn`` (same signature as :func:`train_step`) and ``ema_fn`` (as
    :func:`ema_update`) are the optimiser step and the EMA update: the library's, or a learner's
    from lesson 05; ``drop_fn`` (as :func:`~diffuse_edu.models.conditioning.drop_condition`) the
    condition dropout (lesson 08). ``generator`` must live on the data's device. Under torchrun,
    give every rank the same seed: ``config.batch_size`` is the global batch, split between the
    ranks; rank 0 keeps the EMA, snapshots, progress bar and callback.
    """
    if config.cond_dropout and (cond is None or null_cond is None):
        raise ValueError("cond_dropout needs the examples' conditions (cond=) and the null "
                         "condition to put in their place (null_cond=Cond(labels=...)).")
    if isinstance(data, Buckets) and cond is not None:
        raise ValueError("Training on aspect-ratio buckets takes no conditions (the buckets hold "
                         "images only).")
    world = distributed.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} does not split evenly between {world} "
                         "ranks.")
    share = slice(distributed.rank() * config.batch_size // world,
                  (distributed.rank() + 1) * config.batch_size // world)
    was_training = model.training
    model.train()  # dropout and the like act while training, whatever mode the model came in
    target = getattr(objective, "target", None)
    if isinstance(target, Target):
        model.predicts = target.value  # samplers and checkpoints read the output as this
    try:
        with explain_out_of_memory("training", f"the batch size (now {config.batch_size}): "
                                   "TrainConfig(batch_size=...), or recipe.train"):
            return _train(model, data, objective, config, cond=cond, null_cond=null_cond,
                          trainable=trainable,
                          generator=generator, callback=callback, callback_every=callback_every,
                          desc=desc,
                          show_progress=show_progress, step_fn=step_fn, ema_fn=ema_fn,
                          drop_fn=drop_fn, share=share)
    finally:
        model.train(was_training)  # given back in the mode it came in


def _train(model: nn.Module, data: Tensor | Buckets, objective: Callable, config: TrainConfig, *,
           cond: Cond | None,
           null_cond: Cond | None, trainable: Callable[[str], bool] | None,
           generator: torch.Generator | None,
           callback: Callable | None, callback_every: int, desc: str, show_progress: bool,
           step_fn: Callable, ema_fn: Callable, drop_fn: Callable, share: slice) -> TrainResult:
    """The loop of :func:`train`, with the model in training mode."""
    device, world, main = data.device, distributed.world_size(), distributed.is_main()
    step_model, data, params, opt = _setup(model, data, config, trainable)
    if _loss_compiled(config):
        objective = CompiledLoss(objective, step_model, compile_mode(config.compile, ddp=False))
    dtype = precision_dtype(config, device)
    precision = Precision(dtype,
                          torch.amp.GradScaler(device.type) if dtype is torch.float16 else None)
    bf16 = dtype is torch.bfloat16
    graphs = device.type == "cuda" and bool(config.compile)  # any compiled mode may
    # replay CUDA graphs: mark steps
    ema = EMA(model, config.ema_decay, trainable=trainable,
              update_fn=ema_fn) if config.ema_decay is not None and main else None
    recorder = _LossRecorder(objective.t_max, config.loss_buckets, device)
    snapshots, losses, norms, step, spent, first = [], [], [], 0, 0.0, 0.0
    bar = progress(total=config.steps, desc=desc, disable=not (show_progress and main))
    start = time.perf_counter()
    while _budget_fraction(step, spent, config) < 1:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, config)
        if isinstance(data, Buckets):  # one bucket (one shape) per batch
            x0, batch_cond = data.draw(config.batch_size, generator), None
        else:
            idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator,
                                device=device)
            batch_cond = None if cond is None else cond.index(idx)
            if config.cond_dropout:
                batch_cond = drop_fn(batch_cond, null_cond, config.cond_dropout,
                                     generator=generator)
            x0 = data[idx]
        t, eps = objective.draw(x0, generator)  # the global batch, the same on every rank
        if world > 1:
            x0, t, eps = x0[share], t[share], eps[share]
            batch_cond = None if batch_cond is None else batch_cond.index(share)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new step: last step's
            # graph outputs are done with
        per_example, t, grad_norm = step_fn(step_model, opt, objective, x0, config, params=params,
                                            bf16=bf16,
                                               cond=batch_cond, t=t, eps=eps, precision=precision)
        norms.append(grad_norm)
        if ema is not None:
            ema.update(model)
        losses.append(distributed.mean_across_ranks(per_example.mean()))
        recorder.add(t, per_example, late=_budget_fraction(step, spent, config) >= 0.8)
        step += 1
        bar.update(1)
        if device.type == "cuda" and (step == 1 or step % 25 == 0):
            torch.cuda.synchronize()  # keep the clock honest: kernels run asynchronously
        if step == 1:  # compilation and set-up: timed apart, not charged to the budget
            first, start = time.perf_counter() - start, time.perf_counter()
        if world == 1 or step % 25 == 0:  # several ranks agree on rank 0's clock now and then
            spent = distributed.agreed_seconds(time.perf_counter() - start, device)
        if (config.snapshots and main and _budget_fraction(step, spent, config)
                >= (len(snapshots) + 1) / config.snapshots):
            snapshots.append(dict(step=step, seconds=spent,
                                  weights=_cpu_state(ema.model if ema else model)))
        if callback is not None and callback_every and step % callback_every == 0 and main:
            paused = time.perf_counter()
            callback(step, spent, ema)
            start += time.perf_counter() - paused  # the callback's time is not training time
    bar.close()
    timed = max(step - 1, 0) * config.batch_size
    result = TrainResult(model, ema.model if ema else model, torch.stack(losses).tolist(),
                         torch.stack(norms).float().tolist(), recorder.edges, recorder.means(),
                         step, spent,
                         timed / max(spent, 1e-9), first, snapshots, planned_steps=config.steps)
    if main:
        record_training(desc, steps=step, planned_steps=config.steps, seconds=spent,
                        limit=config.seconds)
    return result


@dataclass(frozen=True, eq=False)
class LossFnObjective(DiffusionObjective):
    """The eps objective computed by a lesson-02 ``loss_fn(model, x0, t, eps, schedule)`` (a batch
    mean), so that a learner's loss trains the model; every example reports that mean."""

    loss_fn: Callable | None = None

    def __call__(self, model: Callable, x0: Tensor, *, cond: object = None,
                 generator: torch.Generator | None = None, t: Tensor | None = None,
                 eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is not None:
            raise ValueError("A lesson-02 loss function takes no conditions.")
        if t is None or eps is None:
            t, eps = self.draw(x0, generator)
        return self.loss_fn(model, x0, t, eps, self.schedule).expand(x0.shape[0]), t


def train_denoiser(model: nn.Module, data: Tensor, schedule: NoiseSchedule, *, steps: int,
                   batch_size: int, lr: float = 1e-3, generator: torch.Generator | None = None,
                   labels: Tensor | None = None, show_progress: bool = True,
                   desc: str = "training", loss_fn: Callable | None = None) -> list[float]:
    """Plain AdamW (its default weight decay, 0.01) on the eps objective, no EMA, warm-up or
    clipping; returns each step's loss. ``loss_fn(model, x0, t, eps, schedule)`` (lesson 02's
    ``eps_loss``, or a learner's) computes the loss when given.

    The small experiments of lessons 02-04 use it; it is :func:`train` with those settings.
    """
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=0,
                         weight_decay=0.01, grad_clip=None, ema_decay=None, loss_buckets=1)
    objective = (DiffusionObjective(schedule) if loss_fn is None
                 else LossFnObjective(schedule, loss_fn=loss_fn))
    return train(model, data, objective, config, generator=generator,
                 cond=None if labels is None else Cond(labels=labels), desc=desc,
                 show_progress=show_progress).losses


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _LossRecorder:
    """Sums of the per-example training loss by range of noise level (late in training only)."""

    def __init__(self, t_max: float, buckets: int, device: torch.device):
        self.edges = bucket_edges(t_max, buckets)
        self._inner = self.edges[1:-1].to(device)  # on the device once: no copy per step
        self.sums = torch.zeros(buckets, device=device)
        self.counts = torch.zeros(buckets, device=device)

    def add(self, t: Tensor, per_example: Tensor, *, late: bool) -> None:
        if not late:
            return
        k = torch.bucketize(t, self._inner.to(t.dtype), right=False)  # (B,) in 0..buckets-1
        self.sums.index_add_(0, k, per_example.float())
        self.counts.index_add_(0, k, torch.ones_like(per_example, dtype=torch.float))

    def means(self) -> Tensor:
        return (self.sums / self.counts.clamp_min(1)).cpu()
