"""Checkers for lesson 05: one update of the exponential moving average, with its warm-up, and one
training step (noise, v target, loss, backward, clipping, optimiser step)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.training.ema import ema_update
from diffuse_edu.training.loop import training_step


def _run(fn: Callable, updates: int, decay: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(updates)
    ema, cur = (
        [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)],
        [torch.randn(3, 2, generator=g), torch.randn(4, generator=g)],
    )
    e0, c0 = [e.clone() for e in ema], [c.clone() for c in cur]
    want = [e.clone() for e in ema]
    ema_update(want, [c.clone() for c in cur], updates, decay)
    warm = min(decay, (1 + updates) / (10 + updates))
    shifted = min(decay, (2 + updates) / (11 + updates))
    variants = {
        "shifted": [shifted * e + (1 - shifted) * c for e, c in zip(e0, c0)],
        "copied": [c.clone() for c in c0],
        "decayed": [warm * e for e in e0],
        "swapped": [warm * c + (1 - warm) * e for e, c in zip(e0, c0)],
        "no_warmup": [decay * e + (1 - decay) * c for e, c in zip(e0, c0)],
        "always_warm": [
            ((1 + updates) / (10 + updates)) * e + (1 - (1 + updates) / (10 + updates)) * c
            for e, c in zip(e0, c0)
        ],
    }
    held = list(ema)  # the tensor objects the caller holds: the EMA model's own parameters
    result = fn(ema, cur, updates, decay)  # the update must land in these very tensors
    if any(not torch.equal(c, c0_) for c, c0_ in zip(cur, c0)):
        raise Mismatch("ema_update changed the model's own weights; only the EMA copies may "
                       "change.")
    if any(e is not h for e, h in zip(ema, held)) and all(
        torch.equal(h, e0_) for h, e0_ in zip(held, e0)
    ):
        raise Mismatch("ema_update put new tensors into the list (ema[i] = ...) and left the EMA "
                       "model's own tensors unchanged: the list is only a way to reach them, so "
                       "the EMA model never moves. Change each tensor in place "
                       "(ema[i].mul_(...).add_(...), or copy_).")
    if all(torch.equal(h, e0_) for h, e0_ in zip(held, e0)):
        raise Mismatch("ema_update left the caller's EMA tensors unchanged" + (
            " and returned new ones: the training loop keeps its own tensors, so change them in "
            "place (methods ending in an underscore, such as mul_ and "
            "add_)." if result is not None else
            ": a line such as e = d * e + ... inside the loop makes a new tensor and binds the "
            "loop's name to it, leaving the tensor in the list as it was. Change each tensor in "
            "place (e.mul_(...).add_(...), e.lerp_(...) or e.copy_(...))."))
    got = torch.cat([h.flatten() for h in held])
    return got, {k: torch.cat([v.flatten() for v in vs]) for k, vs in variants.items()} | {
        "want": torch.cat([w.flatten() for w in want])}


def _case(updates: int, decay: float):
    def case(fn: Callable) -> None:
        got, v = _run(fn, updates, decay)
        mistakes = [
            Mistake("the weights are swapped: the EMA keeps d of itself and takes 1 - d of the "
                    "model.",
                    v["swapped"]),
            Mistake("there is no warm-up: use d = min(decay, (1 + k) / (10 + k)) after k updates "
                    "(with max, or with decay alone, d is the final decay from the first update "
                    "on).",
                    v["no_warmup"]),
            Mistake("the warm-up never ends: d must be capped at the final decay.",
                    v["always_warm"]),
            Mistake("the warm-up is one update ahead: k is the number of updates made so far, "
                    "d = min(decay, (1 + k) / (10 + k)) with k = updates.", v["shifted"]),
            Mistake("the EMA copied the model's weights (d = 0): it keeps a share d of itself.",
                    v["copied"]),
            Mistake("the model's share (1 - d) * current is missing: the EMA only decays.",
                    v["decayed"]),
        ]
        compare(got, v["want"], mistakes=mistakes,
                what=f"ema_update after {updates} updates with decay {decay}")
    return case


EMA_UPDATE = Checker(
    "ema_update", ema_update, [_case(0, 0.999), _case(5, 0.999), _case(5000, 0.99)],
    hints=(
        ('The decay warms up too: early on it is small, so the average quickly forgets the random '
         'start; later it is capped.'),
        ("Change each EMA tensor in place (the methods ending in an underscore), keeping a share d "
         "of itself and taking the rest from the model's tensor; never touch the model's tensors."),
    ),
    see="lesson 05, section 1: ema <- d ema + (1 - d) current, in place",
    changes_inputs=True,  # its cases check that the EMA tensors change and the model's do not
)


# ----------------------------------------------------------------------------- the training step
class _TinyDenoiser(nn.Module):
    """A small network of (x, t): a conv, modulated by t, so that every mistake changes the
    numbers."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.time = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        return self.conv(x) * (1 + self.time(t.to(x.dtype)[:, None] / 1000)[:, :, None, None])


_STEP_SCHEDULE = cosine_schedule(1000)


def _losses(model, x0, t, eps, target: str, *, variance_weights: bool = False, time: str = "t",
            reduce: str = "mean") -> torch.Tensor:
    ab = _STEP_SCHEDULE.alpha_bar[t].float().reshape(-1, 1, 1, 1)
    a, s = (ab, 1 - ab) if variance_weights else (ab.sqrt(), (1 - ab).sqrt())
    x_t = a * x0 + s * eps
    goal = {"v": a * eps - s * x0, "eps": eps, "x0": x0, "v_swapped": s * eps - a * x0,
            "v_negated": s * x0 - a * eps}[target]
    told = {"t": t, "t/T": t / _STEP_SCHEDULE.T, "t-1": t - 1}[time]
    err = (model(x_t, told) - goal).square().flatten(1)
    return err.mean(1) if reduce == "mean" else err.sum(1)


def _step_case(seed: int, grad_clip: float | None, steps: int = 1) -> Callable:
    def case(fn: Callable) -> None:
        g = torch.Generator().manual_seed(seed)
        x0, eps = torch.rand(4, 1, 6, 5, generator=g) * 2 - 1, torch.randn(4, 1, 6, 5, generator=g)
        t = torch.tensor([1, 250, 700, 1000])
        mine, ref = _TinyDenoiser(seed), _TinyDenoiser(seed)
        opt_mine = torch.optim.SGD(mine.parameters(), lr=0.05, momentum=0.9)
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
        clip = "no clipping" if grad_clip is None else f"grad_clip = {grad_clip}"
        what = f"training_step ({clip}, step {{}} of {steps}, t = [1, 250, 700, 1000])"
        for k in range(1, steps + 1):
            with torch.no_grad():
                mistakes = [
                    Mistake(m, _losses(mine, x0, t, eps, kind, variance_weights=w))
                    for m, kind, w in (
                        (
                            ("the loss compares with eps; lesson 05 trains the v target, v = "
                             "sqrt(ab) eps - sqrt(1 - ab) x0."),
                            "eps",
                            False,
                        ),
                        (
                            ("the loss compares with x0; the target is v = sqrt(ab) eps - sqrt(1 - "
                             "ab) x0."),
                            "x0",
                            False,
                        ),
                        (
                            "v has its weights swapped: v = sqrt(ab) eps - sqrt(1 - ab) x0.",
                            "v_swapped",
                            False,
                        ),
                        (
                            ("v has the opposite sign: v = sqrt(ab) eps - sqrt(1 - ab) x0 (eps "
                             "with a plus, x0 with a minus; the sign decides how the samplers turn "
                             "v back into x0 and eps)."),
                            "v_negated",
                            False,
                        ),
                        (
                            ("x_t (and v) use alpha_bar and 1 - alpha_bar as weights; take their "
                             "square roots."),
                            "v",
                            True,
                        ),
                    )
                ]
                mistakes += [
                    Mistake("the model was told t / T; it takes the integer step t itself.",
                            _losses(mine, x0, t, eps, "v", time="t/T")),
                    Mistake("the model was told t - 1; tell it the step x_t was noised to, t.",
                            _losses(mine, x0, t, eps, "v", time="t-1")),
                    Mistake("the per-example loss sums the squared errors over the pixels; "
                            "average them (the mean over every axis but the batch).",
                            _losses(mine, x0, t, eps, "v",
                                                                       reduce="sum")),
                ]
            want_loss, want_norm = training_step(
                ref, opt_ref, x0, t, eps, _STEP_SCHEDULE, grad_clip
            )
            out = fn(mine, opt_mine, x0.clone(), t.clone(), eps.clone(), _STEP_SCHEDULE, grad_clip)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise Mismatch("training_step must return two things: (the loss per example, "
                               "shape (B,), the gradient norm before clipping).")
            loss, norm = out
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                raise Mismatch(f"{what.format(k)} returned a loss still attached to the graph: "
                               "return loss.detach(), or the loop keeps every step's graph alive.")
            compare(loss, want_loss, what=f"{what.format(k)}: the loss per example",
                    mistakes=mistakes)
            norm = torch.as_tensor(norm).float()
            if norm.shape == () and torch.allclose(norm, want_norm.float() * len(x0), rtol=1e-3):
                raise Mismatch(f"{what.format(k)}: the gradient is {len(x0)} times too large: "
                               "backpropagate the mean of the per-example losses, not their sum.")
            compare(norm, want_norm.float(), what=f"{what.format(k)}: the gradient norm",
                    otherwise="the gradients of the previous step were not cleared: call "
                              "optimizer.zero_grad() before backward()." if k > 1 else
                              "return the global norm of the gradients before clipping: "
                              "torch.nn.utils.clip_grad_norm_ returns it (with max_norm = inf "
                              "when not clipping).")
            for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
                if torch.equal(p, q):
                    continue
                if k == 1 and torch.equal(p, _TinyDenoiser(seed).state_dict()[name]):
                    raise Mismatch(f"{what.format(k)} left the weights unchanged: call "
                                   "optimizer.step() after backward().")
                hint = ("the gradients of the previous step were not cleared: call "
                        "optimizer.zero_grad() before backward()." if k > 1 else
                        "the weights moved differently: clip the gradient's global norm after "
                        "backward() and before optimizer.step() (and only when grad_clip is not "
                        "None), on the mean of the per-example losses.")
                raise Mismatch(f"{what.format(k)}: after the step, {name} differs from the "
                               f"expected weights; {hint}")
    return case


TRAINING_STEP = Checker(
    "training_step",
    training_step,
    [
        _step_case(0, None),
        _step_case(1, 0.05),
        _step_case(2, 1e3, steps=2),
        _step_case(3, 0.05, steps=2),
    ],
    hints=(
        ("Make x_t from x0 and eps as in lesson 01, ask the model for v at (x_t, t), and "
         "compare with the true v; then the four optimiser calls, in the order an optimiser "
         "needs them."),
        ("Each image has its own t, so alpha_bar is one number per image that must meet images "
         "of shape (B, C, H, W). Clipping changes the gradients: it can only sit between making "
         "them and using them."),
    ),
    see="Ho et al. 2020, Alg. 1 with the v target, in lesson 05, section 2",
)
