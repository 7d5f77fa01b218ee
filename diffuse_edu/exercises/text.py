"""Checkers for lesson 09: the tokenizer and multi-head attention with a padding mask."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.models.attention import multi_head_attention
from diffuse_edu.models.text import BOS, EOS, PAD, UNK, build_vocab, tokenize, words

_VOCAB = build_vocab(["a big red circle left of a small blue square at the top"])


def _token_case(texts: list[str], max_len: int, why: str) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        what = f"tokenize({texts!r}, vocab, max_len={max_len})"
        try:
            got = fn(list(texts), _VOCAB, max_len)
        except KeyError as e:
            raise Mismatch(f"{what} raised KeyError {e}: a word outside the vocabulary must become "
                           "<unk>, not an error.") from e
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Mismatch(f"{what} must return a pair (ids, mask), got {type(got).__name__}.")
        ids, mask = got
        want_ids, want_mask = tokenize(texts, _VOCAB, max_len)
        index = {w: i for i, w in enumerate(_VOCAB)}
        ids_of = [[index.get(w, UNK) for w in words(t)] for t in texts]
        kept_punctuation = [[index.get(w, UNK) for w in t.lower().split()] for t in texts]
        kept_case = [["".join(ch if ch.isalnum() else " " for ch in t).split()] for t in texts]
        kept_case = [[index.get(w, UNK) for w in row[0]] for row in kept_case]

        def padded(rows: list[list[int]]) -> Tensor:
            out = torch.full((len(rows), max_len), PAD, dtype=torch.long)
            for r, row in enumerate(rows):
                out[r, : min(len(row), max_len)] = torch.tensor(row[:max_len], dtype=torch.long)
            return out

        compare(ids, want_ids, what=f"{what}: ids ({why})", mistakes=[
            Mistake("<bos> is missing: every caption starts with it.", padded([w + [EOS] for w in ids_of])),
            Mistake("a caption longer than max_len lost its <eos>: cut the words, not the <eos>.",
                    padded([[BOS] + w + [EOS] for w in ids_of])),
            Mistake("<eos> is missing: every caption ends with it (the encoder's summary is read there).",
                    padded([[BOS] + w for w in ids_of])),
            Mistake("a capitalised word was looked up as it is and became <unk>: the vocabulary is lower-cased, and "
                    "words(text) lower-cases before it splits.", padded([[BOS] + w[: max_len - 2] + [EOS] for w in kept_case])),
            Mistake("punctuation stuck to a word made it unknown: split with words(text), which drops punctuation "
                    "(\"circle,\" -> \"circle\").", padded([[BOS] + w[: max_len - 2] + [EOS] for w in kept_punctuation])),
        ], otherwise="look at the ids one by one against <bos> word ids <eos> <pad>... "
                     "(unknown words are <unk>; words come from words(text)).")
        if isinstance(mask, Tensor) and mask.dtype != torch.bool:
            raise Mismatch(f"{what}: the mask has dtype {mask.dtype}; make it bool (True = a real token), "
                           "as attention masks are.")
        no_bos, no_eos = want_mask.clone(), want_mask.clone()
        no_bos[:, 0] = False
        no_eos[want_ids == EOS] = False
        compare(mask, want_mask, what=f"{what}: mask", mistakes=[
            Mistake("the mask is inverted: True marks the real tokens, False the padding.", ~want_mask),
            Mistake("<bos> counts as a real token: the mask is False on <pad> only.", no_bos),
            Mistake("<eos> counts as a real token (the encoder reads its summary there): the mask is False on "
                    "<pad> only.", no_eos),
            Mistake("the mask must be False on the padding: True on <bos>, the words and <eos> only.",
                    torch.ones_like(want_mask))])
    return case


TOKENIZE = Checker(
    "tokenize", tokenize,
    [_token_case(["a red circle", "a big blue square left of a small red circle"], 12, "two captions"),
     _token_case([""], 5, "the empty prompt is <bos> <eos>"),
     _token_case(["A Red circle"], 6, "upper case"),
     _token_case(["a purple circle"], 6, "a word outside the vocabulary"),
     _token_case(["a big red circle left of a small blue square"], 6, "longer than max_len"),
     _token_case(["A red, big circle."], 7, "punctuation")],
    hints=("Build each caption's row as a Python list first (specials included), then copy it into a tensor "
           "that starts as <pad> everywhere.",
           "For the mask, every position that is not <pad> is a real token, <bos> and <eos> included: the ids you "
           "built already say which positions those are."),
    see="lesson 09, section 2: <bos> word ids <eos> <pad>..., the mask True except on <pad>",
)


def _variant(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None, *, split: bool = True,
             scale: str = "head", masking: str = "inf", axis: int = -1) -> Tensor:
    """Attention computed right or in one of the typical wrong ways."""
    h = heads if split else 1
    q, k, v = (rearrange(z, "b l (h d) -> b h l d", h=h) for z in (q, k, v))
    width = {"head": q.shape[-1], "full": q.shape[-1] * h, "none": 1}[scale]
    scores = q @ k.transpose(-1, -2) / width ** 0.5  # (B, h, Lq, Lk)
    keep = None if mask is None else mask[:, None, None, :]
    if keep is not None and masking == "inf":
        scores = scores.masked_fill(~keep, float("-inf"))
    elif keep is not None and masking == "inverted":
        scores = scores.masked_fill(keep, float("-inf"))
    elif keep is not None and masking == "inverted_additive":
        scores = scores - 1e9 * keep
    elif keep is not None and masking == "zero":
        scores = scores * keep
    weights = scores.softmax(axis)
    if keep is not None and masking == "after":
        weights = weights * keep
    return rearrange(weights @ v, "b h l d -> b l (h d)")


def _attention_inputs(seed: int, lq: int, lk: int, c: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(3, n, c, generator=g, dtype=dtype) for n in (lq, lk, lk))
    mask = torch.arange(lk).expand(3, lk) < torch.tensor([[lk], [lk - 2], [2]])  # (3, Lk): padding at the end
    v = v + 50 * (~mask)[..., None].to(dtype)  # padded values stand out if they leak through
    return q, k, v, mask


def _attention_case(seed: int, heads: int, lq: int, lk: int, masked: bool,
                    dtype: torch.dtype = torch.float32) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        q, k, v, mask = _attention_inputs(seed, lq, lk, 8, dtype)
        mask = mask if masked else None
        what = (f"multi_head_attention(q {tuple(q.shape)}, k and v {tuple(k.shape)}, heads={heads}, "
                f"mask={'(3, %d) with padding' % lk if masked else None}{', float64' if dtype == torch.float64 else ''})")
        args = (q, k, v, heads, mask)
        mistakes = [
            Mistake("the scores are divided by sqrt(C) of all heads; divide by sqrt(d) = sqrt(C / heads), "
                    "the width of one head.", _variant(*args, scale="full")),
            Mistake("the scores are not scaled: divide q k^T by sqrt(d).", _variant(*args, scale="none")),
            Mistake("the softmax runs over the queries; each query's weights over the keys must sum to 1.",
                    _variant(*args, axis=-2)),
        ]
        if heads > 1:
            mistakes.insert(0, Mistake(f"the channels were not split into {heads} heads: one softmax over "
                                       "all C channels is one head.", _variant(*args, split=False)))
        if masked:
            mistakes = [
                Mistake("the mask is ignored: padded keys (whose values here are about 50) get weight.",
                        _variant(q, k, v, heads, None)),
                Mistake("the mask is inverted: True marks the keys to attend to.",
                        _variant(*args, masking="inverted_additive")),
                Mistake("multiplying the scores by the mask makes them 0, not impossible: exp(0) = 1 still "
                        "gives padding weight. Set them to -inf before the softmax.", _variant(*args, masking="zero")),
                Mistake("zeroing the weights after the softmax leaves rows that no longer sum to 1: mask the "
                        "scores (with -inf) before the softmax instead.", _variant(*args, masking="after")),
            ] + mistakes
        got = fn(q.clone(), k.clone(), v.clone(), heads, None if mask is None else mask.clone())
        if masked and isinstance(got, Tensor) and got.shape == q.shape and torch.isnan(got).any():
            if torch.equal(torch.isnan(got), torch.isnan(_variant(*args, masking="inverted"))):
                raise Mismatch(f"{what} returned NaN where a caption has no padding: the mask is inverted "
                               "(True marks the keys to attend to), so every key of that row got -inf.")
        compare(got, multi_head_attention(*args), what=what, mistakes=mistakes)
    return case


def _inputs_unchanged(fn: Callable) -> None:
    q, k, v, mask = _attention_inputs(5, 4, 6, 8)
    before = [z.clone() for z in (q, k, v, mask)]
    fn(q, k, v, 2, mask)
    if not all(torch.equal(a, b) for a, b in zip((q, k, v, mask), before)):
        raise Mismatch("multi_head_attention changed its inputs in place (e.g. masked_fill_ on k or v); "
                       "the block still needs them: build new tensors.")


MULTI_HEAD_ATTENTION = Checker(
    "multi_head_attention", multi_head_attention,
    [_attention_case(0, 1, 4, 4, False), _attention_case(1, 2, 5, 7, False), _attention_case(2, 2, 5, 7, True),
     _attention_case(3, 4, 16, 6, True), _attention_case(4, 2, 3, 5, True, torch.float64), _inputs_unchanged],
    hints=("Work per head (each head owns a slice of d = C / heads channels), and make sure a padded key "
           "ends up with exactly zero weight.",
           "Mask the logits before the softmax, with a value the softmax turns into an exact 0; the mask "
           "marks keys, so it broadcasts over the heads and the queries. Build new tensors: never edit q, k or v."),
    see="lesson 09, section 4: lesson 03's attention with the padding mask's keys set to -inf before the softmax",
)
