"""Grading a classroom: ``python -m diffuse_edu grade FOLDER``.

Every learner notebook in FOLDER (one learner per ``.ipynb`` file, or per sub-folder of notebooks)
runs headless at quick scale through the same runner as ``python -m diffuse_edu run``, each in its
own process, with a time limit and a memory limit, in a **scratch copy** of the learner's own files:
a notebook that writes beside itself, or to ``../``, changes only its copy, never another
learner's files nor the grade table. The result is a table of each exercise's verdict per learner,
with the checker's message for failures, written as ``grades.csv`` (one row per exercise) and
``grades.md`` (one row per notebook). A notebook that crashes, runs out of time or memory, or is not
a notebook at all is a row that says so; it never stops the grader.

Grading runs the learners' code with the grader's rights. The scratch copy protects the classroom
folder from a careless notebook, not from a hostile one (an absolute path reaches anywhere):
grade untrusted submissions inside a container or a virtual machine.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from diffuse_edu import config
from diffuse_edu.course import recheck
from diffuse_edu.course.builder import read_manifest
from diffuse_edu.course.hosted import cell_text


@dataclass
class Graded:
    """One learner's notebook, run and judged."""

    learner: str
    notebook: str
    run: str  # "completed", "crashed in code cell N: ...", "timed out after S s", ...
    seconds: float
    exercises: list[dict] = field(default_factory=list)  # name, status, message (from the checkers)


def find_learners(folder: Path, *, skip: Path | None = None) -> dict[str, list[Path]]:
    """Learner -> notebooks: each ``.ipynb`` in ``folder`` is a learner (named by the file), and
    each sub-folder holding notebooks is one (named by the folder), but ``skip`` (the grader's own
    output, which keeps the executed notebooks)."""
    if not folder.is_dir():
        raise config.CourseError(f"{folder} is not a folder: give grade the class folder, with "
                                 "one .ipynb per learner or one folder of notebooks per learner.")
    learners: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".ipynb":
            learners[path.stem] = [path]
        elif (path.is_dir() and not path.name.startswith(".")
              and (skip is None or path.resolve() != skip.resolve())):
            books = sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if books:
                learners[path.name] = books
    return learners


def notebook_problem(path: Path) -> str | None:
    """Why ``path`` is not a notebook the runner can run (None when it is one)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "not a notebook: the file is not text (UTF-8)"
    except json.JSONDecodeError as e:
        return (f"not a notebook: not valid JSON ({e.msg} at line {e.lineno}); the file may be "
                "truncated")
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list) or nb.get("nbformat") != 4:
        return ("not a notebook: valid JSON, but not a Jupyter notebook (nbformat 4, a list of "
                "cells)")
    return None


#: Every process of one graded notebook inherits this variable (a token unique to the run): the
#: grader finds them by it, the ones that left the notebook's process group included.
RUN_ENV = "DIFFUSE_EDU_GRADE_RUN"
#: The process between the grader and the notebook's: the notebook's parent is this one, so a
#: notebook that kills its parent (``os.kill(os.getppid(), 9)``) stops its own run, not the grader.
_SHIM = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def _memory_mb(pid: int) -> float:
    """The process's share of memory in MB: its proportional set size (shared pages split between
    the processes that share them), or its resident memory; 0 where /proc has neither."""
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            continue
    return 0.0


def _members(token: str, group: int) -> list[int]:
    """The processes of one graded notebook: those in its process group and those that inherited
    its token (a process that left the group, with ``setsid`` or a double fork, keeps the token)."""
    mark, found = f"{RUN_ENV}={token}".encode() + b"\0", []
    for entry in Path("/proc").iterdir() if Path("/proc/self").exists() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if os.getpgid(pid) == group or mark in (entry / "environ").read_bytes():
                found.append(pid)
        except (OSError, ProcessLookupError):  # gone meanwhile, or not ours to read
            continue
    return found


def _kill_all(token: str, group: int) -> None:
    """Kill every process of one graded notebook, those it detached included; a process that forks
    while it is being killed is caught by the next pass."""
    for _ in range(5):
        pids = _members(token, group)
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not pids:
            return
        time.sleep(0.05)


def _address_limit(memory_mb: float):
    """Where /proc is missing (macOS): a limit on each process's address space, set before it starts
    (the tree as a whole is then unlimited: macOS has no cheap way to sum it)."""
    if Path("/proc/self/status").exists():
        return None

    def limit() -> None:
        import resource

        cap = int(memory_mb * 4 * 2**20)  # importing torch reserves several times what it uses
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return limit


def run_limited(args: list[str], *, env: dict, timeout: float, memory_mb: float,
                log: Path | None = None) -> tuple[str | None, float]:
    """Run ``args`` in a session of its own, behind a small process that is its parent; stop it past
    ``timeout`` seconds or when all its processes together hold more than ``memory_mb``. Afterwards
    every process it started is killed, detached ones too. Returns (why it was stopped, or None when
    it ended by itself; seconds). Its standard error goes to the file ``log`` (default: nowhere):
    never to a pipe, which a chatty notebook fills (64 KiB) and then waits on forever."""
    token = uuid.uuid4().hex
    start = time.perf_counter()
    with open(log if log is not None else os.devnull, "wb") as errors:
        # preexec_fn: None but on macOS
        proc = subprocess.Popen([sys.executable, "-c", _SHIM, *args], env={**env, RUN_ENV: token},
                                stdout=subprocess.DEVNULL, stderr=errors, start_new_session=True,
                                preexec_fn=_address_limit(memory_mb))  # noqa: PLW1509
        try:
            return _watch(proc, start, token=token, timeout=timeout, memory_mb=memory_mb)
        finally:
            _kill_all(token, proc.pid)


def _watch(proc: subprocess.Popen, start: float, *, token: str, timeout: float,
           memory_mb: float) -> tuple[str | None, float]:
    """Wait for ``proc``, stopping it past ``timeout`` seconds or ``memory_mb`` held by its
    processes."""
    stopped, checked = None, 0.0
    while proc.poll() is None:
        now = time.perf_counter()
        if now - start > timeout:
            stopped = f"timed out after {timeout:.0f} s"
        elif now - checked > 0.3:
            checked = now
            held = sum(_memory_mb(pid) for pid in _members(token, proc.pid))
            if held > memory_mb:
                stopped = f"out of memory (its processes held over {memory_mb:.0f} MB)"
        if stopped:
            break
        time.sleep(0.1)
    _kill_all(token, proc.pid)
    proc.wait()
    if stopped is None and proc.returncode == -signal.SIGKILL:
        stopped = ("stopped: something killed the process that ran it (did the notebook kill its "
                   "parent?)")
    return stopped, time.perf_counter() - start


def sandbox_tool() -> str | None:
    """What ``--isolate`` runs each notebook in: bubblewrap where installed, else util-linux's
    ``unshare`` where this kernel lets a user make namespaces; None where neither works."""
    if shutil.which("bwrap"):
        return "bwrap"
    if shutil.which("unshare"):
        probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--pid",
                                "--fork", "--mount-proc", "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return "unshare"
    return None


#: Inside ``unshare``'s namespaces: the scratch copy is moved aside, every hidden folder covered by
#: an empty one, the scratch copy put back, then the notebook runs, as process 1 of its own /proc.
_UNSHARE_SCRIPT = """keep=$1; stage=$2; shift 2
mount --bind "$keep" "$stage" || exit 97
while [ "$1" != "--" ]; do mount -t tmpfs tmpfs "$1" || exit 98; shift; done; shift
mkdir -p "$keep" && mount --move "$stage" "$keep" || exit 99
exec "$@"
"""


def sandboxed(args: list[str], tool: str, *, keep: Path, hide: list[Path],
              stage: Path) -> list[str]:
    """``args`` run by ``tool`` (:func:`sandbox_tool`) so that it sees only ``keep`` of the folders
    in ``hide`` (the class folder, the grade tables, the other learners' scratch copies) and no
    other process (a /proc of its own; its parent is not the grader). ``stage``: an empty folder
    outside ``hide`` (``unshare`` moves the scratch copy through it)."""
    hide = [h for h in hide if h.is_dir()]
    if tool == "bwrap":
        covered = [a for h in hide for a in ("--tmpfs", str(h))]
        return ["bwrap", "--dev-bind", "/", "/", *covered, "--bind", str(keep), str(keep),
                "--unshare-pid", "--proc", "/proc", "--die-with-parent", "--", *args]
    if tool == "unshare":
        return ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork",
                "--mount-proc", "sh", "-c", _UNSHARE_SCRIPT, "sh", str(keep), str(stage),
                *map(str, hide), "--", *args]
    raise config.CourseError(f"No sandbox called {tool!r}: bwrap or unshare.")


def lesson_of(path: Path, manifest: dict[str, list[dict]]) -> str | None:
    """Which lesson a learner's notebook is: its file's name (05_training.ipynb), else the lesson
    whose exercises its code defines or checks most (a learner may rename the file)."""
    if path.stem in manifest:
        return path.stem
    try:
        code = "\n".join(cell_text(c) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                         if c.get("cell_type") == "code")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    score = {lesson: sum(bool(re.search(rf"^\s*(def|class) {e['name']}\b|^{e['name']} = check\(",
                                        code, re.MULTILINE))
                         for e in exercises) for lesson, exercises in manifest.items()}
    best = max(score, key=score.get, default=None)
    return best if best is not None and score[best] > 0 else None


def merge_verdicts(run: list[dict], again: dict[str, dict], expected: list[str], *,
                   stopped: bool) -> list[dict]:
    """One entry per exercise: the lesson's exercises in order (``expected``; one that the
    notebook's run never checked is "missing"), then any others the run checked. A verdict the
    grader's own check (``again``) contradicts is failed, with both messages; ``rechecked`` says
    whether the grader's check agreed ("yes"), could not run ("no: why") or disagreed."""
    last = {v["name"]: v for v in run}
    out = []
    for name in [*expected, *(n for n in last if n not in expected)]:
        verdict = dict(last.get(name) or {
            "name": name, "status": "missing",
            "message": ("its cell never ran: the notebook stopped before it" if stopped else
                        "never checked: the notebook has no check line for it, or its cell never "
                        "ran")})
        second = again.get(name)
        if second is None:
            verdict["rechecked"] = "no"
        elif second["status"] == recheck.NOT_RECHECKED:
            verdict["rechecked"] = f"no: {second['message']}"
        elif verdict["status"] == "passed" and second["status"] != "passed":
            verdict.update(status="failed", rechecked="disagreed",
                           message="passed in the notebook's own run, but not when the grader "
                                   f"checked its cell again: {second['message']}")
        else:
            verdict["rechecked"] = "yes"
        out.append(verdict)
    return out


@dataclass(frozen=True)
class Limits:
    """How one notebook is run: its time and memory, its share of the cores, and its sandbox."""

    timeout: float
    memory_mb: float = 4000.0
    side_by_side: int = 1
    sandbox: str | None = None  # "bwrap" or "unshare" (sandbox_tool()); None: a scratch copy only
    hide: tuple[Path, ...] = ()  # folders a sandboxed notebook must not see


def grade_notebook(learner: str, path: Path, *, timeout: float, memory_mb: float = 4000.0,
                   files: Path | None = None, side_by_side: int = 1, keep: Path | None = None,
                   sandbox: str | None = None, hide: tuple[Path, ...] = (),
                   scratch_root: Path | None = None) -> Graded:
    """Run one notebook in a child process at quick scale, in a scratch copy of ``files`` (the
    learner's folder; default: the notebook alone), and read what its checkers said; then check its
    exercise cells again in a fresh process (:mod:`diffuse_edu.course.recheck`) and list every
    exercise of its lesson. With ``side_by_side`` notebooks running at once, it gets its share of
    the cores (one thread each on two cores; config.threads_per_job). With ``keep``, the executed
    notebook (its outputs and figures: feedback, and something to audit) is kept as
    ``keep/learner/NAME``. With ``sandbox``, it runs there, seeing none of ``hide``."""
    problem = notebook_problem(path)
    if problem:
        return Graded(learner, path.name, problem, 0.0)
    limits = Limits(timeout, memory_mb, side_by_side, sandbox, tuple(hide))
    manifest = read_manifest()
    lesson = lesson_of(path, manifest)
    with tempfile.TemporaryDirectory(dir=scratch_root) as tmp:
        scratch, out = Path(tmp) / "work" / learner, Path(tmp) / "results"
        if files is not None and files.is_dir():
            shutil.copytree(files, scratch)
            copy = scratch / path.relative_to(files)
        else:
            scratch.mkdir(parents=True)
            copy = scratch / path.name
            shutil.copyfile(path, copy)
        pristine = Path(tmp) / "submitted.ipynb"  # the notebook as submitted, for the second check
        shutil.copyfile(path, pristine)
        log = Path(tmp) / "stderr.txt"
        stopped, seconds = _run_child(["-m", "diffuse_edu", "run", str(copy), "--scale", "quick",
                                       "--out", str(out)],
                                      Path(tmp), limits, log=log)
        metrics = out / "metrics.json"
        executed = out / path.name
        if keep is not None and executed.is_file():
            (keep / learner).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(executed, keep / learner / path.name)
        if stopped:
            return Graded(learner, path.name, stopped, seconds)
        if not metrics.is_file():
            tail = log.read_text(errors="replace").strip()[-300:] if log.is_file() else ""
            return Graded(learner, path.name, "did not run (the runner wrote no results)"
                          + (f"; it said: {tail}" if tail else ""), seconds)
        try:
            summary = json.loads(metrics.read_text())
        except ValueError:
            return Graded(learner, path.name,
                          "did not run (its results file is not JSON: was it overwritten?)",
                          seconds)
        again = _recheck(pristine, lesson, Path(tmp), limits) if lesson else {}
    error = str(summary.get("error") or "")
    where = error.split(": ")[0]
    run = ("out of memory (" + error + ")" if "MemoryError" in error
           else f"stopped in {where}: it called exit() (SystemExit)" if ": SystemExit" in error
           else f"crashed in {error}" if error else "completed")
    details = [{k: str(v.get(k, "")) for k in ("name", "status", "message")}
               for v in summary.get("exercise_details", []) if isinstance(v, dict)]
    expected = [e["name"] for e in manifest.get(lesson, [])] if lesson else []
    return Graded(learner, path.name, run, seconds,
                  merge_verdicts(details, again, expected, stopped=bool(error)))


def _run_child(args: list[str], tmp: Path, limits: Limits, *,
               log: Path) -> tuple[str | None, float]:
    """``python ARGS`` under ``limits``: in its sandbox, where one is asked for, seeing only
    ``tmp``."""
    env = {**os.environ, config.SCALE_ENV: "quick", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
           **(config.thread_env(limits.side_by_side) if limits.side_by_side > 1 else {})}
    command = [sys.executable, *args]
    if limits.sandbox:
        with tempfile.TemporaryDirectory(prefix="diffuse-edu-stage-") as stage:
            command = sandboxed(command, limits.sandbox, keep=tmp, hide=list(limits.hide),
                                stage=Path(stage))
            return run_limited(command, env=env, timeout=limits.timeout, memory_mb=limits.memory_mb,
                               log=log)
    return run_limited(command, env=env, timeout=limits.timeout, memory_mb=limits.memory_mb,
                       log=log)


def _recheck(notebook: Path, lesson: str, tmp: Path, limits: Limits) -> dict[str, dict]:
    """The grader's own check of each exercise cell (:mod:`diffuse_edu.course.recheck`); empty where
    it could not run."""
    out = tmp / "recheck.json"
    stopped, _ = _run_child(["-m", "diffuse_edu.course.recheck", str(notebook), lesson, str(out)],
                            tmp, replace(limits, timeout=min(limits.timeout, RECHECK_TIMEOUT_S)),
                            log=tmp / "recheck.txt")
    try:
        found = json.loads(out.read_text())
    except (OSError, ValueError):
        found = {}
    if stopped or not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items()
            if isinstance(v, dict) and {"status", "message"} <= v.keys()}


#: The grader's second check runs only the exercise cells: a minute is ample.
RECHECK_TIMEOUT_S = 120.0


def write_tables(rows: list[Graded], out: Path) -> tuple[Path, Path]:
    """grades.csv (one line per exercise) and grades.md (one line per notebook) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "grades.csv", out / "grades.md"
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["learner", "notebook", "run", "seconds", "exercise", "verdict", "message",
                "rechecked"])
    for r in rows:
        for ex in r.exercises or [{"name": "", "status": "", "message": ""}]:
            w.writerow([_inert(c) for c in (r.learner, r.notebook, r.run, f"{r.seconds:.1f}",
                                            ex["name"], ex["status"],
                                            "" if ex["status"] == "passed" else ex["message"],
                                            ex.get("rechecked", ""))])
    _replace(csv_path, table.getvalue())
    lines = ["| learner | notebook | run | passed | exercises |", "| --- | --- | --- | --- | --- |"]
    failures = []
    for r in rows:
        done = sum(ex["status"] == "passed" for ex in r.exercises)
        verdicts = (", ".join(f"{ex['name']}: {ex['status']}" for ex in r.exercises)
                    or "none checked")
        lines.append(f"| {r.learner} | {r.notebook} | {_cell(r.run)} | {done}/{len(r.exercises)} "
                     f"| {verdicts} |")
        failures += [f"- {r.learner}, {r.notebook}, `{ex['name']}` ({ex['status']}): "
                     f"{_cell(ex['message'])}"
                     for ex in r.exercises if ex["status"] in ("failed", "missing", "library")]
    text = "\n".join(lines) + "\n"
    if failures:
        text += ("\nWhat the checkers said about exercises failed, missing or answered with the "
                 "library's own version:\n\n" + "\n".join(failures) + "\n")
    _replace(md_path, text)
    return csv_path, md_path


def _replace(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a file beside it, then renamed over it. The rename
    replaces whatever ``path`` is, a link a learner's notebook planted included, and never writes
    through it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _inert(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula (=, +, -, @, a tab or
    a carriage return: a learner can name a file or an exercise so) gets a leading apostrophe."""
    text = str(text)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:160]


def default_tables(folder: Path) -> Path:
    """Where the tables go by default: beside the class folder, not in it (FOLDER-grades), out of
    reach of a notebook that writes to ``../``."""
    folder = folder.resolve()
    return folder.parent / f"{folder.name}-grades"


def grade(folder: Path, *, timeout: float = 300.0, memory_mb: float = 4000.0,
          out: Path | None = None, jobs: int = 1, isolate: bool = False) -> list[Graded]:
    """Grade every learner in ``folder``, ``jobs`` notebooks at a time (each holds up to
    ``memory_mb``); write the tables to ``out`` (default :func:`default_tables`), rows in the
    learners' order. With ``isolate``, each notebook runs in a sandbox (:func:`sandbox_tool`) that
    shows it only its own scratch copy and no other process."""
    tables = out or default_tables(folder)  # also the executed notebooks, under executed/LEARNER/
    learners = find_learners(folder, skip=tables)
    if not learners:
        raise config.CourseError(f"No notebooks in {folder}: put one .ipynb per learner there, or "
                                 "one folder of notebooks per learner.")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise config.CourseError(f"grade needs at least one job at a time, got jobs = {jobs!r}.")
    sandbox = sandbox_tool() if isolate else None
    if isolate and sandbox is None:
        raise config.CourseError("grade --isolate needs bubblewrap (`apt install bubblewrap`) or "
                                 "util-linux's unshare with user namespaces enabled (`sysctl "
                                 "kernel.unprivileged_userns_clone=1`); neither works here. Grade "
                                 "without --isolate inside a container instead.")
    books = [(learner, path,
              # a learner's folder, copied whole
              folder / learner if (folder / learner).is_dir() else None)
             for learner, paths in learners.items() for path in paths]
    print(f"grading {len(books)} notebook(s) of {len(learners)} learner(s), "
          f"{min(jobs, len(books))} at a time"
          + (f", each in a {sandbox} sandbox" if sandbox else "") + " ...", flush=True)
    tables.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diffuse-edu-grade-") as root:
        hide = (folder.resolve(), tables.resolve(), Path(root))

        def one(book: tuple[str, Path, Path | None]) -> Graded:
            learner, path, own = book
            row = grade_notebook(learner, path, timeout=timeout, memory_mb=memory_mb, files=own,
                                 side_by_side=min(jobs, len(books)), keep=tables / "executed",
                                 sandbox=sandbox, hide=hide, scratch_root=Path(root))
            print(f"  {learner}, {path.name}: {row.run}, "
                  f"{sum(e['status'] == 'passed' for e in row.exercises)}/{len(row.exercises)} "
                  f"exercises passed ({row.seconds:.0f} s)", flush=True)
            return row

        with ThreadPoolExecutor(max_workers=jobs) as pool:  # each notebook runs in its own process
            rows = list(pool.map(one, books))
    csv_path, md_path = write_tables(rows, tables)
    print(f"wrote {csv_path} and {md_path}")
    return rows
