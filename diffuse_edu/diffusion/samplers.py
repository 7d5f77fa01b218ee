"""Samplers: small pure functions with one signature (lesson 07).

    sample_xxx(model, x, schedule, *, steps, generator=None, callback=None, cond=None, clip=None)

``model`` is a :class:`~diffuse_edu.diffusion.denoisers.Denoiser` (any prediction target), or a
plain network ``model(x_t, t, cond)``, read as what it declares it predicts (an eps-prediction
network when it declares nothing; see :func:`~diffuse_edu.diffusion.denoisers.as_denoiser`).
``schedule`` must be the one the model was trained on; a flow model (lesson 12) fits any, which
then only sets the grid. ``x`` is unit Gaussian noise; ``steps`` the number of steps;
``callback(i, t_or_sigma, x)`` sees every intermediate state. No sampler keeps hidden state or
needs a set-up call, and none waits for the device inside its loop: noise levels are host
numbers, tables are read where the data lives.

The first three work on the integer steps of the schedule; the rest walk a grid of noise levels
sigma in the variable x = x0 + sigma eps, where the probability-flow ODE (Song et al. 2021, Eq. 13)
reads dx / dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, Eq. 3 with s = 1);
:func:`sample_flow_euler` walks a flow model's own time tau from 1 (noise) to 0 (data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffuse_edu.diffusion.denoisers import Denoiser, as_denoiser
from diffuse_edu.diffusion.forward_process import posterior_variance
from diffuse_edu.diffusion.prediction import Target
from diffuse_edu.diffusion.schedules import NoiseSchedule

#: Where a sigma grid starts when the schedule's own sigma_T is infinite (zero terminal SNR): x is
#: then x0 + 1e4 eps, pure noise to float32's precision, and the model is asked at t ~ T.
ZERO_SNR_SIGMA_MAX = 1e4


def _needs_schedule(schedule: NoiseSchedule | None, sampler: str,
                    model: Callable | None = None) -> NoiseSchedule:
    """The schedule a sampler walks: the one given, else the model's own (a :class:`Denoiser`'s, or
    a network built from a checkpoint, which knows the schedule it was trained on)."""
    if schedule is None:
        schedule = getattr(model, "schedule", None)
        schedule = schedule if isinstance(schedule, NoiseSchedule) else None
    if schedule is None:
        raise ValueError(f"{sampler} walks the steps of a noise schedule and got none. For a flow "
                         "model any schedule sets the grid (e.g. cosine_schedule(1000)), or use "
                         "sample_flow_euler, which walks the flow's own time.")
    return schedule


def timesteps(schedule: NoiseSchedule, steps: int, *, t_max: int | None = None) -> list[int]:
    """``steps + 1`` integer time steps evenly spaced from t_max (default T) down to 0."""
    schedule = _needs_schedule(schedule, "timesteps")
    t_max = schedule.T if t_max is None else t_max
    if not 1 <= steps <= t_max:
        raise ValueError(f"steps must lie in 1..{t_max}, got {steps}.")
    return torch.linspace(t_max, 0, steps + 1).round().long().tolist()


def ddim_step(x_t: Tensor, x0_hat: Tensor, eps_hat: Tensor, t: int, t_prev: int,
              schedule: NoiseSchedule, *, eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """x_t -> x_{t_prev} from the denoiser's two estimates (Song et al. 2021, "DDIM", Eq. 12, with
    sigma_t(eta) of Eq. 16): sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma
    noise.

    eta = 0 is deterministic; eta = 1 adds the posterior's variance (DDPM). Taking x0_hat as given,
    rather than rebuilding it from eps_hat, keeps a v- or x0-model exact where sqrt(alpha_bar_t) is
    0. With t_prev > t (and eta = 0) it runs the other way: inversion. Returns one tensor.
    Shapes: x_t, x0_hat, eps_hat, noise (B, ...) -> like x_t.
    """
    ab_prev = schedule.alpha_bar[t_prev].item()  # host numbers from the CPU table: no device sync
    sigma = eta * posterior_variance(schedule.alpha_bar[t].item(), ab_prev) ** 0.5 if eta else 0.0
    x_prev = ab_prev**0.5 * x0_hat + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps_hat
    if sigma > 0:
        if noise is None:
            raise ValueError("eta > 0 needs noise: pass noise=torch.randn_like(x_t, ...).")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_move(denoiser: Denoiser, x: Tensor, t: int, t_prev: int, schedule: NoiseSchedule, *,
              cond: object = None, eta: float = 0.0, generator: torch.Generator | None = None,
              noise: Tensor | None = None, step: Callable = ddim_step) -> Tensor:
    """One network evaluation at t and one DDIM step, x_t -> x_{t_prev}: the body of every DDIM
    loop (:func:`sample_ddim`, and through it :func:`sample_ddpm` and SDEdit; RePaint's and
    inpainting's step; :func:`ddim_inversion` above t = 0; the distillation target's two teacher
    steps). With eta > 0 the step's noise is ``noise`` when given, else drawn from ``generator``.
    ``step`` is :func:`ddim_step` or a learner's (lesson 07). Shapes: x (B, ...) -> like x.
    """
    pred = denoiser.at_step(x, t, cond, schedule=schedule)
    if noise is None and eta > 0:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return step(x, pred.x0, pred.eps, t, t_prev, schedule, eta=eta, noise=noise)


@torch.no_grad()
def sample_ddim(model: Callable, x: Tensor, schedule: NoiseSchedule, *, steps: int,
                eta: float = 0.0,
                generator: torch.Generator | None = None, callback: Callable | None = None,
                cond: object = None, clip: float | None = None, t_max: int | None = None,
                step: Callable | None = None) -> Tensor:
    """DDIM from x_{t_max} (default x_T) in ``steps`` network evaluations (Song et al. 2021,
    Sec. 4.1).

    ``step`` is the update (:func:`ddim_step`, or lesson 07's learner's, same signature).
    Shapes: x (B, ...) -> like x.
    """
    schedule = _needs_schedule(schedule, "sample_ddim", model)
    denoiser = as_denoiser(model, schedule, clip=clip)
    ts = timesteps(schedule, steps, t_max=t_max)
    for i, (t, t_prev) in enumerate(zip(ts[:-1], ts[1:])):
        x = ddim_move(denoiser, x, t, t_prev, schedule, cond=cond, eta=eta, generator=generator,
                      step=step or ddim_step)
        if callback is not None:
            callback(i, t_prev, x)
    return x


@torch.no_grad()
def sample_ddpm(model: Callable, x: Tensor, schedule: NoiseSchedule, *, steps: int | None = None,
                generator: torch.Generator | None = None, callback: Callable | None = None,
                cond: object = None, clip: float | None = None) -> Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) in ``steps`` steps (default T).

    DDIM with eta = 1 is the DDPM posterior step (Song et al. 2021, Sec. 4.1), so with steps = T
    this is lesson 02's ddpm_step at every t; with fewer steps, the same process on a coarser grid.
    """
    schedule = _needs_schedule(schedule, "sample_ddpm", model)
    return sample_ddim(model, x, schedule, steps=steps or schedule.T, eta=1.0, generator=generator,
                       callback=callback, cond=cond, clip=clip)


@torch.no_grad()
def ddim_inversion(denoiser: Denoiser, x0: Tensor, schedule: NoiseSchedule, steps: int, t_max: int,
                   cond: object = None, *, step: Callable | None = None) -> Tensor:
    """Deterministic DDIM run backwards, x_0 -> x_{t_max}, on ``steps`` steps of the grid of
    :func:`timesteps` taken in rising order (lesson 11's exercise). Each step uses the estimates at
    its start, the less noisy end, which is the only one known; at t = 0, where the network was
    never trained, x0_hat is x_0 itself and the noise estimate is the network's at t = 1.
    ``step`` is :func:`ddim_step` or a learner's (lesson 07). Shapes: x0 (B, ...) -> like x0.
    """
    step = step or ddim_step
    ts = timesteps(schedule, steps, t_max=t_max)[::-1]  # 0 .. t_max
    x = x0
    for t, t_next in zip(ts[:-1], ts[1:]):
        if t == 0:  # x0_hat = x_0 itself; eps_hat the network's at t = 1
            x = step(x, x, denoiser.at_step(x, 1, cond, schedule=schedule).eps, 0, t_next, schedule)
        else:
            x = ddim_move(denoiser, x, t, t_next, schedule, cond=cond, step=step)
    return x


@torch.no_grad()
def invert_ddim(model: Callable, x0: Tensor, schedule: NoiseSchedule, *, steps: int,
                t_max: int | None = None, cond: object = None,
                step: Callable | None = None) -> Tensor:
    """Run deterministic DDIM backwards, x_0 -> x_{t_max} (Song et al. 2021, Sec. 4.3; Dhariwal &
    Nichol 2021, App. F) with any model: :func:`ddim_inversion` on its denoiser.
    ``step`` is :func:`ddim_step` or a learner's."""
    schedule = _needs_schedule(schedule, "invert_ddim", model)
    return ddim_inversion(as_denoiser(model, schedule), x0, schedule, steps,
                          schedule.T if t_max is None else t_max, cond, step=step)


# ----------------------------------------------------------------------------- sigma space
def sigma_max(schedule: NoiseSchedule) -> float:
    """The noise level a sigma grid starts at: sigma_T, or :data:`ZERO_SNR_SIGMA_MAX` where it is
    infinite (a zero-terminal-SNR schedule), since x = x0 + sigma eps must stay finite."""
    top = schedule.sigma[-1].item()
    return top if math.isfinite(top) else ZERO_SNR_SIGMA_MAX


def karras_sigmas(schedule: NoiseSchedule, steps: int, *, rho: float = 7.0,
                  sigma_max: float | None = None) -> Tensor:
    """``steps`` noise levels spaced as in Karras et al. 2022 (Eq. 5), then 0. Shapes: (steps + 1,).

    sigma_max defaults to min(sigma_T, 80): Karras et al. use 80, and a schedule like the cosine one
    reaches sigma_T ~ 2e4, where nothing useful happens.
    """
    s_min = schedule.sigma[1].item()
    s_max = min(schedule.sigma[-1].item(), 80.0) if sigma_max is None else sigma_max
    if not (math.isfinite(s_max) and s_max > s_min):
        raise ValueError("karras_sigmas needs a finite sigma_max above the schedule's smallest "
                         f"sigma ({s_min:.3g}), got {s_max}: for a zero-terminal-SNR schedule "
                         "pass sigma_max=80 (Karras et al.) or ZERO_SNR_SIGMA_MAX.")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sig = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def sigmas_evenly_in_t(schedule: NoiseSchedule, steps: int) -> Tensor:
    """The noise levels at ``steps`` time steps evenly spaced from T to 1, then 0 (the first capped
    by :func:`sigma_max`). Shapes: (steps + 1,)."""
    sig = schedule.sigma_at(torch.linspace(schedule.T, 1, steps, dtype=torch.float64))
    return torch.cat([sig.clamp(max=sigma_max(schedule)), sig.new_zeros(1)])


def euler_step(x: Tensor, sigma: float, sigma_next: float, denoised: Tensor) -> Tensor:
    """x + (sigma_next - sigma) d with d = (x - D(x; sigma)) / sigma (Karras et al. 2022,
    Alg. 1)."""
    return x + (sigma_next - sigma) * (x - denoised) / sigma


def heun_step(x: Tensor, sigma: float, sigma_next: float,
              denoise: Callable[[Tensor, float], Tensor]) -> Tensor:
    """Heun's second-order step of the probability-flow ODE (Karras et al. 2022, Alg. 1, lines 5-8).

    An Euler step to sigma_next, then the average of the slopes at both ends; to sigma_next = 0 the
    Euler step alone (the slope there is undefined). Shapes: x (B, ...) -> like x.
    """
    d = (x - denoise(x, sigma)) / sigma
    x_euler = x + (sigma_next - sigma) * d
    if sigma_next == 0:
        return x_euler
    d_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (d + d_next) / 2


def _grid(model: Callable, x: Tensor, schedule: NoiseSchedule, steps: int, sigmas: Callable,
          clip: float | None) -> tuple[Denoiser, list[float], Tensor]:
    """The denoiser, the sigma grid as host numbers, and the unit noise scaled to the first
    level."""
    schedule = _needs_schedule(schedule, "A sigma-space sampler", model)
    sig = sigmas(schedule, steps).clamp(max=sigma_max(schedule)).tolist()
    return as_denoiser(model, schedule, clip=clip), sig, x * (1 + sig[0] ** 2) ** 0.5


@torch.no_grad()
def sample_euler(model: Callable, x: Tensor, schedule: NoiseSchedule, *, steps: int,
                 sigmas: Callable = karras_sigmas, generator: torch.Generator | None = None,
                 callback: Callable | None = None, cond: object = None,
                 clip: float | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE: ``steps`` network evaluations."""
    denoise, sig, x = _grid(model, x, schedule, steps, sigmas, clip)
    for i in range(len(sig) - 1):
        x = euler_step(x, sig[i], sig[i + 1], denoise(x, sig[i], cond))
        if callback is not None:
            callback(i, sig[i + 1], x)
    return x


@torch.no_grad()
def sample_heun(model: Callable, x: Tensor, schedule: NoiseSchedule, *, steps: int,
                sigmas: Callable = karras_sigmas, generator: torch.Generator | None = None,
                callback: Callable | None = None, cond: object = None, clip: float | None = None,
                step: Callable | None = None) -> Tensor:
    """Heun's method (Karras et al. 2022, Alg. 1 without churn): 2 * steps - 1 network evaluations.

    ``step`` is the update (:func:`heun_step`, or lesson 07's learner's, same signature).
    """
    step = step or heun_step
    denoise, sig, x = _grid(model, x, schedule, steps, sigmas, clip)
    for i in range(len(sig) - 1):
        x = step(x, sig[i], sig[i + 1], lambda z, s: denoise(z, s, cond))
        if callback is not None:
            callback(i, sig[i + 1], x)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Callable, x: Tensor, schedule: NoiseSchedule, *, steps: int,
                    sigmas: Callable = karras_sigmas, generator: torch.Generator | None = None,
                    callback: Callable | None = None, cond: object = None,
                    clip: float | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in sigma space: ``steps`` network evaluations.

    With lambda = -log(sigma) and h = lambda_next - lambda, each step is exact for a denoiser output
    that is linear in lambda, extrapolated from the last two outputs; the first and the last step
    (to sigma = 0) are first order.
    """
    denoise, sig, x = _grid(model, x, schedule, steps, sigmas, clip)
    previous, h_previous = None, None
    for i in range(len(sig) - 1):
        denoised = denoise(x, sig[i], cond)
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = math.log(sig[i] / sig[i + 1])
            d = denoised
            if previous is not None:
                r = h_previous / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sig[i + 1] / sig[i]) * x - math.expm1(-h) * d
            h_previous = h
        previous = denoised
        if callback is not None:
            callback(i, sig[i + 1], x)
    return x


def flow_euler_step(x: Tensor, tau: float, tau_next: float, velocity: Tensor) -> Tensor:
    """One Euler step of a flow's ODE dx/dtau = u(x, tau) from time tau to an earlier tau_next:
    x + (tau_next - tau) u (Liu et al. 2023). Sampling runs from tau = 1 (noise) to tau = 0 (data),
    so tau_next - tau < 0."""
    return x + (tau_next - tau) * velocity


def flow_times(steps: int, *, shift: float = 1.0) -> list[float]:
    """``steps + 1`` flow times tau from 1 (noise) to 0 (data), evenly spaced, then warped by
    ``shift`` (Esser et al. 2024, Sec. 5.3.2: tau -> shift tau / (1 + (shift - 1) tau); shift > 1
    spends more steps at high noise). Host numbers."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    tau = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return (shift * tau / (1 + (shift - 1) * tau)).tolist()


@torch.no_grad()
def sample_flow_euler(model: Callable, x: Tensor, schedule: NoiseSchedule | None = None, *,
                      steps: int,
                      generator: torch.Generator | None = None, callback: Callable | None = None,
                      cond: object = None, clip: float | None = None, shift: float = 1.0,
                      step: Callable | None = None) -> Tensor:
    """Euler's method on a rectified-flow model's own ODE (lesson 12): x at tau = 1 (``x``, unit
    noise) to tau = 0 in ``steps`` network evaluations on :func:`flow_times`. ``schedule`` is not
    used (a flow needs none; the argument keeps the samplers' one signature). ``clip`` clamps the
    x0_hat each velocity implies, x0_hat = x_tau - tau u. ``step`` is :func:`flow_euler_step` or a
    learner's. Shapes: x (B, ...) -> like x.
    """
    flow = as_denoiser(model, schedule)
    if flow.target is not Target.FLOW:
        raise ValueError("sample_flow_euler samples a flow model; this one predicts "
                         f"{flow.target.value}. Use sample_euler (the probability-flow ODE in "
                         "sigma) or sample_ddim for it.")
    times, step = flow_times(steps, shift=shift), step or flow_euler_step
    for i, (tau, tau_next) in enumerate(zip(times[:-1], times[1:])):
        u = flow.network(x)(x,
                            torch.full((x.shape[0],), tau * flow.time_scale, device=x.device,
                                       dtype=x.dtype), cond)
        if clip is not None:  # the velocity that lands on the clamped x0_hat at tau = 0
            u = (x - (x - tau * u).clamp(-clip, clip)) / tau
        x = step(x, tau, tau_next, u)
        if callback is not None:
            callback(i, tau_next, x)
    return x


# ----------------------------------------------------------------------------- many samples, noise
@torch.no_grad()
def generate(sampler: Callable, model: Callable, schedule: NoiseSchedule, n: int,
             shape: tuple[int, ...], *,
             batch_size: int = 1000, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu", **options) -> Tensor:
    """``n`` samples of ``shape`` drawn with ``sampler`` in batches of ``batch_size``.

    The starting noise comes from ``generator`` (on ``device``); ``options`` go to the sampler.
    Shapes: -> (n, *shape).
    """
    out = []
    for start in range(0, n, batch_size):
        x = torch.randn((min(batch_size, n - start), *shape), generator=generator, device=device)
        out.append(sampler(model, x, schedule, generator=generator, **options))
    return torch.cat(out)


def slerp(a: Tensor, b: Tensor, w: float) -> Tensor:
    """Spherical interpolation between two noise tensors (Shoemake 1985), keeping their norm
    typical.

    Shapes: a, b (B, ...) -> like a; w in [0, 1].
    """
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]  # (B, 1)
    sin = torch.sin(theta).clamp_min(1e-8)
    out = torch.sin((1 - w) * theta) / sin * af + torch.sin(w * theta) / sin * bf
    return out.reshape(a.shape)
