"""The command line: ``python -m diffuse_edu COMMAND`` (or ``diffuse-edu COMMAND``).

    doctor                          check the environment and say what to do about problems
    data list | fetch NAME | stage FOLDER
                                    show, download or stage data sets for offline use
    build [--check]                 build notebooks/ from solutions/ and the README's results table
                                    (or only check that they agree)
    run LESSON|all [--scale S] [--out DIR] [--force] [--budget SECONDS]
                                    run a lesson (or every lesson) headless: figures, metrics.json,
                                    samples.npz; `run all --out results/` also rewrites the README's
                                    results table
    check NOTEBOOK                  run a learner's notebook and report each exercise's verdict
    grade FOLDER [--timeout S] [--memory MB] [--jobs N] [--out DIR] [--isolate]
                                    run every learner's notebooks (each in a scratch copy, with
                                    time and memory limits; --isolate: in a sandbox) and tabulate
                                    the verdicts
    workshop [--scale S]            prepare a workshop: train and cache every model the lessons load
    export nbgrader DIR             the course as an nbgrader course directory (source/<lesson>/)
    export nbgrader-submission DIR --notebook NB --student ID
                                    a learner's worked notebooks/ lesson into DIR/submitted/ID/
    bench [--scale S] [--profile] [--quality] [--out FILE]
                                    training images/s, TFLOP/s and seconds per 10,000 samples
    lessons                         list the lessons
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from diffuse_edu import config


def _doctor(args: argparse.Namespace) -> int:
    from diffuse_edu.course import doctor

    return 0 if doctor.report() else 1


def _data(args: argparse.Namespace) -> int:
    from diffuse_edu import data

    if args.action == "list":
        for name, where in data.availability().items():
            card = data.CARDS[name]
            print(f"{name:<14} {card.title:<40} {where}")
        return 0
    if args.action == "fetch":
        if args.target not in data.CARDS:
            print(f"Unknown data set {args.target!r}; known: {', '.join(data.CARDS)}.",
                  file=sys.stderr)
            return 2
        print(f"saved {data.fetch(args.target)}")
        return 0
    for path in data.stage(args.target):
        print(f"staged {path}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from diffuse_edu.course import builder

    root = config.PROJECT_ROOT
    if root is None:
        print("build works in a checkout of diffuse-edu (pip install -e .).")
        return 2
    from diffuse_edu.course import results

    problems = builder.out_of_sync(root / "solutions", root / "notebooks")
    table = f"{results.BEGIN}\n{results.current_table(root)}\n{results.END}"
    if table not in (root / "README.md").read_text():
        problems.append("README.md: the results table is not what results/ and today's lessons say")
    if builder.read_manifest() != builder.exercise_manifest(root / "solutions"):
        problems.append(f"{builder.MANIFEST.name}: the lessons' exercises are not what solutions/ "
                        "checks")
    if args.check:
        print("\n".join(problems) or "notebooks/ matches solutions/.")
        return 1 if problems else 0
    for path in sorted((root / "solutions").glob("*.ipynb")):
        path.write_text(builder.clean_text(path))
    for path in builder.build(root / "solutions", root / "notebooks"):
        print(f"wrote {path.relative_to(root)}")
    builder.MANIFEST.write_text(builder.manifest_text(root / "solutions"))
    _update_results_table(root / "results")
    return 0


def _run(args: argparse.Namespace) -> int:
    from diffuse_edu.course.runner import find_lesson, run_notebook

    if args.lesson == "all":
        return _run_all(args)
    path = find_lesson(args.lesson)
    out = Path(args.out or f"runs/{path.stem}")
    summary = run_notebook(path, scale=args.scale, out=out)
    print(f"{path.name} at {summary['scale']} scale: {summary['seconds']} s on {summary['device']}")
    print(f"wrote {out}/metrics.json, {out / path.name} (the executed notebook) and "
          f"{len(summary['figures'])} figure(s)")
    _update_results_table(out.parent)
    return 0


def _update_results_table(folder: Path) -> None:
    """When ``folder`` is the project's results/, rewrite the README's table from it."""
    from diffuse_edu.course import results

    root = config.PROJECT_ROOT
    if root is None or folder.resolve() != (root / "results").resolve():
        return
    changed = results.update_readme(root / "README.md", results.current_table(root))
    print("README.md results table " + ("updated" if changed else "already current"))


def _run_all(args: argparse.Namespace) -> int:
    """Every lesson headless; with --out pointing at the project's results/, the README's table
    too."""
    from diffuse_edu.course.runner import lessons_dir, run_all

    out = Path(args.out or "runs")
    summaries = run_all(scale=args.scale, out=out, force=args.force, budget=args.budget)
    _update_results_table(out)
    left = len(list(lessons_dir().glob("[0-9]*.ipynb"))) - len(summaries)
    current = sum(1 for s in summaries.values() if s.get("skipped") == "current")
    too_long = [name for name, s in summaries.items() if s.get("skipped") == "too long"]
    stopped = [name for name, s in summaries.items()
               if s.get("unfinished") and not s.get("skipped")]
    failed = [name for name, s in summaries.items()
              if s.get("error") and not s.get("skipped") and name not in stopped]
    ran = len(summaries) - current - len(too_long)
    print(f"{ran - len(failed) - len(stopped)} of {ran} lessons ran"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; stopped unfinished at the budget: {', '.join(stopped)}" if stopped else "")
          + (f"; {current} already current (skipped)" if current else "")
          + (f"; passed over as too long for this budget: {', '.join(too_long)}"
             if too_long else "")
          + (f"; {left} not started within the budget (run the same command again)"
             if left else ""))
    return 1 if failed or stopped else 0


def _check(args: argparse.Namespace) -> int:
    import tempfile

    from diffuse_edu.course.runner import LessonError, find_lesson, run_notebook

    path = find_lesson(args.notebook)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            summary = run_notebook(path, scale="quick", out=Path(tmp), quiet=True)
        except LessonError as e:
            print(f"!! {e}")
            return 1
    verdicts = summary["exercises"]
    for name, status in verdicts.items():
        print(f"{status:<11} {name}")
    done = sum(s == "passed" for s in verdicts.values())
    print(f"{done} of {len(verdicts)} exercises pass.")
    return 0 if done == len(verdicts) else 1


def _grade(args: argparse.Namespace) -> int:
    from diffuse_edu.course.grade import grade

    grade(Path(args.folder), timeout=args.timeout, memory_mb=args.memory,
          out=Path(args.out) if args.out else None, jobs=args.jobs, isolate=args.isolate)
    return 0


def _workshop(args: argparse.Namespace) -> int:
    """Train (or verify) every cached model the lessons load, so a room of learners need not
    wait."""
    from diffuse_edu.course import workshop
    from diffuse_edu.training import distributed

    distributed.init_from_env()  # under torchrun: train on every GPU, rank 0 writes the files
    workshop.prepare(config.Scale(args.scale), retrain=args.retrain)
    return 0


def _export(args: argparse.Namespace) -> int:
    from diffuse_edu.course import nbgrader

    root = config.PROJECT_ROOT
    if root is None:
        print("export works in a checkout of diffuse-edu (pip install -e .).", file=sys.stderr)
        return 2
    out = Path(args.folder)
    if args.format == "nbgrader-submission":
        if not (args.notebook and args.student):
            print("export nbgrader-submission COURSE --notebook NOTEBOOK --student ID",
                  file=sys.stderr)
            return 2
        target = nbgrader.import_submission(Path(args.notebook), out, args.student, args.lesson)
        print(f"wrote {target}; in {out}: `nbgrader autograde {target.parent.name}`")
        return 0
    written = nbgrader.export(root / "solutions", out)
    print(f"wrote {len(written)} lessons to {out / 'source'} and {out / 'nbgrader_config.py'}; in "
          f"{out}: `nbgrader generate_assignment LESSON`, release, collect, then `nbgrader "
          "autograde LESSON`")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from diffuse_edu.course import bench

    scale = None if args.scale == "auto" else config.Scale(args.scale)
    bench.run(scale=scale, train_steps=args.train_steps, samples=args.samples,
              sample_batch=args.sample_batch, samplers=args.samplers,
              compile=args.compile_mode or args.compile, train_batch=args.train_batch,
              profile=args.profile, quality=args.quality, quality_seconds=args.quality_seconds,
              out=Path(args.out) if args.out else None)
    return 0


def _lessons(args: argparse.Namespace) -> int:
    from diffuse_edu.course.runner import lessons_dir

    for path in sorted(lessons_dir().glob("[0-9]*.ipynb")):
        print(path.stem)
    return 0


def _positive(kind: type) -> Callable[[str], object]:
    """An argparse type: a number of ``kind`` above 0, with a message that says so."""
    noun = "whole number" if kind is int else "number"

    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    parse.__name__ = f"positive {noun}"
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m diffuse_edu", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check the environment").set_defaults(func=_doctor)
    d = sub.add_parser("data", help="list, fetch or stage data sets")
    d.add_argument("action", choices=["list", "fetch", "stage"])
    d.add_argument("target", nargs="?", help="data set name (fetch) or folder (stage)")
    d.set_defaults(func=_data)
    b = sub.add_parser("build", help="build student notebooks from solutions")
    b.add_argument("--check", action="store_true", help="only report differences")
    b.set_defaults(func=_build)
    r = sub.add_parser("run", help="run a lesson headless")
    r.add_argument("lesson", help="lesson number (01), notebook path, or all")
    r.add_argument("--scale", default="auto", choices=[s.value for s in config.Scale])
    r.add_argument("--out", help="output folder (default runs/<lesson>)")
    r.add_argument("--force", action="store_true",
                   help="with all: run every lesson, also those whose results in --out are current")
    r.add_argument("--budget", type=_positive(float), default=None, metavar="SECONDS",
                   help="with all: start no lesson past this many seconds, nor one whose last run "
                        "in --out took longer than what is left; a lesson still running at the "
                        "end is stopped and recorded as unfinished (later runs pass over it); run "
                        "again to resume")
    r.set_defaults(func=_run)
    c = sub.add_parser("check", help="check a learner's notebook")
    c.add_argument("notebook", help="path to the notebook, or a lesson number")
    c.set_defaults(func=_check)
    gr = sub.add_parser("grade",
                        help="run every learner's notebooks in a folder and tabulate the verdicts")
    gr.add_argument("folder",
                    help="one .ipynb per learner, or one sub-folder of notebooks per learner")
    gr.add_argument("--timeout", type=_positive(float), default=300.0,
                    help="seconds each notebook may run (default 300)")
    gr.add_argument("--memory", type=_positive(float), default=4000.0,
                    help="MB of memory each notebook may hold (default 4000); past it the "
                         "notebook is stopped")
    gr.add_argument("--jobs", type=_positive(int), default=1,
                    help="notebooks graded at a time (default 1; at most the cores); each may "
                         "hold --memory MB, and side by side each runs slower against its "
                         "--timeout")
    gr.add_argument("--out",
                    help="where grades.csv, grades.md and the executed notebooks go (default "
                         "FOLDER-grades, beside the class folder)")
    gr.add_argument("--isolate", action="store_true",
                    help="run each notebook in a sandbox (bubblewrap, or unshare) where it sees "
                         "only its own scratch copy and no other process")
    gr.set_defaults(func=_grade)
    w = sub.add_parser("workshop", help="train and cache every model the lessons load")
    w.add_argument("--scale", default="full",
                   choices=[s.value for s in config.Scale if s is not config.Scale.AUTO])
    w.add_argument("--retrain", action="store_true",
                   help="train afresh even where a checkpoint exists")
    w.set_defaults(func=_workshop)
    ex = sub.add_parser("export", help="export the course for a grading tool")
    ex.add_argument("format", choices=["nbgrader", "nbgrader-submission"],
                    help="nbgrader: a course directory with source/<lesson>/; "
                         "nbgrader-submission: a learner's notebook from notebooks/ put into that "
                         "course's submitted/ folder, for autograde")
    ex.add_argument("folder", help="the course directory")
    ex.add_argument("--notebook", help="nbgrader-submission: the learner's worked course notebook")
    ex.add_argument("--student", help="nbgrader-submission: the learner's nbgrader student id")
    ex.add_argument("--lesson",
                    help="nbgrader-submission: the lesson (default: the notebook's file name)")
    ex.set_defaults(func=_export)
    sb = sub.add_parser("bench", help="training and sampling speed on this machine")
    sb.add_argument("--scale", default="auto", choices=[s.value for s in config.Scale])
    sb.add_argument("--train-steps", type=_positive(int),
                    help="training steps timed (default 30 quick, 300 full)")
    sb.add_argument("--samples", type=_positive(int),
                    help="samples per sampler (default 64 quick, 10,000 full)")
    sb.add_argument("--sample-batch", type=_positive(int),
                    help="sampling batch size (default 64 quick, 2,500 full)")
    sb.add_argument("--samplers", nargs="+",
                    help="names from diffuse_edu.course.bench.SAMPLERS (default: all; none: "
                         "training only)")
    sb.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the training step (default: on a GPU, as the recipe does)")
    sb.add_argument("--compile-mode",
                    help="a torch.compile mode for training, e.g. reduce-overhead (CUDA graphs)")
    sb.add_argument("--train-batch", type=_positive(int),
                    help="training batch size (default: the recipe's)")
    sb.add_argument("--profile", action="store_true",
                    help="also show where a training step's time goes")
    sb.add_argument("--quality", action="store_true",
                    help="also compare FID of eager and fast sampling")
    sb.add_argument("--quality-seconds", type=float, help="training budget for --quality")
    sb.add_argument("--out", help="also write the numbers to this JSON file")
    sb.set_defaults(func=_bench)
    sub.add_parser("lessons", help="list the lessons").set_defaults(func=_lessons)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "data" and args.action != "list" and not args.target:
        parser().error(f"data {args.action} needs a "
                       f"{'name' if args.action == 'fetch' else 'folder'}.")
    try:
        return args.func(args)
    except config.CourseError as e:
        # the library's own, explained errors; anything else is a bug: traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
