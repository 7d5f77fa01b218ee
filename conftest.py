"""Project-wide pytest hooks: the order the suite runs in, threads per worker, and notebook times.

* **Order.** With pytest-xdist (``-n auto --dist loadfile`` in pyproject.toml) each file, a notebook's
  cells included, stays on one worker, and each worker holds one file running and one queued. The
  lessons that train a model later lessons load from the cache run first: 05 trains the DDPM, 08
  the class-conditional one, 09 the text-conditioned one; then every other notebook; then the unit
  tests, slowest files first, which fill the gaps at the end. A lesson that needs a model another
  process is still training waits for it (``training.checkpoints.load_or_train`` locks the file).
* **Judges first.** Before any notebook starts, the controller caches the classifiers that measure
  the lessons' samples (``course.workshop.prepare_judges``): a learner going through the lessons in
  order has them from lesson 05, so no notebook's time should include training one, and two
  notebooks should not wait on the same lock. The models the lessons teach are still trained by them.
* **Threads.** When workers share the cores, each worker and every kernel nbval starts for it use an
  equal share of the cores (one thread each on a 2-core machine): small models gain little from a
  second thread, so two notebooks side by side finish sooner than one after the other.
* **Times.** At the end, each notebook's time (all its cells), with the conditions it ran under.
* **Solutions pass their checkers.** A cell of a ``solutions/`` notebook fails when it prints a
  checker's ``[x]`` or ``[todo]`` verdict: the complete version's own code must pass, or the lesson
  silently runs the library's instead of the code a learner compares theirs with.
"""

import os
import re
from collections import defaultdict
from pathlib import Path

import pytest

BUDGET_S = 120  # quick-scale budget per notebook on a 2-core CPU, run alone (see the course's standards)
#: Notebooks that train models other lessons load (notebooks/ and solutions/ alike), in the order to start them.
TRAIN_CACHED = ("05_", "08_", "09_")
#: Unit-test files that take longest, started before the rest.
SLOW_TESTS = ("test_grade.py", "test_distributed.py", "test_training.py", "test_features.py")
_notebook_seconds: dict[str, float] = defaultdict(float)
_judges_seconds: list[float] = []


def _workers() -> int:
    """How many pytest-xdist workers share this machine (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


def pytest_configure(config):
    if _workers() > 1:  # a worker: its own tests, and the kernels nbval starts from it, get a share of the cores
        from diffuse_edu.config import thread_env

        os.environ.update(thread_env(_workers()))  # read by torch in each kernel nbval starts
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def runs_notebooks(args: list[str]) -> bool:
    """Whether a run over ``args`` (pytest's paths, or the ini's testpaths) executes notebooks."""
    paths = [Path(a.split("::")[0]) for a in args]
    return any(p.suffix == ".ipynb" or p.name in ("notebooks", "solutions") for p in paths)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers
def pytest_sessionstart(session):
    if os.environ.get("PYTEST_XDIST_WORKER") or not runs_notebooks(list(session.config.args)):
        return
    import time

    from diffuse_edu import config
    from diffuse_edu.course.workshop import prepare_judges

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    start = time.perf_counter()
    try:
        names = prepare_judges(config.get_scale())
    except Exception as error:  # missing data, say: the notebooks that need a judge report it themselves
        say(f"the judges could not be cached before the notebooks ({type(error).__name__}: {error}); "
            "each notebook that needs one trains it or says what is missing")
        return
    _judges_seconds.append(time.perf_counter() - start)
    say(f"judges cached before the notebooks ({_judges_seconds[0]:.1f} s): " + "; ".join(names))


def run_order(path: Path) -> tuple:
    """The position of a file in the run: cache-training lessons, then other notebooks, then tests."""
    name = path.name
    if path.suffix == ".ipynb":
        first = next((i for i, prefix in enumerate(TRAIN_CACHED) if name.startswith(prefix)), None)
        if first is not None:  # the student versions first; by the time a solution starts, its model is cached
            return (0, path.parent.name != "notebooks", first, name)
        return (1, name, path.parent.name)
    slow = SLOW_TESTS.index(name) if name in SLOW_TESTS else len(SLOW_TESTS)
    return (2, slow, str(path))


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: run_order(Path(str(item.path))))  # stable: a file's items keep their order


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter, config):
    if not _notebook_seconds:
        return
    workers = getattr(config.option, "numprocesses", None) or 1
    workers = workers if isinstance(workers, int) else 1
    if workers > 1:
        from diffuse_edu.config import threads_per_job

        how = (f"{workers} workers side by side on {os.cpu_count()} cores, {threads_per_job(workers)} thread(s) "
               f"each: longer than a notebook takes alone, where the {BUDGET_S} s budget applies")
    else:
        how = f"one at a time; budget {BUDGET_S} s"
    terminalreporter.section(f"notebook times (nbval, all cells; {how})")
    if _judges_seconds:
        terminalreporter.write_line(f"(the judges were cached first, in {_judges_seconds[0]:.1f} s, outside these times)")
    for path, seconds in sorted(_notebook_seconds.items(), key=lambda kv: -kv[1]):
        flag = "  OVER BUDGET" if workers == 1 and seconds > BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")


#: A checker's verdict that a solution must never print (see ``diffuse_edu.exercises.check``).
_NOT_PASSED = re.compile(r"^\[(x|todo)\] .*", re.MULTILINE)


def unpassed_verdicts(outputs: list) -> list[str]:
    """The ``[x]`` and ``[todo]`` lines among a cell's printed outputs (nbval's output dicts)."""
    text = "".join(str(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
    return [m.group(0) for m in _NOT_PASSED.finditer(text)]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    path = Path(str(item.path))
    if call.when != "call" or not report.passed or path.suffix != ".ipynb" or path.parent.name != "solutions":
        return
    lines = unpassed_verdicts(getattr(item, "test_outputs", None) or [])
    if lines:
        report.outcome = "failed"
        report.longrepr = ("the solution's own exercise code did not pass its checker:\n" + "\n".join(lines))
