"""The README's table of full-scale results, written from what the lessons recorded.

``python -m diffuse_edu run all --scale full --out results/`` runs every lesson headless; each
leaves ``results/<lesson>/metrics.json`` with the machine, the command and the time. The table
between the README's markers is rebuilt from those files, one row per lesson; a lesson without a
full-scale run says "not yet run". A test keeps the committed table equal to what this module
writes, so it can never claim a run that is not in ``results/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

BEGIN = ("<!-- results table: written by "
         "`python -m diffuse_edu run all --scale full --out results/` -->")
END = "<!-- end of results table -->"


#: The verdicts a lesson's claims can end in, as :mod:`diffuse_edu.course.report` words them.
VERDICTS = ("holds", "does not hold", "inconclusive", "similar")


def _leaves(value: object, top: bool = True) -> list[str]:
    """The verdict words inside a recorded claim: a string, or nested dicts and lists of them (a
    True or False counts only as the claim's whole verdict, not as a measurement inside it)."""
    if isinstance(value, str):
        word = next((v for v in VERDICTS if value.startswith(v)), None)
        return [word] if word else []
    if isinstance(value, bool):
        return (["holds" if value else "does not hold"]) if top else []
    if isinstance(value, dict):
        return [w for v in value.values() for w in _leaves(v, False)]
    if isinstance(value, (list, tuple)):
        return [w for v in value for w in _leaves(v, False)]
    return []


def claim_summary(metrics: dict) -> str:
    """One line per claim the lesson recorded (``claim_*`` and ``claim/*`` metrics): its name and
    its verdict, or the count of each verdict where its parts differ; joined with ``<br>``."""
    lines = []
    for key, value in metrics.items():
        prefix = re.match(r"claims?[_/]", key)
        if prefix is None:
            continue
        name = key[prefix.end():].replace("_", " ")
        words = _leaves(value)
        if not words:
            continue
        counts = {w: words.count(w) for w in VERDICTS if w in words}
        verdict = (next(iter(counts)) if len(counts) == 1
                   else ", ".join(f"{n} {w}" for w, n in counts.items()))
        lines.append(f"{name}: {verdict}")
    return "<br>".join(lines).replace("|", "\\|")


def results_table(lessons: list[str], folder: Path,
                  lesson_hashes: dict[str, str] | None = None) -> str:
    """A Markdown table: for each lesson, its full-scale run in ``folder`` (machine, when, minutes,
    the verdicts of its claims) or "not yet run". With ``lesson_hashes`` (lesson -> the hash of its
    cells today, as :func:`diffuse_edu.course.runner.stamp` makes it), a run of another version of
    the lesson says so."""
    rows = [("| lesson | full-scale run | machine | finished | minutes | claims at full scale | "
             "command |"),
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for lesson in lessons:
        metrics = folder / lesson / "metrics.json"
        run = json.loads(metrics.read_text()) if metrics.is_file() else None
        if run is None or run.get("scale") != "full":
            rows.append(f"| {lesson} | not yet run | | | | | |")
            continue
        status = (f"did not finish: {run['error']}" if run.get("unfinished")
                  else f"failed in {run['error']}"
                  if run.get("error") else f"[recorded]({folder.name}/{lesson}/metrics.json)")
        if (lesson_hashes is not None
                and (run.get("stamp") or {}).get("lesson") != lesson_hashes.get(lesson)):
            status += " (an earlier version of the lesson)"
        minutes = (f"{run['seconds'] / 60:.1f}" if isinstance(run.get("seconds"), (int, float))
                   else "")
        minutes = f"more than {minutes}" if run.get("unfinished") and minutes else minutes
        rows.append(f"| {lesson} | {status} | {run.get('device', '')} | {run.get('finished', '')} "
                    f"| {minutes} | {claim_summary(run.get('metrics', {}))} | "
                    f"`{run.get('command') or ''}` |")
    return "\n".join(rows)


def current_table(root: Path) -> str:
    """The table for the project at ``root``: its lessons, its results/, today's lesson hashes."""
    from diffuse_edu.course.runner import lessons_dir, stamp

    paths = sorted(lessons_dir().glob("[0-9]*.ipynb"))
    return results_table([p.stem for p in paths], root / "results",
                         {p.stem: stamp(p)["lesson"] for p in paths})


def update_readme(readme: Path, table: str) -> bool:
    """Put ``table`` between the README's markers; True when the file changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no results-table markers ({BEGIN} ... {END}).")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table}\n{END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text
