"""Each checker passes the reference and catches typical wrong answers, each with its own message."""

import re

import pytest
import torch

from diffuse_edu.exercises import VERDICTS, Checker, Mismatch, check, compare, run_checker
from diffuse_edu.exercises.forward_process import Q_SAMPLE
from diffuse_edu.exercises.welcome import TO_UNIT_RANGE


def _message(verdict) -> str:
    """The verdict's words without the quoted line of the wrong answer's source (which holds the
    expected text itself, so a crash would match it)."""
    return re.sub(r" \(at line: .*?\)(?=\. |$)", "", verdict.message)


def _ab(schedule, t, x0, *, cast=True, reshape=True):
    ab = schedule.alpha_bar[t]
    ab = ab.to(x0.dtype) if cast else ab
    return ab.reshape(-1, 1, 1, 1) if reshape else ab


Q_SAMPLE_WRONG = {
    "no square roots": (lambda x0, t, s, eps: _ab(s, t, x0) * x0 + (1 - _ab(s, t, x0)) * eps,
                        "take their square roots"),
    "weights swapped": (lambda x0, t, s, eps: (1 - _ab(s, t, x0)).sqrt() * x0 + _ab(s, t, x0).sqrt() * eps,
                        "weights are swapped"),
    "alpha instead of alpha_bar": (
        lambda x0, t, s, eps: s.alphas[t].float().reshape(-1, 1, 1, 1).sqrt() * x0
        + (1 - s.alphas[t].float().reshape(-1, 1, 1, 1)).sqrt() * eps, "instead of alpha_bar_t"),
    "off by one": (lambda x0, t, s, eps: _ab(s, (t - 1).clamp(min=0), x0).sqrt() * x0
                   + (1 - _ab(s, (t - 1).clamp(min=0), x0)).sqrt() * eps, "off by one"),
    "x0 not scaled": (lambda x0, t, s, eps: x0 + (1 - _ab(s, t, x0)).sqrt() * eps, "x0 is not scaled"),
    "float64 result": (lambda x0, t, s, eps: _ab(s, t, x0, cast=False).sqrt() * x0
                       + (1 - _ab(s, t, x0, cast=False)).sqrt() * eps, "dtype torch.float64"),
    "no reshape": (lambda x0, t, s, eps: _ab(s, t, x0, reshape=False).sqrt() * x0
                   + (1 - _ab(s, t, x0, reshape=False)).sqrt() * eps, "reshaping it to (B, 1, 1, 1)"),
}

TO_UNIT_RANGE_WRONG = {
    "[0, 1]": (lambda x: x.float() / 255, "values lie in [0, 1]"),
    "divide by 256": (lambda x: x.float() / 256 * 2 - 1, "divided by 256"),
    "[-0.5, 0.5]": (lambda x: x.float() / 255 - 0.5, "[-0.5, 0.5]"),
    "flipped": (lambda x: 1 - x.float() / 255 * 2, "sign is flipped"),
    "uint8 arithmetic": (lambda x: x // 128, "returned uint8"),
}


def _in_place(x):
    out = x.float() / 255 * 2 - 1
    x.zero_()  # right values, but the caller's pixels are wiped
    return out


@pytest.mark.parametrize("checker", [Q_SAMPLE, TO_UNIT_RANGE], ids=lambda c: c.name)
def test_reference_passes(checker):
    verdict = run_checker(checker.reference, checker)
    assert verdict.status == "passed", verdict.message
    assert verdict.passed_cases == verdict.total_cases >= 3


@pytest.mark.parametrize("name", list(Q_SAMPLE_WRONG))
def test_q_sample_wrong_answers_are_caught(name):
    fn, expected = Q_SAMPLE_WRONG[name]
    verdict = run_checker(fn, Q_SAMPLE)
    assert verdict.status == "failed"
    assert expected in _message(verdict), verdict.message


def test_q_sample_messages_are_distinct():
    messages = {run_checker(fn, Q_SAMPLE).message for fn, _ in Q_SAMPLE_WRONG.values()}
    assert len(messages) == len(Q_SAMPLE_WRONG)


@pytest.mark.parametrize("name", list(TO_UNIT_RANGE_WRONG))
def test_to_unit_range_wrong_answers_are_caught(name):
    fn, expected = TO_UNIT_RANGE_WRONG[name]
    verdict = run_checker(fn, TO_UNIT_RANGE)
    assert verdict.status == "failed" and expected in _message(verdict), verdict.message


def test_to_unit_range_in_place_change_is_caught():
    verdict = run_checker(_in_place, TO_UNIT_RANGE)
    assert verdict.status == "failed" and "changed its argument `x` in place" in verdict.message


def test_q_sample_broadcasting_trap_has_its_own_message():
    """B == W: (B,) broadcasts along the width without an error; the checker still notices."""
    def along_width(x0, t, s, eps):
        if x0.shape[0] != x0.shape[-1]:  # behave on the other cases, fail only on the trap
            return Q_SAMPLE.reference(x0, t, s, eps)
        ab = s.alpha_bar[t].to(x0.dtype)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    verdict = run_checker(along_width, Q_SAMPLE)
    assert verdict.status == "failed" and "along the width" in verdict.message


def test_unfinished_exercise_falls_back_to_the_reference(capsys):
    def todo(x0, t, schedule, eps):
        raise NotImplementedError
    VERDICTS.clear()
    chosen = check(todo, Q_SAMPLE)
    assert chosen is Q_SAMPLE.reference
    out = capsys.readouterr().out
    assert "[todo]" in out and "carries on with the library's version" in out
    assert VERDICTS[-1].status == "unfinished"


def test_torch_not_implemented_is_a_crash_not_an_unfinished_exercise():
    """torch raises NotImplementedError for an operation a dtype lacks (`&` on floats): finished
    code with a mistake, which must not read "[todo] not written yet"."""
    def bitwise_on_floats(x0, t, schedule, eps):
        return (x0.float() & eps.float()) * 0
    verdict = run_checker(bitwise_on_floats, Q_SAMPLE)
    assert verdict.status == "failed" and "bitwise_and" in verdict.message

    def stub_with_message(x0, t, schedule, eps):
        raise NotImplementedError("Exercise not finished yet.")
    assert run_checker(stub_with_message, Q_SAMPLE).status == "unfinished"


def test_wrong_answer_falls_back_and_explains(capsys):
    fn = Q_SAMPLE_WRONG["weights swapped"][0]
    assert check(fn, Q_SAMPLE) is Q_SAMPLE.reference
    out = capsys.readouterr().out
    assert out.startswith("[x] q_sample:") and "hint('q_sample')" in out


def test_right_answer_is_kept(capsys):
    def mine(x):
        return x.float() / 127.5 - 1
    assert check(mine, TO_UNIT_RANGE) is mine
    assert "[ok]" in capsys.readouterr().out


def test_compare_reports_type_shape_and_largest_error():
    want = torch.zeros(2, 3)
    for got, pattern in [([0.0], "returned list"), (torch.zeros(3, 2), "shape \\(3, 2\\)"),
                         (torch.zeros(2, 3, dtype=torch.float64), "dtype torch.float64")]:
        with pytest.raises(Mismatch, match=pattern):
            compare(got, want, what="f(x)")
    bad = want.clone()
    bad[1, 2] = 0.5
    with pytest.raises(Mismatch, match="off by up to 0.5 \\(at index \\(1, 2\\)"):
        compare(bad, want, what="f(x)")


def test_a_wrong_index_dtype_is_not_called_the_inputs_dtype():
    with pytest.raises(Mismatch, match="expected torch.int64, the dtype indices") as caught:
        compare(torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.int64), what="tokenize(...)")
    assert "inputs' dtype" not in str(caught.value)


def test_a_changed_def_line_is_named():
    def q_sample(x0, t, eps):  # the schedule parameter dropped
        return x0
    verdict = run_checker(q_sample, Q_SAMPLE)
    assert verdict.status == "failed" and "keep that line as it was" in verdict.message, verdict.message

    def inner_crash(x0, t, schedule, eps):
        return (lambda a: a)(x0, t)  # a TypeError raised by another function: no advice
    assert "def line" not in run_checker(inner_crash, Q_SAMPLE).message


def test_a_crash_is_reported_with_the_error():
    checker = Checker("f", lambda x: x, [lambda fn: fn(1)])
    verdict = run_checker(lambda x: x / 0 if isinstance(x, str) else {}["missing"], checker)
    assert verdict.status == "failed" and "KeyError" in verdict.message


# --- lessons 02-04 ---------------------------------------------------------------------------
import math

from einops import rearrange

from diffuse_edu.diffusion.forward_process import q_forward, q_sample
from diffuse_edu.exercises.reverse_process import DDPM_STEP, EPS_LOSS
from diffuse_edu.exercises.time_embedding import SINUSOIDAL_EMBEDDING
from diffuse_edu.exercises.unet import MULTI_HEAD_ATTENTION


def _col(values, t, like):
    return values[t].to(like.dtype)[:, None]


def _step(x_t, eps_hat, t, s, noise, *, div="alpha", coef="sqrt", var="posterior", sign=-1, noise_scale="std"):
    beta, ab, ab_prev = _col(s.betas, t, x_t), _col(s.alpha_bar, t, x_t), _col(s.alpha_bar, t - 1, x_t)
    c = beta / ((1 - ab).sqrt() if coef == "sqrt" else (1 - ab))
    mean = (x_t + sign * c * eps_hat) / ((1 - beta) if div == "alpha" else ab).sqrt()
    v = beta * (1 - ab_prev) / (1 - ab) if var == "posterior" else beta
    return mean + (v.sqrt() if noise_scale == "std" else v) * noise


def _mha(q, k, v, heads, *, scale=True, dim=-1, split="b l (h d) -> b h l d"):
    q, k, v = (rearrange(z, split, h=heads) for z in (q, k, v))
    w = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5 if scale else 1)
    return rearrange(w.softmax(dim) @ v, "b h l d -> b l (h d)")


def _sin(t, dim, *, order="sin_cos", denom="half", tscale=1.0):
    half = dim // 2
    f = torch.exp(-math.log(10_000) * torch.arange(half) / (half if denom == "half" else dim))
    a = t.float()[:, None] * tscale * f
    parts = [torch.sin(a), torch.cos(a)] if order == "sin_cos" else [torch.cos(a), torch.sin(a)]
    return torch.nn.functional.pad(torch.cat(parts, 1), (0, dim % 2))


def _mha_written(q, k, v, heads, *, by_d=False, merge="(h d)"):
    """Multi-head attention as a learner writes it, with one mistake."""
    q, k, v = (rearrange(z, "b l (h d) -> b h l d", h=heads) for z in (q, k, v))
    d = q.shape[-1]
    out = (q @ k.transpose(-1, -2) / (d if by_d else d**0.5)).softmax(-1) @ v
    if merge == "reshape":
        return out.reshape(out.shape[0], out.shape[2], -1)
    return rearrange(out, f"b h l d -> b l {merge}")


WRONG = [
    (EPS_LOSS, lambda m, x0, t, e, s: ((m(q_sample(x0, t, s, e), t) - x0) ** 2).mean(), "target is the noise eps"),
    (EPS_LOSS, lambda m, x0, t, e, s: ((m(q_sample(x0, t, s, e), t) - e) ** 2).sum(1).mean(),
     "summed over each point's 2 coordinates"),
    (EPS_LOSS, lambda m, x0, t, e, s: (lambda f: ((m(q_sample(x0, t, s, f), t) - f) ** 2).mean())(torch.randn_like(x0)),
     "draw no random numbers yourself"),
    (EPS_LOSS, lambda m, x0, t, e, s: ((m(x0, t) - e) ** 2).mean(), "the model was given x0"),
    (EPS_LOSS, lambda m, x0, t, e, s: ((m(q_sample(x0, t, s, e), t) - e) ** 2).sum(), "loss is summed"),
    (EPS_LOSS, lambda m, x0, t, e, s: (m(q_sample(x0, t, s, e), t) - e).abs().mean(), "mean absolute error"),
    (EPS_LOSS, lambda m, x0, t, e, s: torch.tensor(((m(q_sample(x0, t, s, e), t) - e) ** 2).mean().item()),
     "does not depend on the model's parameters"),
    (DDPM_STEP, lambda x, e, t, s, n: _step(x, e, t, s, 0 * n), "no noise was added"),
    (DDPM_STEP, lambda x, e, t, s, n: _step(x, e, t, s, n, div="alpha_bar"), "divided by sqrt(alpha_bar_t)"),
    (DDPM_STEP, lambda x, e, t, s, n: _step(x, e, t, s, n, coef="plain"), "not beta_t / (1 - alpha_bar_t)"),
    (DDPM_STEP, lambda x, e, t, s, n: _step(x, e, t, s, n, sign=1), "must be subtracted"),
    (DDPM_STEP, lambda x, e, t, s, n: _step(x, e, t, s, n, var="beta"), "you used sigma_t^2 = beta_t"),
    (DDPM_STEP, lambda x, e, t, s, n: _step(x, e, t, s, n, noise_scale="var"), "scaled by the variance"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha(q, k, v, h, scale=False), "logits are not scaled"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha(q, k, v, h, dim=-2), "softmax runs over the queries"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha(q, k, v, h, split="b l (d h) -> b h l d"), "heads interleave"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha(q, k, v, 1), "all channels form one head"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha_written(q, k, v, h, by_d=True), "you divided by d"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha_written(q, k, v, h, merge="(d h)"), "merged back in the wrong order"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha_written(q, k, v, h, merge="reshape"), "a plain reshape"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: (lambda a: torch.nn.functional.pad(torch.cat([a.sin(), a.cos()], 1), (0, d % 2)))(
        t.float()[:, None] / 10_000.0 ** torch.linspace(0, 1, d // 2)), "divides i by dim / 2 - 1"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _mha(q * h**-0.5, k, v, h), "scaled by sqrt(C)"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: _sin(t, d, order="cos_sin"), "sines and cosines are swapped"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: _sin(t, d, denom="dim"), "exponent divides by dim"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: _sin(t, d, tscale=1e-3), "t was divided by T"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: torch.stack([_sin(t, 2 * (d // 2))[:, : d // 2],
                                                     _sin(t, 2 * (d // 2))[:, d // 2:]], -1).reshape(len(t), -1),
     "interleaved"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: _sin(t, d - d % 2), "an odd dim keeps 3 sines"),
]





# --- lesson 08 -------------------------------------------------------------------------------
from diffuse_edu.exercises.guidance import DROP_LABELS, GUIDED_FORWARD  # noqa: E402
from diffuse_edu.models.conditioning import Cond  # noqa: E402


def _guided(net, x, t, cond, null, s, rescale=0.0, interval=None, *, passes=1, swap=False, factor=None,
            null_copy=True, split="halves", phi_swap=False, std_dims="example", outside="cond",
            invert=False, bounds="closed", ones=None):
    """Lesson 08's guided forward pass with one chosen mistake."""
    labels = torch.cat([cond.labels, null.labels.expand_as(cond.labels) if null_copy else cond.labels])
    if passes == 1:
        both = net(torch.cat([x, x]), torch.cat([t, t]), Cond(labels=labels))
    else:
        both = torch.cat([net(x, t, Cond(labels=labels[:len(x)])), net(x, t, Cond(labels=labels[len(x):]))])
    c, u = both.chunk(2) if split == "halves" else (both[0::2], both[1::2])
    if swap:
        c, u = u, c
    g = u + (factor or s) * (c - u)
    if rescale:
        dims = tuple(range(1, g.ndim)) if std_dims == "example" else None
        ratio = (c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True)) if dims else c.std() / g.std()
        if std_dims == "variance":
            dims = tuple(range(1, g.ndim))
            ratio = c.var(dim=dims, keepdim=True) / g.var(dim=dims, keepdim=True)
        g = (1 - rescale) * g * ratio + rescale * g if phi_swap else rescale * g * ratio + (1 - rescale) * g
    if interval is not None:
        lo, hi = interval
        inside = (t >= lo) & (t <= hi) if bounds == "closed" else (t > lo) & (t < hi)
        inside = inside.reshape((-1,) + (1,) * (x.ndim - 1 if ones is None else ones))
        if invert:
            inside = ~inside
        g = torch.where(inside, g, c if outside == "cond" else u)
    return g


def _drop(labels, p, null, generator=None, *, how="right"):
    if how == "whole batch":
        drop = torch.rand(1, generator=generator).expand(labels.shape) < p
    elif how == "prefix":
        drop = torch.arange(len(labels)) < round(p * len(labels))
    elif how == "global rng":
        drop = torch.rand(labels.shape) < p
    elif how == "above":
        drop = torch.rand(labels.shape, generator=generator) > p
    else:
        drop = torch.rand(labels.shape, generator=generator) < p
    if how == "in place":
        labels[drop] = null
        return labels
    return torch.where(drop, torch.full_like(labels, 0 if how == "zero" else null), labels)


WRONG_08 = [
    (GUIDED_FORWARD, lambda *a: _guided(*a, swap=True), "the two halves are swapped"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, std_dims="variance"), "that ratio is of variances"),
    (GUIDED_FORWARD, lambda n, x, t, c, nl, s, r=0.0, i=None: _guided(n, x, t, c, nl, s, r, i, factor=1 + s),
     "you used 1 + s"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, null_copy=False), "must carry the null label"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, split="alternate"), "split the way you stacked"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, passes=2), "one forward pass"),
    (GUIDED_FORWARD, lambda n, x, t, c, nl, s, r=0.0, i=None: _guided(n, x, t, c, nl, s, 0.0, i), "rescale was ignored"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, std_dims="batch"), "over the whole batch"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, phi_swap=True), "phi and 1 - phi are swapped"),
    (GUIDED_FORWARD, lambda n, x, t, c, nl, s, r=0.0, i=None: _guided(n, x, t, c, nl, s, r, None),
     "the interval was ignored"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, outside="uncond"), "you used the unconditional prediction"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, invert=True), "the interval is inverted"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, bounds="open"), "the bounds are excluded"),
    (GUIDED_FORWARD, lambda *a: _guided(*a, ones=3), "but not on other shapes"),
    (DROP_LABELS, lambda lb, p, n, generator=None: _drop(lb, p, n, generator, how="zero"), "became 0"),
    (DROP_LABELS, lambda lb, p, n, generator=None: _drop(lb, p, n, generator, how="above"), "above p"),
    (DROP_LABELS, lambda lb, p, n, generator=None: _drop(lb, p, n, generator, how="whole batch"),
     "every label or none"),
    (DROP_LABELS, lambda lb, p, n, generator=None: _drop(lb, p, n, generator, how="prefix"),
     "the same examples lost their labels"),
    (DROP_LABELS, lambda lb, p, n, generator=None: _drop(lb, p, n, generator, how="global rng"),
     "generators seeded alike"),
    (DROP_LABELS, lambda lb, p, n, generator=None: _drop(lb, p, n, generator, how="in place"), "in place"),
    (DROP_LABELS, lambda lb, p, n, generator=None: _drop(lb, p, n, generator).float(), "dtype torch.int64"),
    (DROP_LABELS, lambda lb, p, n, generator=None: lb.clone(), "no label was dropped"),
]

# --- lessons 05-06 ---------------------------------------------------------------------------
from diffuse_edu.exercises.metrics import SQRTM_PSD
from diffuse_edu.exercises.training import EMA_UPDATE


def _ema(ema, cur, k, decay, *, warm=True, cap=True, swap=False):
    d = (1 + k) / (10 + k) if warm else decay
    d = min(decay, d) if cap else d
    for e, c in zip(ema, cur):
        new = (1 - d) * e + d * c if swap else d * e + (1 - d) * c
        e.copy_(new)


def _root(a, *, how):
    vals, vecs = torch.linalg.eigh(a)
    if how == "entries":
        return a.sqrt()
    if how == "no_sqrt":
        return (vecs * vals) @ vecs.T
    if how == "swapped":
        return (vecs.T * vals.clamp_min(0).sqrt()) @ vecs
    if how == "unclamped":
        return (vecs * vals.sqrt()) @ vecs.T
    raise ValueError(how)


def _ema_rebinding(ema, cur, k, decay):
    d = min(decay, (1 + k) / (10 + k))
    for i in range(len(ema)):
        ema[i] = d * ema[i] + (1 - d) * cur[i]  # right values, but new tensors: the model's own never move


WRONG_05_06 = [
    (EMA_UPDATE, _ema_rebinding, "put new tensors into the list"),
    (EMA_UPDATE, lambda e, c, k, d: _ema(e, c, k, d, swap=True), "weights are swapped"),
    (EMA_UPDATE, lambda e, c, k, d: _ema(e, c, k, d, warm=False), "there is no warm-up"),
    (EMA_UPDATE, lambda e, c, k, d: _ema(e, c, k, d, cap=False), "warm-up never ends"),
    (EMA_UPDATE, lambda e, c, k, d: [0.9 * a + 0.1 * b for a, b in zip(e, c)] and None, "tensors unchanged"),
    (EMA_UPDATE, lambda e, c, k, d: [a.mul(0.9).add(b, alpha=0.1) for a, b in zip(e, c)], "returned new ones"),
    (EMA_UPDATE, lambda e, c, k, d: [a.mul_(0.5).add_(b, alpha=0.5) for a, b in zip(e, c)] and None, "off by up to"),
    (EMA_UPDATE, lambda e, c, k, d: [b.mul_(0.5) for b in c] and None, "changed the model's own weights"),
    (SQRTM_PSD, lambda a: _root(a, how="entries"), "returned NaN"),
    (SQRTM_PSD, lambda a: _root(a, how="no_sqrt"), "eigenvalues were not square-rooted"),
    (SQRTM_PSD, lambda a: _root(a, how="swapped"), "V and V^T are swapped"),
    (SQRTM_PSD, lambda a: _root(a, how="unclamped"), "clamp them at 0"),
]


# --- lesson 07 -------------------------------------------------------------------------------
from diffuse_edu.exercises.samplers import DDIM_STEP, HEUN_STEP


def _ddim(x, x0, e, t, tp, s, *, eta=0.0, noise=None, alphas=False, rebuild=False, shrink=True, two=True,
          swap=False, variance=False, always_noise=False, no_raise=False):
    ab, abp = (s.alphas if alphas else s.alpha_bar)[t].item(), (s.alphas if alphas else s.alpha_bar)[tp].item()
    if rebuild:  # x0_hat rebuilt from eps_hat instead of the one given
        x0 = (x - (1 - ab) ** 0.5 * e) / ab**0.5
    # only for eta > 0: upwards (lesson 11) the formula is complex, and from t = 0 it divides by 0
    sig = 0.0
    if eta:
        sig = eta * ((1 - abp) / (1 - ab)) ** 0.5 * ((1 - ab / abp) ** 0.5 if two else 1)
    a, b = (e, x0) if swap else (x0, e)
    out = abp**0.5 * a + max(1 - abp - (sig**2 if shrink else 0), 0) ** 0.5 * b
    if noise is None:
        if sig > 0 and not no_raise:
            raise ValueError("eta > 0 needs noise")
        return out
    if always_noise:
        return out + noise
    return out + (sig**2 if variance else sig) * noise if sig > 0 else out


def _heun(x, s, sn, D, *, correct=True, average=True, from_x=True, at_next=True, guard=True, tiny=None,
          final_sign=1):
    d = (x - D(x, s)) / s
    xe = x + (sn - s) * d
    if sn == 0 and tiny:  # a tiny sigma where the step ends, instead of skipping the correction
        sn = tiny
    elif not correct or (guard and sn == 0):
        return xe
    s2 = sn if at_next else s
    d2 = (xe - D(xe, s2)) / s2
    slope = (d + d2) / 2 if average else d2
    return (x if from_x else xe) + final_sign * (sn - s) * slope


WRONG_07 = [
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, alphas=True), "not the one-step alphas"),
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, rebuild=True), "use the x0_hat you are given"),
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, shrink=False), "must shrink when noise is added"),
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, two=False), "has two factors"),
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, swap=True), "x0_hat and eps_hat are swapped"),
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, variance=True), "not sigma^2 * noise"),
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, always_noise=True), "the noise must not be added"),
    (DDIM_STEP, lambda *a, **k: _ddim(*a, **k, no_raise=True), "must raise a ValueError that asks for noise"),
    (HEUN_STEP, lambda *a: _heun(*a, correct=False), "that is Euler's step"),
    (HEUN_STEP, lambda *a: _heun(*a, tiny=1e-8), "a tiny sigma in its place changes the result"),
    (HEUN_STEP, lambda *a: _heun(*a, final_sign=-1), "the final update runs the wrong way"),
    (SQRTM_PSD, lambda a: (lambda v, w: ((w * v.sqrt()) @ torch.linalg.inv(w)))(*torch.linalg.eig(a)),
     "use torch.linalg.eigh"),
    (HEUN_STEP, lambda *a: _heun(*a, average=False), "only the slope at sigma_next"),
    (HEUN_STEP, lambda *a: _heun(*a, from_x=False), "applied from x"),
    (HEUN_STEP, lambda *a: _heun(*a, at_next=False), "evaluated at sigma_next"),
    (HEUN_STEP, lambda *a: _heun(*a, guard=False), "slope (x - D) / sigma is undefined"),
]


# --- lesson 09 -------------------------------------------------------------------------------
import torch.nn.functional as F  # noqa: E402

from diffuse_edu.exercises.text import (  # noqa: E402
    CONTRASTIVE_LOSS,
    CROSS_ATTENTION_BLOCK,
    TOKENIZE,
    _cross_variant,
)
from diffuse_edu.models.text import BOS, EOS, PAD, UNK, tokenize


def _tok(texts, vocab, max_len, *, bos=True, eos=True, cut_eos=False, lower=True, unk=True, mask="ok", shift=0):
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.full((len(texts), max_len), PAD)
    for r, text in enumerate(texts):
        found = (text.lower() if lower else text).split()
        if unk == "skip":
            ws = [index[w] + shift for w in found if w in index]
        else:
            ws = [index[w] + shift if w in index else UNK if unk else index[w] for w in found]
        row = ([BOS] if bos else []) + (ws + [EOS] if cut_eos else ws[: max_len - 2] + ([EOS] if eos else []))
        ids[r, : min(len(row), max_len)] = torch.tensor(row[:max_len])
    m = ids != PAD
    return ids, {"ok": m, "inverted": ~m, "long": m.long(), "words only": m & (ids != BOS) & (ids != EOS)}[mask]


def _clip_loss(logits, same, *, hard=False, normalise=True, reduction="mean", exclude=False, probs=False):
    eye = torch.eye(len(logits), dtype=torch.bool)
    target = eye.float() if hard or exclude else same.float()
    target = target / target.sum(1, keepdim=True) if normalise else target
    if exclude:
        logits, index = logits.masked_fill(same & ~eye, float("-inf")), torch.arange(len(logits))
        return (F.cross_entropy(logits, index) + F.cross_entropy(logits.T, index)) / 2
    if probs:
        return -((target * logits.softmax(1)).sum(1).mean() + (target * logits.T.softmax(1)).sum(1).mean()) / 2
    return (F.cross_entropy(logits, target, reduction=reduction) + F.cross_entropy(logits.T, target, reduction=reduction)) / 2


WRONG_09 = [
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, bos=False), "<bos> is missing"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, unk="skip"), "a word outside the vocabulary was left out"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, shift=4), "the word ids are shifted by 4"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, mask="words only"), "<bos> and <eos> count as real tokens"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, eos=False), "<eos> is missing"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, cut_eos=True), "lost its <eos>"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, mask="inverted"), "mask is inverted"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, mask="long"), "make it bool"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, unk=False), "must become <unk>"),
    (TOKENIZE, lambda t, v, n: _tok(t, v, n, lower=False), "the vocabulary is lower-cased"),
    (CONTRASTIVE_LOSS, lambda lg, same: _clip_loss(lg, same, hard=True), "hard targets"),
    (CONTRASTIVE_LOSS, lambda lg, same: _clip_loss(lg / 0.07, same), "divided by a temperature (0.07) again"),
    (CONTRASTIVE_LOSS, lambda lg, same: F.binary_cross_entropy_with_logits(lg, same.float()), "SigLIP's loss"),
    (CONTRASTIVE_LOSS, lambda lg, same: F.cross_entropy(lg, same.float() / same.float().sum(1, keepdim=True)),
     "only one direction"),
    (CONTRASTIVE_LOSS, lambda lg, same: _clip_loss(lg, same, normalise=False), "must sum to 1"),
    (CONTRASTIVE_LOSS, lambda lg, same: _clip_loss(lg, same, reduction="sum"), "summed over the batch"),
    (CONTRASTIVE_LOSS, lambda lg, same: _clip_loss(lg, same, exclude=True), "out of the softmax"),
    (CONTRASTIVE_LOSS, lambda lg, same: _clip_loss(lg, same, probs=True), "log-probabilities"),
    (CONTRASTIVE_LOSS, lambda lg, same: 2 * _clip_loss(lg, same), "added, not averaged"),
    (CONTRASTIVE_LOSS, lambda lg, same: torch.tensor(_clip_loss(lg, same).item()), "through autograd"),
    (CONTRASTIVE_LOSS, lambda lg, same: _clip_loss(lg, same, reduction="none"), "the loss is one number"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, use_mask=False), "padding mask was not used"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, invert=True), "mask is inverted"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, residual=False), "residual is missing"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, norm=False), "GroupNorm is missing"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, on_normed=True), "adds the normalised"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, order="vk"), "keys and values are swapped"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, project=False), "to_out is missing"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, heads=1), "one head"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, fold="b (w h) c -> b c h w"),
     "h and w swapped"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: _cross_variant(b, x, c, m, reshape=True), "not a reshape"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: x + b.to_out(b.attend(
        b.to_q(b.norm(x).reshape(x.shape[0], -1, x.shape[1])), *b.to_kv(c).chunk(2, dim=-1), b.heads, m)).transpose(
        1, 2).reshape(x.shape), "flattened into tokens with a reshape"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: x + b.to_out(b.attend(
        b.to_q(b.norm(x).flatten(2).transpose(1, 2)), *b.to_kv(c).chunk(2, dim=-1), b.heads, m)).reshape(x.shape),
     "folded back into a map with a reshape"),
    (CROSS_ATTENTION_BLOCK, lambda b, x, c, m: b.to_out(b.attend(b.to_q(rearrange(b.norm(x), "b c h w -> b (h w) c")),
                                                                *b.to_kv(rearrange(b.norm(x), "b c h w -> b (h w) c")).chunk(2, -1),
                                                                b.heads, m)),
     "the keys and values from the caption"),
]



# --- lessons 03-05: the blocks, the U-Net's forward pass, scale-and-shift, the training step -----

from diffuse_edu.exercises.time_embedding import SCALE_SHIFT  # noqa: E402
from diffuse_edu.exercises.training import TRAINING_STEP  # noqa: E402
from diffuse_edu.exercises.unet import ATTENTION_BLOCK, RESIDUAL_BLOCK, UNET_FORWARD  # noqa: E402
from diffuse_edu.models.attention import multi_head_attention as _library_mha  # noqa: E402


def _res(block, x, emb=None, *, shortcut=True, act_first=False, modulate=True, dropout="module", x_plain=False):
    h = block.conv1(block.norm1(F.silu(x)) if act_first else F.silu(block.norm1(x)))
    h = block.norm2(h)
    if block.scale_shift is not None and modulate:
        h = block.scale_shift(h, emb)
    h = F.silu(h)
    h = block.conv2(block.dropout(h) if dropout == "module" else F.dropout(h, 0.5))
    return h + (x if x_plain else block.shortcut(x)) if shortcut else h


def _fwd(unet, x, t, cond=None, *, order="up_skip", wrong_pairing=False, cond_to_blocks=True, respect_flag=True):
    emb, h, skips = unet.embed(t, cond), unet.stem(x), []
    c = cond if cond_to_blocks else None
    for level, blocks in enumerate(unet.encoder):
        for b in blocks:
            h = b(h, emb, c)
        if level < len(unet.downsamples):
            if wrong_pairing:
                h = unet.downsamples[level](h)
            skips.append(h)
            if not wrong_pairing:
                h = unet.downsamples[level](h)
    h = unet.middle(h, emb, c)
    for level in reversed(range(len(unet.decoder))):
        h = unet.upsamples[level](h)
        if unet.config.skip_connections or not respect_flag:
            skip = skips.pop()
            h = torch.cat([h, skip] if order == "up_skip" else [skip, h], 1)
        for b in unet.decoder[level]:
            h = b(h, emb, c)
    return unet.out(h)


def _attn_block(block, x, *, residual=True, norm=True, fold="b (h w) c -> b c h w", project=True):
    _, _, h, w = x.shape
    tokens = rearrange(block.norm(x) if norm else x, "b c h w -> b (h w) c")
    q, k, v = block.to_qkv(tokens).chunk(3, -1)
    out = _library_mha(q, k, v, block.heads)
    out = rearrange(block.to_out(out) if project else out, fold, h=h, w=w)
    return x + out if residual else out


def _mod(block, h, emb, *, one=True, swap=False, broadcast=True, in_place=False):
    scale, shift = block.proj(emb).chunk(2, 1)
    if swap:
        scale, shift = shift, scale
    if broadcast:
        scale, shift = scale[:, :, None, None], shift[:, :, None, None]
    if in_place:
        return h.mul_(1 + scale).add_(shift)
    return h * ((1 + scale) if one else scale) + shift


def _train_step(model, opt, x0, t, eps, schedule, grad_clip, *, target="v", zero=True, clip="between", reduce="mean",
                detach=True, told="t", per_example="mean"):
    ab = schedule.alpha_bar[t].to(x0.dtype).reshape(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    goal = {"v": ab.sqrt() * eps - (1 - ab).sqrt() * x0, "-v": (1 - ab).sqrt() * x0 - ab.sqrt() * eps,
            "eps": eps}[target]
    tt = {"t": t, "t/T": t / schedule.T, "t-1": t - 1}[told]
    loss = getattr((model(x_t, tt) - goal).square().flatten(1), per_example)(1)
    if zero:
        opt.zero_grad()
    getattr(loss, reduce)().backward()
    limit = grad_clip if grad_clip is not None and clip == "between" else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
    opt.step()
    return (loss.detach() if detach else loss), norm


WRONG_03_05 = [
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res(b, x, e, shortcut=False), "shortcut is missing"),
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res(b, x, e, x_plain=True), "shape error"),
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res(b, x, e, act_first=True), "SiLU runs before"),
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res(b, x, e, modulate=False), "embedding is never used"),
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res(b, x, e, dropout="functional"), "off by up to"),
    (UNET_FORWARD, lambda u, x, t, c=None: _fwd(u, x, t, c, order="skip_up"), "concatenated before"),
    (UNET_FORWARD, lambda u, x, t, c=None: _fwd(u, x, t, c, wrong_pairing=True), "before downsampling it"),
    (UNET_FORWARD, lambda u, x, t, c=None: _fwd(u, x, t, c, respect_flag=False), "skip_connections False"),
    (UNET_FORWARD, lambda u, x, t, c=None: _fwd(u, x, t, c, cond_to_blocks=False), "text-conditioned"),
    (ATTENTION_BLOCK, lambda b, x: _attn_block(b, x, residual=False), "residual is missing"),
    (ATTENTION_BLOCK, lambda b, x: x + b.to_out(b.attend(*b.to_qkv(b.norm(x).reshape(x.shape[0], -1, x.shape[1]))
                                                         .chunk(3, dim=-1), b.heads)).transpose(1, 2).reshape(x.shape),
     "flattened into tokens with a reshape"),
    (ATTENTION_BLOCK, lambda b, x: x + b.to_out(b.attend(*b.to_qkv(b.norm(x).flatten(2).transpose(1, 2))
                                                         .chunk(3, dim=-1), b.heads)).reshape(x.shape),
     "folded back into a map with a reshape"),
    (ATTENTION_BLOCK, lambda b, x: _attn_block(b, x, norm=False), "GroupNorm is missing"),
    (ATTENTION_BLOCK, lambda b, x: _attn_block(b, x, fold="b (w h) c -> b c h w"), "h and w swapped"),
    (ATTENTION_BLOCK, lambda b, x: _attn_block(b, x, project=False), "to_out is missing"),
    (SCALE_SHIFT, lambda b, h, e: _mod(b, h, e, one=False), "1 + scale"),
    (SCALE_SHIFT, lambda b, h, e: _mod(b, h, e, swap=True), "swapped"),
    (SCALE_SHIFT, lambda b, h, e: h + b.proj(e)[:, :, None, None].chunk(2, dim=1)[1], "the scale is missing"),
    (SCALE_SHIFT, lambda b, h, e: _mod(b, h, e, broadcast=False), "(B, C, 1, 1)"),
    (SCALE_SHIFT, lambda b, h, e: _mod(b, h, e, in_place=True), "in place"),
    (TRAINING_STEP, lambda *a: _train_step(*a, target="eps"), "compares with eps"),
    (TRAINING_STEP, lambda *a: _train_step(*a, target="-v"), "v has the opposite sign"),
    (TRAINING_STEP, lambda *a: _train_step(*a, zero=False), "not cleared"),
    (TRAINING_STEP, lambda *a: _train_step(*a, clip="never"), "clip the gradient"),
    (TRAINING_STEP, lambda *a: _train_step(*a, reduce="sum"), "not their sum"),
    (TRAINING_STEP, lambda *a: _train_step(*a, detach=False), "still attached"),
]



# --- lesson 10: the reparameterisation trick and the KL -----------------------------------------
from diffuse_edu.exercises.vae import (  # noqa: E402
    DECODE_LATENTS,
    ENCODE_LATENTS,
    KL_DIAGONAL_GAUSSIAN,
    REPARAMETERISE,
    VAE_LOSS,
    _vae_variant,
)
from diffuse_edu.models.vae import reparameterise  # noqa: E402


def _kl(mean, logvar, *, reduce="sum", half=True, minus_one=True):
    terms = mean.square() + logvar.exp() - (1 if minus_one else 0) - logvar
    out = getattr(terms.flatten(1), reduce)(1)
    return 0.5 * out if half else out


WRONG_10 = [
    (REPARAMETERISE, lambda m, lv, n: m + lv.exp() * n, "scaled by the variance"),
    (REPARAMETERISE, lambda m, lv, n: m + lv * n, "not a standard deviation"),
    (REPARAMETERISE, lambda m, lv, n: (0.5 * lv).exp() * n, "mean is missing"),
    (REPARAMETERISE, lambda m, lv, n: (m + (0.5 * lv).exp() * n).detach(), "no gradient"),
    (REPARAMETERISE, lambda m, lv, n: m.float() + (0.5 * lv.float()).exp() * n.float(), "dtype"),
    (KL_DIAGONAL_GAUSSIAN, lambda m, lv: _kl(m, lv, reduce="mean"), "averaged over the latent"),
    (KL_DIAGONAL_GAUSSIAN, lambda m, lv: _kl(m, lv, half=False), "1/2 is missing"),
    (KL_DIAGONAL_GAUSSIAN, lambda m, lv: _kl(m, lv, minus_one=False), "-1 is missing"),
    (KL_DIAGONAL_GAUSSIAN, lambda m, lv: 0.5 * (m.square() + lv.exp() - 1 - lv).sum(), "one number for the whole"),
    (KL_DIAGONAL_GAUSSIAN, lambda m, lv: 0.5 * (m.square() + lv.exp() - 1 + lv).flatten(1).sum(1), "sign of logvar"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w, recon="mean"), "averaged over the pixels"),
    (VAE_LOSS, lambda v, x, n, w: (lambda m, lv: (v.decode(m + (0.5 * lv).exp() * n) - x).square().flatten(1).sum(1)
                                   + w * 0.5 * (m.square() + lv.exp() - 1 - lv).flatten(1).mean(1))(*v.encode(x)),
     "the KL was averaged over the latent's numbers"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w, sample=False), "you decoded the mean"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w, weight="recon"), "multiplies the reconstruction"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w, weight="none"), "kl_weight was ignored"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w, recon="half"), "variance 1"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w, recon="abs"), "Laplace"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w, sign=-1.0), "subtracted"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w).mean(), "returned one number"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, torch.randn_like(n), w), "same noise gave different"),
    (VAE_LOSS, lambda v, x, n, w: _vae_variant(v, x, n, w).detach(), "no gradient"),
    # values right, gradient cut: z detached before decoding (the KL alone still moves the encoder)
    (VAE_LOSS, lambda v, x, n, w: (lambda m, lv: (v.decode(reparameterise(m, lv, n).detach()) - x).square().flatten(1)
                                   .sum(1) + w * 0.5 * (m.square() + lv.exp() - 1 - lv).flatten(1).sum(1))(*v.encode(x)),
     "with kl_weight = 0 the encoder gets no gradient"),
    # the mean detached inside the sample: logvar still carries a gradient, but not the right one
    (VAE_LOSS, lambda v, x, n, w: (lambda m, lv: (v.decode(reparameterise(m.detach(), lv, n)) - x).square().flatten(1)
                                   .sum(1) + w * 0.5 * (m.square() + lv.exp() - 1 - lv).flatten(1).sum(1))(*v.encode(x)),
     "the encoder's gradient differs from the reference"),
    (ENCODE_LATENTS, lambda v, x, s: v.encode(x)[0].detach(), "not scaled"),
    (ENCODE_LATENTS, lambda v, x, s: (v.encode(x)[0] / s).detach(), "you divided by scale"),
    (ENCODE_LATENTS, lambda v, x, s: (s * v.encode(x)[1]).detach(), "log-variances"),
    (ENCODE_LATENTS, lambda v, x, s: (v.encode(s * x)[0]).detach(), "you scaled the images"),
    (ENCODE_LATENTS, lambda v, x, s: s * v.encode(x)[0], "carry gradients"),
    (ENCODE_LATENTS, lambda v, x, s: tuple(s * m.detach() for m in v.encode(x)), "returned a tuple"),
    (ENCODE_LATENTS, lambda v, x, s: (s * reparameterise(*v.encode(x), torch.randn(v.encode(x)[0].shape))).detach(),
     "different latents"),
    (ENCODE_LATENTS, lambda v, x, s: (s * v.encode(x.add_(0.1))[0]).detach(), "in place"),
    (DECODE_LATENTS, lambda v, z, s: v.decode(z).detach(), "not unscaled"),
    (DECODE_LATENTS, lambda v, z, s: v.decode(z * s).detach(), "you multiplied by scale"),
    (DECODE_LATENTS, lambda v, z, s: v.decode(z.clamp(-1, 1) / s).detach(), "clipped to [-1, 1]"),
    (DECODE_LATENTS, lambda v, z, s: (v.decode(z) / s).detach(), "then divided the images"),
    (DECODE_LATENTS, lambda v, z, s: v.decode(z / s), "carry gradients"),
    (DECODE_LATENTS, lambda v, z, s: v.decode(z.div_(s)).detach(), "in place"),
]


# --- lesson 11: RePaint's step and DDIM inversion ------------------------------------------------
from diffuse_edu.exercises.editing import (  # noqa: E402
    DDIM_INVERSION,
    REPAINT_STEP,
    _inversion_variant,
    _repaint_variant,
)


def _repaint(**kw):
    return lambda d, x, t, tp, k, m, s, r, noise, cond=None: _repaint_variant(d, x, t, tp, k, m, s, r, noise, cond, **kw)


def _repaint_written(how):
    """RePaint's step as a learner writes it, with one mistake."""
    def step(d, x_t, t, t_prev, known, mask, sched, resample, noise, cond=None):
        tries = resample if t_prev > 0 else 1
        tries = max(1, tries - 1) if how == "one_try_less" else tries
        for r in range(tries):
            pred = d.at_step(x_t, t, cond, schedule=sched)
            x_prev = ddim_step(x_t, pred.x0, pred.eps, t, t_prev, sched, eta=1.0, noise=noise())
            level = t if how == "known_at_t" else t_prev
            known_prev = known if t_prev == 0 else q_sample(known, level, sched, noise())
            x_prev = torch.where(mask.bool(), known_prev, x_prev)
            if r < tries - 1:
                x_t = q_forward(x_prev, t_prev, t, sched, noise())
        return x_prev
    return step


def _fresh_noise(d, x, t, tp, k, m, s, r, noise, cond=None):
    return _repaint_variant(d, x, t, tp, k, m, s, r, lambda: torch.randn(x.shape), cond)


def _inversion(**kw):
    return lambda d, x0, s, n, tm, cond=None: _inversion_variant(d, x0, s, n, tm, cond, **kw)


WRONG_11 = [
    (REPAINT_STEP, _repaint(last_once=False), "the last step runs once"),
    (REPAINT_STEP, _repaint(jump="none"), "each try started from the same x_t"),
    (REPAINT_STEP, _repaint(jump="from x0"), "as if x_{t_prev} were a clean image"),
    (REPAINT_STEP, _repaint(jump_last=True), "after a last jump back"),
    (REPAINT_STEP, _repaint(replace=False), "known region was not put back"),
    (REPAINT_STEP, _repaint(replace_first=True), "before the step"),
    (REPAINT_STEP, _repaint(extra=1), "tries instead of"),
    (REPAINT_STEP, _repaint(eta=0.0), "ancestral"),
    (REPAINT_STEP, _fresh_noise, "never called noise()"),
    (REPAINT_STEP, _repaint(paste="clean"), "pasted in clean"),
    (REPAINT_STEP, _repaint(paste="inverted"), "mask is inverted"),
    (REPAINT_STEP, _repaint_written("known_at_t"), "the known image was noised to t, where the step starts"),
    (REPAINT_STEP, _repaint_written("one_try_less"), "2 tries instead of 3"),
    (DDIM_INVERSION, _inversion(order="down"), "that is sampling"),
    (DDIM_INVERSION, _inversion(skip_first=True), "first step (from t = 0) is missing"),
    (DDIM_INVERSION, _inversion(label="end"), "at the step's end"),
    (DDIM_INVERSION, _inversion(at_zero="x0"), "use x_0 itself as x0_hat"),
    (DDIM_INVERSION, _inversion(at_zero="t0"), "evaluated the network at t = 0"),
    (DDIM_INVERSION, _inversion(eta=1.0), "deterministic DDIM"),
    (DDIM_INVERSION, lambda d, x0, s, n, tm, cond=None: [_inversion_variant(d, x0, s, n, tm, cond)], "returned a list"),
    (DDIM_INVERSION, lambda d, x0, s, n, tm, cond=None: _inversion_variant(d, x0, s, n, tm, None),
     "did not pass cond to the denoiser"),
    (DDIM_INVERSION, lambda d, x0, s, n, tm, cond=None: _one_jump(d, x0, s, tm), "a single jump from x_0"),
]


# --- lesson 12 ---------------------------------------------------------------------------------
from diffuse_edu.diffusion.samplers import flow_times  # noqa: E402
from diffuse_edu.exercises.dit import DIT_BLOCK, PATCHIFY, UNPATCHIFY  # noqa: E402
from diffuse_edu.exercises.flow import FLOW_EULER, FLOW_MATCHING_LOSS  # noqa: E402


def _patch(pattern):
    def fn(x, p):
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError("H and W must be divisible by p")
        return rearrange(x, pattern, p1=p, p2=p)
    return fn


def _unpatch(pattern):
    return lambda tokens, p, h, w: rearrange(tokens, pattern, h=h // p, w=w // p, p1=p, p2=p)


def _block(b, x, c, *, gate=True, one=True, reuse=False, residual=True, parallel=False, norm_after=False):
    sa, ca, ga, sm, cm, gm = b.modulation(c).chunk(6, dim=1)

    def branch(h, norm, shift, scale):
        mod = lambda z: z * ((1 + scale) if one else scale)[:, None] + shift[:, None]  # noqa: E731
        return norm(mod(h)) if norm_after else mod(norm(h))
    y = (x if residual else 0) + (ga[:, None] if gate else 1) * b.attention(branch(x, b.norm1, sa, ca))
    s2, k2, g2 = (sa, ca, ga) if reuse else (sm, cm, gm)
    return (y if residual else 0) + (g2[:, None] if gate else 1) * b.mlp(branch(x if parallel else y, b.norm2, s2, k2))


def _flow_loss(model, x0, tau, eps, *, target="v", swap=False, scale=1000.0, reduce="mean"):
    tau_ = tau.reshape(-1, 1, 1, 1)
    x_tau = tau_ * x0 + (1 - tau_) * eps if swap else (1 - tau_) * x0 + tau_ * eps
    want = {"v": eps - x0, "reversed": x0 - eps, "eps": eps}[target]
    err = (model(x_tau, tau * scale) - want).square().flatten(1)
    return {"mean": err.mean(1), "sum": err.sum(1), "all": err.mean()}[reduce]


def _euler(model, x, steps, *, reverse=False, sign=1.0, at_next=False, scale=1000.0, extra=False):
    ts = flow_times(steps)[::-1] if reverse else flow_times(steps)
    for tau, tau_next in zip(ts[:-1], ts[1:]):
        x = x + sign * (tau_next - tau) * model(x, torch.full((x.shape[0],), (tau_next if at_next else tau) * scale))
    if extra:  # one more evaluation "to be safe"
        model(x, torch.zeros(x.shape[0]))
    return x


WRONG_12 = [
    (PATCHIFY, _patch("b c (h p1) (w p2) -> b (h w) (c p1 p2)"), "put the channels first"),
    (PATCHIFY, _patch("b c (h p1) (w p2) -> b (w h) (p1 p2 c)"), "run down the columns first"),
    (PATCHIFY, _patch("b c (h p1) (w p2) -> b (h w) (p2 p1 c)"), "has them swapped"),
    (PATCHIFY, lambda x, p: x.reshape(x.shape[0], -1, x.shape[1] * p * p), "plain reshape mixes pixels"),
    (PATCHIFY, _patch("b c (p1 h) (p2 w) -> b (h w) (p1 p2 c)"), "H / p apart"),
    (PATCHIFY, lambda x, p: rearrange(x[..., : x.shape[-2] // p * p, : x.shape[-1] // p * p],
                                      "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p), "raise a ValueError"),
    (UNPATCHIFY, lambda t, p, h, w: t.reshape(t.shape[0], -1, h, w), "plain reshape back"),
    (UNPATCHIFY, _unpatch("b (w h) (p1 p2 c) -> b c (h p1) (w p2)"), "ran down the columns"),
    (UNPATCHIFY, _unpatch("b (h w) (c p1 p2) -> b c (h p1) (w p2)"), "reads the channels first"),
    (UNPATCHIFY, _unpatch("b (h w) (p2 p1 c) -> b c (h p1) (w p2)"), "reads them swapped"),
    (UNPATCHIFY, _unpatch("b (h w) (p1 p2 c) -> b c (p1 h) (p2 w)"), "spreads it over pixels"),
    (DIT_BLOCK, lambda b, x, c: _block(b, x, c, gate=False), "multiplied by its gate"),
    (DIT_BLOCK, lambda b, x, c: _block(b, x, c, one=False), "(1 + scale)"),
    (DIT_BLOCK, lambda b, x, c: _block(b, x, c, reuse=True), "its own shift, scale and gate"),
    (DIT_BLOCK, lambda b, x, c: _block(b, x, c, residual=False), "residual connection"),
    (DIT_BLOCK, lambda b, x, c: _block(b, x, c, parallel=True), "after the attention branch"),
    (DIT_BLOCK, lambda b, x, c: _block(b, x, c, norm_after=True), "normalise first"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss(*a, target="reversed"), "the other way"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss(*a, swap=True), "ends swapped"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss(*a, scale=1.0), "tau * 1000"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss(*a, target="eps"), "that target is the noise"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss(*a, reduce="sum"), "not sum"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss(*a, reduce="all"), "returned one number"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss(*a).detach(), "no gradient"),
    (FLOW_EULER, lambda *a: _euler(*a, reverse=True), "walks from 0 to 1"),
    (FLOW_EULER, lambda *a: _euler(*a, sign=-1.0), "moves the other way"),
    (FLOW_EULER, lambda *a: _euler(*a, at_next=True), "at the start of each step"),
    (FLOW_EULER, lambda *a: _euler(*a, scale=1.0), "not tau itself"),
    (FLOW_EULER, lambda *a: _euler(*a, extra=True), "called the network"),
]


# --- lesson 13 ---------------------------------------------------------------------------------
from diffuse_edu.exercises.finetune import PRIOR_PRESERVATION_LOSS  # noqa: E402
from diffuse_edu.exercises.lora import LORA_DELTA, LORA_FORWARD  # noqa: E402


def _lora_fwd(layer, x, *, scale="ok", base=True, merged_check=True, detach=False):
    out = layer.base(x) if base else 0
    if merged_check and layer.merged:
        return out
    low = layer.lora_B(layer.lora_A(x))
    if detach:
        low = low.detach()
    s = {"ok": layer.scale, "alpha": layer.alpha, "inverse": layer.rank / layer.alpha, "none": 1.0}[scale]
    return out + s * low


def _lora_delta(layer, *, scale="ok", conv_reshape=False):
    a, b = layer.lora_A.weight, layer.lora_B.weight
    s = {"ok": layer.scale, "alpha": layer.alpha, "none": 1.0}[scale]
    if a.ndim == 4:
        if conv_reshape:  # B's 1x1 kernel flattened, A's kernels flattened, product reshaped to the wrong layout
            return s * (b.flatten(1) @ a.flatten(1)).reshape(b.shape[0], a.shape[2], a.shape[3], a.shape[1]).permute(0, 3, 1, 2)
        return s * torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
    return s * (b @ a)


def _prior(model, objective, subject, cond, pool, label, weight, generator=None, *, how="ok"):
    b = subject.shape[0]
    idx = torch.randint(0, pool.shape[0], (b,), generator=None if how == "no_generator" else generator)
    if how == "fixed_seed":
        idx = torch.randint(0, pool.shape[0], (b,), generator=torch.Generator().manual_seed(0))
    prior = subject if how == "subject_again" else pool[:b] if how == "first" else pool[idx]
    prior_cond = (cond if how == "subject_label" else Cond(labels=torch.tensor(label)) if how == "one_label"
                  else Cond(labels=torch.full((b,), label)))
    s_loss, _ = objective(model, subject, cond=cond, generator=generator)
    p_loss, _ = objective(model, prior, cond=prior_cond, generator=generator)
    return {"ok": s_loss + weight * p_loss, "weight_on_subject": weight * s_loss + p_loss, "mean": (s_loss + weight * p_loss).mean(),
            "no_prior": s_loss, "subject_again": s_loss + weight * p_loss, "subject_label": s_loss + weight * p_loss,
            "no_generator": s_loss + weight * p_loss, "first": s_loss + weight * p_loss,
            "fixed_seed": s_loss + weight * p_loss, "one_label": s_loss + weight * p_loss}[how]


def test_a_prior_label_given_once_for_the_batch_passes_the_checker():
    """One 0-d label for all the class images is as right as one per image: the checker's stand-in model once
    crashed on it ('int' object is not subscriptable) instead of judging it."""
    assert run_checker(lambda *a: _prior(*a, how="one_label"), PRIOR_PRESERVATION_LOSS).status == "passed"


WRONG_13 = [
    (LORA_FORWARD, lambda l, x: _lora_fwd(l, x, scale="alpha"), "by alpha alone"),
    (LORA_FORWARD, lambda l, x: _lora_fwd(l, x, scale="inverse"), "not r / alpha"),
    (LORA_FORWARD, lambda l, x: _lora_fwd(l, x, scale="none"), "must be scaled by alpha / r"),
    (LORA_FORWARD, lambda l, x: _lora_fwd(l, x, base=False), "frozen base layer's output is missing"),
    (LORA_FORWARD, lambda l, x: l.base(x) + l.scale * l.lora_A(l.lora_B(x)), "Call A first"),
    (LORA_FORWARD, lambda l, x: _lora_fwd(l, x, merged_check=False), "counts it twice"),
    (LORA_FORWARD, lambda l, x: _lora_fwd(l, x, detach=True), "no gradient reached A or B"),
    (LORA_DELTA, lambda l: _lora_delta(l, scale="none"), "scaled by alpha / r (layer.scale)"),
    (LORA_DELTA, lambda l: _lora_delta(l, scale="alpha"), "not by alpha alone"),
    (LORA_DELTA, lambda l: l.scale * (l.lora_A.weight.T @ l.lora_B.weight.T), "B's weight (out, r) times A's"),
    (LORA_DELTA, lambda l: _lora_delta(l, conv_reshape=True), "lora_delta of a LoRAConv2d"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="weight_on_subject"), "not the subject's"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="subject_label"), "carry the class's label"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="subject_again"), "not on the subject's images again"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="no_prior"), "prior term is missing"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="mean"), "returned one number"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="no_generator"), "with the generator passed in"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="first"), "the first images of the pool every time"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a, how="fixed_seed"), "the same images whatever the generator"),
    (LORA_FORWARD, lambda l, x: torch.nn.functional.linear(x, l.base.weight, l.base.bias)
     + l.scale * l.lora_B(l.lora_A(x)), "the same code must serve a convolution"),
]


# --- lesson 14 ---------------------------------------------------------------------------------
from diffuse_edu.diffusion.distillation import distillation_target as _target_ref  # noqa: E402
from diffuse_edu.diffusion.distillation import x0_for_step  # noqa: E402
from diffuse_edu.diffusion.objectives import per_example_mse  # noqa: E402
from diffuse_edu.diffusion.prediction import x0_to_v  # noqa: E402
from diffuse_edu.diffusion.samplers import ddim_step  # noqa: E402
from diffuse_edu.exercises.distillation import DISTILLATION_STEP, DISTILLATION_TARGET  # noqa: E402


def _target(teacher, x, t, m, n, sched, *, how="ok"):
    p = teacher.at_step(x, t)
    if how == "one_step":
        return p.x0
    mid = ddim_step(x, p.x0, p.eps, t, m, sched)
    if how == "stop_at_mid":
        return x0_for_step(x, mid, t, m, sched)
    q = p if how == "stale" else teacher.at_step(mid, m)
    end = ddim_step(mid, q.x0, q.eps, m, n, sched)
    if how == "endpoint":
        return end
    a_t, a_n = sched.alpha_bar[t].item() ** 0.5, sched.alpha_bar[n].item() ** 0.5
    s_t, s_n = (1 - a_t**2) ** 0.5, (1 - a_n**2) ** 0.5
    ratio = s_t / s_n if how == "inverted" else s_n / s_t
    return (end - ratio * x) / (a_n - ratio * a_t)


def _dstep(student, teacher, opt, x0, t, m, n, eps, sched, clip=None, *, how="ok"):
    ab = sched.alpha_bar[t].item()
    x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
    with torch.enable_grad() if how == "teacher_grad" else torch.no_grad():
        if how == "teacher_grad":
            for p_ in teacher.model.parameters():
                p_.requires_grad_(True)
            target_x0 = _target_ref.__wrapped__(teacher, x_t, t, m, n, sched)
        else:
            target_x0 = _target_ref(teacher, x_t, t, m, n, sched)
    target = target_x0 if how == "x0_space" else x0_to_v(x_t, target_x0, ab)
    seen = x0 if how == "clean_input" else x_t
    loss = per_example_mse(student(seen, t if how == "int_t" else torch.full((x0.shape[0],), t)), target)
    if how != "no_zero_grad":
        opt.zero_grad(set_to_none=True)
    (loss.sum() if how == "sum" else loss.mean()).backward()
    if clip is not None and how == "clip_value":
        torch.nn.utils.clip_grad_value_(student.parameters(), clip)
    elif clip is not None and how != "no_clip":
        torch.nn.utils.clip_grad_norm_(student.parameters(), clip)
    if how != "no_step":
        opt.step()
    return loss if how == "attached" else loss.detach()


WRONG_14 = [
    (DISTILLATION_TARGET, lambda *a: _target(*a, how="one_step"), "the teacher's first estimate at t"),
    (DISTILLATION_TARGET, lambda *a: _target(*a, how="endpoint"), "solve the step's formula for x0"),
    (DISTILLATION_TARGET, lambda *a: _target(*a, how="stop_at_mid"), "evaluate the teacher again at t_mid"),
    (DISTILLATION_TARGET, lambda *a: _target(*a, how="stale"), "or two steps with the same estimates"),
    (DISTILLATION_TARGET, lambda *a: _target(*a, how="inverted"), "not the other way round"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="x0_space"), "not with the x0 itself"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="teacher_grad"), "the teacher received gradients"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="no_zero_grad"), "stale gradients"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="no_step"), "call optimizer.step()"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="sum"), "not the sum"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a).mean(), "returned one number"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="clean_input"), "not the clean x0"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="int_t"), "takes the noise level as a tensor"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="no_clip"), "took the unclipped update"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="clip_value"), "clip_grad_value_ clips each entry"),
    (DISTILLATION_STEP, lambda *a: _dstep(*a, how="attached"), "return loss.detach()"),
]


# --- every checker of lessons 02-14 ------------------------------------------------------------
ALL_WRONG = (WRONG + WRONG_08 + WRONG_03_05 + WRONG_05_06 + WRONG_07 + WRONG_09 + WRONG_10 + WRONG_11 + WRONG_12 + WRONG_13
             + WRONG_14)
CHECKERS = list({id(c): c for c, _, _ in ALL_WRONG}.values())


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.name)
def test_reference_versions_pass_their_checker(checker):
    assert run_checker(checker.reference, checker).status == "passed"


@pytest.mark.parametrize("checker, wrong, expected", ALL_WRONG, ids=[f"{c.name}-{e[:24]}" for c, _, e in ALL_WRONG])
def test_wrong_answers_get_their_own_message(checker, wrong, expected):
    verdict = run_checker(wrong, checker)
    assert verdict.status == "failed" and expected in _message(verdict), verdict.message


@pytest.mark.parametrize("checker", CHECKERS, ids=lambda c: c.name)
def test_every_checker_tells_at_least_three_mistakes_apart(checker):
    messages = {run_checker(w, checker).message for c, w, _ in ALL_WRONG if c is checker}
    assert len(messages) >= 3


def test_ddim_checker_catches_a_step_that_divides_by_sqrt_alpha_bar_at_zero_terminal_snr():
    """Rebuilding x0_hat from eps_hat breaks at t = T of a zero-SNR schedule: that case names it."""
    from diffuse_edu.exercises.samplers import _ddim_zero_snr

    def rebuilds(x, x0, e, t, tp, s, *, eta=0.0, noise=None):
        return _ddim(x, x0, e, t, tp, s, eta=eta, noise=noise, rebuild=True)

    with pytest.raises(Mismatch, match="zero-terminal-SNR schedule returned inf or NaN"):
        _ddim_zero_snr(rebuilds)
    assert run_checker(lambda *a, **k: _ddim(*a, **k), DDIM_STEP).status == "passed"


def test_the_dtype_message_fits_any_exercise():
    with pytest.raises(Mismatch, match="another dtype .*cast it with .to\\(x.dtype\\)") as info:
        compare(torch.zeros(2, dtype=torch.float64), torch.zeros(2), what="f(x)")
    assert "schedule" not in str(info.value)



def test_tokenize_reference_is_what_the_checker_wants():
    ids, mask = tokenize(["A red circle", ""], ("<pad>", "<bos>", "<eos>", "<unk>", "a", "red"), 6)
    assert ids.tolist() == [[BOS, 4, 5, UNK, EOS, PAD], [BOS, EOS, PAD, PAD, PAD, PAD]]
    assert mask.dtype == torch.bool and mask.sum().item() == 7


def test_hints_are_progressive_and_never_the_answer(capsys):
    from diffuse_edu.exercises import CHECKERS as REGISTERED
    from diffuse_edu.exercises import hint

    for checker in CHECKERS:
        assert len(checker.hints) >= 2, f"{checker.name} needs a first nudge and a second hint"
        assert checker.hints[0] != checker.hints[1]
    capsys.readouterr()
    shown = []
    for _ in range(3):
        assert hint("scale_shift") is None  # printed once: a bare hint(...) as a cell's last line shows it once
        shown.append(capsys.readouterr().out)
    first, second, third = shown
    assert first.startswith("Hint 1 of 2") and second.startswith("Hint 2 of 2") and third == second
    assert "h * (1 + scale) + shift" not in first + second  # the key line stays out of the hints
    with pytest.raises(KeyError, match="The course's exercises are: .*residual_block") as caught:
        hint("no_such_exercise")
    assert "did you mean" not in str(caught.value)
    with pytest.raises(KeyError, match="did you mean 'flow_matching_loss'"):
        hint("flow_loss")
    assert "scale_shift" in REGISTERED

    def guided_forward(model, x, t, cond, scale, null):  # a learner's function, passed itself
        raise NotImplementedError
    hint(guided_forward)
    out = capsys.readouterr().out
    assert out.startswith("Hint ") and " for guided_forward: " in out


def test_every_exercise_is_known_to_hint_in_a_fresh_interpreter():
    """hint("residual_block") before any lesson import (the trial saw "known: ." with an empty list)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from diffuse_edu.exercises import hint; hint('residual_block')"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("Hint 1 of 2 for residual_block:")


# --- issue 21: what a trial of six exercises ran into ------------------------------------------
def test_a_wrong_mask_is_described_as_a_mask():
    with pytest.raises(Mismatch, match=r"differs from the expected mask at 1 of 4 places \(first at index \(0, 1\): got "
                                       r"False, expected True\)"):
        compare(torch.tensor([[True, False], [True, False]]), torch.tensor([[True, True], [True, False]]), what="m")


@pytest.mark.parametrize("how, message", [
    ("bos", "<bos> counts as a real token"), ("eos", "<eos> counts as a real token"),
    ("all", "must be False on the padding"), ("punctuation", "split with words(text)")])
def test_tokenize_names_the_mask_and_splitting_conventions(how, message):
    def wrong(texts, vocab, max_len):
        if how == "punctuation":
            index = {w: i for i, w in enumerate(vocab)}
            ids = torch.full((len(texts), max_len), PAD)
            for r, text in enumerate(texts):
                row = [BOS] + [index.get(w, UNK) for w in text.lower().split()][: max_len - 2] + [EOS]
                ids[r, : len(row)] = torch.tensor(row)
            return ids, ids != PAD
        ids, mask = tokenize(texts, vocab, max_len)
        mask = mask.clone()
        if how == "bos":
            mask[:, 0] = False
        elif how == "eos":
            mask[ids == EOS] = False
        else:
            mask[:] = True
        return ids, mask
    verdict = run_checker(wrong, TOKENIZE)
    assert verdict.status == "failed" and message in _message(verdict), verdict.message


@pytest.mark.parametrize("kl, message", [
    (lambda m, lv: 0.5 * (m.square() + (0.5 * lv).exp() - 1 - lv).flatten(1).sum(1), "is the standard deviation; the KL"),
    (lambda m, lv: 0.5 * (m + lv.exp() - 1 - lv).flatten(1).sum(1), "the mean enters squared"),
    (lambda m, lv: 0.5 * (m.square() + lv.exp() - 1 - 0.5 * lv).flatten(1).sum(1), "not the log of the standard deviation"),
    (lambda m, lv: 0.5 * (m.square() + lv.exp() - 1 - lv).flatten(1).sum(1) * 1.37,
     "matches none of the usual mistakes: compare your code with Kingma & Welling 2014, App. B"),
])
def test_the_kl_checker_names_sigma_for_sigma_squared_and_points_to_the_equation(kl, message):
    verdict = run_checker(kl, KL_DIAGONAL_GAUSSIAN)
    assert verdict.status == "failed" and message in _message(verdict), verdict.message


def test_a_shape_error_keeps_pytorchs_text_and_unet_forward_gives_the_shape_at_each_level():
    from diffuse_edu.models.unet import encode

    def bottom_up_wrong(unet, x, t, cond=None):  # decoder levels taken top-down: the shapes cannot meet
        emb = unet.embed(t, cond)
        h, skips = encode(unet, x, emb, cond)
        h = unet.middle(h, emb, cond)
        for level in range(len(unet.decoder)):
            h = torch.cat([unet.upsamples[level](h), skips[level]], dim=1)
            for block in unet.decoder[level]:
                h = block(h, emb, cond)
        return unet.out(h)
    message = run_checker(bottom_up_wrong, UNET_FORWARD).message
    assert "but got 32 channels instead)" in message  # PyTorch's message whole, shapes included
    assert "The shapes (C, H, W) should be: encoder level 0: (8, 8, 8), kept for decoder level 0" in message
    assert "middle: (32, 2, 2)" in message and "decoder level 1: upsampled to (32, 4, 4)" in message


def test_dropout_after_the_last_convolution_is_caught_in_training_mode():
    import torch.nn.functional as F

    def late(block, x, emb):
        h = block.conv1(F.silu(block.norm1(x)))
        h = block.norm2(h)
        if block.scale_shift is not None:
            h = block.scale_shift(h, emb)
        return block.dropout(block.conv2(F.silu(h))) + block.shortcut(x)
    verdict = run_checker(late, RESIDUAL_BLOCK)
    assert verdict.status == "failed" and "not after the convolution" in verdict.message, verdict.message


def test_second_hints_nudge_rather_than_list_the_solution():
    from diffuse_edu.exercises.training import TRAINING_STEP as STEP
    old = [(RESIDUAL_BLOCK, "block.norm1, conv1, norm2, scale_shift, dropout, conv2, shortcut"),
           (UNET_FORWARD, "append at each encoder level but the last"),
           (STEP, "clip with torch.nn.utils.clip_grad_norm_ between backward() and step()")]
    for checker, checklist in old:
        assert checklist not in checker.hints[1]


def test_every_checker_says_where_the_lesson_states_what_to_compute():
    from diffuse_edu.exercises import _every_checker
    course = {n: c for n, c in _every_checker().items() if c.reference.__module__.startswith("diffuse_edu.")}
    missing = [name for name, c in course.items() if "lesson" not in c.see.lower()]
    assert len(course) >= 29 and not missing, missing


# --- issue 21: three more named mistakes for every exercise of the course ------------------------
from diffuse_edu.exercises.metrics import SQRTM_PSD  # noqa: E402
from diffuse_edu.exercises.reverse_process import DDPM_STEP, EPS_LOSS, _off_by_one  # noqa: E402
from diffuse_edu.exercises.samplers import DDIM_STEP, HEUN_STEP  # noqa: E402
from diffuse_edu.exercises.time_embedding import SCALE_SHIFT, SINUSOIDAL_EMBEDDING  # noqa: E402
from diffuse_edu.exercises.training import EMA_UPDATE, TRAINING_STEP  # noqa: E402
from diffuse_edu.exercises.unet import (  # noqa: E402
    ATTENTION_BLOCK,
    RESIDUAL_BLOCK,
    UNET_FORWARD,
    _attn_variant,
    _explicit,
    _res_variant,
    _unet_variant,
)


def _ab_t(s, t, like):
    return s.alpha_bar[t].to(like.dtype).reshape(-1, *[1] * (like.ndim - 1))


EXTRA_21 = [
    (TO_UNIT_RANGE, lambda x: x.float() / 127.5, "values lie in [0, 2]"),
    (TO_UNIT_RANGE, lambda x: x.float() // 127.5 - 1, "floor division"),
    (TO_UNIT_RANGE, lambda x: (x.float() - x.float().mean()) / x.float().std(), "standardised"),
    (Q_SAMPLE, lambda x0, t, s, e: _ab_t(s, t, x0).sqrt() * x0 + e, "noise is not scaled"),
    (Q_SAMPLE, lambda x0, t, s, e: _ab_t(s, t, x0) * x0 + (1 - _ab_t(s, t, x0)).sqrt() * e,
     "x0's weight is alpha_bar_t, a variance"),
    (Q_SAMPLE, lambda x0, t, s, e: _ab_t(s, t, x0).sqrt() * x0 + (1 - _ab_t(s, t, x0)) * e,
     "the noise's weight is 1 - alpha_bar_t, a variance"),
    (Q_SAMPLE, lambda x0, t, s, e: _ab_t(s, t, x0).sqrt() * x0 + (1 - _ab_t(s, t, x0).sqrt()) * e,
     "not 1 - sqrt(alpha_bar_t)"),
    (Q_SAMPLE, lambda x0, t, s, e: x0 + ((1 - _ab_t(s, t, x0)) / _ab_t(s, t, x0)).sqrt() * e, "Karras"),
    (EPS_LOSS, lambda m, x0, t, e, s: ((m(q_sample(x0, t, s, e), t - 1) - e) ** 2).mean(), "told t - 1"),
    (EPS_LOSS, lambda m, x0, t, e, s: ((m(q_sample(x0, t, s, e), t) - (1 - s.alpha_bar[t].float())[:, None].sqrt() * e)
                                       ** 2).mean(), "scaled noise"),
    (EPS_LOSS, lambda m, x0, t, e, s: ((m(q_sample(x0, t, s, e), t) - e) ** 2).mean(1).sum(), "summed over the batch"),
    (DDPM_STEP, _off_by_one, "off by one"),
    (DDPM_STEP, lambda x, e, t, s, n: x - _col(s.betas, t, x) / (1 - _col(s.alpha_bar, t, x)).sqrt() * e
     + (_col(s.betas, t, x) * (1 - _col(s.alpha_bar, t - 1, x)) / (1 - _col(s.alpha_bar, t, x))).sqrt() * n,
     "mean is not rescaled"),
    (DDPM_STEP, lambda x, e, t, s, n: (x - _col(s.betas, t, x) / (1 - _col(s.alpha_bar, t, x)).sqrt() * e)
     / _col(s.alpha_bar, t - 1, x).sqrt()
     + (_col(s.betas, t, x) * (1 - _col(s.alpha_bar, t - 1, x)) / (1 - _col(s.alpha_bar, t, x))).sqrt() * n,
     "sqrt(alpha_bar_{t-1})"),
    (DDPM_STEP, lambda x, e, t, s, n: _ddpm_extra(x, e, t, s, n, how="beta alone"), "weighted by beta_t alone"),
    (DDPM_STEP, lambda x, e, t, s, n: _ddpm_extra(x, e, t, s, n, how="clipped x0"), "clipped x0_hat to [-1, 1]"),
    (EMA_UPDATE, lambda *a: _ema_loop_rebinding(*a), "binds the loop's name"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _explicit(q, k, v, h, average="k"), "averaged the keys"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _explicit(q, k, v, h, scores="qq"), "with themselves"),
    (MULTI_HEAD_ATTENTION, lambda q, k, v, h: _explicit(q, k, v, h, scores="kq"), "score matrix is transposed"),
    (RESIDUAL_BLOCK, lambda b, x, e: _res_variant(b, x, e, norm2=False), "second GroupNorm (block.norm2) is missing"),
    (RESIDUAL_BLOCK, lambda b, x, e: _res_variant(b, x, e, reuse_norm1=True), "used block.norm1 again"),
    (RESIDUAL_BLOCK, lambda b, x, e: _res_variant(b, x, e, shortcut_early=True), "before the second conv"),
    (ATTENTION_BLOCK, lambda b, x: _attn_variant(b, x, order="qvk"), "keys and values are swapped"),
    (ATTENTION_BLOCK, lambda b, x: _attn_variant(b, x, pass_heads=False), "needs the number of heads"),
    (ATTENTION_BLOCK, lambda b, x: _attn_variant(b, x, flatten=False), "applied to the map itself"),
    (UNET_FORWARD, lambda u, x, t, c=None: _unet_variant(u, x, t, c, fifo=True), "bottom of the stack"),
    (UNET_FORWARD, lambda u, x, t, c=None: _unet_variant(u, x, t, c, up_after_cat=True), "concatenates before upsampling"),
    (UNET_FORWARD, lambda u, x, t, c=None: _unet_variant(u, x, t, c, stem=False), "stem"),
    (UNET_FORWARD, lambda u, x, t, c=None: _unet_variant(u, x, t, c, enc_emb=False), "without the embedding"),
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res_block_extra(b, x, e, how="relu"), "the activation is ReLU"),
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res_block_extra(b, x, e, how="normed shortcut"),
     "shortcut carries the normalised input"),
    (RESIDUAL_BLOCK, lambda b, x, e=None: _res_block_extra(b, x, e, how="dropout first"), "before the second SiLU"),
    (UNET_FORWARD, lambda u, x, t, c=None: _unet_extra(u, x, t, c, how="add skip"), "skip was added"),
    (UNET_FORWARD, lambda u, x, t, c=None: _unet_extra(u, x, t, c, how="no head"), "output head unet.out"),
    (UNET_FORWARD, lambda u, x, t, c=None: _unet_extra(u, x, t, c, how="plus input"), "input x was added"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: _sin_extra(t, d, base=1000.0), "not 1,000"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: _sin_extra(t, d, two_pi=True), "no factor 2 pi"),
    (SINUSOIDAL_EMBEDDING, lambda t, d: _sin_extra(t, d, start=1), "first frequency must be 1"),
    (SCALE_SHIFT, lambda b, h, e: torch.nn.functional.silu(_mod(b, h, e)), "an activation was applied"),
    (SCALE_SHIFT, lambda b, h, e: h * (1 + e.chunk(2, 1)[0][:, :, None, None]) + e.chunk(2, 1)[1][:, :, None, None],
     "goes through block.proj first"),
    (SCALE_SHIFT, lambda b, h, e: h * (1 + b.proj(e).chunk(2, 0)[0][:, :, None, None])
     + b.proj(e).chunk(2, 0)[1][:, :, None, None], "split along the batch"),
    (EMA_UPDATE, lambda e, c, k, d: _ema(e, c, k + 1, d), "one update ahead"),
    (EMA_UPDATE, lambda e, c, k, d: [x.copy_(y) for x, y in zip(e, c)] and None, "copied the model's weights"),
    (EMA_UPDATE, lambda e, c, k, d: _ema_no_model(e, c, k, d), "the model's share"),
    (TRAINING_STEP, lambda *a: _train_step(*a, told="t/T"), "told t / T"),
    (TRAINING_STEP, lambda *a: _train_step(*a, told="t-1"), "told t - 1"),
    (TRAINING_STEP, lambda *a: _train_step(*a, per_example="sum"), "sums the squared errors over the pixels"),
    (SQRTM_PSD, lambda a: torch.linalg.cholesky(a + 1e-12 * torch.eye(len(a), dtype=a.dtype)), "Cholesky"),
    (SQRTM_PSD, lambda a: (lambda w, v: (v * w.square()) @ v.T)(*torch.linalg.eigh(a)), "squared"),
    (SQRTM_PSD, lambda a: torch.diag(torch.linalg.eigvalsh(a).clamp_min(0).sqrt()), "rotate it back"),
    (DDIM_STEP, lambda x, x0, e, t, tp, s, eta=0.0, noise=None: _ddim_variant(x, x0, e, t, tp, s, eta=eta, noise=noise,
                                                                            at="t"), "rebuilds x_t itself"),
    (DDIM_STEP, lambda x, x0, e, t, tp, s, eta=0.0, noise=None: _ddim_variant(x, x0, e, t, tp, s, eta=eta, noise=noise,
                                                                            noise_scale="unscaled"), "added unscaled"),
    (DDIM_STEP, lambda x, x0, e, t, tp, s, eta=0.0, noise=None: _ddim_variant(x, x0, e, t, tp, s, eta=eta, noise=noise,
                                                                            eta_power=2), "not eta squared"),
    (DDIM_STEP, lambda *a, eta=0.0, noise=None: _ddim_variant(*a, eta=eta, noise=noise, x0_weight="plain"),
     "weighted by alpha_bar_prev"),
    (DDIM_STEP, lambda *a, eta=0.0, noise=None: _ddim_variant(*a, eta=eta, noise=noise, at="t - 1"), "landed at t - 1"),
    (DDIM_STEP, lambda *a, eta=0.0, noise=None: _ddim_variant(*a, eta=eta, noise=noise, sigma_form="forward"),
     "1 - alpha_bar_t / alpha_bar_prev alone"),
    (DDIM_STEP, lambda *a, eta=0.0, noise=None: _ddim_variant(*a, eta=eta, noise=noise, check_noise=False),
     "check for it first and raise a ValueError"),
    (DDIM_STEP, lambda *a, eta=0.0, noise=None: (_ddim_variant(*a, eta=eta, noise=noise), a[1]), "returns one tensor"),
    (HEUN_STEP, lambda x, s, sn, d: _heun_variant(x, s, sn, d, direction=-1.0), "runs the wrong way"),
    (HEUN_STEP, lambda x, s, sn, d: _heun_variant(x, s, sn, d, flip=True), "runs the wrong way"),
    (HEUN_STEP, lambda x, s, sn, d: _heun_variant(x, s, sn, d, second_at="x"), "second slope was taken at x"),
    (HEUN_STEP, lambda x, s, sn, d: _heun_variant(x, s, sn, d, average=False), "added, not averaged"),
    (REPARAMETERISE, lambda m, lv, n: m - (0.5 * lv).exp() * n, "subtracted"),
    (REPARAMETERISE, lambda m, lv, n: m + lv.sqrt() * n, "sqrt(logvar) is NaN"),
    (REPARAMETERISE, lambda m, lv, n: m + (0.5 * lv).exp() * torch.randn_like(m), "same noise gave different"),
    (PATCHIFY, _patch("b c (h p1) (w p2) -> b (w h) (p2 p1 c)"), "transposed image"),
    (PATCHIFY, lambda x, p: _patch("b c (h p1) (w p2) -> b (h w) (p1 p2 c)")(x, p).transpose(1, 2), "along axis 1"),
    (PATCHIFY, lambda x, p: rearrange(x, "b c (h p1) (w p2) -> b c (h w) (p1 p2)", p1=p, p2=p), "4-D tensor"),
    (UNPATCHIFY, _unpatch("b (w h) (p2 p1 c) -> b c (h p1) (w p2)"), "swapped everywhere"),
    (UNPATCHIFY, lambda t, p, h, w: rearrange(t, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)", h=h, w=w, p1=p, p2=p),
     "grid of patches is h // p"),
    (UNPATCHIFY, lambda t, p, h, w: rearrange(t, "b (h w) (p1 p2 c) -> b c (w p2) (h p1)", h=h // p, w=w // p, p1=p,
                                              p2=p), "swapped"),
    (DIT_BLOCK, lambda b, x, c: _block_extra(b, x, c, gate_one=True), "not (1 + g) * branch"),
    (DIT_BLOCK, lambda b, x, c: _block_extra(b, x, c, residual_normed=True), "not LayerNorm(x)"),
    (DIT_BLOCK, lambda b, x, c: _block_extra(b, x, c, token_axis=False), "token axis"),
    (DIT_BLOCK, lambda b, x, c: _one_branch_wrong(b, x, c, "attention", one=False),
     "yours multiplies by the scale alone (in the attention branch"),
    (DIT_BLOCK, lambda b, x, c: _one_branch_wrong(b, x, c, "attention", gate=False), "its gate before it is added "
     "(adaLN-Zero starts the gates at 0: that is what makes a fresh block the identity) (in the attention branch"),
    (DIT_BLOCK, lambda b, x, c: _one_branch_wrong(b, x, c, "mlp", residual=False), "(in the MLP branch"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss_extra(*a, told="1-tau"), "told 1 - tau"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss_extra(*a, target="x0"), "not the data x0"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss_extra(*a, sqrt=True), "no square roots"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss_extra(*a, l1=True), "absolute error (L1)"),
    (DISTILLATION_TARGET, lambda *a: _target_ref(*a).clamp(-1, 1), "target was clipped to [-1, 1]"),
    (ATTENTION_BLOCK, lambda b, x: _attn_block_extra(b, x, interleaved=True), "every third channel"),
    (ATTENTION_BLOCK, lambda b, x: _attn_block_extra(b, x, interleaved=False), "tokens themselves served"),
    (LORA_DELTA, lambda l: _lora_delta_extra(l, how="channels last"), "input channels last"),
    (LORA_DELTA, lambda l: _lora_delta_extra(l, how="centre"), "only the kernel's centre"),
    (LORA_DELTA, lambda l: _lora_delta_extra(l, how="merges"), "changed the layer's base weight"),
    (LORA_DELTA, lambda l: l.scale * l.lora_B.weight @ l.lora_A.weight, "lora_delta on a LoRAConv2d raised"),
    (PATCHIFY, lambda x, p: x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, x.shape[1] * p * p),
     "cut right (unfold)"),
    (UNPATCHIFY, lambda t, p, h, w: t.transpose(1, 2).reshape(t.shape[0], -1, h, w), "swapping the token and feature"),
    (DROP_LABELS, lambda *a, **k: _drop_fixed_count(*a, **k), "a fixed number, p_null * B"),
    (REPARAMETERISE, lambda m, lv, n: m * (0.5 * lv).exp() * n, "the mean is multiplied in"),
    (DECODE_LATENTS, lambda v, z, s: v.decode(z / s).clamp(-1, 1).detach(), "decoded images were clipped"),
    (TO_UNIT_RANGE, lambda x: x.double() / 127.5 - 1, "convert with .float()"),
    (FLOW_MATCHING_LOSS, lambda *a: _flow_loss_extra(*a, fresh=True), "draw no random numbers yourself"),
    (FLOW_EULER, lambda *a: _euler_extra(*a, rounded=True), "rounded to a whole step"),
    (FLOW_EULER, lambda *a: _euler_extra(*a, clip=True), "clipped to [-1, 1] along the way"),
    (FLOW_EULER, lambda *a: _euler_extra(*a, fresh=True), "start from the x you are given"),
    (LORA_FORWARD, lambda l, x: l.scale * (l.base(x) + l.lora_B(l.lora_A(x))), "low-rank path only"),
    (LORA_FORWARD, lambda l, x: l.base(x) - l.scale * l.lora_B(l.lora_A(x)), "added, not subtracted"),
    (LORA_FORWARD, lambda l, x: l.base(x) * (1 + l.scale * l.lora_B(l.lora_A(x))), "does not multiply"),
    (LORA_DELTA, lambda l: l.base.weight.detach() + _lora_delta(l), "not the base weight plus it"),
    (LORA_DELTA, lambda l: -_lora_delta(l), "sign is flipped"),
    (LORA_DELTA, lambda l: _lora_delta(l) if l.lora_B.weight.ndim == 2 else _lora_delta(l).transpose(-1, -2),
     "kernel's positions are transposed"),
    (PRIOR_PRESERVATION_LOSS, lambda *a: _prior(*a) / 2, "added, not averaged"),
    (PRIOR_PRESERVATION_LOSS, lambda m, o, s_, c, pool, lb, w, g=None: (1 - w) * o(m, s_, cond=c)[0]
     + w * o(m, pool[: len(s_)], cond=Cond(labels=torch.full((len(s_),), lb)))[0], "not (1 - weight)"),
    (PRIOR_PRESERVATION_LOSS, lambda m, o, s_, c, pool, lb, w, g=None: _prior(m, o, s_, c, pool, 0, w, g), "not label 0"),
    (DISTILLATION_TARGET, lambda *a: _target_extra(*a, how="mid_estimate"), "teacher's estimate at t_mid"),
    (DISTILLATION_TARGET, lambda *a: _target_extra(*a, how="alpha_bar"), "used alpha_bar itself"),
    (DISTILLATION_TARGET, lambda *a: _target_extra(*a, how="plus"), "a sign is flipped"),
    (DISTILLATION_STEP, lambda *a: _dstep_extra(*a, how="told_next"), "told t_next"),
    (DISTILLATION_STEP, lambda *a: _dstep_extra(*a, how="v_at_next"), "not alpha_bar_t_next"),
    (DISTILLATION_STEP, lambda *a: _dstep_extra(*a, how="eps"), "not eps"),
    (DECODE_LATENTS, lambda v, z, s: (v.decode(z / s).detach(), z / s), "returned a tuple"),
]


def _ddim_variant(x, x0, e, t, tp, s, *, eta=0.0, noise=None, at="t_prev", noise_scale="sigma", eta_power=1,
                  x0_weight="sqrt", sigma_form="posterior", check_noise=True):
    tp = t - 1 if at == "t - 1" else tp
    ab, abp = s.alpha_bar[t].item(), s.alpha_bar[tp].item()
    post = ((1 - abp) / (1 - ab) * (1 - ab / abp)) ** 0.5 if sigma_form == "posterior" else (1 - ab / abp) ** 0.5
    sigma = eta**eta_power * post
    if eta > 0 and noise is None and check_noise:
        raise ValueError("eta > 0 needs noise")
    a = ab if at == "t" else abp
    out = (a if x0_weight == "plain" else a**0.5) * x0 + max(1 - a - sigma**2, 0.0) ** 0.5 * e
    if eta > 0 and not check_noise:
        return out + sigma * noise  # noise=None: a TypeError instead of the ValueError
    if sigma > 0:
        out = out + (1.0 if noise_scale == "unscaled" else sigma) * noise
    return out


def _heun_variant(x, s, sn, denoise, *, direction=1.0, flip=False, average=True, second_at="euler"):
    def slope(z, sig):
        return (denoise(z, sig) - z) / sig if flip else (z - denoise(z, sig)) / sig
    d = slope(x, s)
    xe = x + direction * (sn - s) * d
    if sn == 0:
        return xe
    dn = slope(xe if second_at == "euler" else x, sn)
    return x + direction * (sn - s) * ((d + dn) / 2 if average else d + dn)


def _block_extra(b, x, c, *, gate_one=False, residual_normed=False, token_axis=True):
    sa, ca, ga, sm, cm, gm = b.modulation(c).chunk(6, dim=1)
    ax = (lambda v: v[:, None]) if token_axis else (lambda v: v)  # noqa: E731
    gate = (lambda v: 1 + ax(v)) if gate_one else ax  # noqa: E731
    y = (b.norm1(x) if residual_normed else x) + gate(ga) * b.attention(b.norm1(x) * (1 + ax(ca)) + ax(sa))
    return (b.norm2(y) if residual_normed else y) + gate(gm) * b.mlp(b.norm2(y) * (1 + ax(cm)) + ax(sm))


def _flow_loss_extra(model, x0, tau, eps, *, told="tau", target="v", sqrt=False, l1=False, fresh=False):
    eps = torch.randn_like(eps) if fresh else eps
    tau_ = tau.reshape(-1, 1, 1, 1)
    x_tau = (1 - tau_).sqrt() * x0 + tau_.sqrt() * eps if sqrt else (1 - tau_) * x0 + tau_ * eps
    t = (1 - tau if told == "1-tau" else tau) * 1000
    error = model(x_tau, t) - (x0 if target == "x0" else eps - x0)
    return (error.abs() if l1 else error.square()).flatten(1).mean(1)


def _euler_extra(model, x, steps, *, rounded=False, clip=False, fresh=False):
    x = torch.randn_like(x) if fresh else x
    ts = flow_times(steps)
    for tau, tau_next in zip(ts[:-1], ts[1:]):
        t = torch.full((x.shape[0],), tau * 1000)
        x = x + (tau_next - tau) * model(x, t.round() if rounded else t)
        x = x.clamp(-1, 1) if clip else x
    return x


def _target_extra(teacher, x, t, m, n, sched, *, how):
    p = teacher.at_step(x, t)
    mid = ddim_step(x, p.x0, p.eps, t, m, sched)
    q = teacher.at_step(mid, m)
    if how == "mid_estimate":
        return q.x0
    end = ddim_step(mid, q.x0, q.eps, m, n, sched)
    ab_t, ab_n = sched.alpha_bar[t].item(), sched.alpha_bar[n].item()
    ratio = ((1 - ab_n) / (1 - ab_t)) ** 0.5
    if how == "alpha_bar":
        return (end - ratio * x) / (ab_n - ratio * ab_t)
    return (end + ratio * x) / (ab_n**0.5 + ratio * ab_t**0.5)


def _dstep_extra(student, teacher, opt, x0, t, m, n, eps, sched, clip=None, *, how):
    ab, ab_n = sched.alpha_bar[t].item(), sched.alpha_bar[n].item()
    x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * eps
    with torch.no_grad():
        target_x0 = _target_ref(teacher, x_t, t, m, n, sched)
    target = {"v_at_next": x0_to_v(x_t, target_x0, ab_n), "told_next": x0_to_v(x_t, target_x0, ab),
              "eps": (x_t - ab**0.5 * target_x0) / (1 - ab) ** 0.5}[how]
    loss = per_example_mse(student(x_t, torch.full((x0.shape[0],), n if how == "told_next" else t)), target)
    opt.zero_grad(set_to_none=True)
    loss.mean().backward()
    opt.step()
    return loss.detach()


def _sin_extra(t, dim, *, base=10_000.0, two_pi=False, start=0):
    half = dim // 2
    f = torch.exp(-math.log(base) * (torch.arange(half) + start) / half)
    a = t.float()[:, None] * f * (2 * math.pi if two_pi else 1)
    return torch.nn.functional.pad(torch.cat([torch.sin(a), torch.cos(a)], 1), (0, dim % 2))


def _ddpm_extra(x, e, t, s, n, *, how):
    beta, ab, ab_prev = _col(s.betas, t, x), _col(s.alpha_bar, t, x), _col(s.alpha_bar, t - 1, x)
    std = (beta * (1 - ab_prev) / (1 - ab)).sqrt()
    if how == "beta alone":
        return (x - beta * e) / (1 - beta).sqrt() + std * n
    x0 = ((x - (1 - ab).sqrt() * e) / ab.sqrt()).clamp(-1, 1)  # Ho et al.'s code with clip_denoised
    return ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x + std * n


def _ema_loop_rebinding(ema, cur, k, decay):
    d = min(decay, (1 + k) / (10 + k))
    for e, c in zip(ema, cur):
        e = d * e + (1 - d) * c  # noqa: PLW2901 - the mistake: rebinds the loop's name, the list keeps the old tensor


def _one_jump(d, x0, s, t_max):
    ab = s.alpha_bar[t_max].item()
    return ab**0.5 * x0 + (1 - ab) ** 0.5 * d.at_step(x0, 1).eps


def _lora_delta_extra(layer, *, how):
    delta = _lora_delta(layer)
    if how == "merges":
        layer.base.weight.add_(delta)  # right values, but the layer is merged behind merge()'s back
        return delta
    if layer.lora_A.weight.ndim == 2:
        return delta
    a, b = layer.lora_A.weight, layer.lora_B.weight
    (o, r), (_, i, k, _) = b.shape[:2], a.shape
    if how == "channels last":
        return layer.scale * (b.reshape(o, r) @ a.permute(0, 2, 3, 1).reshape(r, -1)).reshape(o, i, k, k)
    centre = torch.zeros_like(delta)
    centre[..., k // 2, k // 2] = delta[..., k // 2, k // 2]
    return centre


def _attn_block_extra(block, x, *, interleaved):
    b, c, h, w = x.shape
    tokens = rearrange(block.norm(x), "b c h w -> b (h w) c")
    if interleaved:
        q, k, v = block.to_qkv(tokens).reshape(b, h * w, c, 3).unbind(-1)
    else:
        q = k = v = tokens
    return x + rearrange(block.to_out(block.attend(q, k, v, block.heads)), "b (h w) c -> b c h w", h=h, w=w)


def _res_block_extra(block, x, emb, *, how):
    act = torch.nn.functional.relu if how == "relu" else torch.nn.functional.silu
    h = block.norm2(block.conv1(act(block.norm1(x))))
    h = block.scale_shift(h, emb) if block.scale_shift is not None else h
    h = block.conv2(act(block.dropout(h)) if how == "dropout first" else block.dropout(act(h)))
    return h + block.shortcut(block.norm1(x) if how == "normed shortcut" else x)


def _unet_extra(unet, x, t, cond, *, how):
    from diffuse_edu.models.unet import encode

    emb = unet.embed(t, cond)
    h, skips = encode(unet, x, emb, cond)  # the encoder as the library runs it; the mistakes come after
    h = unet.middle(h, emb, cond)
    for level in reversed(range(len(unet.decoder))):
        h = unet.upsamples[level](h)
        h = h + skips.pop() if how == "add skip" else torch.cat([h, skips.pop()], dim=1)
        for block in unet.decoder[level]:
            h = block(h, emb, cond)
    return {"no head": h, "plus input": unet.out(h) + x}.get(how, unet.out(h))


def _drop_fixed_count(labels, p_null, null, generator=None):
    """Drops round(p_null * B) labels chosen at random: the right share on average, never a varying count."""
    out = labels.clone()
    out[torch.randperm(len(labels), generator=generator)[: int(p_null * len(labels))]] = null
    return out


def _ema_no_model(ema, cur, k, decay):
    d = min(decay, (1 + k) / (10 + k))
    for e in ema:
        e.mul_(d)


@pytest.mark.parametrize("checker, wrong, expected", EXTRA_21, ids=[f"{c.name}-{e[:24]}" for c, _, e in EXTRA_21])
def test_three_more_named_mistakes_per_exercise(checker, wrong, expected):
    verdict = run_checker(wrong, checker)
    assert verdict.status == "failed" and expected in _message(verdict), verdict.message


#: Wrong answers listed in the dedicated tests above (their own dicts and parametrisations), by exercise.
_LISTED_ELSEWHERE = {"q_sample": len(Q_SAMPLE_WRONG), "to_unit_range": len(TO_UNIT_RANGE_WRONG) + 1,  # + in place
                     "tokenize": 4, "kl_diagonal_gaussian": 3,
                     # lesson 15: listed in tests/test_score_exercises.py, which checks each message is distinct
                     "dsm_loss": 12, "langevin_step": 8, "annealed_langevin": 8, "reverse_sde_step": 9,
                     "hutchinson_divergence": 10,
                     # lesson 18: listed in tests/test_classifier_guidance_exercises.py
                     "noisy_classifier_loss": 9, "classifier_guided_eps": 11,
                     "negative_guided_forward": 8, "bracketing_scales": 12,
                     # lesson 17: listed in tests/test_discrete_exercises.py
                     "mask_tokens": 9, "masked_diffusion_loss": 9, "unmask_step": 8,
                     # lesson 16: listed in tests/test_consistency_exercises.py
                     "consistency_function": 10, "consistency_sampler": 9, "cd_loss": 11,
                     # lesson 19: listed in tests/test_control_adapter.py
                     "adapter_forward": 8, "mask_iou": 7, "injected_cross_attention": 7}


def test_every_exercise_of_the_course_names_at_least_seven_typical_mistakes():
    """At least four typical wrong answers per checker (issue 19) and three more (issue 21), each with its own
    message, all listed in this file."""
    from diffuse_edu.exercises import _every_checker

    listed: dict[str, set[str]] = {}
    for checker, _, expected in list(ALL_WRONG) + list(EXTRA_21):
        if "off by up to" not in expected:  # a generic message names nothing
            listed.setdefault(checker.name, set()).add(expected)
    course = [name for name, c in _every_checker().items() if c.reference.__module__.startswith("diffuse_edu.")]
    counts = {name: len(listed.get(name, ())) + _LISTED_ELSEWHERE.get(name, 0) for name in course}
    assert len(counts) >= 37
    short = {name: n for name, n in counts.items() if n < 7}
    assert not short, f"fewer than 7 named mistakes: {short}"


def _one_branch_wrong(block, x, c, branch, *, one=True, gate=True, residual=True):
    """dit_block with a mistake in one branch only (the learner got the other one right)."""
    sa, ka, ga, sm, km, gm = block.modulation(c)[:, None].chunk(6, dim=-1)

    def step(h, norm, f, s, k, g, wrong):
        out = f(norm(h) * ((1 + k) if one or not wrong else k) + s)
        return (h if residual or not wrong else 0) + (g if gate or not wrong else 1) * out

    h = step(x, block.norm1, block.attention, sa, ka, ga, branch == "attention")
    return step(h, block.norm2, block.mlp, sm, km, gm, branch == "mlp")


# --- changing an argument in place -----------------------------------------------------------------
def _every_course_checker():
    from diffuse_edu.exercises import _every_checker

    return sorted(_every_checker().values(), key=lambda c: c.name)


def _then_change_a_tensor_argument(reference, seen: list):
    """The reference's answer, after which the first tensor argument is changed in place (as `x += ...` in a
    sampler's loop would): the value returned is right, the caller's tensor is not."""
    def wrong(*args, **kwargs):
        out = reference(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        seen.extend(tensors[:1])
        if tensors:
            t = tensors[0]
            with torch.no_grad():
                if t.dtype == torch.bool:
                    t.logical_not_()
                else:
                    t.add_(1)
        return out
    return wrong


@pytest.mark.parametrize("checker", _every_course_checker(), ids=lambda c: c.name)
def test_an_answer_that_changes_its_inputs_in_place_fails_and_names_the_argument(checker):
    if checker.changes_inputs:
        pytest.skip("changing its arguments in place is this exercise's job (its own cases check which ones)")
    seen = []
    verdict = run_checker(_then_change_a_tensor_argument(checker.reference, seen), checker)
    if not seen:
        pytest.skip(f"{checker.name} takes no tensor argument (strings, or a layer whose weights it reads)")
    assert verdict.status == "failed" and "in place" in verdict.message, verdict.message


def test_flow_euler_with_x_plus_equals_names_x():
    from diffuse_edu.exercises.flow import FLOW_EULER

    def plus_equals(model, x, steps):
        taus = torch.linspace(1, 0, steps + 1)
        for a, b in zip(taus[:-1], taus[1:]):
            x += (b - a) * model(x, torch.full((x.shape[0],), a.item() * 1000))
        return x

    verdict = run_checker(plus_equals, FLOW_EULER)
    assert verdict.status == "failed" and "changed its argument `x` in place" in verdict.message
    assert "x = x + ..." in verdict.message


# --- issue 48: gradients, the DDIM step upwards, stand-ins as strict as the lessons' networks ----
# Each wrong answer below passed its checker before (right values, or a stand-in too forgiving to
# see the mistake); each now fails with the message quoted.
from diffuse_edu.diffusion.samplers import timesteps  # noqa: E402
from diffuse_edu.exercises.editing import _repaint_variant as _repaint_ok  # noqa: E402


def _kl_no_grad(mean, logvar):
    with torch.no_grad():
        return _kl(mean, logvar)


def _vae_kl_no_grad(vae, x, noise, w):
    mean, logvar = vae.encode(x)
    recon = (vae.decode(reparameterise(mean, logvar, noise)) - x).square().flatten(1).sum(1)
    with torch.no_grad():  # "the KL is only a regulariser"
        kl = _kl(mean, logvar)
    return recon + w * kl


def _lora_base_no_grad(layer, x):
    with torch.no_grad():  # "the base layer is frozen"
        base = layer.base(x)
    return base if layer.merged else base + layer.scale * layer.lora_B(layer.lora_A(x))


def _lora_input_detached(layer, x):
    low = layer.lora_B(layer.lora_A(x.detach()))
    return layer.base(x) if layer.merged else layer.base(x) + layer.scale * low


def _prior_no_grad(model, objective, subject, cond, pool, label, weight, generator=None):
    b = subject.shape[0]
    prior = pool[torch.randint(0, pool.shape[0], (b,), generator=generator)]
    s_loss, _ = objective(model, subject, cond=cond, generator=generator)
    with torch.no_grad():  # "the prior images come from the frozen model"
        prior_cond = Cond(labels=torch.full((b,), label))
        p_loss, _ = objective(model, prior, cond=prior_cond, generator=generator)
    return s_loss + weight * p_loss


def _ddim_sigma_always(x, x0, e, t, tp, s, *, eta=0.0, noise=None, sqrt="torch"):
    """Right downwards; sigma's formula evaluated even at eta = 0, which breaks upwards."""
    if sqrt == "assert":
        assert tp < t, "t_prev must be below t"
    ab, abp = s.alpha_bar[t], s.alpha_bar[tp]
    if sqrt == "math":
        sigma = eta * math.sqrt((1 - abp.item()) / (1 - ab.item()) * (1 - ab.item() / abp.item()))
    else:
        sigma = eta * ((1 - abp) / (1 - ab) * (1 - ab / abp)).sqrt()
    if eta > 0 and noise is None:
        raise ValueError("eta > 0 needs noise")
    out = float(abp) ** 0.5 * x0 + float(max(1 - abp - sigma**2, 0)) ** 0.5 * e
    return out + float(sigma) * noise if eta > 0 else out


def _inversion_with_nan_step(d, x0, s, steps, t_max, cond=None):
    ts = timesteps(s, steps, t_max=t_max)[::-1]
    x = x0
    for t, t_next in zip(ts[:-1], ts[1:]):
        pred = d.at_step(x, max(t, 1), cond, schedule=s)
        x = _ddim_sigma_always(x, x if t == 0 else pred.x0, pred.eps, t, t_next, s)
    return x


def _euler_time(model, x, steps, *, time):
    ts = flow_times(steps)
    for tau, tau_next in zip(ts[:-1], ts[1:]):
        t = {"0-d": torch.tensor(tau * 1000), "float": tau * 1000}[time]
        x = x + (tau_next - tau) * model(x, t)
    return x


def _repaint_one_draw(d, x, t, tp, k, m, s, r, noise, cond=None):
    draw = noise()  # one draw, reused for every random number
    return _repaint_ok(d, x, t, tp, k, m, s, r, lambda: draw, cond)


class _Twice:
    """A denoiser wrapper that evaluates every call twice (the first result thrown away)."""

    def __init__(self, d):
        self.d = d

    def at_step(self, *a, **k):
        self.d.at_step(*a, **k)
        return self.d.at_step(*a, **k)


def _repaint_twice_per_try(d, *a):
    return _repaint_ok(_Twice(d), *a)


def _guided_view(net, x, t, cond, null, s, rescale=0.0, interval=None, *, t_scale=1.0, dims=None):
    """Right on images; the rescale's .view(B, 1, 1, 1) (or its fixed axes) breaks on vectors."""
    labels = torch.cat([cond.labels, null.labels.expand_as(cond.labels)])
    c, u = net(torch.cat([x, x]), torch.cat([t, t]), Cond(labels=labels)).chunk(2)
    g = u + s * (c - u)
    if rescale:
        axes = dims or tuple(range(1, g.ndim))
        g = rescale * g * (c.std(dim=axes) / g.std(dim=axes)).view(-1, 1, 1, 1) + (1 - rescale) * g
    if interval is not None:
        inside = (t / t_scale >= interval[0]) & (t / t_scale <= interval[1])
        inside = inside.reshape((-1,) + (1,) * (x.ndim - 1))
        g = torch.where(inside, g, c)
    return g


def _lora_delta_by_r(layer):
    a, b = layer.lora_A.weight, layer.lora_B.weight
    full = torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a) if a.ndim == 4 else b @ a
    return full / layer.rank


WRONG_48 = [
    (REPARAMETERISE, lambda m, lv, n: m.detach() + (0.5 * lv).exp() * n, "the mean is detached"),
    (REPARAMETERISE, lambda m, lv, n: m + (0.5 * lv).exp().detach() * n,
     "the standard deviation is detached"),
    (KL_DIAGONAL_GAUSSIAN, _kl_no_grad, "the KL carries no gradient to mean and logvar"),
    (KL_DIAGONAL_GAUSSIAN,
     lambda m, lv: 0.5 * (m.square() + lv.exp().detach() - 1 - lv).flatten(1).sum(1),
     "exp(logvar) is detached"),
    (VAE_LOSS, _vae_kl_no_grad, "the KL term carries no gradient"),
    (LORA_FORWARD, _lora_base_no_grad, "the base layer's output carries no gradient"),
    (LORA_FORWARD, _lora_input_detached, "the input of the low-rank path was detached"),
    (PRIOR_PRESERVATION_LOSS, _prior_no_grad, "the prior term carries no gradient"),
    (DDIM_STEP, _ddim_sigma_always,
     "ddim_step from t = 300 up to t_prev = 600 with eta = 0 returned NaN or inf: lesson 11's DDIM "
     "inversion"),
    (DDIM_STEP, lambda *a, **k: _ddim_sigma_always(*a, **k, sqrt="math"),
     "raised ValueError (math domain error): lesson 11's DDIM inversion runs this same step "
     "upwards"),
    (DDIM_STEP, lambda *a, **k: _ddim_sigma_always(*a, **k, sqrt="assert"),
     "nothing in the step may assume t_prev < t"),
    (DDIM_INVERSION, _inversion_with_nan_step, "ddim_inversion returned NaN or inf"),
    (FLOW_EULER, lambda *a: _euler_time(*a, time="0-d"),
     "t as a tensor of shape (); the lesson's U-Net and DiT"),
    (FLOW_EULER, lambda *a: _euler_time(*a, time="float"), "t as a Python float"),
    (REPAINT_STEP, _repaint_one_draw, "called noise() 1 time(s) for 8 independent draws"),
    (REPAINT_STEP, _repaint_twice_per_try, "twice per try"),
    (GUIDED_FORWARD, lambda *a: _guided_view(*a, t_scale=1000.0), "not t / 1000"),
    (GUIDED_FORWARD, _guided_view,
     "for vectors x of shape (3, 6) the result has shape (3, 1, 3, 6)"),
    (GUIDED_FORWARD, lambda *a: _guided_view(*a, dims=(1, 2, 3)), "raised IndexError"),
    (LORA_DELTA, _lora_delta_by_r, "the change was divided by r alone"),
    (LORA_FORWARD, lambda l, x: l.base(x) + l.lora_B(l.lora_A(x)) / l.rank,
     "the low-rank path was divided by r alone"),
]


@pytest.mark.parametrize("checker, wrong, expected", WRONG_48,
                         ids=[f"{c.name}-{e[:24]}" for c, _, e in WRONG_48])
def test_issue_48_wrong_answers_get_their_own_message(checker, wrong, expected):
    verdict = run_checker(wrong, checker)
    assert verdict.status == "failed" and expected in _message(verdict), verdict.message


def test_guided_forwards_interval_case_tells_excluded_bounds_from_t_over_1000():
    """Its t values once gave both mistakes the same answer (and so the same message)."""
    excluded, over_1000 = (lambda *a: _guided(*a, bounds="open"),
                           lambda *a: _guided_view(*a, t_scale=1000.0))
    messages = {run_checker(wrong, GUIDED_FORWARD).message for wrong in (excluded, over_1000)}
    assert len(messages) == 2


def test_a_ddim_step_right_both_ways_passes_and_the_lesson_07_solution_too():
    """The upward cases ask nothing a correct step lacks: sigma computed only when eta > 0."""
    def lesson_07(x_t, x0_hat, eps_hat, t, t_prev, schedule, *, eta=0.0, noise=None):
        ab, ab_prev = schedule.alpha_bar[t].item(), schedule.alpha_bar[t_prev].item()
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5 if eta > 0 else 0.0
        if sigma > 0 and noise is None:
            raise ValueError("eta > 0 needs noise: pass noise=torch.randn_like(x_t).")
        x_prev = ab_prev**0.5 * x0_hat + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps_hat
        return x_prev + sigma * noise if sigma > 0 else x_prev

    assert run_checker(lesson_07, DDIM_STEP).status == "passed"


# --- issue 47: lessons 12-14's checkers name the mistake and point to the lesson, not the key line
from diffuse_edu.exercises import Mistake  # noqa: E402
from diffuse_edu.exercises import distillation as _distillation_module  # noqa: E402
from diffuse_edu.exercises import dit as _dit_module  # noqa: E402
from diffuse_edu.exercises import finetune as _finetune_module  # noqa: E402
from diffuse_edu.exercises import flow as _flow_module  # noqa: E402
from diffuse_edu.exercises import lora as _lora_module  # noqa: E402

KEY_LINES_47 = [  # the line the learner writes (as the old messages spelled it), by exercise
    (PATCHIFY, ["b c (h p1) (w p2) -> b (h w) (p1 p2 c)", "(p1 p2 c)"]),
    (UNPATCHIFY, ["b (h w) (p1 p2 c) -> b c (h p1) (w p2)", "(p1 p2 c)"]),
    (DIT_BLOCK, ["(1 + scale) + shift", "x + gate *", "(1 + gamma) + beta", "x + g Attn"]),
    (FLOW_MATCHING_LOSS, ["eps - x0", "(1 - tau) x0 + tau eps", "model(x_tau, tau * 1000)",
                          "mean *squared* error against"]),
    (FLOW_EULER, ["x + (tau_next - tau)", "(tau_next - tau) *", "(tau_next - tau) u"]),
    (LORA_FORWARD, ["base(x) +", "(alpha / r) * B(A(x))", "W x + (alpha / r) B A x",
                    "scale * layer.lora_B"]),
    (LORA_DELTA, ["or,rikl->oikl", "b @ a", "B @ A", "flattened to (r, in k k)"]),
    (PRIOR_PRESERVATION_LOSS, ["subject loss + weight * prior loss", "torch.randint(",
                               "plus weight times the loss", "add weight times"]),
    (DISTILLATION_TARGET, ["(x_next - ratio x_t) / (alpha_next - ratio alpha_t)",
                           "x0 = (x_next"]),
    (DISTILLATION_STEP, ["(student(x_t, t) - v_target)^2"]),
]


def _off_by_a_little(reference):
    """The reference's answer moved by a small amount that no listed mistake explains."""
    def wrong(*args):
        out = reference(*args)
        return out + 0.0137 * torch.linspace(0.3, 1.0, out.numel()).reshape(out.shape).to(out)
    return wrong


def _everything_said(checker, monkeypatch) -> list[str]:
    """The checker's hints, its pointer to the lesson, every mistake message it builds and every
    verdict it gives the listed wrong answers and an unexplained one."""
    built = []

    class Recorded(Mistake):
        def __init__(self, message, answer, atol=None):
            built.append(message)
            super().__init__(message, answer, atol)

    for module in (_dit_module, _flow_module, _lora_module, _finetune_module,
                   _distillation_module):
        monkeypatch.setattr(module, "Mistake", Recorded)
    wrongs = [w for c, w, _ in ALL_WRONG + EXTRA_21 + WRONG_48 if c is checker]
    verdicts = [run_checker(fn, checker) for fn in
                [checker.reference, _off_by_a_little(checker.reference), *wrongs]]
    assert len(built) >= 3 and all(v.status == "failed" for v in verdicts[1:])
    return [*checker.hints, checker.see, *built, *(_message(v) for v in verdicts)]


@pytest.mark.parametrize("checker, keys", KEY_LINES_47, ids=[c.name for c, _ in KEY_LINES_47])
def test_lessons_12_to_14_checkers_never_state_the_key_line(checker, keys, monkeypatch):
    said = [" ".join(text.split()) for text in _everything_said(checker, monkeypatch)]
    for key in keys:
        leaks = [text for text in said if key in text]
        assert not leaks, f"{checker.name} states {key!r}: {leaks[0]}"


@pytest.mark.parametrize("checker", [c for c, _ in KEY_LINES_47], ids=lambda c: c.name)
def test_an_unexplained_wrong_answer_is_pointed_to_the_lesson(checker):
    verdict = run_checker(_off_by_a_little(checker.reference), checker)
    assert verdict.status == "failed" and re.search(r"lesson 1[234]", verdict.message), (
        verdict.message)
