import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from diffuse_edu.course import plotting
from diffuse_edu.diffusion.schedules import (
    cosine_schedule,
    linear_schedule,
    rescale_zero_terminal_snr,
)


def test_make_grid_places_images_row_by_row():
    images = torch.stack([torch.full((1, 2, 3), float(i) / 10) for i in range(5)])  # (5, 1, 2, 3)
    grid = plotting.make_grid(images, nrow=3, pad=1)
    assert grid.shape == (1, 2 * 3 + 1, 3 * 4 + 1)
    assert grid[0, 1, 1].item() == 0.0 and grid[0, 1, 5].item() == pytest.approx(0.1)
    assert grid[0, 4, 1].item() == pytest.approx(0.3)  # second row starts with image 3
    assert grid[0, 4, 9].item() == 1.0  # the empty sixth slot is white


def test_image_grid_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="\\(N, C, H, W\\)"):
        plotting.image_grid(torch.zeros(3, 4, 4))


def test_image_grid_names_each_row_at_its_centre():
    ax = plotting.image_grid(torch.zeros(6, 1, 4, 4), nrow=3, row_labels=["teacher", "student"])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["teacher", "student"]
    rows_px = 2 * (4 + 1) + 1  # two rows of 4 pixels with a 1-pixel border
    assert list(ax.get_yticks()) == pytest.approx([rows_px / 4, 3 * rows_px / 4])
    with pytest.raises(ValueError, match="3 row labels for 2 rows"):
        plotting.image_grid(torch.zeros(6, 1, 4, 4), nrow=3, row_labels=["a", "b", "c"])
    plt.close("all")


def test_plot_schedules_draws_every_schedule_with_labels():
    schedules = [linear_schedule(100), cosine_schedule(100),
                 rescale_zero_terminal_snr(linear_schedule(100))]
    fig, axes = plotting.plot_schedules(schedules)
    for ax in axes:
        assert len(ax.lines) == 3 and ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    plt.close(fig)


def test_slider_without_jupyter_draws_the_frames():
    seen = []
    plotting.slider(seen.append, t_max=10, frames=[2, 7])
    assert seen == [2, 7]


def test_show_adds_the_caption(monkeypatch):
    monkeypatch.setattr(plt, "show", lambda: None)
    fig, _ = plt.subplots()
    plotting.show(fig, "What to see.")
    assert any(t.get_text() == "What to see." for t in fig.texts)
    plt.close(fig)


def test_captions_read_as_sentences_and_symbols_stay_as_written():
    from diffuse_edu.course.plotting import as_sentence

    assert (as_sentence("the U-Net reaches a lower loss: holds.")
            == "The U-Net reaches a lower loss: holds.")
    assert as_sentence("at 4 NFE the student wins") == "At 4 NFE the student wins"
    for kept in ("t = 0: MSE", "v-prediction alone", "x0_hat is off", "adaLN-Zero trains",
                 "eps_theta(x_t)", "Already a sentence.", "2 seeds", ""):
        assert as_sentence(kept) == kept
