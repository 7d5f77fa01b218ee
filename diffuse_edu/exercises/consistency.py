"""Checkers for lesson 16: the consistency function, the multistep consistency sampler and the
consistency-distillation loss."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffuse_edu.diffusion.consistency import (
    cd_loss,
    column,
    consistency_function,
    consistency_sampler,
    edm_preconditioning,
)
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, require_gradient

SEE_F = "lesson 16, section 2 (Song et al. 2023, Eq. 7 and Appendix C)"


# ----------------------------------------------------------------------------- consistency_function
def _raw(x: Tensor, sigma: Tensor) -> Tensor:
    """A known F with a sigma-dependent answer (B, ...) -> like x."""
    return torch.tanh(1.3 * x) - 0.2 * column(sigma, x).log1p()


def _f_mistakes(x: Tensor, sigma: Tensor, sigma_min: float, sd: float) -> list[Mistake]:
    s, f = column(sigma, x), _raw(x, sigma)
    shifted = s - sigma_min
    skip, out = sd**2 / (shifted**2 + sd**2), sd * shifted / (s**2 + sd**2).sqrt()
    e_skip, e_out, e_in, _ = edm_preconditioning(s, sd)
    return [
        Mistake("`raw` takes x itself: the consistency function's F sees x as given, with no c_in "
                "in front (that is EDM's denoiser, whose network sees c_in x).",
                skip * x + out * _raw(e_in * x, sigma)),
        Mistake("c_out has the wrong sign: its numerator is sigma_data (sigma - sigma_min), "
                "positive above sigma_min.", skip * x - out * f),
        Mistake("those are EDM's c_skip and c_out with torch.where putting x back at sigma_min: "
                "the boundary then holds, but f jumps there and differs from the lesson's f at "
                "every other level. Use the shifted coefficients, which are 1 and 0 at sigma_min "
                "by themselves.", torch.where(s == sigma_min, x, e_skip * x + e_out * f)),
        Mistake("those are EDM's c_skip and c_out (Table 1 of Karras et al.): they are not 1 and 0 "
                "at sigma_min, so f(x, sigma_min) is not x. Shift sigma by sigma_min where the "
                "lesson's coefficients do.", e_skip * x + e_out * f),
        Mistake("c_skip is shifted by sigma_min but c_out is EDM's: c_out must vanish at sigma_min "
                "(its numerator holds sigma - sigma_min).", skip * x + e_out * f),
        Mistake("c_out is shifted by sigma_min but c_skip is EDM's: c_skip must be exactly 1 at "
                "sigma_min (its denominator holds (sigma - sigma_min)^2).", e_skip * x + out * f),
        Mistake("c_skip and c_out are swapped: c_skip multiplies x (the skip connection) and c_out "
                "the network's output F.", out * x + skip * f),
        Mistake("sigma_data enters squared: sigma_data^2 over ((sigma - sigma_min)^2 + "
                "sigma_data^2) in c_skip, and sigma_data^2 under c_out's square root.",
                sd / (shifted**2 + sd) * x + sd * shifted / (s**2 + sd).sqrt() * f),
        Mistake("c_out's square root holds sigma^2 + sigma_data^2, sigma itself, not sigma - "
                "sigma_min (Song et al. 2023, Appendix C).",
                skip * x + sd * shifted / (shifted**2 + sd**2).sqrt() * f),
        Mistake("that is F alone: f adds the skip connection, c_skip x + c_out F.", f),
        Mistake("the skip connection is missing: f is c_skip x + c_out F, not c_out F alone.",
                out * f),
        Mistake("c_out lost its square root: sigma_data (sigma - sigma_min) / sqrt(sigma^2 + "
                "sigma_data^2).", skip * x + sd * shifted / (s**2 + sd**2) * f),
    ]


def _f_case(sigmas: list[float], sigma_min: float, sd: float, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x = torch.randn(len(sigmas), 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        sigma = torch.tensor(sigmas)
        want = consistency_function(_raw, x, sigma, sigma_min=sigma_min, sigma_data=sd)
        got = fn(_raw, x.clone(), sigma.clone(), sigma_min=sigma_min, sigma_data=sd)
        compare(got, want, mistakes=_f_mistakes(x, sigma, sigma_min, sd),
                what=f"consistency_function at sigma = {sigmas} (sigma_min = {sigma_min}, "
                     f"sigma_data = {sd})")
    return case


def _f_boundary(fn: Callable) -> None:
    """f(x, sigma_min) is x exactly, bit for bit, whatever F returns."""
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    got = fn(lambda z, s: 1e3 * torch.ones_like(z), x.clone(), torch.full((3,), 0.002),
             sigma_min=0.002, sigma_data=0.5)
    if isinstance(got, Tensor) and got.shape == x.shape and not torch.equal(got, x):
        err = (got - x).abs().max().item()
        raise Mismatch(f"the boundary condition fails: f(x, sigma_min) differs from x by up to "
                       f"{err:.3g} (with F returning 1000 everywhere). At sigma = sigma_min c_skip "
                       "must be exactly 1 and c_out exactly 0: compute them from sigma - sigma_min "
                       "as the lesson writes them, with no epsilon added.")
    compare(got, x, what="consistency_function at sigma = sigma_min")


CONSISTENCY_FUNCTION = Checker(
    "consistency_function", consistency_function,
    [_f_case([0.002, 0.5, 3.0], 0.002, 0.5, 0), _f_case([0.3, 0.7, 2.0, 10.0], 0.3, 1.0, 1),
     _f_case([0.9, 80.0], 0.2, 0.7, 2), _f_boundary],
    hints=(("f is a skip connection plus a scaled network output, like EDM's denoiser; only the "
            "coefficients differ, and they must make f the identity at sigma_min."),
           ("From EDM's coefficients: c_skip's sigma^2 becomes (sigma - sigma_min)^2 and c_out's "
            "leading sigma becomes sigma - sigma_min, while the sigma^2 under c_out's root stays; "
            "sigma has shape (B,): reshape it to (B, 1, 1, 1) before multiplying x.")),
    see=SEE_F,
)


# ----------------------------------------------------------------------------- consistency_sampler
def _gauss_f(s_data: float = 0.6) -> Callable:
    """A known f: the consistency function of N(0, s_data^2) data to sigma = 0, plus 0.1 tanh(x)
    (a bend, so that a sampler that scales where it should not shows)."""
    def f(x: Tensor, sigma: Tensor) -> Tensor:
        return x * s_data / (s_data**2 + column(sigma, x) ** 2).sqrt() + 0.1 * torch.tanh(x)
    return f


def _counted(f: Callable, calls: list) -> Callable:
    def g(x: Tensor, sigma: Tensor) -> Tensor:
        if not isinstance(sigma, Tensor) or sigma.shape != (x.shape[0],):
            got = tuple(sigma.shape) if isinstance(sigma, Tensor) else repr(sigma)
            raise Mismatch(f"f was called with sigma of shape {got} for a batch of {x.shape[0]}; "
                           "call it with one level per example, a tensor of shape (B,): "
                           "torch.full((B,), sigma, device=x.device, dtype=x.dtype).")
        calls.append(sigma[0].item())
        return f(x, sigma)
    return g


def _sampler_mistakes(f: Callable, x: Tensor, sigmas: list[float], sigma_min: float,
                      seed: int) -> list[Mistake]:
    b = x.shape[0]

    def lvl(s):
        return torch.full((b,), s)

    def run(*, scale=True, std=None, from_noisy=False, at_previous=False, one_z=False,
            start=None):
        gen = torch.Generator().manual_seed(seed)
        y = (start if start is not None else sigmas[0]) * x if scale else x
        out, prev, z0 = f(y, lvl(sigmas[0])), sigmas[0], None
        for s in sigmas[1:]:
            z = torch.randn(x.shape, generator=gen)
            z0 = z if z0 is None else z0
            z = z0 if one_z else z
            width = std(s, prev) if std else math.sqrt(s**2 - sigma_min**2)
            y = (y if from_noisy else out) + width * z
            out, prev = f(y, lvl(prev if at_previous else s)), s
        return out
    return [
        Mistake("the unit noise x must first be scaled to the top level: start from sigma_0 x, "
                "noise of std sigma_0 (sigma_max).", run(scale=False)),
        Mistake("the fresh noise's std is sqrt(sigma^2 - sigma_min^2), not sigma: f's output sits "
                "at sigma_min already (Song et al. 2023, Alg. 1).", run(std=lambda s, p: s)),
        Mistake("the fresh noise's std is sqrt(sigma^2 - sigma_min^2): a square root is missing.",
                run(std=lambda s, p: s**2 - sigma_min**2)),
        Mistake("the fresh noise's std is sqrt(sigma^2 - sigma_min^2), from the image's level "
                "sigma_min up to the new level sigma; sqrt(previous^2 - sigma^2) is the gap "
                "between two noise levels, but f's output is an image, not a point at the "
                "previous level.", run(std=lambda s, p: math.sqrt(p**2 - s**2))),
        Mistake("the start is sigma_0 x, unit noise scaled to the top level; sqrt(sigma_0^2 - "
                "sigma_min^2) x is the re-noising rule, not the first step's.",
                run(start=math.sqrt(sigmas[0] ** 2 - sigma_min**2))),
        Mistake("re-noise the denoised image (f's last output), not the noisy point f was given.",
                run(from_noisy=True)),
        Mistake("after re-noising to a level, denoise at that level: f(x_hat, sigma), not at the "
                "previous one.", run(at_previous=True)),
        Mistake("draw fresh noise at every level (torch.randn(x.shape, generator=generator, "
                "device=x.device, dtype=x.dtype), one draw a level): yours reused the first draw.",
                run(one_z=True)),
    ]


def _sampler_case(sigmas: list[float], sigma_min: float, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(seed))
        f, calls = _gauss_f(), []
        want = consistency_sampler(f, x, sigmas, sigma_min=sigma_min,
                                   generator=torch.Generator().manual_seed(seed + 10))
        torch.manual_seed(seed + 99)  # noise drawn without the generator comes out different
        got = fn(_counted(f, calls), x.clone(), list(sigmas), sigma_min=sigma_min,
                 generator=torch.Generator().manual_seed(seed + 10))
        if len(calls) != len(sigmas):
            raise Mismatch(f"f was called {len(calls)} times for {len(sigmas)} levels "
                           f"{list(sigmas)} (at {[round(c, 3) for c in calls]}): the sampler "
                           "evaluates f once a level, first at sigma_0, then once after each "
                           "re-noising.")
        if isinstance(got, Tensor) and got.shape == want.shape and len(sigmas) > 1:
            torch.manual_seed(seed + 98)
            again = fn(f, x.clone(), list(sigmas), sigma_min=sigma_min,
                       generator=torch.Generator().manual_seed(seed + 10))
            if not torch.equal(again, got):
                raise Mismatch("two runs with the same generator differ: draw the fresh noise "
                               "with torch.randn(x.shape, generator=generator, device=x.device, "
                               "dtype=x.dtype), not from the global random state.")
        compare(got, want, mistakes=_sampler_mistakes(f, x, sigmas, sigma_min, seed + 10),
                what=f"consistency_sampler on levels {list(sigmas)} (sigma_min = {sigma_min})",
                otherwise="does not match Alg. 1 of Song et al. 2023 as lesson 16 section 2 "
                          "writes it: denoise sigma_0 x at sigma_0, then for each next level "
                          "re-noise the output and denoise at that level.")
    return case


CONSISTENCY_SAMPLER = Checker(
    "consistency_sampler", consistency_sampler,
    [_sampler_case([8.0], 0.5, 0), _sampler_case([8.0, 2.0, 0.9], 0.5, 1),
     _sampler_case([80.0, 10.0, 3.0, 1.2], 0.8, 2)],
    hints=(("One evaluation of f takes noise all the way to an image. To use a second evaluation, "
            "add noise back to a lower level and take it all the way again."),
           ("Loop over the levels after the first: fresh noise from the generator, scaled so that "
            "the image (which sits at sigma_min) ends at that level, then f at that level.")),
    see="lesson 16, section 2 (Song et al. 2023, Alg. 1)",
)


# ----------------------------------------------------------------------------- cd_loss
class _F(nn.Module):
    """A tiny network F(x, sigma): a 3x3 convolution with a sigma-dependent bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.level = nn.Linear(1, 2)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        if not isinstance(sigma, Tensor) or sigma.shape != (x.shape[0],):
            got = tuple(sigma.shape) if isinstance(sigma, Tensor) else repr(sigma)
            raise Mismatch(f"student or target was called with sigma of shape {got}; call them "
                           "with sigma or sigma_next as given, shape (B,) (only the noise and "
                           "euler_step need the (B, 1, 1, 1) view).")
        return self.conv(x) + self.level(sigma.log()[:, None])[:, :, None, None]


def _as_f(net: nn.Module) -> Callable:
    def f(x: Tensor, sigma: Tensor) -> Tensor:
        return consistency_function(net, x, sigma, sigma_min=0.002, sigma_data=0.5)
    return f


def _teacher(x: Tensor, sigma: Tensor) -> Tensor:
    """A known denoiser (Gaussian data of std 0.5, bent a little)."""
    return x * 0.25 / (0.25 + column(sigma, x) ** 2) + 0.05 * torch.sin(x)


def _cd_inputs(seed: int):
    torch.manual_seed(seed)
    student, target = _F(), _F()
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(4, 2, 5, 5, generator=g), torch.randn(4, 2, 5, 5, generator=g)
    sigma = torch.tensor([0.05, 0.4, 2.0, 20.0])
    return student, target, x0, noise, sigma, sigma * torch.tensor([0.5, 0.6, 0.7, 0.8])


def _cd_mistakes(f, f_t, x0, noise, sigma, sigma_next) -> list[Mistake]:
    s, sn = column(sigma, x0), column(sigma_next, x0)
    x = x0 + s * noise
    d = (x - _teacher(x, sigma)) / s
    x_hat = x + (sn - s) * d
    low = x0 + sn * noise  # the wrong student input, carried through the whole loss
    low_hat = low + (sn - s) * (low - _teacher(low, sigma)) / s
    swapped = x + (s - sn) * (x - _teacher(x, sigma)) / sn  # euler_step(x, sigma_next, sigma, D)

    def dist(a, b):
        return (a - b).square().flatten(1).mean(1)

    with torch.no_grad():
        out = f(x, sigma)
        return [
            Mistake("the target network is asked at the noise level of the student's input; ask "
                    "it at sigma_next, where the teacher's step lands.",
                    dist(out, f_t(x_hat, sigma))),
            Mistake("the teacher's ODE step is missing: the target network must see x_hat, the "
                    "teacher's Euler step from x to sigma_next, not x itself.",
                    dist(out, f_t(x, sigma_next))),
            Mistake("that compares the student with the teacher's denoised image: consistency "
                    "distillation compares it with the target network's output at the teacher's "
                    "next point.", dist(out, _teacher(x, sigma))),
            Mistake("the target is the target network (the EMA or stop-gradient copy), not the "
                    "student itself.", dist(out, f(x_hat, sigma_next))),
            Mistake("the Euler step goes the wrong way: x + (sigma_next - sigma) d with d = (x - "
                    "D(x; sigma)) / sigma moves toward the data.",
                    dist(out, f_t(x + (s - sn) * d, sigma_next))),
            Mistake("the student's input is x0 + sigma noise (the higher level of the pair), "
                    "not x0 + sigma_next noise.",
                    dist(f(low, sigma), f_t(low_hat, sigma_next))),
            Mistake("that target, the target network at x0 + sigma_next noise, is consistency "
                    "training's stand-in for the teacher's step; distillation takes the "
                    "teacher's step: x_hat = euler_step(x, sigma, sigma_next, teacher(x, sigma)).",
                    dist(out, f_t(x0 + sn * noise, sigma_next))),
            Mistake("the student is asked at sigma, the level of its input x, not at sigma_next.",
                    dist(f(x, sigma_next), f_t(x_hat, sigma_next))),
            Mistake("euler_step's levels are swapped: euler_step(x, sigma, sigma_next, denoised) "
                    "goes from sigma (where x is) to sigma_next.",
                    dist(out, f_t(swapped, sigma_next))),
            Mistake("the distance is a mean over each example's entries, not a sum.",
                    (out - f_t(x_hat, sigma_next)).square().flatten(1).sum(1)),
            Mistake("the Euler step's slope is (x - D(x; sigma)) / sigma, the teacher's denoised "
                    "image D, not D itself.",
                    dist(out, f_t(x + (sn - s) * _teacher(x, sigma), sigma_next))),
        ]


def _cd_case(seed: int) -> Callable:
    def case(fn: Callable) -> None:
        student, target, x0, noise, sigma, sigma_next = _cd_inputs(seed)
        f, f_t = _as_f(student), _as_f(target)
        want = cd_loss(f, f_t, _teacher, x0, noise, sigma, sigma_next)
        got = fn(f, f_t, _teacher, x0.clone(), noise.clone(), sigma.clone(), sigma_next.clone())
        if isinstance(got, Tensor) and got.ndim == 0:
            raise Mismatch("cd_loss returned one number; return the loss per example, shape (B,) "
                           "(the training loop takes the mean).")
        require_gradient(got, "cd_loss", "the student's output")
        compare(got, want, mistakes=_cd_mistakes(f, f_t, x0, noise, sigma, sigma_next),
                what=f"cd_loss at sigma = {[round(v, 3) for v in sigma.tolist()]} -> "
                     f"{[round(v, 3) for v in sigma_next.tolist()]}",
                otherwise="does not match Alg. 2 of Song et al. 2023 as lesson 16 section 3 "
                          "writes it: x = x0 + sigma noise, the teacher's Euler step to "
                          "sigma_next, "
                          "the squared distance (mean per example) between the student at (x, "
                          "sigma) and the target network at the step's end.")
        got.mean().backward()
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in target.parameters()):
            raise Mismatch("the target network received gradients: compute its output under "
                           "torch.no_grad() (it is held fixed; only the student learns).")
        if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()):
            raise Mismatch("the student received no gradient: its output must stay in the graph.")
    return case


CD_LOSS = Checker(
    "cd_loss", cd_loss, [_cd_case(0), _cd_case(1)],
    hints=(("Three points: the student's noisy input, the teacher's next point one ODE step "
            "closer to the data, and the target network's answer there. The student should agree "
            "with that answer."),
           ("The teacher is a denoiser; its ODE step is lesson 07's euler_step (or the slope "
            "written out). Only the student's call carries gradients; sigma (B,) needs reshaping "
            "to (B, 1, 1, 1) to scale the noise.")),
    see="lesson 16, section 3 (Song et al. 2023, Alg. 2)",
)

