"""Staged or downloaded data sets (full scale): MNIST, Fashion-MNIST, CIFAR-10.

:func:`load_mnist`, :func:`load_fashion_mnist` and :func:`load_cifar10` read a data directory (see
:func:`diffuse_edu.config.data_dirs`) holding either a Keras-style ``.npz`` (``x_train``,
``y_train``, ``x_test``, ``y_test``) or torchvision's own files, and with ``download=True`` fetch
through torchvision. Files are checked against the checksums on their data card; a missing set
raises :class:`DataMissingError` saying what to run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffuse_edu.config import DATA_ENV, CourseError, cache_dir, data_dirs
from diffuse_edu.data.images import (
    CIFAR10_CLASSES,
    DIGIT_CLASSES,
    FASHION_CLASSES,
    ImageSet,
    resize,
    to_unit_range,
)


class DataMissingError(CourseError, FileNotFoundError):
    """A data set is not staged here and may not be downloaded; the message says what to run."""


class DataCorruptError(CourseError, OSError):
    """A staged file is unreadable or does not match its checksum; the message says what to run."""


@dataclass(frozen=True)
class DatasetCard:
    """What the course knows about a data set: where it comes from and how to check it."""

    name: str  # the name used on the command line and in file names
    title: str  # the name people know it by
    source: str  # citation and origin
    licence: str
    shape: tuple[int, int, int]  # (C, H, W) of one image as loaded at full scale
    builtin: bool  # ships with an installed package: never downloaded
    npz: str | None = None  # file name of the Keras-style staged copy
    content_sha256: str | None = None  # sha256 of x_train, y_train, x_test, y_test bytes in order
    classes: tuple[str, ...] = ()
    torchvision_folder: str | None = None  # the folder torchvision's own files live in

CARDS: dict[str, DatasetCard] = {
    card.name: card
    for card in (
        DatasetCard("digits", "scikit-learn digits (UCI optical digits)",
                    "Alpaydin & Kaynak 1998, bundled with scikit-learn", "CC BY 4.0",
                    (1, 16, 16), builtin=True, classes=DIGIT_CLASSES),
        DatasetCard("photos", "scikit-learn sample photos", "bundled with scikit-learn",
                    "CC BY 2.0", (3, 64, 64), builtin=True),
        DatasetCard("mnist", "MNIST", "LeCun, Cortes & Burges 1998", "CC BY-SA 3.0",
                    (1, 32, 32), builtin=False, npz="mnist.npz",
                    content_sha256="06b0d1f124c4e5fa796686ade41a9b778edacc8622f2195a352ef479ad44fc16",
                    classes=DIGIT_CLASSES, torchvision_folder="MNIST"),
        DatasetCard("fashion_mnist", "Fashion-MNIST", "Xiao, Rasul & Vollgraf 2017", "MIT",
                    (1, 32, 32), builtin=False, npz="fashion_mnist.npz",
                    content_sha256="ca3ab2a37f845e1b8ae23cab1b51749a3011ba3bf1d9016176d75cbaabac376f",
                    classes=FASHION_CLASSES, torchvision_folder="FashionMNIST"),
        DatasetCard("cifar10", "CIFAR-10", "Krizhevsky 2009",
                    "no licence stated; free for research",
                    (3, 32, 32), builtin=False, npz="cifar10.npz", classes=CIFAR10_CLASSES,
                    torchvision_folder="cifar-10-batches-py"),
    )
}

_KERAS_KEYS = ("x_train", "y_train", "x_test", "y_test")

def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """sha256 of the raw bytes of x_train, y_train, x_test, y_test, in that order."""
    h = hashlib.sha256()
    for key in _KERAS_KEYS:
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- staged sets
def find_staged(name: str) -> Path | None:
    """The first staged Keras-style ``.npz`` of data set ``name`` in the data directories."""
    card = CARDS[name]
    for folder in data_dirs():
        if card.npz and (folder / card.npz).is_file():
            return folder / card.npz
    return None


def _missing_message(card: DatasetCard) -> str:
    searched = "\n".join(f"    {d}" for d in data_dirs())
    return (
        f"{card.title} is not staged on this machine. Either\n  * online:  python -m diffuse_edu "
        f"data fetch {card.name}\n  * offline: copy {card.npz} (Keras layout: x_train, y_train, "
        "x_test, y_test) into a\n    folder and run  python -m diffuse_edu data stage FOLDER  (or "
        f"set {DATA_ENV}=FOLDER).\nFolders searched:\n{searched}"
    )


def read_npz(path: Path, card: DatasetCard) -> dict[str, np.ndarray]:
    """Read a Keras-style ``.npz`` and check it against the card's checksum."""
    fix = (f"Delete it and run `python -m diffuse_edu data fetch {card.name}` "
           f"(online) or stage a good copy with `python -m diffuse_edu data stage FOLDER`.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in _KERAS_KEYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataCorruptError(f"{path} is not a readable {card.title} archive ({e}). {fix}") from e
    if card.content_sha256 and content_sha256(arrays) != card.content_sha256:
        raise DataCorruptError(f"{path} does not match the {card.title} checksum. {fix}")
    return arrays


def _torchvision_arrays(card: DatasetCard, root: Path, download: bool) -> dict[str, np.ndarray]:
    """Read (and with ``download``, fetch) a data set through torchvision into Keras layout."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[card.name]
    arrays = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(str(root), train=train, download=download)  # torchvision checks its MD5s
        arrays[f"x_{split}"] = np.asarray(ds.data, dtype=np.uint8)
        arrays[f"y_{split}"] = np.asarray(ds.targets, dtype=np.uint8)
    return arrays


def _torchvision_roots(card: DatasetCard) -> list[Path]:
    """Data folders (or their torchvision/ subfolder) holding torchvision's files for ``card``."""
    roots = []
    for folder in data_dirs():
        for root in (folder, folder / "torchvision"):
            if card.torchvision_folder and (root / card.torchvision_folder).is_dir():
                roots.append(root)
    return roots


def _find_torchvision(card: DatasetCard) -> dict[str, np.ndarray] | None:
    for root in _torchvision_roots(card):
        try:
            return _torchvision_arrays(card, root, download=False)
        except (RuntimeError, OSError):  # incomplete or damaged: try the next folder
            continue
    return None


def fetch(name: str) -> Path:
    """Download data set ``name`` through torchvision and save a checked ``.npz`` in the cache."""
    card = CARDS[name]
    if card.builtin:
        raise DataMissingError(f"{card.title} ships with scikit-learn: nothing to fetch.")
    out = cache_dir()
    out.mkdir(parents=True, exist_ok=True)
    try:
        arrays = _torchvision_arrays(card, out / "torchvision", download=True)
    except (OSError, RuntimeError) as e:  # no network, a refused or broken download
        raise DataMissingError(f"Could not download {card.title} ({type(e).__name__}: {e}). "
                               f"Offline, stage it from a folder that holds {card.npz}: python -m "
                               f"diffuse_edu data stage FOLDER, or point {DATA_ENV} at that "
                               "folder.") from e
    return _save_checked(arrays, card, out / card.npz)


def stage(folder: str | Path) -> list[Path]:
    """Copy every known ``.npz`` found in ``folder`` into the cache, checking each checksum."""
    folder = Path(folder).expanduser()
    staged = []
    for card in CARDS.values():
        if card.npz and (folder / card.npz).is_file():
            read_npz(folder / card.npz, card)  # raises on a bad file
            target = cache_dir() / card.npz
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.resolve() != (folder / card.npz).resolve():
                shutil.copyfile(folder / card.npz, target)
            staged.append(target)
    if not staged:
        known = ", ".join(c.npz for c in CARDS.values() if c.npz)
        raise DataMissingError(f"No data set files ({known}) found in {folder}.")
    return staged


def _save_checked(arrays: dict[str, np.ndarray], card: DatasetCard, path: Path) -> Path:
    if card.content_sha256 and content_sha256(arrays) != card.content_sha256:
        raise DataCorruptError(f"Downloaded {card.title} does not match its checksum; try again.")
    np.savez(path, **arrays)
    return path


#: ``1``: a data set that is not staged is downloaded where it is needed (the hosted notebooks'
#: first cell sets it: a hosted machine at full scale has no data folder, and a network).
DOWNLOAD_ENV = "DIFFUSE_EDU_DOWNLOAD"


def download_allowed() -> bool:
    """May a missing data set be downloaded without being asked (``$DIFFUSE_EDU_DOWNLOAD=1``)?"""
    return os.environ.get(DOWNLOAD_ENV, "") == "1"


def load_keras_arrays(name: str, *, download: bool = False) -> dict[str, np.ndarray]:
    """The raw uint8 arrays of a staged data set, from its ``.npz`` or torchvision's files; fetched
    through torchvision where it is missing and ``download`` (or :func:`download_allowed`) says
    so."""
    card = CARDS[name]
    path = find_staged(name)
    if path is not None:
        return read_npz(path, card)
    arrays = _find_torchvision(card)
    if arrays is not None:
        return arrays
    if download or download_allowed():
        print(f"{card.title} is not on this machine: downloading it through torchvision into "
              f"{cache_dir()} (once; {DOWNLOAD_ENV}=1 allows it) ...", flush=True)
        return read_npz(fetch(name), card)
    raise DataMissingError(_missing_message(card))


def _load_staged(name: str, split: str, size: int, download: bool) -> ImageSet:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    card = CARDS[name]
    arrays = load_keras_arrays(name, download=download)
    x = to_unit_range(arrays[f"x_{split}"])
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    if size == 32 and x.shape[-1] == 28:
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)  # MNIST at 32x32: pad the black border
    else:
        x = resize(x, size)
    labels = torch.as_tensor(arrays[f"y_{split}"].astype(np.int64))
    return ImageSet(x.contiguous(), labels, card.classes, name)


def load_mnist(split: str = "train", *, size: int = 32, download: bool = False) -> ImageSet:
    """MNIST, padded from 28x28 to 32x32 (or resized to ``size``)."""
    return _load_staged("mnist", split, size, download)


def load_fashion_mnist(split: str = "train", *, size: int = 32, download: bool = False) -> ImageSet:
    """Fashion-MNIST, padded from 28x28 to 32x32 (or resized to ``size``)."""
    return _load_staged("fashion_mnist", split, size, download)


def load_cifar10(split: str = "train", *, size: int = 32, download: bool = False) -> ImageSet:
    """CIFAR-10 (3 x 32 x 32 colour images)."""
    return _load_staged("cifar10", split, size, download)


def availability() -> dict[str, str]:
    """For each data set, 'built in', where it is staged, or 'missing'."""
    found = {}
    for name, card in CARDS.items():
        if card.builtin:
            found[name] = "built in"
        elif (path := find_staged(name)) is not None:
            found[name] = str(path)
        elif roots := _torchvision_roots(card):
            found[name] = f"{roots[0] / card.torchvision_folder} (torchvision files)"
        else:
            found[name] = "missing"
    return found
