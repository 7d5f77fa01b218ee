"""Lesson 16's full-scale-only code paths (consistency training as a third arm, EDM's recipe against
the v recipe) run here with tiny settings, so that a typo in them shows on a laptop, not first on a
GPU: the notebook's own cells, with hp forced on and every count cut to a step or two."""

import ast
import json
import types
from pathlib import Path

import torch

from diffuse_edu import config
from diffuse_edu.diffusion import consistency as cm
from diffuse_edu.models.unet import UNet
from diffuse_edu.training import recipes
from diffuse_edu.training.loop import TrainConfig

LESSON = Path(__file__).resolve().parents[1] / "solutions" / "16_consistency_models.ipynb"


def _cells() -> list[str]:
    return ["".join(c["source"]) for c in json.loads(LESSON.read_text())["cells"]
            if c["cell_type"] == "code"]


def _one(cells: list[str], start: str) -> str:
    hits = [c for c in cells if c.startswith(start)]
    assert len(hits) == 1, f"lesson 16 has {len(hits)} code cells starting {start!r}"
    return hits[0]


def _definitions(source: str, names: set[str]) -> str:
    """The top-level functions and assignments called ``names`` of a cell, as source."""
    keep = [n for n in ast.parse(source).body
            if (isinstance(n, ast.FunctionDef) and n.name in names)
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in names
                                                  for t in n.targets))]
    return "\n\n".join(ast.get_source_segment(source, n) for n in keep)


def test_full_scale_cells_run_with_tiny_settings():
    cells = _cells()
    setup = _one(cells, "import copy")
    ns: dict = {}
    exec(setup.split("# Hyperparameters")[0], ns)  # the lesson's imports  # noqa: S102
    recipe = recipes.ddpm_recipe(config.Scale.QUICK)
    torch.manual_seed(0)
    teacher_net = UNet(recipe.model)
    schedule = recipe.schedule()
    tiny = TrainConfig(steps=2, batch_size=4, lr=1e-4, warmup_steps=0, ema_decay=None)

    def judged(x):
        assert torch.isfinite(x).all()
        return {"fid": float(x.float().abs().mean()), "recognisable": 0.5, "coverage": 0.9,
                "largest": 0.2, "features": None, "samples": x[:2]}

    ns.update(
        hp=types.SimpleNamespace(consistency_training=True, edm_claim=True, seeds=2, budget=tiny,
                                 grid_size=5, nfes=(1, 2), heun_steps=2, floor_fid=50.0,
                                 edm_config=TrainConfig(steps=2, batch_size=4, lr=1e-4,
                                                        warmup_steps=0, ema_decay=0.9),
                                 scale=config.Scale.QUICK),
        recipe=recipe, teacher_net=teacher_net, schedule=schedule, device="cpu", sigma_d=0.5,
        images=torch.randn(16, *recipe.image_shape).clamp(-1, 1), judged=judged,
        x_T={s: torch.randn(3, *recipe.image_shape) for s in range(2)},
        chosen={1: [80.0], 2: [80.0, 0.6]},
        consistency_function=cm.consistency_function, consistency_sampler=cm.consistency_sampler,
        verdicts={}, floor={("consistency", 1): True, ("consistency", 2): False,
                            ("progressive", 1): True, ("progressive", 2): True})
    claims = _one(cells, "x_T = {s:")
    exec(_definitions(claims, {"per_seed", "mean", "ms", "collapsed", "kinds"}), ns)  # noqa: S102
    ns["points"] = {(k, n, s): judged(torch.full((2, 1), s + n / 10 + 100 * (k == "teacher")))
                    for s in range(2) for k in ("consistency", "progressive", "teacher")
                    for n in (1, 2)}  # the teacher worst, so the floor lets comparisons through
    exec(_one(cells, "if hp.consistency_training:"), ns)  # noqa: S102
    exec(_one(cells, "if hp.edm_claim:"), ns)  # noqa: S102
    verdicts = ns["verdicts"]
    assert {"training against consistency @ 1", "training against progressive @ 2",
            "training floor", "EDM fid", "EDM recognisable", "EDM floor"} <= set(verdicts)
    assert "is not compared" in verdicts["training against consistency @ 2"]  # CD not past floor
    assert "consistency training beats progressive" in verdicts["training against progressive @ 2"]
    assert all(isinstance(v, str) and v for v in verdicts.values())
