"""Hosted notebooks (Google Colab, Kaggle): the first code cell of every lesson, and the links.

A hosted kernel starts without the course. The first code cell of every lesson (the same text in
each, put there by ``python -m diffuse_edu build``) installs the course when ``diffuse_edu`` cannot
be imported, pinned to the version of the notebook, and says what it did; where the course is
installed (a clone with ``pip install -e .``) it does nothing and prints nothing. The install
source can be overridden with ``$DIFFUSE_EDU_SOURCE`` (a fork, a mirror, a local folder).

The scale is then chosen as everywhere: ``auto`` picks full scale when a GPU is present, quick
otherwise; the cell says which, and how to choose the other. A hosted machine has no data folder:
the cell allows full scale's data sets to be downloaded when a lesson first needs them
(``$DIFFUSE_EDU_DOWNLOAD=1``), and says so.
"""

from __future__ import annotations

from diffuse_edu import __version__

REPOSITORY = "https://github.com/diffuse-edu/diffuse-edu"
SOURCE_ENV = "DIFFUSE_EDU_SOURCE"
# diffuse_edu.data.staged.DOWNLOAD_ENV (without importing torch here)
DOWNLOAD_ENV = "DIFFUSE_EDU_DOWNLOAD"
MARK = "# Hosted notebooks (Colab, Kaggle)"


def tag(version: str = __version__) -> str:
    """The git tag of a release: the notebooks and the package installed by the cell match it."""
    return f"v{version}"


def install_source(version: str = __version__) -> str:
    """What the cell gives ``pip install`` by default: the course at the notebook's version."""
    return f"diffuse-edu @ git+{REPOSITORY}@{tag(version)}"


def setup_cell(version: str = __version__) -> str:
    """The first code cell of every lesson."""
    return f"""{MARK}: installs the course when it is missing. Locally it does nothing.
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("diffuse_edu") is None:
    _source = os.environ.get("{SOURCE_ENV}", "{install_source(version)}")
    print(f"diffuse_edu is not installed here; installing {{_source}} (a minute or two) ...")
    _pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", _source],
                          capture_output=True, text=True)
    if _pip.returncode != 0:
        raise RuntimeError(f"Installing the course failed; pip said:\\n{{_pip.stderr[-2000:]}}\\n"
                           "On Kaggle, turn on Internet in the notebook's settings and run this cell again.")
    importlib.invalidate_caches()
    import diffuse_edu

    os.environ.setdefault("{DOWNLOAD_ENV}", "1")  # full scale's data sets: fetched here when first needed
    print(f"installed diffuse-edu {{diffuse_edu.__version__}}; this lesson will run at "
          f"{{diffuse_edu.config.get_scale().value}} scale (full where a GPU is present). To choose, run "
          "os.environ['DIFFUSE_EDU_SCALE'] = 'quick' (or 'full') before the next cell. At full scale, "
          "MNIST and Fashion-MNIST are downloaded when a lesson first needs them (quick scale needs none).")"""


def lesson_path(lesson: str) -> str:
    return f"notebooks/{lesson}.ipynb"


def colab_url(lesson: str, version: str = __version__) -> str:
    """Open the student version of ``lesson`` (e.g. "05_training") in Google Colab."""
    owner_repo = REPOSITORY.removeprefix("https://github.com/")
    return (f"https://colab.research.google.com/github/{owner_repo}/blob/{tag(version)}/"
            f"{lesson_path(lesson)}")


def kaggle_url(lesson: str, version: str = __version__) -> str:
    """Open the student version of ``lesson`` in a Kaggle notebook."""
    return (f"https://kaggle.com/kernels/welcome?src={REPOSITORY}/blob/{tag(version)}/"
            f"{lesson_path(lesson)}")


def with_setup_cell(cells: list, make_cell) -> list:
    """``cells`` with the setup cell first among the code cells (replacing an older one)."""
    source = setup_cell()
    rest = [c for c in cells if not (c["cell_type"] == "code" and cell_text(c).startswith(MARK))]
    first_code = next((i for i, c in enumerate(rest) if c["cell_type"] == "code"), len(rest))
    return rest[:first_code] + [make_cell(source)] + rest[first_code:]


def first_code_cell(cells: list) -> str | None:
    return next((cell_text(c) for c in cells if c["cell_type"] == "code"), None)


def cell_text(cell: dict) -> str:
    """A notebook cell's source as one string (nbformat stores it as a string or a list of
    lines)."""
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
