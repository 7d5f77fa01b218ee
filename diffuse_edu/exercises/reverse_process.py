"""Checkers for lesson 02: the epsilon-prediction loss and one ancestral reverse step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.diffusion.forward_process import posterior_variance, q_posterior, q_sample
from diffuse_edu.diffusion.objectives import eps_loss
from diffuse_edu.diffusion.prediction import eps_to_x0
from diffuse_edu.diffusion.reverse_process import ddpm_step
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare

_SCHEDULE = cosine_schedule(100)


def _toy_model(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
    """A fixed 'network' whose answer depends on both x and t, so mix-ups change the loss."""
    return 0.5 * x + 0.01 * t.float()[:, None] - 0.2


def _loss_case(seed: int = 0, t_values: tuple[int, ...] = (1, 7, 30, 64, 99, 100)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(t_values), 2, generator=g)
    return x0, torch.tensor(t_values), torch.randn(x0.shape, generator=g)


def _loss_values(fn: Callable) -> None:
    x0, t, eps = _loss_case()
    s, m = _SCHEDULE, _toy_model
    x_t = q_sample(x0, t, s, eps)
    x_prev = q_sample(x0, t - 1, s, eps)
    mistakes = [
        Mistake("the target is the noise eps, not x0 (this loss trains x0-prediction).",
                torch.mean((m(x_t, t) - x0) ** 2)),
        Mistake("the model was given x0; it must see the noisy x_t = q_sample(x0, t, schedule, "
                "eps).",
                torch.mean((m(x0, t) - eps) ** 2)),
        Mistake("the loss is summed; take the mean over the batch and the dimensions.",
                torch.sum((m(x_t, t) - eps) ** 2)),
        Mistake("that is the mean absolute error; the loss squares the difference.",
                torch.mean((m(x_t, t) - eps).abs())),
        Mistake("x_t was made with t - 1: noise x0 to step t itself.",
                torch.mean((m(x_prev, t) - eps) ** 2)),
        Mistake("the model's prediction was compared with x_t; the target is eps.",
                torch.mean((m(x_t, t) - x_t) ** 2)),
        Mistake("the model was told t - 1; tell it the step its input was noised to, t.",
                torch.mean((m(x_t, t - 1) - eps) ** 2)),
        Mistake("the target is eps itself, not the scaled noise sqrt(1 - alpha_bar_t) eps that "
                "x_t contains.",
                torch.mean((m(x_t, t) - (1 - s.alpha_bar[t].float())[:, None].sqrt() * eps) ** 2)),
        Mistake("the squared error is averaged over each point's dimensions but summed over the "
                "batch; take the mean over both, so the loss does not grow with the batch size.",
                ((m(x_t, t) - eps) ** 2).mean(1).sum()),
        Mistake("the squared error is summed over each point's 2 coordinates; take the mean over "
                "everything, the coordinates as well as the batch.",
                ((m(x_t, t) - eps) ** 2).sum(1).mean()),
    ]
    want = eps_loss(m, x0, t, eps, s)
    got = fn(m, x0.clone(), t.clone(), eps.clone(), s)
    if isinstance(got, torch.Tensor) and got.ndim != 0:
        raise Mismatch(f"eps_loss returned shape {tuple(got.shape)}; a loss is a scalar (use "
                       ".mean()).")
    again = fn(m, x0.clone(), t.clone(), eps.clone(), s)
    if (
        isinstance(got, torch.Tensor)
        and isinstance(again, torch.Tensor)
        and not torch.allclose(got, again)
    ):
        raise Mismatch("two calls with the same x0, t and eps gave different losses: noise x0 "
                       "with the eps you are given (it is also the target); draw no random "
                       "numbers yourself.")
    compare(got, want, what="eps_loss(toy model, 6 points, t = [1 .. 100])", mistakes=mistakes)


def _loss_has_gradient(fn: Callable) -> None:
    x0, t, eps = _loss_case(1)
    w = torch.tensor(0.5, requires_grad=True)
    loss = fn(lambda x, tt, cond=None: w * x, x0, t, eps, _SCHEDULE)
    if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
        raise Mismatch("the loss does not depend on the model's parameters: do not detach it or "
                       "call .item(); return the tensor so that loss.backward() works.")


def _step_case(seed: int, t_value: int, n: int = 5):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2)
    return (torch.randn(shape, generator=g), torch.randn(shape, generator=g),
            torch.full((n,), t_value), torch.randn(shape, generator=g))


def _step_mistakes(x_t, eps_hat, t, s, noise) -> list[Mistake]:
    beta, ab = s.betas[t].float()[:, None], s.alpha_bar[t].float()[:, None]
    ab_prev = s.alpha_bar[t - 1].float()[:, None]
    mean = ddpm_step(x_t, eps_hat, t, s, torch.zeros_like(noise))  # the posterior mean at x0_hat
    sd = posterior_variance(ab, ab_prev).sqrt()  # sigma_t
    x0_hat = eps_to_x0(x_t, eps_hat, ab)
    means = [  # (what to tell, a wrong mean): each plus the right noise, sigma_t * noise
        ("you divided by sqrt(alpha_bar_t); the mean divides by sqrt(alpha_t) = sqrt(1 - beta_t).",
         (x_t - beta / (1 - ab).sqrt() * eps_hat) / ab.sqrt()),
        (("the noise term needs the coefficient beta_t / sqrt(1 - alpha_bar_t), not beta_t / "
          "(1 - alpha_bar_t)."), (x_t - beta / (1 - ab) * eps_hat) / (1 - beta).sqrt()),
        ("the predicted noise must be subtracted from x_t, not added.",
         (x_t + beta / (1 - ab).sqrt() * eps_hat) / (1 - beta).sqrt()),
        ("the mean is not rescaled: divide (x_t - coefficient * eps_hat) by sqrt(alpha_t).",
         x_t - beta / (1 - ab).sqrt() * eps_hat),
        (("you divided by sqrt(alpha_bar_{t-1}); the mean divides by sqrt(alpha_t) = sqrt(1 - "
          "beta_t), one step's share."), (x_t - beta / (1 - ab).sqrt() * eps_hat) / ab_prev.sqrt()),
        (("eps_hat is weighted by beta_t alone; its coefficient is beta_t / sqrt(1 - alpha_bar_t) "
          "(eps_hat is unit noise, and x_t holds it scaled by sqrt(1 - alpha_bar_t))."),
         (x_t - beta * eps_hat) / (1 - beta).sqrt()),
        (("you clipped x0_hat to [-1, 1] and took the posterior mean from it: that is the clipped "
          "variant of Ho et al.'s code (the library's samplers offer it as clip=...); this "
          "exercise asks for Eq. 11 as it stands, without clipping."),
         q_posterior(x0_hat.clamp(-1, 1), x_t, t, s)[0]),
    ]
    noises = [  # (what to tell, a wrong noise term), each added to the right mean
        (("no noise was added: x_{t-1} = mean + sigma_t * noise with sigma_t^2 the posterior "
          "variance (zero only at t = 1)."), 0),
        (("you used sigma_t^2 = beta_t. Ho et al. (2020, Sec. 3.2) allow it, but this exercise "
          "asks for the posterior variance beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)."),
         beta.sqrt() * noise),
        ("the noise was scaled by the variance; scale it by the standard deviation sigma_t.",
         sd**2 * noise),
    ]
    return ([Mistake(message, mean + term) for message, term in noises]
            + [Mistake(message, wrong + sd * noise) for message, wrong in means]
            + [Mistake("t is off by one: betas[t] and alpha_bar[t] belong to step t (index t, not "
                       "t - 1).",
                       _off_by_one(x_t, eps_hat, t, s, noise))])


def _off_by_one(x_t, eps_hat, t, s, noise):
    """Lesson 02's step one step early: the library's step at t - 1 (at least 1)."""
    return ddpm_step(x_t, eps_hat, (t - 1).clamp(min=1), s, noise)


def _step_values(fn: Callable) -> None:
    for t_value in (2, 50, 100):
        x_t, eps_hat, t, noise = _step_case(t_value, t_value)
        want = ddpm_step(x_t, eps_hat, t, _SCHEDULE, noise)
        mistakes = _step_mistakes(x_t, eps_hat, t, _SCHEDULE, noise)
        got = fn(x_t.clone(), eps_hat.clone(), t.clone(), _SCHEDULE, noise.clone())
        compare(got, want, what=f"ddpm_step at t = {t_value}", mistakes=mistakes)


def _step_last(fn: Callable) -> None:
    x_t, eps_hat, t, noise = _step_case(7, 1)
    compare(fn(x_t, eps_hat, t, _SCHEDULE, noise), ddpm_step(x_t, eps_hat, t, _SCHEDULE, noise),
            what="ddpm_step at t = 1", otherwise="the last step must add no noise (the posterior "
            "variance is 0 there, since alpha_bar_0 = 1) and return the mean.")


EPS_LOSS = Checker(
    "eps_loss", eps_loss, [_loss_values, _loss_has_gradient],
    hints=(("Noise the clean images exactly as lesson 01 does, then ask the model which noise it "
            "sees."),
           ("The loss compares the model's output with the eps you noised with: one mean squared "
            "error over every pixel of every image, a scalar that keeps its gradient.")),
    see="Ho et al. 2020, Eq. 14, in lesson 02, section 1",
)
DDPM_STEP = Checker(
    "ddpm_step", ddpm_step, [_step_values, _step_last],
    hints=(("Lesson 02's step has two parts: a mean computed from x_t and eps_hat, plus fresh "
            "noise scaled by the step's standard deviation."),
           ("The mean takes the predicted noise out of x_t with the weight beta_t / sqrt(1 - "
            "alpha_bar_t) and rescales by alpha_t; the variance (the posterior's) also needs "
            "alpha_bar_{t-1}, and is 0 at t = 1.")),
    see="Ho et al. 2020, Eq. 11, in lesson 02, section 3",
)
