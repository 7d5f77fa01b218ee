"""Text for a denoiser (lesson 09): a word-level tokenizer and a small transformer text encoder.

The tokenizer maps a caption to integer ids: ``<bos>``, one id per word (``<unk>`` for a word
outside the vocabulary), ``<eos>``, then ``<pad>`` up to a fixed length, with a mask that is True
on the real tokens. The encoder is a pre-norm transformer (Vaswani et al. 2017; the layout of
GPT-2 and CLIP's text tower, Radford et al. 2021, Sec. 2.4): token plus learned position
embeddings, blocks of self-attention and an MLP, each around a residual, and a final LayerNorm.
It returns one feature vector per token, the sequence the U-Net's cross-attention reads, and its
``<eos>`` feature as the caption's summary (CLIP's pooled text feature).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffuse_edu.models.attention import multi_head_attention
from diffuse_edu.models.conditioning import Cond

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD, BOS, EOS, UNK = range(len(SPECIALS))


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: "A red circle." -> ["a", "red", "circle"]."""
    return "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()


def build_vocab(texts: Iterable[str]) -> tuple[str, ...]:
    """The special tokens, then every word of ``texts`` in sorted order (ids follow this order)."""
    return SPECIALS + tuple(sorted({w for text in texts for w in words(text)} - set(SPECIALS)))


def tokenize(texts: Sequence[str], vocab: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
    """Lesson 09, section 1: captions -> (ids, mask).

    Each caption becomes ``<bos> w1 ... wn <eos>`` (words cut so that ``<eos>`` fits in
    ``max_len``), padded with ``<pad>``. Shapes: -> ids (B, max_len) int64, mask (B, max_len) bool.
    """
    if max_len < 2:
        raise ValueError(f"max_len must leave room for <bos> and <eos>, got {max_len}.")
    index = {w: i for i, w in enumerate(vocab)}
    ids = torch.full((len(texts), max_len), PAD, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [BOS] + [index.get(w, UNK) for w in words(text)][: max_len - 2] + [EOS]
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, ids != PAD


@dataclass(frozen=True)
class TextEncoderConfig:
    """A small transformer over word tokens; saved with every checkpoint."""

    vocab: tuple[str, ...]  # the tokenizer's words, specials first (see build_vocab)
    max_len: int = 12  # tokens per caption, <bos> and <eos> included
    width: int = 64  # feature width
    layers: int = 2  # transformer blocks
    heads: int = 4  # attention heads
    mlp_ratio: int = 4  # hidden width of the MLP, in multiples of width


class TextBlock(nn.Module):
    """x + MHA(LN(x)) with a padding mask, then x + MLP(LN(x)). Shapes: (B, L, D), mask (B, L)
    -> (B, L, D)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = self.to_qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.to_out(multi_head_attention(q, k, v, self.heads,
                                                 mask))  # no token attends to padding
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Token ids -> one feature per token, and the caption's pooled (``<eos>``) feature."""

    config_class = TextEncoderConfig

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = cfg = config
        self.token = nn.Embedding(len(cfg.vocab), cfg.width)
        self.position = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(TextBlock(cfg.width, cfg.heads,
                                              cfg.mlp_ratio) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def tokenize(self, texts: Sequence[str],
                 device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """:func:`tokenize` with this encoder's vocabulary and length, on ``device`` (default: the
        weights')."""
        ids, mask = tokenize(texts, self.config.vocab, self.config.max_len)
        device = device or self.position.device
        return ids.to(device), mask.to(device)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Shapes: ids (B, L) int64, mask (B, L) bool -> features (B, L, width)."""
        if ids.dtype != torch.long or ids.ndim != 2:
            raise ValueError("TextEncoder expects token ids of shape (B, L) int64, got "
                             f"{tuple(ids.shape)} {ids.dtype}: make them with "
                             "TextEncoder.tokenize(texts).")
        x = self.token(ids) + self.position[: ids.shape[1]]  # (B, L, D)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    @staticmethod
    def pooled(features: Tensor, mask: Tensor) -> Tensor:
        """The feature at each caption's ``<eos>`` (its last real token). Shapes: (B, L, D)
        -> (B, D)."""
        last = mask.long().sum(1) - 1  # (B,)
        return features[torch.arange(features.shape[0], device=features.device), last]

    @torch.no_grad()
    def condition(self, texts: Sequence[str], *, batch_size: int = 4096) -> Cond:
        """Captions -> ``Cond(context=features (B, L, width), context_mask=(B, L))``, what a U-Net
        cross-attends to (computed without gradients: the encoder is frozen). ``condition([""])``
        is the empty prompt, the null condition of guidance."""
        parts = [self.tokenize(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return Cond(context=torch.cat([self(ids, mask) for ids, mask in parts]),
                    context_mask=torch.cat([mask for _, mask in parts]))
