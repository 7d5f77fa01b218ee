"""Training a DDPM (lesson 05): the loop, EMA of the weights, warm-up, clipping, budgets.

One step (Ho et al. 2020, Alg. 1): draw images x0, steps t ~ U{1..T} and noise eps; minimise
||eps - model(x_t, t)||^2. Around it, what the field has found to matter:

* an exponential moving average (EMA) of the weights, sampled from instead of the raw weights,
  with the warm-up decay_k = min(decay, (1 + k) / (10 + k)) so early averages forget the random
  initialisation quickly;
* a linear learning-rate warm-up, and clipping of the gradient's global norm;
* on a GPU: bfloat16 autocast, channels_last memory layout and, optionally, torch.compile;
* a budget in steps, in seconds of wall-clock time ("train for the 5 minutes we have"), or both;
* the loss recorded per range of t, and snapshots of the EMA weights along the way.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from diffuse_edu.forward_process import q_sample
from diffuse_edu.plotting import progress
from diffuse_edu.schedules import NoiseSchedule
from diffuse_edu.unet import Cond


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
    ema_decay: float = 0.999  # final EMA decay, reached through the warm-up
    bf16: bool = True  # bfloat16 autocast on CUDA (ignored on the CPU)
    channels_last: bool = True  # channels_last memory layout on CUDA (ignored on the CPU)
    compile: bool = False  # torch.compile the model for the training steps
    loss_buckets: int = 10  # ranges of t in which the training loss is recorded
    snapshots: int = 0  # EMA snapshots kept at evenly spaced points of the budget

    def __post_init__(self) -> None:
        if self.steps is None and self.seconds is None:
            raise ValueError("TrainConfig needs a budget: steps, seconds, or both.")


class EMA:
    """An exponential moving average of a model's weights, itself a model to sample from."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        return ema_decay_at(self.updates, self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_update(list(self.model.parameters()), [p.detach() for p in model.parameters()],
                   self.updates, self.decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)
        self.updates += 1


def ema_decay_at(updates: int, decay: float) -> float:
    """The decay after ``updates`` updates: min(decay, (1 + k) / (10 + k))."""
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def ema_update(ema: list[Tensor], current: list[Tensor], updates: int, decay: float) -> None:
    """In place: ema <- d * ema + (1 - d) * current, with d = ema_decay_at(updates, decay)."""
    d = ema_decay_at(updates, decay)
    torch._foreach_lerp_(ema, current, 1 - d)


@dataclass
class TrainResult:
    """What a training run produced and measured."""

    model: nn.Module  # the raw weights at the end
    ema: nn.Module  # the EMA weights: sample from these
    losses: list[float]  # the batch loss of every step
    bucket_edges: Tensor  # (buckets + 1,) bucket k covers t in (edges[k], edges[k + 1]]
    loss_by_bucket: Tensor  # (buckets,) mean training loss per range of t over the last 20% of steps
    steps: int
    seconds: float
    images_per_second: float
    snapshots: list[dict] = field(default_factory=list)  # {"step", "seconds", "weights"} (CPU)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to config.lr over config.warmup_steps, then constant."""
    return config.lr * min(1.0, (step + 1) / max(config.warmup_steps, 1))


def _prepare(model: nn.Module, data: Tensor, config: TrainConfig) -> tuple[nn.Module, Tensor, bool]:
    cuda = data.device.type == "cuda"
    if cuda and config.channels_last:
        model = model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last) if data.ndim == 4 else data
    step_model = torch.compile(model) if config.compile else model
    return step_model, data, cuda and config.bf16


def _budget_fraction(step: int, elapsed: float, config: TrainConfig) -> float:
    """How much of the budget is spent (the larger of the step and time shares)."""
    shares = []
    if config.steps is not None:
        shares.append(step / config.steps)
    if config.seconds is not None:
        shares.append(elapsed / config.seconds)
    return max(shares)


def train_step(step_model: Callable, opt: torch.optim.Optimizer, batch: tuple[Tensor, Tensor, Tensor],
               schedule: NoiseSchedule, config: TrainConfig, *, bf16: bool,
               cond: Cond | None = None) -> Tensor:
    """One optimiser step on (x0, t, eps); returns the per-image loss (B,), detached."""
    x0, t, eps = batch
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        pred = step_model(q_sample(x0, t, schedule, eps), t, cond)
    per_image = ((pred.float() - eps) ** 2).flatten(1).mean(1)  # (B,)
    opt.zero_grad(set_to_none=True)
    per_image.mean().backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(opt.param_groups[0]["params"], config.grad_clip)
    opt.step()
    return per_image.detach()


def train(model: nn.Module, data: Tensor, schedule: NoiseSchedule, config: TrainConfig, *,
          labels: Tensor | None = None, generator: torch.Generator | None = None,
          callback: Callable[[int, float, EMA], None] | None = None, callback_every: int = 0,
          desc: str = "training") -> TrainResult:
    """Train ``model`` on ``data`` (N, C, H, W), on the data's device, within ``config``'s budget.

    ``callback(step, seconds, ema)`` runs every ``callback_every`` steps (its time is not counted).
    ``generator`` must live on the data's device.
    """
    device = data.device
    step_model, data, bf16 = _prepare(model, data, config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = EMA(model, config.ema_decay)
    recorder = _LossRecorder(schedule.T, config.loss_buckets, device)
    snapshots, losses, step, spent, start = [], [], 0, 0.0, time.perf_counter()
    bar = progress(total=config.steps, desc=desc)
    while _budget_fraction(step, spent, config) < 1:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, config)
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator, device=device)
        t = torch.randint(1, schedule.T + 1, (config.batch_size,), generator=generator, device=device)
        eps = torch.randn(data[idx].shape, generator=generator, device=device)
        cond = Cond(labels=labels[idx]) if labels is not None else None
        per_image = train_step(step_model, opt, (data[idx], t, eps), schedule, config, bf16=bf16, cond=cond)
        ema.update(model)
        losses.append(per_image.mean())
        recorder.add(t, per_image, late=_budget_fraction(step, spent, config) >= 0.8)
        step += 1
        bar.update(1)
        if device.type == "cuda" and step % 25 == 0:
            torch.cuda.synchronize()  # keep the clock honest: kernels run asynchronously
        spent = time.perf_counter() - start
        if config.snapshots and _budget_fraction(step, spent, config) >= (len(snapshots) + 1) / config.snapshots:
            snapshots.append(dict(step=step, seconds=spent, weights=_cpu_state(ema.model)))
        if callback is not None and callback_every and step % callback_every == 0:
            paused = time.perf_counter()
            callback(step, spent, ema)
            start += time.perf_counter() - paused  # the callback's time is not training time
    bar.close()
    losses = torch.stack(losses).tolist()
    return TrainResult(model, ema.model, losses, recorder.edges, recorder.means(), step, spent,
                       step * config.batch_size / max(spent, 1e-9), snapshots)


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _LossRecorder:
    """Sums of the per-image training loss by range of t (only the late part of training)."""

    def __init__(self, T: int, buckets: int, device: torch.device):  # noqa: N803
        self.T, self.buckets = T, buckets
        self.edges = torch.linspace(0, T, buckets + 1).round().long()
        self.sums = torch.zeros(buckets, device=device)
        self.counts = torch.zeros(buckets, device=device)

    def add(self, t: Tensor, per_image: Tensor, *, late: bool) -> None:
        if not late:
            return
        k = torch.bucketize(t, self.edges.to(t.device)[1:-1], right=False)  # (B,) in 0..buckets-1
        self.sums.index_add_(0, k, per_image.float())
        self.counts.index_add_(0, k, torch.ones_like(per_image, dtype=torch.float))

    def means(self) -> Tensor:
        return (self.sums / self.counts.clamp_min(1)).cpu()
