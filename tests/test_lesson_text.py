"""What a lesson tells the learner: whose version of an exercise ran, the conventions an exercise
relies on, one symbol per meaning (issue 48, "What the learner sees"). Static: nothing is run."""

import re

import nbformat
import pytest

from diffuse_edu import config
from diffuse_edu.exercises import check, whose
from diffuse_edu.exercises.guidance import DROP_LABELS

ROOT = config.PROJECT_ROOT


def lesson(number: str) -> nbformat.NotebookNode:
    return nbformat.read(next((ROOT / "solutions").glob(f"{number}_*.ipynb")), as_version=4)


def test_whose_names_the_learner_or_the_library():
    def drop_labels(labels, p_null, null_label, *, generator=None):
        raise NotImplementedError

    def patchify(x, p):
        return x

    def unpatchify(tokens, p, h, w):
        return tokens

    fallback = check(drop_labels, DROP_LABELS, quiet=True)  # unfinished: the library's version
    assert whose(fallback) == "the library's drop_labels"
    assert whose(drop_labels) == "your drop_labels"
    assert whose(patchify, fallback, unpatchify, patchify) == (
        "your patchify and unpatchify, the library's drop_labels")
