"""Progress bars for long loops, without loading any plotting library.

In Jupyter the bar is a widget; elsewhere it is text. The training loops and the lessons share it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


def in_notebook() -> bool:
    """True inside a Jupyter kernel (widgets and rich display work there). A kernel has IPython
    loaded already; this never imports it."""
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def progress(iterable: Iterable | None = None, **kwargs):
    """A progress bar (tqdm.auto: a widget in Jupyter, text elsewhere)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kwargs)
