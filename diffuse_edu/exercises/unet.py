"""Checkers for lesson 03: multi-head attention, the residual block, the attention block and the
U-Net's forward pass with its skip stack."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, run_naming_crashes
from diffuse_edu.models.attention import SelfAttention, attention_block, multi_head_attention
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.unet import ResBlock, UNet, UNetConfig, residual_block, unet_forward


def _explicit(q, k, v, heads, *, scale=True, dim=-1, split="b l (h d) -> b h l d", average="v",
              scores="qk",
              by_d=False, merge="b h l d -> b l (h d)"):
    """Attention written out, with switches for the usual mistakes."""
    q, k, v = (rearrange(z, split, h=heads) for z in (q, k, v))
    logits = {
        "qk": q @ k.transpose(-1, -2),
        "qq": q @ q.transpose(-1, -2),
        "kq": k @ q.transpose(-1, -2),
    }[scores]
    if scale:
        logits = logits / (q.shape[-1] if by_d else q.shape[-1] ** 0.5)
    out = logits.softmax(dim=dim) @ (v if average == "v" else k)
    # (B, h, L, d) reshaped as it lies in memory, without moving the heads back
    if merge == "reshape":
        return out.reshape(out.shape[0], out.shape[2], -1)
    return rearrange(out, merge)


def _case(heads: int, lq: int, lk: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, lq, 8, generator=g), torch.randn(2, lk, 8, generator=g),
            torch.randn(2, lk, 8, generator=g), heads)


def _mistakes(q, k, v, heads) -> list[Mistake]:
    c = q.shape[-1]
    return [
        Mistake("the logits are not scaled: divide q k^T by sqrt(d), d = channels per head.",
                _explicit(q, k, v, heads, scale=False)),
        Mistake("you scaled by sqrt(C) (all channels); use sqrt(d) with d = C / heads.",
                _explicit(q * (heads ** -0.5), k, v, heads)),
        Mistake("you divided by d; divide q k^T by its square root, sqrt(d) (a sum of d products "
                "of unit-variance numbers has standard deviation sqrt(d)).",
                _explicit(q, k, v, heads, by_d=True)),
        Mistake("the heads were merged back in the wrong order: put the heads outermost again, "
                "rearrange(out, 'b h l d -> b l (h d)'), the inverse of the split.",
                _explicit(q, k, v, heads, merge="b h l d -> b l (d h)")),
        Mistake("a plain reshape of (B, heads, L, d) to (B, L, C) mixes positions and heads (the "
                "heads axis comes before the positions in memory): move the heads next to d "
                "first, rearrange(out, 'b h l d -> b l (h d)').",
                _explicit(q, k, v, heads, merge="reshape")),
        Mistake("the softmax runs over the queries; it must run over the keys (the last axis).",
                _explicit(q, k, v, heads, dim=-2)),
        Mistake("the heads interleave channels: split C as (heads, d) with heads outermost, "
                "rearrange(q, 'b l (h d) -> b h l d', h=heads).",
                _explicit(q, k, v, heads, split="b l (d h) -> b h l d")),
        Mistake("all channels form one head: split them into `heads` heads of C / heads each.",
                _explicit(q, k, v, 1)),
        Mistake("that is q k^T v without the softmax's normalisation.",
                rearrange((rearrange(q, "b l (h d) -> b h l d", h=heads)
                           @ rearrange(k, "b l (h d) -> b h l d", h=heads).transpose(-1, -2)
                           / (c // heads) ** 0.5).exp()
                          @ rearrange(v, "b l (h d) -> b h l d", h=heads), "b h l d -> b l (h d)")),
        Mistake("the weights averaged the keys; they average the values: softmax(q k^T / sqrt(d)) "
                "v.",
                _explicit(q, k, v, heads, average="k")),
    ] + ([] if q.shape[1] != k.shape[1] else [
        Mistake("the scores compare the queries with themselves (q q^T); compare them with the "
                "keys, q k^T.",
                _explicit(q, k, v, heads, scores="qq")),
        Mistake("the score matrix is transposed (k q^T): row i must hold query i's similarity "
                "with every key.",
                _explicit(q, k, v, heads, scores="kq")),
    ])


def _self_attention(fn: Callable) -> None:
    for heads in (1, 2, 4):
        q, k, v, h = _case(heads, 6, 6, heads)
        want = multi_head_attention(q, k, v, h)
        compare(fn(q.clone(), k.clone(), v.clone(), h), want, mistakes=_mistakes(q, k, v, h),
                what=f"attention over 6 positions, 8 channels, {heads} head(s)")


def _cross_attention(fn: Callable) -> None:
    q, k, v, h = _case(2, 5, 3, 11)
    want = multi_head_attention(q, k, v, h)
    compare(fn(q, k, v, h), want, mistakes=_mistakes(q, k, v, h),
            what="cross-attention: 5 queries, 3 keys and values, 2 heads (Lq != Lk)")


def _permutation(fn: Callable) -> None:
    q, k, v, h = _case(4, 7, 7, 5)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    want = fn(q, k, v, h)[:, perm]
    compare(fn(q[:, perm], k[:, perm], v[:, perm], h), want,
            what="attention with the positions permuted (the output must be permuted the same way)")


MULTI_HEAD_ATTENTION = Checker(
    "multi_head_attention", multi_head_attention, [_self_attention, _cross_attention, _permutation],
    hints=(
        ('Each head sees its own slice of d = C / heads channels; einops.rearrange splits the '
         'channel axis into (heads, d) and merges it back.'),
        ('Inside each head: the similarity of every query with every key, scaled by 1 / sqrt(d), '
         'normalised over the keys, then used to average the values.'),
    ),
    see="Vaswani et al. 2017, Eq. 1, in lesson 03, section 3: softmax(q k^T / sqrt(d)) v per head",
)


# ----------------------------------------------------------------------------- the blocks around it
def randomised(module: nn.Module, seed: int, std: float = 0.3) -> nn.Module:
    """``module`` in eval mode with every parameter redrawn: N(0, std^2), GroupNorm scales around 1
    (zero-initialised layers would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm_scale = p.ndim == 1 and "norm" in name and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if norm_scale else 0.0))
    return module.eval()


def _shape_error(fn: Callable, what: str, advice: str) -> torch.Tensor:
    """Run ``fn``; turn a shape error (the usual symptom of a wrongly wired block) into advice, with
    PyTorch's own message whole (its end names the shapes that met)."""
    try:
        return fn()
    except RuntimeError as e:
        if "size" in str(e) or "shape" in str(e) or "channels" in str(e):
            raise Mismatch(f"{what} failed with a shape error ({' '.join(str(e).split())}): "
                           f"{advice}") from None
        raise


def _res_variant(
    block: ResBlock,
    x,
    emb,
    *,
    act_first=False,
    modulate_first=False,
    modulate_after_act=False,
    shortcut=True,
    second_act=True,
    first_act=True,
    modulate=True,
    norm2=True,
    reuse_norm1=False,
    shortcut_early=False,
    act=None,
    shortcut_of_normed=False,
) -> torch.Tensor:
    silu = act or torch.nn.functional.silu
    if act_first:
        h = block.conv1(block.norm1(silu(x)))
    else:
        h = block.conv1(silu(block.norm1(x)) if first_act else block.norm1(x))
    mod = (
        (lambda z: block.scale_shift(z, emb))
        if block.scale_shift is not None and modulate
        else (lambda z: z)
    )
    second_norm = block.norm1 if reuse_norm1 else block.norm2 if norm2 else (lambda z: z)
    if modulate_first:
        h = second_norm(mod(h))
    else:
        h = second_norm(h)
        if not modulate_after_act:
            h = mod(h)
    h = silu(h) if second_act else h
    if modulate_after_act:
        h = mod(h)
    if shortcut_early:
        return block.conv2(block.dropout(h + block.shortcut(x)))
    h = block.conv2(block.dropout(h))
    return h + block.shortcut(block.norm1(x) if shortcut_of_normed else x) if shortcut else h


def _res_mistakes(block: ResBlock, x, emb) -> list[Mistake]:
    with torch.no_grad():
        return [
            Mistake("the shortcut is missing: add block.shortcut(x) (x itself, or a 1x1 conv when "
                    "the channel counts differ) to the block's output.",
                    _res_variant(block, x, emb, shortcut=False)),
            Mistake("SiLU runs before the first GroupNorm: the order is norm, then activation, "
                    "then conv.",
                    _res_variant(block, x, emb, act_first=True)),
            Mistake("the embedding modulates the features before the second GroupNorm, which then "
                    "undoes it: normalise first, then scale and shift.",
                    _res_variant(block, x, emb, modulate_first=True)),
            Mistake("the embedding modulates after the second SiLU: scale and shift the "
                    "normalised features, then apply the activation.",
                    _res_variant(block, x, emb, modulate_after_act=True)),
            Mistake("the second SiLU is missing (between the modulation and the second conv).",
                    _res_variant(block, x, emb, second_act=False)),
            Mistake("the first SiLU is missing (between the first GroupNorm and the first conv).",
                    _res_variant(block, x, emb, first_act=False)),
            Mistake("the embedding is never used: block.scale_shift(h, emb) modulates the "
                    "features after the second GroupNorm.",
                    _res_variant(block, x, emb, modulate=False)),
            Mistake("the second GroupNorm (block.norm2) is missing: each round starts by "
                    "normalising.",
                    _res_variant(block, x, emb, norm2=False)),
            Mistake("the shortcut was added before the second conv; add it to the block's output, "
                    "after conv2.",
                    _res_variant(block, x, emb, shortcut_early=True)),
            Mistake("the activation is ReLU; the course's blocks use SiLU (F.silu), smooth where "
                    "ReLU has a kink, as Ho et al. 2020 and Dhariwal & Nichol 2021 do.",
                    _res_variant(block, x, emb, act=torch.nn.functional.relu)),
            Mistake("the shortcut carries the normalised input; it carries x itself, so that the "
                    "block is x plus a correction: block.shortcut(x).",
                    _res_variant(block, x, emb, shortcut_of_normed=True)),
        ] + ([] if block.conv1.out_channels != block.conv1.in_channels else [
            Mistake("the second round used block.norm1 again; it has its own GroupNorm, "
                    "block.norm2.",
                    _res_variant(block, x, emb, reuse_norm1=True)),
        ])


def _res_crashes(fn: Callable, block: ResBlock, x, emb) -> list:
    """Mistakes that crash when the channel counts differ, with the message that names each."""
    return [
        (lambda: _res_variant(block, x, emb, reuse_norm1=True),
         ("the second round used block.norm1 again; it has its own GroupNorm, block.norm2 (with "
          "the output's channels).")),
    ]


def _res_case(
    in_ch: int, out_ch: int, emb_dim: int | None, seed: int, dropout: float = 0.0
) -> Callable:
    def case(fn: Callable) -> None:
        block = randomised(ResBlock(in_ch, out_ch, emb_dim, groups=4, dropout=dropout), seed)
        g = torch.Generator().manual_seed(seed + 100)
        x = torch.randn(2, in_ch, 6, 4, generator=g)
        emb = torch.randn(2, emb_dim, generator=g) if emb_dim else None
        what = (
            f"residual_block({in_ch} -> {out_ch} channels, "
            f"{'with an embedding' if emb_dim else 'no embedding '}"
            f"{'' if emb_dim else '(emb=None, block.scale_shift is None)'}"
            f"{f', dropout {dropout} in eval mode' if dropout else ''})"
        )
        with torch.no_grad():
            want = residual_block(block, x, emb)
            try:
                got = _shape_error(lambda: run_naming_crashes(
                    lambda: fn(block, x.clone(), None if emb is None else emb.clone()), what,
                    _res_crashes(fn, block, x, emb)), what,
                                   "x has C_in channels and the block's output C_out; x reaches "
                                   "the sum through block.shortcut, and the layers are "
                                   "block.norm1, conv1, norm2, conv2 in order.")
            except TypeError as e:
                if emb is None and "NoneType" in str(e):
                    raise Mismatch(f"{what} raised TypeError ({e}): a block without an embedding "
                                   "has block.scale_shift = None and emb = None; skip the "
                                   "modulation then.") from None
                raise
        if (
            dropout
            and isinstance(got, torch.Tensor)
            and got.shape == want.shape
            and not torch.allclose(got, want)
        ):
            again = fn(block, x.clone(), None if emb is None else emb.clone())
            if not torch.allclose(got, again):
                raise Mismatch(f"{what} gave different outputs on two calls: use block.dropout (a "
                               "module, off in eval mode), not F.dropout, which drops values even "
                               "in eval mode.")
        compare(got, want, what=what, mistakes=_res_mistakes(block, x, emb))
    return case


def _res_dropout_training(fn: Callable) -> None:
    """In training mode dropout acts: the same seed must drop the same values as the reference's,
    which places block.dropout between the second SiLU and the second convolution."""
    block = randomised(ResBlock(8, 8, 12, groups=4, dropout=0.5), 5).train()
    g = torch.Generator().manual_seed(6)
    x, emb = torch.randn(2, 8, 4, 4, generator=g), torch.randn(2, 12, generator=g)
    with torch.no_grad():
        torch.manual_seed(7)
        want = residual_block(block, x, emb)
        torch.manual_seed(7)
        got = fn(block, x.clone(), emb.clone())
        # the second conv's output, no dropout yet
        inner = _res_variant(block.eval(), x, emb, shortcut=False)
        block.train()
        torch.manual_seed(7)
        late = block.dropout(inner) + block.shortcut(x)
        torch.manual_seed(7)
        h = block.scale_shift(
            block.norm2(block.conv1(torch.nn.functional.silu(block.norm1(x)))), emb
        )
        before_act = block.conv2(torch.nn.functional.silu(block.dropout(h))) + block.shortcut(x)
    compare(got, want, what="residual_block in training mode with dropout 0.5 (the same random "
                            "seed as the reference)",
            mistakes=[Mistake("dropout belongs between the second SiLU and the second convolution "
                              "(block.dropout before block.conv2), not after the convolution.",
                              late),
                      Mistake("dropout runs before the second SiLU; it belongs after it, just "
                              "before the second convolution (what is dropped is the activation "
                              "the convolution reads).", before_act)])


RESIDUAL_BLOCK = Checker(
    "residual_block",
    residual_block,
    [
        _res_case(8, 16, 12, 0),
        _res_case(8, 8, 12, 1),
        _res_case(8, 16, None, 2),
        _res_case(16, 8, 12, 3, dropout=0.5),
        _res_dropout_training,
    ],
    hints=(
        ("Two rounds of normalise, activate, convolve; the embedding enters in the second "
         "round, and the input comes back at the end through the shortcut."),
        ("print(block) lists the layers the block owns. In the second round, where can a "
         "per-channel scale and shift act so that the next normalisation does not undo it?"),
    ),
    see="lesson 03, section 2: two rounds of GroupNorm, SiLU, conv, the embedding in the second, "
    "plus the shortcut",
)


def _unet_variant(
    unet: UNet,
    x,
    t,
    cond=None,
    *,
    order="up_skip",
    out=True,
    middle=True,
    use_cond=True,
    enc_emb=True,
    dec_emb=True,
    stem=True,
    skip_after_down=False,
    fifo=False,
    up_after_cat=False,
    add_skip=False,
    plus_input=False,
    record: list[str] | None = None,
):
    """The forward pass, right or with one typical mistake; with ``record``, the shape at each
    stage."""
    note = (lambda text: record.append(text)) if record is not None else (lambda text: None)
    emb = unet.embed(t, cond if use_cond else None)
    h, skips = unet.stem(x) if stem else x, []
    for level, blocks in enumerate(unet.encoder):
        for block in blocks:
            h = block(h, emb if enc_emb else None, cond)
        if level < len(unet.downsamples):
            if not skip_after_down:
                skips.append(h)
            h = unet.downsamples[level](h)
            if skip_after_down:
                skips.append(h)
            note(f"encoder level {level}: {tuple(skips[-1].shape[1:])}, kept for decoder level "
                 f"{level}, then downsampled")
    note(f"encoder level {len(skips)} (the lowest): {tuple(h.shape[1:])}")
    if middle:
        # unet.middle(h, emb, cond): one stage at the lowest resolution
        h = unet.middle(h, emb, cond)
        note(f"middle: {tuple(h.shape[1:])}")
    # the decoder has one level fewer than the encoder
    for level in reversed(range(len(unet.decoder))):
        skip = skips.pop(0) if fifo else skips.pop()
        if not up_after_cat:
            h = unet.upsamples[level](h)
        up = tuple(h.shape[1:])
        if unet.config.skip_connections:
            h = (
                h + skip
                if add_skip
                else torch.cat([h, skip] if order == "up_skip" else [skip, h], dim=1)
            )
        if up_after_cat:
            h = unet.upsamples[level](h)
        for block in unet.decoder[level]:
            h = block(h, emb if dec_emb else None, cond)
        note(f"decoder level {level}: upsampled to {up}" + (", with its skip "
                                                            f"{tuple(skip.shape[1:])}"
             if unet.config.skip_connections else "") + f", out of its stages {tuple(h.shape[1:])}")
    h = unet.out(h) if out else h
    return h + x if plus_input else h


#: Mistakes that crash with a shape error: named when the learner's error is the same one.
_UNET_CRASHES = (
    (dict(skip_after_down=True), ("each level keeps its output on the skip stack before "
                                  "downsampling it, not after: the skip must have the resolution "
                                  "the decoder upsamples to.")),
    (dict(fifo=True), ("the skips were taken from the bottom of the stack (the first kept): the "
                       "decoder climbs back up, so it needs the last one kept first "
                       "(skips.pop()).")),
    (dict(up_after_cat=True), ("the decoder concatenates before upsampling; upsample first, so "
                               "that the features and the skip have the same resolution.")),
    (dict(stem=False), ("the stem (unet.stem, a conv from the image's channels to the first "
                        "level's) is missing.")),
    (dict(add_skip=True), ("the skip was added to the upsampled features; a U-Net concatenates "
                           "them along the channels, torch.cat([upsampled, skip], dim=1), and the "
                           "decoder's first conv expects both channel counts side by side.")),
    (dict(dec_emb=False), ("a stage ran without the embedding (emb = None): every stage of the "
                           "encoder, the middle and the decoder gets emb, block(h, emb, cond).")),
)


def _named_crash(unet, x, t, cond, what: str, error: Exception) -> Mismatch | None:
    """A Mismatch naming the mistake when one of the typical wrong forward passes fails with the
    learner's very error; None when none does."""
    text = " ".join(str(error).split())
    for flags, message in _UNET_CRASHES:
        try:
            _unet_variant(unet, x, t, cond, **flags)
        except (RuntimeError, TypeError) as e:
            if type(e) is type(error) and " ".join(str(e).split()) == text:
                return Mismatch(f"{what}: {message}")
    return None


def _unet_case(description: str, seed: int, **config) -> Callable:
    def case(fn: Callable) -> None:
        cfg = UNetConfig(
            in_channels=1, groups=4, **{"channels": (8, 16, 32), "attention_levels": (2,), **config}
        )
        unet = randomised(UNet(cfg), seed, std=0.2)
        g = torch.Generator().manual_seed(seed)
        x, t = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([3, 700])
        cond = Cond(labels=torch.tensor([1, 2])) if cfg.num_classes else None
        if cfg.context_dim:
            cond = Cond(context=torch.randn(2, 3, cfg.context_dim, generator=g))
        what = f"unet_forward on {description}"
        with torch.no_grad():
            want = unet_forward(unet, x, t, cond)
            walk: list[str] = []
            _unet_variant(unet, x, t, cond, record=walk)
            try:
                got = fn(unet, x.clone(), t.clone(), cond)
            except (RuntimeError, TypeError) as e:
                named = _named_crash(unet, x, t, cond, what, e)
                if named is not None:
                    raise named from None

                def crash(error=e):
                    raise error
                got = _shape_error(crash, what,
                                   "encoder level i keeps its output (before downsampling) for "
                                   "decoder level i; the decoder runs from the bottom level up, "
                                   "upsampling before it concatenates; with "
                                   "unet.config.skip_connections False nothing is concatenated. "
                                   "The shapes (C, H, W) should be: " + "; ".join(walk) + ".")
            mistakes = [
                Mistake("the input x was added to the output: the network's answer is unet.out(h) "
                        "alone (the residual connections live inside the blocks, and the output "
                        "is the noise or v, not an image to correct).",
                        _unet_variant(unet, x, t, cond, plus_input=True)),
                Mistake("the skip is concatenated before the upsampled features: "
                        "torch.cat([upsampled, skip], dim=1), in that order (the decoder's first "
                        "conv expects it).",
                        _unet_variant(unet, x, t, cond, order="skip_up")),
                Mistake("the output head unet.out (GroupNorm, SiLU, conv to the image's channels) "
                        "is missing.",
                        _unet_variant(unet, x, t, cond, out=False)),
                Mistake("the middle stage (unet.middle, at the lowest resolution) is skipped.",
                        _unet_variant(unet, x, t, cond, middle=False)),
                Mistake("the condition never reaches the embedding: unet.embed(t, cond) adds the "
                        "class label to the time embedding.",
                        _unet_variant(unet, x, t, cond, use_cond=False)),
            ]
        compare(got, want, what=what, mistakes=mistakes)
    return case


UNET_FORWARD = Checker(
    "unet_forward", unet_forward,
    [_unet_case("3 levels, one block per level", 0),
     _unet_case("3 levels, two blocks per level", 1, blocks_per_level=2),
     _unet_case("2 levels", 2, channels=(8, 16), attention_levels=(1,)),
     _unet_case("a U-Net without skip connections (config.skip_connections = False)",
                3, skip_connections=False),
     _unet_case("a class-conditional U-Net (cond carries labels)", 4, num_classes=3),
     _unet_case("a text-conditioned U-Net (cond carries a context sequence for cross-attention: "
                "pass cond to every stage)", 5, context_dim=6)],
    hints=(("Go down, keeping what each encoder level produced before it halves the resolution; "
            "come back up, joining each decoder level with the kept map of the same resolution."),
           ("The way up mirrors the way down, so the maps come back in the reverse order they were "
            "kept. Two maps can only be joined when they have the same height and width: which "
            "must come first?")),
    see="lesson 03, section 5: stem, encoder with its skip stack, middle, decoder, output head",
)


def _attn_variant(block: SelfAttention, x, *, residual=True, norm=True, heads=None, order="qkv",
                  on_normed=False,
                  project=True, fold="b (h w) c -> b c h "
                                     "w", reshape=False, pass_heads=True, flatten=True,
                  split="chunk"):
    b, c, h, w = x.shape
    xn = block.norm(x) if norm else x
    tokens = (
        xn.reshape(b, h * w, c)
        if reshape in (True, "in")
        else rearrange(xn, "b c h w -> b (h w) c")
        if flatten
        else xn
    )
    if split == "none":  # the tokens themselves as q, k and v
        q = k = v = tokens
    elif split == "interleaved":  # (..., 3C) read as (..., C, 3)
        q, k, v = block.to_qkv(tokens).reshape(*tokens.shape[:-1], c, 3).unbind(-1)
    else:
        q, k, v = block.to_qkv(tokens).chunk(3, dim=-1)
    if order == "kqv":
        q, k = k, q
    elif order == "qvk":
        k, v = v, k
    out = (
        multi_head_attention(q, k, v, heads or block.heads)
        if pass_heads
        else multi_head_attention(q, k, v)
    )
    out = block.to_out(out) if project else out
    out = out.reshape(b, c, h, w) if reshape in (True, "out") else rearrange(out, fold, h=h, w=w)
    return (xn if on_normed else x) + out if residual else out


def _attn_case(seed: int, heads: int, shape: tuple[int, int], fresh: bool = False) -> Callable:
    def case(fn: Callable) -> None:
        block = SelfAttention(16, heads, 4)
        if not fresh:
            randomised(block, seed)
        block.eval()
        x = torch.randn(2, 16, *shape, generator=torch.Generator().manual_seed(seed))
        what = (f"attention_block on a {shape[0]}x{shape[1]} map, {heads} heads"
                + (", a freshly built block (to_out is zero)" if fresh else ""))
        with torch.no_grad():
            want = attention_block(block, x)
            crashes = [(lambda: _attn_variant(block, x, pass_heads=False),
                        ("block.attend needs the number of heads: block.attend(q, k, v, "
                         "block.heads).")),
                       (lambda: _attn_variant(block, x, flatten=False),
                        ("block.to_qkv was applied to the map itself; it acts on tokens, the H * W "
                         "positions with C channels each: rearrange(normed, 'b c h w -> b (h w) "
                         "c') first."))]
            got = _shape_error(
                lambda: run_naming_crashes(lambda: fn(block, x.clone()), what, crashes),
                what,
                "tokens are the H * W positions with C channels each: rearrange "
                "the normalised map 'b c h w -> b (h w) c', and back with h and w "
                "given.",
            )
            mistakes = [] if fresh else [
                Mistake("the residual is missing: return x + the projected attention output.",
                        _attn_variant(block, x, residual=False)),
                Mistake("the GroupNorm is missing: normalise x (block.norm) before making tokens.",
                        _attn_variant(block, x, norm=False)),
                Mistake("the residual adds the normalised map; add the block's input x itself.",
                        _attn_variant(block, x, on_normed=True)),
                Mistake("all channels form one head: pass block.heads to the attention.",
                        _attn_variant(block, x, heads=1)),
                Mistake("queries and keys are swapped: to_qkv's output splits as (q, k, v) in "
                        "that order.",
                        _attn_variant(block, x, order="kqv")),
                Mistake("the output projection block.to_out is missing.",
                        _attn_variant(block, x, project=False)),
                Mistake("the tokens were folded back with h and w swapped: rearrange(out, 'b (h "
                        "w) c -> b c h w', h=h, w=w) undoes the flattening.",
                        _attn_variant(block, x, fold="b (w h) "
                                                                                         "c -> b "
                                                                                         "c h w")),
                Mistake("reshape mixes channels and positions: (B, C, H, W) -> (B, H*W, C) needs "
                        "the channel axis moved last (rearrange or permute), not a reshape.",
                        _attn_variant(block, x, reshape=True)),
                Mistake("the map was flattened into tokens with a reshape, which mixes channels "
                        "and positions: move the channel axis last, rearrange(x, 'b c h w -> b (h "
                        "w) c').", _attn_variant(block, x, reshape="in")),
                Mistake("the tokens were folded back into a map with a reshape, which mixes "
                        "positions and channels: move the channel axis first again, "
                        "rearrange(out, 'b (h w) c -> b c h w', h=h, w=w).",
                        _attn_variant(block, x, reshape="out")),
                Mistake("keys and values are swapped: to_qkv's output splits as (q, k, v) in that "
                        "order.",
                        _attn_variant(block, x, order="qvk")),
                Mistake("to_qkv's output was split by taking every third channel (a reshape to "
                        "(..., C, 3)); it is three blocks of C channels side by side, q then k "
                        "then v: split it into three along the channels (chunk).",
                        _attn_variant(block, x, split="interleaved")),
                Mistake("the tokens themselves served as queries, keys and values: make all three "
                        "with block.to_qkv (its learned projections are what let a position ask "
                        "for something other than itself).",
                        _attn_variant(block, x, split="none")),
            ]
        compare(got, want, what=what, mistakes=mistakes,
                otherwise="a fresh block must return x unchanged (its output projection starts at "
                          "zero)"
                if fresh else None)
    return case


ATTENTION_BLOCK = Checker(
    "attention_block", attention_block,
    [_attn_case(0, 4, (3, 5)), _attn_case(1, 2, (4, 4)), _attn_case(2, 4, (2, 6), fresh=True)],
    hints=(("Normalise, turn the map into a sequence of positions, let every position attend to "
            "every other, project, turn back into a map, and add the input."),
           ("block.to_qkv makes all three of q, k and v from the same tokens (split its output "
            "into three along the channels); the attention runs in block.heads heads, and h and w "
            "must be given to fold the tokens back.")),
    see="lesson 03, section 4: x + W_out MHA(GroupNorm(x)) over the H * W positions",
)
