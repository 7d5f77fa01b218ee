"""Checkers for lesson 12, part 1: patchify, unpatchify and the DiT block with adaLN."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, run_naming_crashes
from diffuse_edu.models.dit import DiTBlock, dit_block, patchify, unpatchify


def _image(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))


def _patch_mistakes(x: torch.Tensor, p: int) -> list[Mistake]:
    b, c, h, w = x.shape
    return [
        Mistake("a token's features must run over the patch's rows, then its columns, then the "
                "channels, the order unpatchify undoes; yours put the channels first.",
                rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)),
        Mistake("the tokens must run in raster order over the grid of patches (along a row of "
                "patches, then the next row); yours run down the columns first.",
                rearrange(x, "b c (h p1) (w p2) -> b (w h) (p1 p2 c)", p1=p, p2=p)),
        Mistake("within a token the patch's rows come first, then its columns (p1 p2); yours has "
                "them swapped.",
                rearrange(x, "b c (h p1) (w p2) -> b (h w) (p2 p1 c)", p1=p, p2=p)),
        Mistake("a plain reshape mixes pixels of different patches (a patch's pixels are not next "
                "to each other in memory): rearrange the image into its p x p blocks.",
                x.reshape(b, h * w // (p * p), c * p * p)),
        Mistake("the blocks were cut right (unfold), but the reshape that follows keeps their "
                "memory order, (channel, grid row, grid column, patch row, patch column), so a "
                "token mixes channels and patches: permute the grid axes to the front and the "
                "channels to the end before reshaping.",
                x.unfold(2, p, p).unfold(3, p, p).reshape(b, h * w // (p * p), c * p * p)),
        Mistake("each token must be one p x p block of neighbouring pixels; yours gathers pixels "
                "that lie H / p apart (the grid and the patch are swapped in the split).",
                rearrange(x, "b c (p1 h) (p2 w) -> b (h w) (p1 p2 c)", p1=p, p2=p)),
        Mistake("the tokens run along axis 1 and their features along axis 2: (B, N, p*p*C), not "
                "(B, p*p*C, N).",
                rearrange(x, "b c (h p1) (w p2) -> b (p1 p2 c) (h w)", p1=p, p2=p)),
        Mistake("you patchified the transposed image: rows and columns are swapped everywhere "
                "(the grid in column order, each patch read column by column).",
                rearrange(x, "b c (h p1) (w p2) -> b (w h) (p2 p1 c)", p1=p, p2=p)),
    ]


def _patch_shape(got: object, x: torch.Tensor, p: int) -> None:
    """Named shape mistakes: the channels kept apart, or the token and feature axes swapped."""
    if not isinstance(got, torch.Tensor):
        return
    b, c, h, w = x.shape
    n, d = (h // p) * (w // p), p * p * c
    if got.shape == (b, d, n) and d != n:
        raise Mismatch(f"patchify returned {tuple(got.shape)}: the tokens run along axis 1 and "
                       f"their features along axis 2, (B, N, p*p*C) = {(b, n, d)}.")
    if got.ndim == 4:
        raise Mismatch(f"patchify returned a 4-D tensor {tuple(got.shape)}: a token holds its "
                       "patch in every channel, so the channels go inside the features, (B, N, "
                       f"p*p*C) = {(b, n, d)}.")


def _patchify_case(c: int, h: int, w: int, p: int, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x = _image(c, h, w, seed)
        got = fn(x.clone(), p)
        _patch_shape(got, x, p)
        compare(got, patchify(x, p), mistakes=_patch_mistakes(x, p), what="patchify of images "
                                                                          f"{tuple(x.shape)} with "
                                                                          f"p = {p}")
    return case


def _patchify_refuses_a_bad_size(fn: Callable) -> None:
    try:
        fn(_image(1, 6, 5, 9), 2)
    except ValueError:
        return
    except Exception as e:  # a crash deep inside is not a clear message
        raise Mismatch(f"patchify of a 6 x 5 image with p = 2 raised {type(e).__name__}; raise a "
                       "ValueError that says H and W must be divisible by p.") from None
    raise Mismatch("patchify of a 6 x 5 image with p = 2 returned a result: 5 is not divisible by "
                   "2, so raise a ValueError that says H and W must be divisible by p.")


PATCHIFY = Checker(
    "patchify", patchify,
    [_patchify_case(2, 4, 4, 2, 0), _patchify_case(3, 4, 6, 2, 1), _patchify_case(2, 8, 8, 4, 2),
     _patchify_refuses_a_bad_size],
    hints=(("Picture the image as a grid of H/p x W/p blocks; each block becomes one row of the "
            "output. Which axes of the image belong to the grid, and which to the inside of a "
            "block?"),
           ("einops can split an axis in two, (h p1), and regroup: the grid axes go to the token "
            "axis, the block axes and the channels to the feature axis, in that order.")),
    see=("lesson 12, section 1's exercise text: the tokens in raster order over the grid of "
         "patches, each token's numbers over the patch's rows, then its columns, then the "
         "channels"),
)


def _unpatchify_case(c: int, h: int, w: int, p: int, seed: int) -> Callable:
    def case(fn: Callable) -> None:
        x = _image(c, h, w, seed)
        tokens = patchify(x, p)
        sizes = dict(h=h // p, w=w // p, p1=p, p2=p)
        crashes = [(lambda: rearrange(tokens, "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
                                      h=h, w=w, p1=p, p2=p),
                    ("h and w are the image's size in pixels; the grid of patches is h // p by w "
                     "// p."))]
        got = run_naming_crashes(lambda: fn(tokens.clone(), p, h, w), "unpatchify for x of shape "
                                                                      f"{tuple(x.shape)}", crashes)
        if isinstance(got, torch.Tensor) and h != w and got.shape == (2, c, w, h):
            raise Mismatch(f"unpatchify returned {tuple(got.shape)}: height and width are "
                           f"swapped; the image is {(2, c, h, w)}.")

        def back(pattern: str) -> torch.Tensor:
            return rearrange(tokens, pattern, **sizes)
        mistakes = [
            Mistake("a plain reshape back does not undo patchify: the pixels of a token belong to "
                    "one p x p block, so rearrange them back into their blocks.",
                    tokens.reshape(2, c, h, w)),
            Mistake("swapping the token and feature axes and reshaping does not undo patchify: "
                    "each feature (one pixel of a patch, in one channel) would fill a stretch of "
                    "the image. Split the features back into the patch's rows, columns and "
                    "channels, and put each patch back in its place on the grid.",
                    tokens.transpose(1, 2).reshape(2, c, h, w)),
            Mistake("the tokens run in raster order over the grid (along a row of patches first): "
                    "yours reads them as if they ran down the columns.",
                    back("b (w h) (p1 p2 c) -> b c (h "
                                                                  "p1) (w p2)")),
            Mistake("a token's features run over the patch's rows, then its columns, then the "
                    "channels; yours reads the channels first.",
                    back("b (h w) (c p1 p2) -> b c (h p1) (w "
                                                            "p2)")),
            Mistake("within a token the patch's rows come first, then its columns (p1 p2); yours "
                    "reads them swapped.",
                    back("b (h w) (p2 p1 c) -> b c (h p1) (w p2)")),
            Mistake("each token is one p x p block of neighbouring pixels; yours spreads it over "
                    "pixels H / p apart (the grid and the patch are swapped).",
                    back("b (h w) (p1 p2 c) -> b c "
                                                                        "(p1 h) (p2 w)")),
            Mistake("rows and columns are swapped everywhere (the grid read in column order, each "
                    "patch column by column): the inverse of patchify reads them as patchify "
                    "wrote them.",
                    back("b (w h) (p2 p1 c) -> b c (h p1) (w p2)")),
        ]
        compare(got, x, mistakes=mistakes, what="unpatchify(patchify(x)) for x of shape "
                                                f"{tuple(x.shape)}, p = {p}")
    return case


UNPATCHIFY = Checker(
    "unpatchify",
    unpatchify,
    [
        _unpatchify_case(1, 4, 4, 2, 3),
        _unpatchify_case(3, 4, 6, 2, 4),
        _unpatchify_case(2, 8, 4, 4, 5),
    ],
    hints=(
        ("unpatchify is patchify run backwards: the same split, with the two sides of the arrow "
         "swapped."),
        ("The grid has h // p rows and w // p columns of patches: give einops those sizes so it "
         "can split the token axis."),
    ),
    see="lesson 12, section 1: the inverse of patchify",
)


def _block(seed: int, width: int = 16) -> DiTBlock:
    """A block with every weight random, the modulation included (a fresh adaLN-Zero block would
    hide most mistakes: its gates are 0)."""
    torch.manual_seed(seed)
    block = DiTBlock(width, 4, 2.0, zero=False)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block.eval()


def _block_mistakes(block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> list[Mistake]:
    sa, ca, ga, sm, cm, gm = block.modulation(c).chunk(6, dim=1)
    attn, mlp, n1, n2 = block.attention, block.mlp, block.norm1, block.norm2
    plain = dict(gate=True, one=True, swap=False, residual=True, norm_after=False, gate_one=False,
                 residual_normed=False)

    def run(*, only: str | None = None, reuse=False, parallel=False, **wrong):
        """The block with the mistakes ``wrong`` in both branches, or ``only`` in "attention" or
        "mlp"."""
        fa = {**plain, **(wrong if only in (None, "attention") else {})}
        fm = {**plain, **(wrong if only in (None, "mlp") else {})}

        def mod(h, s, k, f):
            if f["swap"]:
                s, k = k, s
            return h * ((1 + k) if f["one"] else k)[:, None] + s[:, None]

        def branch(h, norm, s, k, f):
            return norm(mod(h, s, k, f)) if f["norm_after"] else mod(norm(h), s, k, f)

        def g(v, f):
            return (1 + v[:, None]) if f["gate_one"] else v[:, None] if f["gate"] else 1

        def residual(h, norm, f):
            return norm(h) if f["residual_normed"] else h if f["residual"] else 0

        y = residual(x, n1, fa) + g(ga, fa) * attn(branch(x, n1, sa, ca, fa))
        mlp_in = x if parallel else y
        s2, k2, g2 = (sa, ca, ga) if reuse else (sm, cm, gm)
        return residual(y, n2, fm) + g(g2, fm) * mlp(branch(mlp_in, n2, s2, k2, fm))

    per_branch = [
        (("each branch must be multiplied by its gate before it is added (adaLN-Zero starts the "
          "gates at 0: that is what makes a fresh block the identity)"), dict(gate=False)),
        (("the scale multiplies as (1 + scale), a change around 1 (the Math's convention: "
          "scale = 0 leaves the normalised input as it is); yours multiplies by the scale alone"),
         dict(one=False)),
        (("shift and scale are swapped: the modulation's chunks come in the order shift, scale, "
          "gate"), dict(swap=True)),
        (("the gated branch is added back to its input (a residual connection); yours replaces "
          "the input with it"), dict(residual=False)),
        (("normalise first, then modulate: yours shifts and scales before the LayerNorm, which "
          "then undoes the modulation"), dict(norm_after=True)),
        (("the gate multiplies the branch as it is, not (1 + g) * branch: adaLN-Zero starts the "
          "gates at 0 so that a fresh block is the identity"), dict(gate_one=True)),
        ("the residual adds the block's input x, not LayerNorm(x)", dict(residual_normed=True)),
    ]
    where = {None: "", "attention": " (in the attention branch; the MLP branch is right)",
             "mlp": " (in the MLP branch; the attention branch is right)"}
    return [Mistake(f"{text}{where[only]}.", run(only=only, **flags))
            for only in (None, "attention", "mlp") for text, flags in per_branch] + [
        Mistake("the MLP branch has its own shift, scale and gate (the last three of the six), "
                "not the attention branch's.", run(reuse=True)),
        Mistake("the MLP branch reads x after the attention branch has been added to it (the "
                "branches run one after the other, not side by side).", run(parallel=True)),
    ]


def _block_case(seed: int, tokens: int) -> Callable:
    def case(fn: Callable) -> None:
        block = _block(seed)
        g = torch.Generator().manual_seed(seed + 100)
        x, c = torch.randn(2, tokens, 16, generator=g), torch.randn(2, 16, generator=g)
        with torch.no_grad():
            want = dit_block(block, x, c)
            sa, ca, ga = block.modulation(c).chunk(6, dim=1)[:3]
            crashes = [
                (
                    lambda: block.norm1(x) * (1 + ca) + sa,
                    ("the modulation vectors are per example, (B, D): give "
                     "each a token axis, v[:, None], so it broadcasts over the tokens."),
                )
            ]
            got = run_naming_crashes(lambda: fn(block, x.clone(), c.clone()), "dit_block", crashes)
            compare(got, want, mistakes=_block_mistakes(block, x, c),
                    what=f"dit_block on {tokens} tokens of width 16 with random modulation weights",
                    otherwise="does not match the block of lesson 12's Math (Peebles & Xie 2023, "
                              "Fig. 3), and none of the usual mistakes explains it: check, branch "
                              "by branch, where the LayerNorm, the shift and scale, the gate and "
                              "the residual sit, and which three of the six vectors it uses.")
    return case


def _block_identity_at_init(fn: Callable) -> None:
    block = DiTBlock(16, 4, 2.0, zero=True).eval()
    x, c = torch.randn(2, 5, 16), torch.randn(2, 16)
    with torch.no_grad():
        got = fn(block, x.clone(), c)
    compare(got, x, what="a fresh adaLN-Zero block (every gate 0) must return x unchanged")


DIT_BLOCK = Checker(
    "dit_block", dit_block, [_block_case(0, 5), _block_case(1, 9), _block_identity_at_init],
    hints=(("The block has two branches, attention and then the MLP, and the conditioning vector c "
            "decides for each how its input is shifted and scaled and how much of its output is "
            "let through."),
           ("block.modulation(c) gives six vectors of width D, one set of three per branch. Each "
            "is per example: give it a token axis so it broadcasts over the tokens.")),
    see="Peebles & Xie 2023, Fig. 3 and Sec. 3.2, in lesson 12's Math (the DiT bullet)",
)
