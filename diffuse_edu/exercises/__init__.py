"""Exercises and their checkers.

A lesson's exercise cell defines a function; the next cell passes it to :func:`check`::

    q_sample = check(q_sample, checks.Q_SAMPLE)

``check`` runs the checker's cases against the learner's function and prints one verdict:

* passed: the learner's function is returned and used from then on;
* unfinished (it raises ``NotImplementedError``): the notebook says so and carries on with the
  library's reference version, so an unfinished exercise never blocks the rest of the lesson;
* wrong: one or two sentences say which case failed and why (which shape, which value, which
  edge case), and the notebook carries on with the reference version.

Hints are progressive and never give the answer's key line: ``hint("q_sample")`` prints a first
nudge; asked again, a second, more specific one.

A checker is a name, the reference function and a list of cases. Each case calls the learner's
function and raises :class:`Mismatch` with a specific message when something is off;
:func:`compare` does the usual shape, dtype and value checks and names known mistakes.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


class Mismatch(AssertionError):
    """Raised by a checker case: the learner's answer is wrong; the message says how."""


@dataclass(frozen=True)
class Checker:
    """Cases that compare a learner's function with the library's reference version."""

    name: str  # the function's name in the notebook
    reference: Callable  # the library's version, used when the learner's is unfinished or wrong
    cases: Sequence[Callable[[Callable], None]]  # each calls fn and raises Mismatch if wrong
    # progressive: a first nudge, then a more specific one (never the key line)
    hints: Sequence[str] = ()
    # where the lesson states what to compute ("Eq. 4, section 1"): named when no known mistake fits
    see: str = ""
    # True where changing a tensor argument in place is the job (the EMA update)
    changes_inputs: bool = False

    def __post_init__(self) -> None:
        CHECKERS[self.name] = self


@dataclass
class Verdict:
    """The outcome of checking one exercise."""

    name: str
    # "passed", "unfinished", "failed" or "library" (the library's own answer was given)
    status: str
    message: str
    passed_cases: int = 0
    total_cases: int = 0


#: Verdicts of every exercise checked in this process, in order (read by `diffuse_edu check`).
VERDICTS: list[Verdict] = []
#: Every checker defined so far, by exercise name (for :func:`hint`).
CHECKERS: dict[str, Checker] = {}
_HINTS_SHOWN: dict[str, int] = {}


def hint(name: str | Callable) -> None:
    """Print the next hint for exercise ``name``: a first nudge, then a second one.

    ``name`` is the exercise's name ("guided_forward") or the function itself
    (``hint(guided_forward)``, whether the learner's or the checked one). Every exercise of the
    course is known as soon as ``diffuse_edu`` is installed, even before a lesson's imports ran. It
    prints and returns nothing, so a bare ``hint(...)`` shows its text once.
    """
    if callable(name):
        name = getattr(name, "__name__", str(name))
    checker = CHECKERS.get(name) or _every_checker().get(name)
    if checker is None:
        close = difflib.get_close_matches(str(name), _every_checker(), n=1, cutoff=0.5)
        known = ", ".join(sorted(_every_checker()))
        raise KeyError(f"No exercise called {name!r}"
                       + (f"; did you mean {close[0]!r}?" if close else "")
                       + f" The course's exercises are: {known}.")
    if not checker.hints:
        text = f"{name} has no hints: its docstring and the lesson's text say what to compute."
    else:
        shown = _HINTS_SHOWN.get(name, 0)
        level = min(shown, len(checker.hints) - 1)
        _HINTS_SHOWN[name] = shown + 1
        more = (f" (ask again for hint {level + 2})" if level + 1 < len(checker.hints)
                else " (that is the last hint; the solutions/ notebook has the answer)")
        text = f"Hint {level + 1} of {len(checker.hints)} for {name}: {checker.hints[level]}{more}"
    print(text)


def _every_checker() -> dict[str, Checker]:
    """Every checker of the course, by name: imports each module of this package once."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return CHECKERS


def _is_stub(e: NotImplementedError) -> bool:
    """Whether ``e`` is an unfinished exercise (a ``raise NotImplementedError`` line, as the
    student notebooks' stubs have), not an operation torch lacks for a dtype ("bitwise_and_cpu not
    implemented for 'Float'"), which is a mistake in finished code."""
    frames = traceback.extract_tb(e.__traceback__)
    line = (frames[-1].line or "") if frames else ""
    return not line or line.lstrip().startswith("raise")


def run_checker(fn: Callable, checker: Checker) -> Verdict:
    """Run every case of ``checker`` on ``fn`` and return the first failure, if any.

    Unless the checker says changing inputs is the job, a function that changes a tensor it was
    given in place fails with a message that names the argument, even where the case's values come
    out right: the lesson's caller goes on using that tensor (the same noise for the next sampler,
    the batch for the next step)."""
    total = len(checker.cases)
    for i, case in enumerate(checker.cases):
        changed: list[str] = []
        guarded = fn if checker.changes_inputs else _watch_in_place(fn, changed)
        try:
            case(guarded)
        except NotImplementedError as e:
            if not _is_stub(e):  # torch's "not implemented for 'Float'": a crash, said as one
                return Verdict(checker.name, "failed",
                               f"{checker.name} raised {type(e).__name__}: {e}"
                               f"{_learner_frame(e)}", i, total)
            return Verdict(checker.name, "unfinished",
                           f"{checker.name} is not written yet (it raises NotImplementedError).",
                           i, total)
        except Mismatch as e:
            message = str(e)
            if changed and "in place" not in message:  # the change explains the wrong value better
                message = _in_place_message(checker.name, changed)
            elif checker.see and UNNAMED in message:  # a wrong value that matches no known mistake
                message += (" It matches none of the usual mistakes: compare your code with "
                            f"{checker.see}.")
            return Verdict(checker.name, "failed", message, i, total)
        except Exception as e:  # the learner's code crashed: say where, briefly
            return Verdict(checker.name, "failed",
                           f"{checker.name} raised {type(e).__name__}: {e}{_learner_frame(e)}"
                           f"{_explain(e) or _signature_advice(e, fn, checker)}", i, total)
        if changed:
            return Verdict(checker.name, "failed", _in_place_message(checker.name, changed), i,
                           total)
    return Verdict(checker.name, "passed", f"{checker.name} passed all {total} checks.", total,
                   total)


def borrowed_verdict(fn: Callable, checker: Checker) -> Verdict | None:
    """The verdict "library" where ``fn`` is the library's own answer (:func:`library_version`)."""
    borrowed = library_version(fn, checker)
    if not borrowed:
        return None
    return Verdict(checker.name, "library",
                   f"{checker.name} is the library's own answer ({borrowed}), not yours: nothing "
                   "was checked. Write your own version to pass.", 0, len(checker.cases))


def library_version(fn: Callable, checker: Checker) -> str | None:
    """Where ``fn`` is the library's own answer to the exercise rather than the learner's: the
    reference itself (or a partial of it), or a function that calls it by a name in its module or
    a closure. Returns how (for the message), or None."""
    ref = checker.reference
    name = f"{ref.__module__}.{ref.__qualname__}"
    if fn is ref or getattr(fn, "func", None) is ref or getattr(fn, "__wrapped__", None) is ref:
        return name
    code, scope = getattr(fn, "__code__", None), getattr(fn, "__globals__", {})
    if code is None:
        return None
    cells = [c.cell_contents for c in (fn.__closure__ or ()) if _filled(c)]
    if any(scope.get(n) is ref for n in _names_used(code)) or any(c is ref for c in cells):
        return f"it calls {name}"
    return None


def as_learners(fn: Callable) -> Callable:
    """A copy of ``fn`` that :func:`library_version` does not take for the library's answer: the
    reference as a learner who wrote it line for line would hand it in (tests of the checkers, an
    instructor's dry run)."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty closure cell raises
    except ValueError:
        return False
    return True


def _names_used(code) -> set[str]:
    """The global names a function's code uses, its nested functions' included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names_used(const)
    return names


def _watch_in_place(fn: Callable, changed: list[str]) -> Callable:
    """``fn``, noting in ``changed`` the name of every tensor argument (or tensor in a list or tuple
    argument) that a call changed in place."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None

    @functools.wraps(fn)
    def watched(*args, **kwargs):
        try:
            named = signature.bind(*args, **kwargs).arguments.items() if signature else None
        except TypeError:
            named = None
        if named is None:
            named = [*((f"number {k + 1}", a) for k, a in enumerate(args)), *kwargs.items()]
        before = []
        for name, value in named:
            items = ([(f"{name}[{k}]", v) for k, v in enumerate(value)]
                     if isinstance(value, (list, tuple)) else [(name, value)])
            before += [(label, t, t.detach().clone()) for label, t in items
                       if isinstance(t, Tensor)]
        out = fn(*args, **kwargs)
        for label, tensor, copy in before:
            same = (tensor.shape == copy.shape and tensor.dtype == copy.dtype
                    and torch.equal(torch.nan_to_num(tensor.detach()), torch.nan_to_num(copy)))
            if not same and label not in changed:
                changed.append(label)
        return out

    return watched


def _in_place_message(name: str, changed: Sequence[str]) -> str:
    which = ", ".join(f"`{label}`" for label in changed)
    return (f"{name} changed its argument {which} in place (a method ending in _, such as add_, "
            "an x += ..., or an indexed assignment x[...] = ...), yet the lesson goes on using "
            "what it passed in (the same noise for the next sampler, the same batch): build new "
            "tensors instead (x = x + ...).")


def _explain(e: BaseException) -> str:
    """A sentence on what a common PyTorch error usually means in an exercise."""
    text = str(e)
    if "must match the size of tensor" in text:
        return (". This usually means a per-image value of shape (B,) was multiplied with images "
                "of shape (B, C, H, W) without reshaping it to (B, 1, 1, 1).")
    if isinstance(e, AttributeError) and ("'int' object" in text or "'float' object" in text):
        return (". A network takes the noise level as a tensor with one entry per example, not a "
                "Python number: torch.full((B,), t, device=x.device).")
    if ("expected scalar type" in text or "dtype" in text
            or ("type" in text and "should be the same" in text)):
        return ". Two tensors of different dtypes met: cast one with .to(other.dtype)."
    return ""


def _signature_advice(e: BaseException, fn: Callable, checker: Checker) -> str:
    """Where the learner's function could not even be called as the checker calls it (its parameters
    were changed): say to keep the exercise cell's ``def`` line."""
    text = str(e)
    own = {getattr(fn, "__name__", checker.name), getattr(fn, "__qualname__", checker.name)}
    if not (isinstance(e, TypeError) and any(text.startswith(f"{name}()") for name in own)
            and any(k in text for k in ("positional argument", "keyword argument", "required"))):
        return ""
    return (". The checker calls it the way the exercise cell's def line says: keep that line as "
            "it was (every parameter, in that order, keyword-only ones after the *, even those "
            "your version does not use).")


def _learner_frame(e: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "diffuse_edu" not in f.filename and "/torch/" not in f.filename
              and "/einops/" not in f.filename]
    return f" (at line: {frames[-1].line})" if frames and frames[-1].line else ""


def check(fn: Callable, checker: Checker, *, quiet: bool = False) -> Callable:
    """Check a learner's function; return it if right, else the library's reference version. The
    library's own answer given as the learner's is not checked: its verdict is "library"."""
    verdict = borrowed_verdict(fn, checker) or run_checker(fn, checker)
    VERDICTS.append(verdict)
    CHECKERS[checker.name] = checker  # hint() speaks of the exercise checked last under this name
    ref = f"{checker.reference.__module__}.{checker.reference.__qualname__}"
    if verdict.status == "passed":
        text, chosen = f"[ok] {verdict.message} From here on the notebook uses yours.", fn
    elif verdict.status == "library":
        text, chosen = f"[library] {verdict.message}", checker.reference
    elif verdict.status == "unfinished":
        text, chosen = (f"[todo] {verdict.message} The notebook carries on with the library's "
                        f"version ({ref}); come back to it any time."), checker.reference
    else:
        nudge = f"\n       Stuck? hint({checker.name!r}) gives a nudge." if checker.hints else ""
        text = (f"[x] {checker.name}: {verdict.message}{nudge}\n"
                f"       ({verdict.passed_cases} of {verdict.total_cases} checks passed before "
                f"this one; the notebook carries on with {ref}.)")
        chosen = checker.reference
    if not quiet:
        print(text)
    return chosen


#: The phrase of :func:`compare`'s message for a wrong value that no known mistake explains.
UNNAMED = "is off by up to"


@dataclass(frozen=True)
class Mistake:
    """A typical wrong answer: what it computes, and what to tell a learner who made it."""

    message: str
    answer: Tensor
    # a looser tolerance, for mistakes whose round-off differs from the answer's
    atol: float | None = None


def compare(
    got: object, want: Tensor, *, what: str, mistakes: Sequence[Mistake] = (),
    otherwise: str | None = None, rtol: float = 1e-4, atol: float = 1e-5,
) -> None:
    """Raise :class:`Mismatch` unless ``got`` equals ``want`` in type, shape, dtype and values.

    ``what`` describes the case ("q_sample(x0, t=[3, 500], ...)"); when the values are wrong and
    match one of ``mistakes``, that mistake's message is used, else ``otherwise`` if given, else
    the largest difference.
    """
    if not isinstance(got, Tensor):
        raise Mismatch(f"{what} returned {type(got).__name__}; expected a torch.Tensor.")
    if got.shape != want.shape:
        for mistake in mistakes:
            # a known mistake that changes the shape (a missing layer, swapped axes)
            if (mistake.answer.shape == got.shape and mistake.answer.dtype == got.dtype
                    and torch.allclose(got.detach().double(), mistake.answer.detach().double(),
                                       rtol=rtol, atol=mistake.atol or atol)):
                raise Mismatch(f"{what} returned shape {tuple(got.shape)}: {mistake.message}")
        raise Mismatch(f"{what} returned shape {tuple(got.shape)}; expected {tuple(want.shape)}.")
    if got.dtype != want.dtype:
        if want.dtype == torch.int64:
            raise Mismatch(f"{what} returned dtype {got.dtype}; expected torch.int64, the dtype "
                           "indices (token ids, labels) have in PyTorch: build it with "
                           "dtype=torch.long or convert with .long().")
        if not want.is_floating_point():
            raise Mismatch(f"{what} returned dtype {got.dtype}; expected {want.dtype}.")
        raise Mismatch(f"{what} returned dtype {got.dtype}; expected {want.dtype}, the inputs' "
                       "dtype. Some tensor made or looked up along the way has another dtype (a "
                       "table, torch.tensor(...), torch.arange(...)): cast it with .to(x.dtype).")
    if want.dtype == torch.bool:  # a mask: say where, in its own words
        wrong = got != want
        if not wrong.any():
            return
        for mistake in mistakes:
            if mistake.answer.shape == want.shape and torch.equal(got, mistake.answer):
                raise Mismatch(f"{what}: {mistake.message}")
        if otherwise:
            raise Mismatch(f"{what}: {otherwise}")
        idx = tuple(int(i) for i in torch.nonzero(wrong)[0])
        raise Mismatch(f"{what} differs from the expected mask at {int(wrong.sum())} of "
                       f"{want.numel()} places (first at index {idx}: got {bool(got[idx])}, "
                       f"expected {bool(want[idx])}).")
    g, w = got.detach().double(), want.detach().double()
    if torch.isnan(g).any() and not torch.isnan(w).any():
        idx = tuple(int(i) for i in torch.nonzero(torch.isnan(g))[0])
        raise Mismatch(f"{what} returned NaN (first at index {idx}): look for the square root of a "
                       "negative number or a division by zero.")
    if torch.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
        return
    for mistake in mistakes:
        if mistake.answer.shape == w.shape and torch.allclose(
                g, mistake.answer.detach().double(), rtol=rtol, atol=mistake.atol or atol):
            raise Mismatch(f"{what}: {mistake.message}")
    if otherwise:
        raise Mismatch(f"{what}: {otherwise}")
    err = (g - w).abs()
    idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
    raise Mismatch(f"{what} {UNNAMED} {err.max():.3g} (at index {idx}: got "
                   f"{g[idx]:.4g}, expected {w[idx]:.4g}).")


#: What usually cuts a gradient that the values cannot show.
CUT_GRADIENT = ("part of the computation is cut off from autograd: a .detach(), .data, .item(), "
                "torch.no_grad() or a tensor rebuilt with torch.tensor(...) along the way")


def compare_gradients(
    got: object, want: Tensor, wrt: Mapping[str, Tensor | Sequence[Tensor]], *, what: str,
    mistakes: Sequence[Mistake] = (), otherwise: str = CUT_GRADIENT,
) -> None:
    """Raise :class:`Mismatch` unless ``got`` sends back to each group of tensors in ``wrt`` the
    gradient that ``want`` sends back: a learner's values can be right while training is cut off
    (a mean detached in the reparameterisation, a loss term computed under ``torch.no_grad()``).

    ``got`` and ``want`` are the learner's and the reference's outputs computed from the same
    tensors (leaves that require gradients, or a module's parameters), graphs alive; both are
    reduced with the same fixed random weights, so that every entry counts. ``wrt`` names each
    group in the message ("mean", "the encoder's weights"). A mistake's ``answer`` is the output
    of a typical wrong answer with its graph: when its gradients are the learner's, its message
    is given. Lesson 05's training step compares the weights after a step; this compares the
    gradients themselves, for exercises that are a loss or a sample inside training.
    """
    groups = {name: [ts] if isinstance(ts, Tensor) else list(ts) for name, ts in wrt.items()}
    leaves = [t for ts in groups.values() for t in ts]
    if not isinstance(got, Tensor) or got.shape != want.shape:
        raise Mismatch(f"{what}: expected a tensor of shape {tuple(want.shape)} to differentiate.")
    weights = torch.randn(want.shape, generator=torch.Generator().manual_seed(0)).to(want.dtype)

    def grads(out: Tensor) -> list[Tensor]:
        found = (torch.autograd.grad((out * weights.to(out.dtype)).sum(), leaves, retain_graph=True,
                                     allow_unused=True)
                 if out.requires_grad else [None] * len(leaves))
        return [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(leaves, found)]

    def close(a: list[Tensor], b: list[Tensor]) -> bool:
        return all(torch.allclose(x.double(), y.double(), rtol=1e-3, atol=1e-6)
                   for x, y in zip(a, b))

    mine, ref = grads(got), grads(want)
    if close(mine, ref):
        return
    for mistake in mistakes:
        if close(mine, grads(mistake.answer)):
            raise Mismatch(f"{what}: {mistake.message}")
    k = 0
    for name, ts in groups.items():
        g, r = mine[k:k + len(ts)], ref[k:k + len(ts)]
        k += len(ts)
        if close(g, r):
            continue
        if all(x.abs().sum() == 0 for x in g):
            raise Mismatch(f"{what}: the values are right, but no gradient reaches {name}, so "
                           f"training cannot move it: {otherwise}.")
        gap = max((x - y).abs().max().item() for x, y in zip(g, r))
        raise Mismatch(f"{what}: the values are right, but the gradient that reaches {name} "
                       f"differs from the reference's (by up to {gap:.2g}): {otherwise}.")


def run_naming_crashes(call: Callable[[], object], what: str,
                       crashes: Sequence[tuple[Callable[[], object], str]]) -> object:
    """``call()``; if it raises, and one of the typical wrong answers in ``crashes`` (each a call
    that reproduces a mistake, and its message) raises the very same error, a :class:`Mismatch`
    naming that mistake. Any other error propagates unchanged, for the usual handling."""
    try:
        return call()
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        text = " ".join(str(error).split())
        for wrong, message in crashes:
            try:
                wrong()
            except type(error) as e:
                if " ".join(str(e).split()) == text:
                    raise Mismatch(f"{what}: {message}") from None
            except Exception:  # noqa: BLE001 - a different failure: not this mistake
                continue
        raise


def require_gradient(loss: object, name: str, source: str) -> None:
    """Raise :class:`Mismatch` unless ``loss`` (a learner's loss) is a tensor that training can
    backpropagate through; ``source`` names what it must be computed from ("the score's output")."""
    if not isinstance(loss, Tensor) or not loss.requires_grad:
        raise Mismatch(f"{name} returned a loss with no gradient: compute it from {source} without "
                       ".detach(), .item() or torch.no_grad(), so that training can backpropagate.")


def require_passed(name: str) -> None:
    """Raise AssertionError unless the last check of exercise ``name`` in this process passed: the
    autograded cell of an nbgrader export (``python -m diffuse_edu export nbgrader``) ends with
    it."""
    verdict = next((v for v in reversed(VERDICTS) if v.name == name), None)
    if verdict is None:
        raise AssertionError(f"{name} was never checked: run its exercise cell first.")
    if verdict.status != "passed":
        raise AssertionError(f"{name}: {verdict.message}")


def summary(verdicts: Sequence[Verdict] | None = None) -> Mapping[str, str]:
    """Name -> status for every exercise checked so far (or for ``verdicts``)."""
    return {v.name: v.status for v in (VERDICTS if verdicts is None else verdicts)}


def whose(*fns: Callable) -> str:
    """Whose versions of exercise functions ran, for a lesson's output: ``whose(drop_labels)`` is
    "your drop_labels" where ``check`` returned the learner's function and "the library's
    drop_labels" where it returned the reference (the exercise was unfinished or wrong); several
    functions are grouped by owner ("your patchify and unpatchify, the library's dit_block")."""
    references = {id(c.reference) for c in CHECKERS.values()}
    groups: dict[str, list[str]] = {"your": [], "the library's": []}
    for fn in fns:
        library = id(fn) in references or getattr(fn, "__module__", "").startswith("diffuse_edu.")
        name, owner = getattr(fn, "__name__", repr(fn)), "the library's" if library else "your"
        if name not in groups[owner]:
            groups[owner].append(name)
    listed = {owner: " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
              for owner, names in groups.items() if names}
    return ", ".join(f"{owner} {names}" for owner, names in listed.items())
