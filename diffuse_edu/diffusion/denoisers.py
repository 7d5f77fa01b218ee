"""One view of every trained network: D(x; sigma, cond) -> x0_hat (lesson 07; Karras et al. 2022).

Karras et al. (2022, Sec. 2 and Table 1) write every diffusion model as a denoiser D of the variable
x = x0 + sigma eps. A network trained on Ho et al.'s x_t = sqrt(ab) x0 + sqrt(1 - ab) eps sees x_t =
x sqrt(ab) with ab = 1 / (1 + sigma^2), at the (fractional) step t whose noise level is sigma; a
rectified-flow network (Liu et al. 2023) sees x_tau = (1 - tau) x0 + tau eps = x / (1 + sigma) at
the flow time tau = sigma / (1 + sigma). Whatever it predicts (eps, x0, v or the flow velocity eps -
x0), the adapter turns it into x0_hat, so that every sampler runs every model.

A network says what it predicts with a ``predicts`` attribute (``"eps"``, ``"x0"``, ``"v"`` or
``"flow"``): :func:`diffuse_edu.training.loop.train` sets it from the objective, and a checkpoint
records it and sets it again when the model is rebuilt. :func:`as_denoiser` reads it, so a
v-prediction network handed to a sampler is read as one; a network that does not say is read as
an eps-prediction network (Ho et al.'s default), with a warning, once per network, that names the
fix (its samples are wrong if it predicts anything else).

On a GPU the adapter runs the network compiled and, where the GPU supports it, in bfloat16 (the
fast path: the same weights, about four times faster); on the CPU it calls the network as it is.
"""

from __future__ import annotations

import functools
import sys
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from diffuse_edu.diffusion.prediction import (
    Target,
    as_target,
    eps_to_x0,
    to_x0,
    v_to_eps,
    x0_to_eps,
)
from diffuse_edu.diffusion.schedules import NoiseSchedule


@dataclass(frozen=True, eq=False)
class Prediction:
    """A denoiser's two estimates at one step. Shapes: both like x_t."""

    x0: Tensor  # x0_hat, the clean image
    eps: Tensor  # eps_hat, the noise in x_t


@dataclass(frozen=True, eq=False)
class Denoiser:
    """D(x; sigma, cond) -> x0_hat for a network ``model(x_in, t_in, cond)`` trained for ``target``.

    Shapes: x (B, ...) -> like x.
    """

    model: Callable  # the trained network
    schedule: NoiseSchedule | None = None  # the schedule it was trained on (None for Target.FLOW)
    target: Target = Target.EPS  # what it predicts
    clip: float | None = None  # clamp x0_hat to [-clip, clip] ("static thresholding")
    time_scale: float = 1000.0  # Target.FLOW only: the network sees t = tau * time_scale
    fast: bool = True  # on a GPU, run the network compiled and in bfloat16

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", as_target(self.target))
        if self.schedule is None and self.target is not Target.FLOW:
            raise ValueError(f"A {self.target.value}-prediction model needs the schedule it was "
                             "trained on: Denoiser(model, schedule, target=...).")

    def network(self, x: Tensor) -> Callable:
        """The network to call on ``x``: the fast path on a GPU (when ``fast``), else the model."""
        if self.fast and x.is_cuda and isinstance(self.model, nn.Module):
            return fast_path(self.model)
        return self.model

    def __call__(self, x: Tensor, sigma: float | Tensor, cond: object = None) -> Tensor:
        """x0_hat from x = x0 + sigma eps (Karras et al. 2022, Eq. 2 with s = 1).

        ``sigma`` is one noise level for the batch (a float, or a 0-d or (1,) tensor, as EDM and
        k-diffusion accept) or one per example (a tensor (B,), as EDM-style training draws them).
        Shapes: x (B, ...) -> like x.
        """
        net, b = self.network(x), x.shape[0]
        if isinstance(sigma, Tensor):
            if sigma.numel() not in (1, b):
                raise ValueError(f"sigma must be one noise level or one per example ({b}), got "
                                 f"shape {tuple(sigma.shape)}.")
            sigma = sigma.reshape(-1).expand(b)  # (B,)
            sig = sigma.to(x.dtype).reshape((b,) + (1,) * (x.ndim - 1))  # (B, 1, ..., 1)
        else:
            sig = float(sigma)
        if self.target is Target.FLOW:
            tau = sig / (1.0 + sig)
            x_tau = x / (1.0 + sig)
            tau_in = tau.reshape(b) if isinstance(tau, Tensor) else torch.full((b,), tau,
                                                                               device=x.device,
                                                                               dtype=x.dtype)
            return self._clip(x_tau - tau * net(x_tau, tau_in * self.time_scale, cond))
        alpha_bar = 1.0 / (1.0 + sig**2)
        x_t = x * alpha_bar**0.5
        if isinstance(sigma, Tensor):
            t = self.schedule.t_at_sigma(sigma.to(x.device)).to(x.dtype)  # (B,), on the device
        else:
            t = torch.full((b,), self.schedule.t_at_sigma(sig).item(), device=x.device,
                           dtype=x.dtype)
        return self._clip(to_x0(net(x_t, t, cond), self.target, x_t, alpha_bar))

    def at_step(self, x_t: Tensor, t: int, cond: object = None, *,
                schedule: NoiseSchedule | None = None) -> Prediction:
        """Both estimates from x_t at an integer step t (DDIM and DDPM use this).

        ``schedule`` is the sampler's (default: the model's own). A flow model has none of its own
        and is evaluated at the noise level of step t of the sampler's; any other model must be
        sampled on the schedule it was trained on (:func:`as_denoiser` checks).
        The estimates never divide by sqrt(alpha_bar_t) unless the model predicts eps, so a v- or
        x0-model is exact at t = T of a zero-terminal-SNR schedule, where that is 0.
        """
        schedule = schedule or self.schedule
        if schedule is None:
            raise ValueError("A flow model has no integer steps of its own: give the sampler a "
                             "schedule (any, e.g. cosine_schedule(1000), sets the grid), or use "
                             "sample_flow_euler.")
        ab = schedule.alpha_bar[t].item()  # a CPU table: no device sync
        if self.target is Target.FLOW:
            if ab == 0:  # sigma = inf: the flow's tau = 1, where x_1 is the noise itself
                x0_hat = self._flow_at_pure_noise(x_t, cond)
            else:
                x0_hat = self(x_t / ab**0.5, float(schedule.sigma[t]), cond)
            return Prediction(x0_hat, x0_to_eps(x_t, x0_hat, ab))
        pred = self.network(x_t)(x_t, torch.full((x_t.shape[0],), t, device=x_t.device), cond)
        if self.target is Target.EPS:
            if ab == 0:
                raise ValueError(f"An eps-prediction model cannot be sampled from step {t}: "
                                 "alpha_bar_t = 0 (zero terminal SNR) and x0_hat = (x_t - "
                                 "eps_hat) / sqrt(alpha_bar_t) is undefined. Train a v-prediction "
                                 "model (Lin et al. 2024, Sec. 3.2), or start below T (t_max=).")
            if self.clip is None:
                return Prediction(eps_to_x0(x_t, pred, ab), pred)
        x0_hat = self._clip(to_x0(pred, self.target, x_t, ab))
        if self.target is Target.V and self.clip is None:
            return Prediction(x0_hat, v_to_eps(x_t, pred, ab))  # no division at all
        return Prediction(x0_hat, x0_to_eps(x_t, x0_hat, ab))

    def _flow_at_pure_noise(self, x_t: Tensor, cond: object) -> Tensor:
        """x0_hat of a flow model at tau = 1 (pure noise): x_1 = eps, so x0_hat = x_1 - velocity."""
        tau = torch.ones(x_t.shape[0], device=x_t.device, dtype=x_t.dtype)
        return self._clip(x_t - self.network(x_t)(x_t, tau * self.time_scale, cond))

    def _clip(self, x0_hat: Tensor) -> Tensor:
        return x0_hat if self.clip is None else x0_hat.clamp(-self.clip, self.clip)


def declared_target(model: Callable) -> Target | None:
    """What ``model`` says it predicts (its ``predicts`` attribute), or None when it does not
    say."""
    value = getattr(model, "predicts", None)
    return None if value is None else as_target(value)


#: The networks already warned about not declaring what they predict (each is warned once).
_UNDECLARED_WARNED: weakref.WeakSet = weakref.WeakSet()


class UndeclaredTargetWarning(UserWarning):
    """A network that does not declare what it predicts was read as an eps-prediction network."""


def warn_undeclared(model: Callable) -> None:
    """Warn, once per network, that ``model`` declares nothing and is read as predicting eps. The
    warning points at the first caller outside diffuse_edu and torch (the learner's line)."""
    try:
        if model in _UNDECLARED_WARNED:
            return
        _UNDECLARED_WARNED.add(model)
    except TypeError:  # not weakly referenceable: warned each time (the warnings filter may merge)
        pass
    frame, level = sys._getframe(0), 1
    while frame is not None and _package(frame) in ("diffuse_edu", "torch"):
        frame, level = frame.f_back, level + 1
    said = (f"The network given to the sampler ({type(model).__name__}) does not declare what it "
            "predicts, so its output is read as eps, the noise; if it predicts anything else, the "
            "samples are wrong. Say what it predicts: model.predicts = 'eps' (or 'v', 'x0', "
            "'flow'). train() and Checkpoint.build() set it for you.")
    warnings.warn(said, UndeclaredTargetWarning, stacklevel=level)


def _package(frame) -> str:
    """The top-level package of the code running in ``frame``."""
    return frame.f_globals.get("__name__", "").partition(".")[0]


def as_denoiser(model: Callable, schedule: NoiseSchedule | None, *,
                clip: float | None = None) -> Denoiser:
    """``model`` as the :class:`Denoiser` a sampler on ``schedule`` runs.

    A :class:`Denoiser` is kept, and must have been trained on ``schedule`` (a flow model fits any);
    a plain network is read as what it declares it predicts (``model.predicts``; see the module's
    docstring), or as an eps-prediction network when it declares nothing (warned about once per
    network: :func:`warn_undeclared`). ``clip`` (when given) replaces the denoiser's own.
    """
    if isinstance(model, Denoiser):
        d = model
        fits_any = d.target is Target.FLOW or d.schedule is None or schedule is None
        if not fits_any and not d.schedule.same_as(schedule):
            raise ValueError(f"The denoiser was trained on the {d.schedule.name!r} schedule but "
                             f"the sampler was given {schedule.name!r}: pass the model's own "
                             "schedule (e.g. checkpoint.schedule), since one would silently "
                             "override the other.")
    else:
        own = getattr(model, "schedule", None)  # a network built from a
        # checkpoint knows its schedule
        if isinstance(own,
                      NoiseSchedule) and declared_target(model) is not Target.FLOW:
            # a flow fits any
            if schedule is not None and not own.same_as(schedule):
                raise ValueError(f"The network was trained on the {own.name!r} schedule but the "
                                 f"sampler was given {schedule.name!r}: pass its own schedule (or "
                                 "none: it is taken from the network).")
            schedule = own
        declared = declared_target(model)
        target = declared or Target.EPS
        if target is Target.FLOW:
            d = Denoiser(model, None, target)
        elif schedule is None and declared is None:
            raise ValueError("This network does not declare what it predicts (model.predicts) and "
                             "the sampler got no schedule: a flow network needs model.predicts = "
                             "'flow' (or Denoiser(net, None, Target.FLOW)); an eps, x0 or v "
                             "network needs the schedule it was trained on.")
        elif schedule is None:
            raise ValueError(f"A {target.value}-prediction network needs the schedule it was "
                             "trained on: pass it to the sampler.")
        else:
            if declared is None:
                warn_undeclared(model)
            d = Denoiser(model, schedule, target)
    if clip is not None and clip != d.clip:
        d = replace(d, clip=clip)
    return d


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bfloat16 autocast pays on ``device``: a CUDA GPU that supports it (Ampere and later).

    The one check behind the training loop's autocast, the fast path and ``doctor``'s report.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return _cuda_bf16(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_bf16(index: int) -> bool:
    with torch.cuda.device(index):
        return torch.cuda.is_bf16_supported()


class _FastEntry:
    """A model's fast path, kept on the model itself (so it goes when the model goes), with a weak
    reference to its owner: a deep copy of the model (an EMA) carries an entry that is not its own
    and builds its own. Copies and pickles of the entry are empty."""

    __slots__ = ("owner", "run")

    def __init__(self, owner: weakref.ref | None = None, run: Callable | None = None):
        self.owner, self.run = owner, run

    def __reduce__(self):
        return (_FastEntry, ())


def fast_path(model: nn.Module, *, compile: bool = True) -> Callable:
    """``model`` compiled (torch.compile) and, where supported, run under bfloat16 autocast,
    returning float32.

    Made once per model and kept on it; the weights are shared, so an EMA model that keeps training
    is sampled with its current weights. Use on CUDA; the CPU gains nothing from it.
    """
    entry = model.__dict__.get("_fast_path")
    if entry is not None and entry.owner is not None and entry.owner() is model:
        return entry.run
    net = torch.compile(model, dynamic=False) if compile else model

    def run(x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16_supported(x.device)):
            return net(x, t, cond).float()

    model.__dict__["_fast_path"] = _FastEntry(weakref.ref(model), run)
    return run
