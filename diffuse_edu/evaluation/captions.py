"""Lesson 17's judge of sampled captions: does a token sequence read as a caption of lesson 09's
template (:func:`diffuse_edu.data.captioned.caption`)? A grammar check, exact: the template words
few enough captions (672) to list them all."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor

from diffuse_edu.data.captioned import ATTRIBUTE_GROUPS, RELATIONS, caption


def template_captions() -> frozenset[str]:
    """Every caption lesson 09's template words: one shape with its size and quadrant, or two
    shapes and a relation. Grammar only: two shapes of one colour and the held-out colour-shape
    pairs parse too, though the generator draws neither."""
    n_colours, n_shapes = ATTRIBUTE_GROUPS[:2]
    unused = [-1, -1, -1, -1]  # the second shape of a one-shape scene
    singles = {caption(torch.tensor([list(o), unused]), -1)
               for o in itertools.product(*(range(n) for n in ATTRIBUTE_GROUPS))}
    pairs = {caption(torch.tensor([[c, s, 0, 0], [c2, s2, 0, 0]]), r)
             for c, s, c2, s2 in itertools.product(range(n_colours), range(n_shapes),
                                                   range(n_colours), range(n_shapes))
             for r in range(len(RELATIONS))}
    return frozenset(singles | pairs)


def caption_parses(tokens: Tensor, vocab: Sequence[str],
                   captions: frozenset[str] | None = None) -> Tensor:
    """Which token rows read as a caption of the template: the words before the first ``<eos>``
    form one of ``captions`` (default :func:`template_captions`) and only ``<pad>`` follows. Rows
    are lesson 09's ``tokenize`` ids without the leading ``<bos>``; an id past the vocabulary (a
    [MASK] left over) fails. Shapes: (N, L) int64 -> (N,) bool."""
    captions = template_captions() if captions is None else captions
    known = len(vocab)
    parsed = []
    for row in tokens.tolist():
        words = [vocab[i] if 0 <= i < known else None for i in row]
        if "<eos>" not in words:
            parsed.append(False)
            continue
        end = words.index("<eos>")
        head = words[:end]
        parsed.append(None not in head and " ".join(head) in captions
                      and all(w == "<pad>" for w in words[end + 1:]))
    return torch.tensor(parsed, dtype=torch.bool)
