"""Checkers for lesson 09: the tokenizer, the mini-CLIP's contrastive loss and the cross-attention
block."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.exercises.unet import _shape_error, randomised
from diffuse_edu.models.attention import CrossAttention, cross_attention_block, multi_head_attention
from diffuse_edu.models.clip import contrastive_loss
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

        compare(
            ids,
            want_ids,
            what=f"{what}: ids ({why})",
            mistakes=[
                Mistake(
                    "<bos> is missing: every caption starts with it.",
                    padded([w + [EOS] for w in ids_of]),
                ),
                Mistake(
                    "a caption longer than max_len lost its <eos>: cut the words, not the <eos>.",
                    padded([[BOS] + w + [EOS] for w in ids_of]),
                ),
                Mistake(
                    "<eos> is missing: every caption ends with it (the encoder's summary is read "
                    "there).",
                    padded([[BOS] + w for w in ids_of]),
                ),
                Mistake(
                    "a capitalised word was looked up as it is and became <unk>: the vocabulary "
                    "is lower-cased, and words(text) lower-cases before it splits.",
                    padded([[BOS] + w[: max_len - 2] + [EOS] for w in kept_case]),
                ),
                Mistake(
                    "punctuation stuck to a word made it unknown: split with words(text), which "
                    'drops punctuation ("circle," -> "circle").',
                    padded([[BOS] + w[: max_len - 2] + [EOS] for w in kept_punctuation]),
                ),
                Mistake(
                    "a word outside the vocabulary was left out; it becomes <unk> (id UNK = 3), "
                    "so that the caption keeps its length and the encoder knows a word stood "
                    "there.",
                    padded(
                        [[BOS] + [i for i in w if i != UNK][: max_len - 2] + [EOS] for w in ids_of]
                    ),
                ),
                Mistake(
                    "the word ids are shifted by 4: vocab already holds the four special tokens "
                    "at ids 0 to 3, so a word's id is its index in vocab as it is.",
                    padded(
                        [
                            [BOS] + [i if i == UNK else i + 4 for i in w][: max_len - 2] + [EOS]
                            for w in ids_of
                        ]
                    ),
                ),
            ],
            otherwise="look at the ids one by one against <bos> word ids <eos> <pad>... "
            "(unknown words are <unk>; words come from words(text)).",
        )
        if isinstance(mask, Tensor) and mask.dtype != torch.bool:
            raise Mismatch(f"{what}: the mask has dtype {mask.dtype}; make it bool (True = a real "
                           "token), as attention masks are.")
        no_bos, no_eos = want_mask.clone(), want_mask.clone()
        no_bos[:, 0] = False
        no_eos[want_ids == EOS] = False
        words_only = no_bos & no_eos
        compare(mask, want_mask, what=f"{what}: mask", mistakes=[
            Mistake("the mask is inverted: True marks the real tokens, False the padding.",
                    ~want_mask),
            Mistake("<bos> counts as a real token: the mask is False on <pad> only.", no_bos),
            Mistake("<eos> counts as a real token (the encoder reads its summary there): the mask "
                    "is False on <pad> only.", no_eos),
            Mistake("<bos> and <eos> count as real tokens (the encoder reads them, its summary at "
                    "<eos>): the mask is True on them and the words, False on <pad> only.",
                    words_only),
            Mistake("the mask must be False on the padding: True on <bos>, the words and <eos> "
                    "only.",
                    torch.ones_like(want_mask))])
    return case


TOKENIZE = Checker(
    "tokenize", tokenize,
    [_token_case(["a red circle", "a big blue square left of a small red circle"], 12, "two "
                                                                                       "captions"),
     _token_case([""], 5, "the empty prompt is <bos> <eos>"),
     _token_case(["A Red circle"], 6, "upper case"),
     _token_case(["a purple circle"], 6, "a word outside the vocabulary"),
     _token_case(["a big red circle left of a small blue square"], 6, "longer than max_len"),
     _token_case(["A red, big circle."], 7, "punctuation")],
    hints=(("Build each caption's row as a Python list first (specials included), then copy it "
            "into a tensor that starts as <pad> everywhere."),
           ("For the mask, every position that is not <pad> is a real token, <bos> and <eos> "
            "included: the ids you built already say which positions those are.")),
    see="lesson 09, section 2: <bos> word ids <eos> <pad>..., the mask True except on <pad>",
)



# ----------------------------------------------------------------------------- the contrastive loss
def _logits(seed: int, b: int = 6) -> Tensor:
    return torch.randn(b, b, generator=torch.Generator().manual_seed(seed)) * 3


def _same(groups: list[int]) -> Tensor:
    """(B, B) bool: True where two examples' captions are identical (equal group numbers)."""
    g = torch.tensor(groups)
    return g[:, None] == g[None, :]


def _soft(same: Tensor) -> Tensor:
    return same.float() / same.float().sum(1, keepdim=True)


def _contrastive_mistakes(logits: Tensor, same: Tensor) -> list[Mistake]:
    eye = torch.eye(len(logits), dtype=torch.bool)
    target = _soft(same)
    one_way = F.cross_entropy(logits, target)
    other_way = F.cross_entropy(logits.T, target)
    excluded, index = logits.masked_fill(same & ~eye, float("-inf")), torch.arange(len(logits))
    return [
        Mistake(
            "the pairs whose captions are identical were treated as wrong matches (hard "
            "targets on the diagonal); spread each row's target over every caption identical "
            "to its own.",
            (F.cross_entropy(logits, eye.float()) + F.cross_entropy(logits.T, eye.float())) / 2,
        ),
        Mistake(
            "only one direction: the loss averages image-to-text (rows) and text-to-image "
            "(columns).",
            one_way,
        ),
        Mistake(
            "only one direction: the loss averages image-to-text (rows) and text-to-image "
            "(columns).",
            other_way,
        ),
        Mistake(
            "each row's target must sum to 1: divide the True entries of `same` by their "
            "number in the row.",
            (F.cross_entropy(logits, same.float()) + F.cross_entropy(logits.T, same.float())) / 2,
        ),
        Mistake(
            "the loss is summed over the batch; average it over the examples.",
            (
                F.cross_entropy(logits, target, reduction="sum")
                + F.cross_entropy(logits.T, target, reduction="sum")
            )
            / 2,
        ),
        Mistake(
            "you took the duplicates out of the softmax and kept hard targets; count them as "
            "matches instead (soft targets), so that identical captions are not pushed apart "
            "or ignored.",
            (F.cross_entropy(excluded, index) + F.cross_entropy(excluded.T, index)) / 2,
        ),
        Mistake(
            "the cross-entropy needs log-probabilities: you used the probabilities themselves.",
            -(
                (target * logits.softmax(1)).sum(1).mean()
                + (target * logits.T.softmax(1)).sum(1).mean()
            )
            / 2,
        ),
        Mistake("the two directions were added, not averaged.", one_way + other_way),
        *(
            Mistake(
                f"the logits were divided by a temperature ({tau:g}) again; they arrive with "
                "the temperature already applied (the mini-CLIP's forward pass scales them), so "
                "use them as they are.",
                contrastive_loss(logits / tau, same),
            )
            for tau in (0.07, 0.1)
        ),
        Mistake(
            "that is a sigmoid (binary) cross-entropy on each pair on its own (SigLIP's "
            "loss); CLIP's loss is a softmax cross-entropy over each row and each column, "
            "every caption competing with the others.",
            F.binary_cross_entropy_with_logits(logits, same.float()),
        ),
    ]


def _contrastive_case(seed: int, groups: list[int], why: str) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        logits, same = _logits(seed, len(groups)), _same(groups)
        got = fn(logits.clone(), same.clone())
        what = f"contrastive_loss on a batch of {len(groups)} ({why})"
        if isinstance(got, Tensor) and got.ndim != 0:
            raise Mismatch(f"{what} returned shape {tuple(got.shape)}; the loss is one number "
                           "(average over the batch and the two directions).")
        compare(
            got,
            contrastive_loss(logits, same),
            what=what,
            mistakes=_contrastive_mistakes(logits, same),
        )

    return case


def _contrastive_gradient(fn: Callable) -> None:
    logits = _logits(9).requires_grad_()
    loss = fn(logits, _same([0, 1, 2, 0, 3, 4]))
    if not isinstance(loss, Tensor) or loss.grad_fn is None:
        raise Mismatch("the loss does not depend on the logits through autograd (was it built "
                       "with .item(), numpy or torch.tensor(...)?): the encoders could not learn "
                       "from it.")


def _contrastive_unchanged(fn: Callable) -> None:
    logits, same = _logits(4), _same([0, 0, 1, 2, 2, 2])
    before = (logits.clone(), same.clone())
    fn(logits, same)
    if not (torch.equal(logits, before[0]) and torch.equal(same, before[1])):
        raise Mismatch("contrastive_loss changed its inputs in place (a masked_fill_ or div_?): "
                       "build new tensors.")


CONTRASTIVE_LOSS = Checker(
    "contrastive_loss", contrastive_loss,
    [_contrastive_case(0, [0, 1, 2, 3, 4, 5], "every caption different"),
     _contrastive_case(1, [0, 1, 0, 2, 1, 0], "three captions repeat"),
     _contrastive_case(2, [3, 3, 3, 3], "all four captions identical"), _contrastive_gradient,
     _contrastive_unchanged],
    hints=(
        ("Row i of the logits scores image i against every caption of the batch; column j scores "
         "caption j against every image. Each is a classification whose right answers are the "
         "captions (images) identical to its own."),
        ("A cross-entropy accepts a target distribution per row. Build it from `same` so that it "
         "sums to one, and do the same for the transposed logits."),
    ),
    see="Radford et al. 2021, Fig. 3, in lesson 09, section 3: soft targets spread over identical "
        "captions",
)


# ------------------------------------------------------------------ the cross-attention block
def _cross_variant(block: CrossAttention, x, context, mask, *, residual=True, norm=True, heads=None,
                   order="kv", on_normed=False, project=True, use_mask=True, fold="b (h w) c -> b "
                                                                                  "c h w",
                   reshape=False, invert=False):
    b, c, h, w = x.shape
    xn = block.norm(x) if norm else x
    tokens = xn.reshape(b, h * w, c) if reshape in (True, "in") else rearrange(xn, "b c h w -> b "
                                                                                   "(h w) c")
    q = block.to_q(tokens)
    k, v = block.to_kv(context).chunk(2, dim=-1)
    if order == "vk":
        k, v = v, k
    m = (~mask if invert else mask) if use_mask else None
    out = multi_head_attention(q, k, v, heads or block.heads, m)
    out = block.to_out(out) if project else out
    out = out.reshape(b, c, h, w) if reshape in (True, "out") else rearrange(out, fold, h=h, w=w)
    return (xn if on_normed else x) + out if residual else out


def _cross_inputs(seed: int, shape=(3, 5), fresh: bool = False):
    block = CrossAttention(16, 12, 4, 4)
    if not fresh:
        randomised(block, seed)
    block.eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, *shape, generator=g)
    context = torch.randn(2, 6, 12, generator=g)
    mask = torch.arange(6).expand(2, 6) < torch.tensor([[4], [6]])  # row 0: two padded tokens
    # padded tokens stand out if they leak through
    context = context + 5 * (~mask)[..., None].float()
    return block, x, context, mask


def _cross_case(
    seed: int, shape=(3, 5), fresh: bool = False, masked: bool = True
) -> Callable[[Callable], None]:
    def case(fn: Callable) -> None:
        block, x, context, mask = _cross_inputs(seed, shape, fresh)
        mask = mask if masked else None
        what = (
            f"cross_attention_block on a {shape[0]}x{shape[1]} map, 6 caption tokens"
            + (" (row 0 padded after 4)" if masked else ", no mask")
            + (", a fresh block" if fresh else "")
        )
        with torch.no_grad():
            want = cross_attention_block(block, x, context, mask)
            got = _shape_error(
                lambda: fn(
                    block, x.clone(), context.clone(), None if mask is None else mask.clone()
                ),
                what,
                "the queries come from the image's H * W positions (C = 16 channels, "
                "block.to_q), the keys and values from the caption's tokens (D = 12 channels, "
                "block.to_kv makes both).",
            )
            if (
                masked
                and isinstance(got, Tensor)
                and got.shape == x.shape
                and torch.isnan(got).any()
            ):
                raise Mismatch(f"{what} returned NaN for the caption without padding: the mask is "
                               "inverted (True marks the real tokens, the ones to attend to), so "
                               "all its tokens were excluded.")
            args = (block, x, context, mask)
            mistakes = [] if fresh else [
                Mistake("the residual is missing: return x + the projected attention output.",
                        _cross_variant(*args, residual=False)),
                Mistake("the GroupNorm is missing: the queries come from block.norm(x).",
                        _cross_variant(*args, norm=False)),
                Mistake("the residual adds the normalised map; add the block's input x itself.",
                        _cross_variant(*args, on_normed=True)),
                Mistake("keys and values are swapped: block.to_kv's output splits as (k, v) in "
                        "that order.",
                        _cross_variant(*args, order="vk")),
                Mistake("the output projection block.to_out is missing.",
                        _cross_variant(*args, project=False)),
                Mistake("all channels form one head: pass block.heads to the attention.",
                        _cross_variant(*args, heads=1)),
                Mistake("the tokens were folded back with h and w swapped: rearrange(out, 'b (h "
                        "w) c -> b c h w', h=h, w=w) undoes the flattening.",
                        _cross_variant(*args, fold="b (w h) c "
                                                                                       "-> b c h "
                                                                                       "w")),
                Mistake("reshape mixes channels and positions: (B, C, H, W) -> (B, H*W, C) needs "
                        "the channel axis moved last (rearrange or permute), not a reshape.",
                        _cross_variant(*args, reshape=True)),
                Mistake("the map was flattened into tokens with a reshape, which mixes channels "
                        "and positions: move the channel axis last, rearrange(x, 'b c h w -> b (h "
                        "w) c').", _cross_variant(*args, reshape="in")),
                Mistake("the tokens were folded back into a map with a reshape, which mixes "
                        "positions and channels: move the channel axis first again, "
                        "rearrange(out, 'b (h w) c -> b c h w', h=h, w=w).",
                        _cross_variant(*args, reshape="out")),
            ]
            if masked and not fresh:
                mistakes.insert(0, Mistake("the padding mask was not used: padded caption tokens "
                                           "(here made to stand out) get attention. Pass mask to "
                                           "block.attend.",
                                           _cross_variant(*args, use_mask=False)))
                mistakes.insert(1, Mistake("the mask is inverted: True marks the real tokens, the "
                                           "ones to attend to (pass mask itself, not ~mask).",
                                           _cross_variant(*args, invert=True)))
        compare(got, want, what=what, mistakes=mistakes,
                otherwise="a fresh block must return x unchanged (its output projection starts at "
                          "zero)"
                if fresh else None)
    return case


def _cross_unchanged(fn: Callable) -> None:
    block, x, context, mask = _cross_inputs(7)
    before = [z.clone() for z in (x, context, mask)]
    with torch.no_grad():
        fn(block, x, context, mask)
    if not all(torch.equal(a, b) for a, b in zip((x, context, mask), before)):
        raise Mismatch("cross_attention_block changed its inputs in place; x, the caption and its "
                       "mask are used again by the next block: build new tensors.")


CROSS_ATTENTION_BLOCK = Checker(
    "cross_attention_block",
    cross_attention_block,
    [
        _cross_case(0),
        _cross_case(1, (4, 4)),
        _cross_case(2, masked=False),
        _cross_case(3, (2, 6), fresh=True),
        _cross_unchanged,
    ],
    hints=(
        ("Lesson 03's attention block with one change: the positions of the map ask (queries), the "
         "caption's tokens answer (keys and values). Padding must not answer."),
        ("Two linear layers make the three: one for the map's tokens, one (with twice the width) "
         "for the caption's. block.attend takes the mask as its last argument; fold back with h "
         "and w, then add the input."),
    ),
    see="lesson 09, section 5: x + W_out MHA(q = W_q GroupNorm(x), k, v = W_kv context, padding "
    "masked)",
)
