"""Independent jobs side by side: the seeds of an experiment, trained at once on a CPU's cores.

The course's quick models are small, and on a CPU a small model's training step spends most of its
time starting operations rather than doing arithmetic: a second intra-op thread helps it little. Two
trainings side by side, one thread each, use two cores far better (about 1.5x the throughput of
one after the other on this course's 2-core reference machine). :func:`run_side_by_side` runs
independent jobs that way on a CPU and one after another on a GPU, which runs one job's kernels in
parallel already.

The results do not depend on how the jobs interleave, provided that each job draws its randomness
from its own generator (``train(..., generator=...)``) and none from PyTorch's global one: build the
models (``torch.manual_seed(seed)`` and the constructor) before, not inside, the jobs, which is what
``prepare`` is for. A job that
draws from the global generator anyway is caught afterwards (:class:`SharedRandomnessError`). Each
job runs with one intra-op thread whatever the number of workers, so one worker and two give the
same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from diffuse_edu.progress import progress

Item = TypeVar("Item")
Result = TypeVar("Result")


class SharedRandomnessError(RuntimeError):
    """A job drew from PyTorch's global random generator, so its result depended on the others'."""


def side_by_side_workers(device: torch.device | str, jobs: int) -> int:
    """How many jobs run at once: one per intra-op thread PyTorch has on a CPU (1 where a test
    runner or the user limited the threads), one at a time on a GPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(jobs, torch.get_num_threads()))


def run_side_by_side(job: Callable[..., Result], items: Iterable[Item], *,
                     device: torch.device | str,
                     prepare: Callable[[Item], object] | None = None, desc: str | None = None,
                     workers: int | None = None) -> list[Result]:
    """``[job(item) for item in items]``, several at once on a CPU (one thread each); in order.

    With ``prepare``, every ``prepare(item)`` runs first, one after another in the caller's thread,
    where it may seed the global generator (``torch.manual_seed(seed)`` and a model's constructor),
    and the jobs are ``job(item, prepared)``. ``workers`` defaults to :func:`side_by_side_workers`.
    Raises :class:`SharedRandomnessError` when a job drew from the global random generator (whose
    draws would then depend on timing), and re-raises the first job's exception as it was.
    """
    items = list(items)
    n = workers or side_by_side_workers(device, len(items))
    if n < 1:
        raise ValueError(f"workers must be at least 1, got {n}")
    if prepare is not None:
        prepared = [prepare(item) for item in items]
        return run_side_by_side(lambda pair: job(*pair), list(zip(items, prepared)), device=device,
                                desc=desc, workers=n)
    before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bar = progress(total=len(items), desc=desc, disable=desc is None)
    try:
        if n == 1:
            results = []
            for item in items:
                results.append(job(item))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=n) as pool:
                futures = [pool.submit(job, item) for item in items]
                results = []
                for f in futures:
                    # the bar moves here, in the caller's thread (a notebook widget's)
                    results.append(f.result())
                    bar.update()
    finally:
        torch.set_num_threads(threads)
        bar.close()
    if not torch.equal(torch.random.get_rng_state(), before):
        raise SharedRandomnessError(
            "A job drew from PyTorch's global random generator, so with several jobs at once its "
            "draws depended on timing. Give each job its own torch.Generator (train(..., "
            "generator=...), torch.randn(..., generator=...)) and build models "
            "(torch.manual_seed) before the jobs.")
    return results
