"""Figures, widgets and progress bars shared by every lesson.

Every figure in the course goes through :func:`show`, which writes a one-line caption under it
("what to notice") and displays it; the headless runner saves it as a PNG instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import torch
from einops import rearrange
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from diffuse_edu.diffusion.schedules import NoiseSchedule
from diffuse_edu.progress import in_notebook, progress  # noqa: F401 (re-exported for the lessons)


def make_grid(images: Tensor, nrow: int | None = None, *, pad: int = 1) -> Tensor:
    """Tile images into one picture with a thin white border between them.

    Shapes: images (N, C, H, W) in [-1, 1] -> (C, rows * (H + pad) + pad, nrow * (W + pad) + pad).
    """
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    filled = images.new_ones(rows * nrow, c, h + pad, w + pad)  # white padding
    filled[:n, :, pad:, pad:] = images
    # (C, rows*H', nrow*W')
    grid = rearrange(filled, "(r k) c h w -> c (r h) (k w)", r=rows, k=nrow)
    return torch.nn.functional.pad(grid, (0, pad, 0, pad), value=1.0)


def image_grid(
    images: Tensor, nrow: int | None = None, *, ax: Axes | None = None, title: str = "",
    row_labels: Sequence[str] = (),
) -> Axes:
    """Draw images in [-1, 1] (N, C, H, W) as one grid on ``ax`` (a new figure if None);
    ``row_labels`` names each row of the grid at its left."""
    if images.ndim != 4:
        raise ValueError("image_grid needs images of shape (N, C, H, W), got "
                         f"{tuple(images.shape)}.")
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / nrow)
    if row_labels and len(row_labels) != rows:
        raise ValueError(f"image_grid got {len(row_labels)} row labels for {rows} rows of {nrow} "
                         "images.")
    grid = (make_grid(images.detach().float().cpu().clamp(-1, 1), nrow) + 1) / 2  # (C, H, W)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    if grid.shape[0] == 1:
        ax.imshow(grid[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(rearrange(grid, "c h w -> h w c").numpy(), interpolation="nearest")
    ax.set_title(title)
    if row_labels:
        ax.set_xticks([])
        ax.set_yticks([(i + 0.5) * grid.shape[1] / rows for i in range(rows)], list(row_labels))
        ax.tick_params(length=0)
        ax.spines[:].set_visible(False)
    else:
        ax.set_axis_off()
    return ax


def as_sentence(text: str) -> str:
    """``text`` with its first word capitalised when it is a plain lowercase word.

    Captions composed from verdicts start with a claim ("the U-Net reaches ..."); a symbol stays
    as written ("t = 0: ...", "v-prediction ...", "x0_hat ...", "adaLN-Zero ...").
    """
    return text[:1].upper() + text[1:] if re.match(r"[a-z]{2,}\b(?![_=(])", text) else text


def show(fig: Figure, caption: str) -> None:
    """Put a one-line caption under ``fig`` (what to notice), as a sentence, and display it."""
    fig.text(0.5, -0.01, as_sentence(caption), ha="center", va="top", wrap=True, fontsize=9,
             style="italic")
    plt.show()


def plot_schedules(schedules: Sequence[NoiseSchedule], *, axes: Sequence[Axes] | None = None):
    """alpha_bar_t and log-SNR(t) of each schedule, side by side. Returns (fig, axes)."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    else:
        fig = axes[0].figure
    for s in schedules:
        t = torch.arange(s.T + 1)
        axes[0].plot(t, s.alpha_bar, label=s.name)
        finite = torch.isfinite(s.log_snr)
        axes[1].plot(t[finite], s.log_snr[finite], label=s.name)
    axes[0].set(title="Signal kept: alpha_bar_t", xlabel="time step t", ylabel="alpha_bar_t")
    axes[1].set(title="log-SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t))", xlabel="time step t",
                ylabel="log-SNR")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return fig, axes


def slider(draw: Callable[[int], None], *, t_max: int, t_min: int = 0, step: int = 1,
           value: int | None = None, frames: Sequence[int] = ()) -> None:
    """An interactive slider over t calling ``draw(t)`` in Jupyter; elsewhere draw ``frames``.

    ``draw`` must make and show its own figure. Without a Jupyter kernel (the headless runner,
    a plain Python script) or without ipywidgets, the listed frames are drawn one after another.
    """
    if in_notebook():
        try:
            import ipywidgets as widgets
        except ImportError:
            print("ipywidgets is missing (pip install ipywidgets): showing fixed frames instead.")
        else:
            start = t_min if value is None else value
            widgets.interact(draw, t=widgets.IntSlider(start, t_min, t_max, step,
                                                       continuous_update=False))
            return
    for t in frames:
        draw(t)
