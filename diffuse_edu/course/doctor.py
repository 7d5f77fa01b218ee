"""The environment check (``python -m diffuse_edu doctor``, and lesson 00's first cell).

Each line is a :class:`Finding`: what was checked, whether it is fine, and what to do if not.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from diffuse_edu import config, data
from diffuse_edu.course.runner import device_name, versions

REQUIRED = ("torch", "torchvision", "numpy", "matplotlib", "sklearn", "einops", "tqdm", "nbformat")
OPTIONAL = {"ipywidgets": "the lessons' sliders", "jupyterlab": "running the notebooks",
            "IPython": "running the notebooks"}


@dataclass(frozen=True)
class Finding:
    """One line of the environment report."""

    topic: str
    ok: bool
    detail: str
    fix: str = ""  # what to do about it (empty when ok)


def _packages() -> list[Finding]:
    found = []
    for name in REQUIRED:
        try:
            mod = importlib.import_module(name)
            found.append(Finding(name, True, getattr(mod, "__version__", "installed")))
        except ImportError:
            found.append(Finding(name, False, "missing",
                                 "pip install -e .  (from the project root)"))
    for name, use in OPTIONAL.items():
        try:
            mod = importlib.import_module(name)
            found.append(Finding(name, True, getattr(mod, "__version__", "installed")))
        except ImportError:
            found.append(Finding(name, False, f"missing: needed for {use}",
                                 f"pip install {name.lower()}"))
    return found


def _python() -> Finding:
    ok = sys.version_info >= (3, 11)
    return Finding("python", ok, sys.version.split()[0], "" if ok else "use Python 3.11 or newer")


def _device_and_scale() -> list[Finding]:
    import torch

    scale, kind = config.get_scale(), config.accelerator()
    env = os.environ.get(config.SCALE_ENV)
    found = {"cuda": "a CUDA GPU is present", "mps": "Apple's MPS is present",
             "cpu": "no GPU"}[kind]
    why = f"from ${config.SCALE_ENV}={env}" if env else f"auto: {found}"
    findings = [Finding("device", True, device_name()),
                Finding("scale", True, f"{scale.value} ({why})")]
    if scale is config.Scale.FULL and kind == "cpu":
        findings.append(Finding("full scale on CPU", False, "full scale without a GPU takes hours",
                                f"export {config.SCALE_ENV}=quick, or run on a GPU"))
    findings.append(_precision("cuda" if torch.cuda.is_available() else "cpu"))
    return findings


def _precision(device: str) -> Finding:
    """Which precision the lessons train in on ``device`` (the training loop's own choice)."""
    from diffuse_edu.training.loop import Precision, TrainConfig, precision_dtype

    name = Precision(precision_dtype(TrainConfig(), device)).name
    if device != "cuda":
        return Finding("training precision", True, f"{name} (the CPU)")
    # a GPU without fast bfloat16 (a T4) trains in float16 with a gradient scaler, about 4x
    # float32's speed
    return Finding("training precision", True, name + ("" if "bfloat16" in name else
                                                       " (this GPU has no fast bfloat16)"))


def _data() -> list[Finding]:
    findings = []
    for name, where in data.availability().items():
        card = data.CARDS[name]
        if where == "missing":
            fix = (f"online: python -m diffuse_edu data fetch {name}; offline: "
                   f"python -m diffuse_edu data stage FOLDER (with {card.npz})")
            need = ("optional (CIFAR-10 lessons only)" if name == "cifar10"
                    else "needed at full scale")
            findings.append(Finding(f"data: {name}", name == "cifar10", f"missing, {need}", fix))
        else:
            findings.append(Finding(f"data: {name}", True, where))
    cache = config.cache_dir()
    writable = os.access(cache if cache.exists() else cache.parent, os.W_OK)
    findings.append(Finding("cache folder", writable, str(cache),
                            "" if writable else f"set {config.DATA_ENV} to a writable folder"))
    return findings


def _models() -> list[Finding]:
    """The workshop's trained models, checked against its manifest (when there is one)."""
    from diffuse_edu.training.checkpoints import MANIFEST, verify_manifest

    cache = config.cache_dir()
    if not (cache / MANIFEST).is_file():
        return [Finding("trained models", True,
                        "no workshop manifest: lessons train what they need")]
    results = verify_manifest(cache)
    bad = [(path, why) for path, ok, why in results if not ok]
    if not bad:
        return [Finding("trained models", True, f"{len(results)} files match {cache / MANIFEST}")]
    fix = ("copy the workshop's cache folder again, or retrain: python -m diffuse_edu workshop "
           "--scale quick (or full)")
    return [Finding(f"model file {path}", False, why, fix) for path, why in bad]


def diagnose() -> list[Finding]:
    """Every check, in the order they are printed."""
    return [_python(), *_packages(), *_device_and_scale(), *_data(), *_models()]


def report(findings: list[Finding] | None = None) -> bool:
    """Print the findings as a table with a fix under each problem; True when all are fine."""
    findings = diagnose() if findings is None else findings
    width = max(len(f.topic) for f in findings)
    for f in findings:
        print(f"{'ok ' if f.ok else '!! '} {f.topic:<{width}}  {f.detail}")
        if f.fix:
            print(f"    {'':<{width}}  -> {f.fix}")
    problems = [f for f in findings if not f.ok]
    print(f"\n{len(problems)} problem(s)." if problems else "\nEverything needed is here.")
    print("versions:", ", ".join(f"{k} {v}" for k, v in versions().items()))
    return not problems
