"""The README's table of full-scale results, written from what the lessons recorded.

``python -m diffuse_edu run all --scale full --out results/`` runs every lesson headless; each
leaves ``results/<lesson>/metrics.json`` with the machine, the command and the time. The table
between the README's markers is rebuilt from those files, one row per lesson; a lesson without a
full-scale run says "not yet run". A test keeps the committed table equal to what this module
writes, so it can never claim a run that is not in ``results/``.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN = "<!-- results table: written by `python -m diffuse_edu run all --scale full --out results/` -->"
END = "<!-- end of results table -->"


def results_table(lessons: list[str], folder: Path) -> str:
    """A Markdown table: for each lesson, its full-scale run in ``folder`` or "not yet run"."""
    rows = ["| lesson | full-scale run | machine | finished | seconds | command |",
            "| --- | --- | --- | --- | --- | --- |"]
    for lesson in lessons:
        metrics = folder / lesson / "metrics.json"
        run = json.loads(metrics.read_text()) if metrics.is_file() else None
        if run is None or run.get("scale") != "full":
            rows.append(f"| {lesson} | not yet run | | | | |")
            continue
        status = f"failed in {run['error']}" if run.get("error") else f"[recorded]({folder.name}/{lesson}/metrics.json)"
        rows.append(f"| {lesson} | {status} | {run.get('device', '')} | {run.get('finished', '')} | "
                    f"{run.get('seconds', '')} | `{run.get('command') or ''}` |")
    return "\n".join(rows)


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
