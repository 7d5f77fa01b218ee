"""Checkers for lesson 19: the ControlNet-style adapter's forward pass, the adherence measure
(mask IoU) and prompt-to-prompt's attention injection."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare
from diffuse_edu.models.attention import CrossAttention, attention_weights
from diffuse_edu.models.attention_control import injected_cross_attention
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.control_adapter import (
    ControlAdapter,
    adapter_forward,
    decode,
    mask_iou,
    run_encoder,
)
from diffuse_edu.models.unet import UNet, UNetConfig

# ---------------------------------------------------------------- the adapter's forward pass


def _adapter(seed: int, *, fresh: bool = False, labels: bool = True) -> ControlAdapter:
    """A small class-conditional U-Net with an adapter; unless ``fresh``, every zero convolution
    and the copy are moved off their starting values, so that each wrong wiring shows."""
    torch.manual_seed(seed)
    cfg = UNetConfig(in_channels=1, channels=(8, 16, 16), attention_levels=(2,), groups=4,
                     num_classes=3 if labels else None)
    base = UNet(cfg).eval()
    with torch.no_grad():  # attention output layers start at zero: give them weights
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adapter = ControlAdapter(base, control_channels=1, hint_width=4).eval()
    if not fresh:
        with torch.no_grad():
            for p in adapter.trainable():
                p.add_(0.2 * torch.randn_like(p))
    return adapter


def _inputs(seed: int, labels: bool = True):
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([5, 400, 990])
    control = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float()
    cond = Cond(labels=torch.tensor([0, 2, 1])) if labels else None
    return x, t, control, cond


def _adapter_mistakes(a: ControlAdapter, x, t, control, cond) -> list[Mistake]:
    base, twin = a.base, a.copy
    emb, emb_c = base.embed(t, cond), twin.embed(t, cond)

    def copy_branch(h0):
        h, skips = run_encoder(twin, h0, emb_c, cond)
        return twin.middle(h, emb_c, cond), skips

    def base_with(res_skips, res_mid):
        h, skips = run_encoder(base, base.stem(x), emb, cond)
        skips = [s + r for s, r in zip(skips, res_skips)]
        return decode(base, base.middle(h, emb, cond) + res_mid, skips, emb, cond)

    hint = a.zero_in(a.hint(control))
    mid_c, skips_c = copy_branch(twin.stem(x) + hint)
    zs = [z(c) for z, c in zip(a.zero_skips, skips_c)]
    zm = a.zero_middle(mid_c)
    h_b, skips_b = run_encoder(base, base.stem(x), emb, cond)
    plain = decode(base, base.middle(h_b, emb, cond), skips_b, emb, cond)
    return [
        Mistake("the copy's features were added without their zero convolutions: each joins the "
                "frozen model through its own zero_skips[i] (and zero_middle), which is what makes "
                "the combined model the base model at initialisation.",
                base_with(skips_c, mid_c)),
        Mistake("the control never reached the copy: the map goes through adapter.hint, then "
                "adapter.zero_in, and is added to the copy's stem features of x.",
                base_with([z(c) for z, c in zip(a.zero_skips, copy_branch(twin.stem(x))[1])],
                          a.zero_middle(copy_branch(twin.stem(x))[0]))),
        Mistake("the copy read the control map alone: it reads x too (its stem's features of x, "
                "plus the hint's features of the map through zero_in).",
                base_with([z(c) for z, c in zip(a.zero_skips, copy_branch(hint)[1])],
                          a.zero_middle(copy_branch(hint)[0]))),
        Mistake("the copy's middle output is missing: after its encoder the copy runs its middle "
                "block, and that output joins the base's middle output through zero_middle.",
                base_with(zs, 0.0)),
        Mistake("the skip connections got nothing from the copy: each skip map of the base gets "
                "the copy's matching skip map through its zero convolution (zero_skips[i]).",
                base_with([0.0] * len(zs), zm)),
        Mistake("the copy's contribution was subtracted: it is added to the frozen model's "
                "features.", base_with([-z for z in zs], -zm)),
        Mistake("that is the frozen base model alone: the copy's features never joined it.",
                plain),
    ]


def _adapter_case(seed: int, labels: bool = True) -> Callable:
    def case(fn: Callable) -> None:
        a = _adapter(seed, labels=labels)
        x, t, control, cond = _inputs(seed, labels)
        with torch.no_grad():
            want = adapter_forward(a, x, t, control, cond)
            got = fn(a, x.clone(), t.clone(), control.clone(), cond)
            mistakes = _adapter_mistakes(a, x, t, control, cond)
        compare(got, want, mistakes=mistakes,
                what=f"adapter_forward on a {'class-conditional' if labels else 'plain'} U-Net "
                     "with trained (non-zero) joining convolutions",
                otherwise="does not match the combined model of lesson 19's Math (Zhang et al. "
                          "2023, Eq. 4) and none of the usual mistakes explains it: check what "
                          "the copy reads, which embedding each half uses, and where each zero "
                          "convolution's output is added.", atol=1e-4)
    return case


def _adapter_identity_at_init(fn: Callable) -> None:
    a = _adapter(7, fresh=True)
    x, t, control, cond = _inputs(7)
    with torch.no_grad():
        got, want = fn(a, x, t, control, cond), a.base(x, t, cond)
    if isinstance(got, torch.Tensor) and got.shape == want.shape and not torch.equal(got, want):
        diff = (got - want).abs().max().item()
        raise Mismatch(f"at initialisation (every joining convolution zero) the combined model "
                       f"must be exactly the frozen base model, but yours differs by up to "
                       f"{diff:.2e}: add the copy's features only through the zero convolutions "
                       "(zero_in, zero_skips, zero_middle), never directly.")
    compare(got, want, what="adapter_forward at initialisation (must equal the base model)",
            rtol=0, atol=0)


def _adapter_gradients(fn: Callable) -> None:
    a = _adapter(3)
    a.train()
    x, t, control, cond = _inputs(3)
    out = fn(a, x, t, control, cond)
    if not (isinstance(out, torch.Tensor) and out.requires_grad):
        raise Mismatch("no gradient reached the copy, the hint or the zero convolutions: compute "
                       "the copy's branch without torch.no_grad() or .detach(), so that training "
                       "can move it.")
    out.square().mean().backward()
    frozen = [n for n, p in a.base.named_parameters() if p.grad is not None]
    if frozen:
        raise Mismatch(f"the frozen base received gradients ({frozen[0]}, ...): use the base "
                       "model's parts as they are; only the copy, the hint and the zero "
                       "convolutions train.")
    missing = [n for n, p in (("zero_in", a.zero_in.weight), ("zero_middle", a.zero_middle.weight),
                              ("hint", a.hint[0].weight), ("copy.stem", a.copy.stem.weight))
               if p.grad is None or not p.grad.abs().sum() > 0]
    if missing:
        raise Mismatch(f"no gradient reached {', '.join(missing)}: compute the copy's branch "
                       "without torch.no_grad() or .detach(), so that training can move it.")


ADAPTER_FORWARD = Checker(
    "adapter_forward",
    adapter_forward,
    [
        _adapter_case(0),
        _adapter_case(1, labels=False),
        _adapter_identity_at_init,
        _adapter_gradients,
    ],
    hints=(
        ("Two encoders run on the same x_t: the frozen one, and the trainable copy that also sees "
         "the control. The copy never decodes; its features are handed to the frozen model."),
        ("Every hand-over goes through a zero convolution of its own: the hint into the copy's "
         "stem features, each copy skip into the base skip of the same level, the copy's middle "
         "output into the base's middle output. run_encoder and decode run the U-Net's parts."),
    ),
    see="lesson 19's Math (Zhang et al. 2023, Eq. 4 and Fig. 3)",
)

# ---------------------------------------------------------------- mask IoU


def _iou_masks() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(5, 1, 6, 6, generator=g) > 0.5
    target = torch.rand(5, 1, 6, 6, generator=g) > 0.6
    pred[3], target[3] = False, False  # both empty: they agree
    target[4] = False  # the target empty, the prediction not
    return pred, target


def _iou_mistakes(pred, target) -> list[Mistake]:
    p, q = pred.flatten(1).float(), target.flatten(1).float()
    inter, union = (p * q).sum(1), ((p + q) > 0).float().sum(1)
    safe = union.clamp_min(1)
    right = torch.where(union > 0, inter / safe, torch.ones_like(union))
    return [
        Mistake("intersection over the target's pixels (recall), not over the union: a prediction "
                "that paints everything would score 1.",
                torch.where(q.sum(1) > 0, inter / q.sum(1).clamp_min(1), torch.ones_like(union))),
        Mistake("intersection over the predicted pixels (precision), not over the union.",
                torch.where(p.sum(1) > 0, inter / p.sum(1).clamp_min(1), torch.ones_like(union))),
        Mistake("the union was taken as the sum of the two areas, counting the overlap twice: the "
                "union is the pixels in either mask, once each.",
                torch.where(union > 0, inter / (p.sum(1) + q.sum(1)).clamp_min(1),
                            torch.ones_like(union))),
        Mistake("two empty masks agree perfectly: their IoU is 1 (no pixel is in either), not 0.",
                torch.where(union > 0, right, torch.zeros_like(union))),
        Mistake("one IoU for the whole batch, repeated: the measure is per image, (B,).",
                (inter.sum() / union.sum()).expand_as(union)),
        Mistake("intersection and union were swapped (union over intersection).",
                torch.where(inter > 0, union / inter.clamp_min(1), torch.ones_like(union))),
        Mistake("this is the Dice score 2|A & B| / (|A| + |B|), not IoU: IoU divides |A & B| by "
                "the union |A | B| (Dice = 2 IoU / (1 + IoU) reads higher).",
                torch.where(union > 0, 2 * inter / (p.sum(1) + q.sum(1)).clamp_min(1),
                            torch.ones_like(union))),
        Mistake("this is 1 - IoU (a distance), not IoU: return the share of shared pixels, "
                "|A & B| / |A | B|, 1 for identical masks.", 1 - right),
        Mistake("one IoU for the whole batch, a scalar of shape (): the measure is per image, "
                "(B,); sum over the pixel axes only (.sum(1) after flatten(1)).",
                inter.sum() / union.sum()),
    ]


def _iou_case(fn: Callable) -> None:
    pred, target = _iou_masks()
    got = fn(pred.clone(), target.clone())
    if isinstance(got, torch.Tensor) and got.shape == (5,) and torch.isnan(got).any():
        raise Mismatch("mask_iou returned NaN where both masks are empty (0 / 0): two empty masks "
                       "agree, so their IoU is 1.")
    if (isinstance(got, torch.Tensor) and got.shape == (5,) and got.dtype != torch.float32):
        raise Mismatch(f"mask_iou returned dtype {got.dtype}; return float32: the masks are bool "
                       "and their counts are integers, so call .float() on the counts before "
                       "dividing (not .double(), and not // which rounds down).")
    compare(got, mask_iou(pred, target), what="mask_iou on 5 pairs of 6x6 masks (one pair both "
            "empty, one with an empty target)", mistakes=_iou_mistakes(pred, target))


def _iou_shapes(fn: Callable) -> None:
    pred = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    target = torch.zeros(2, 3, 4, 4, dtype=torch.bool)
    pred[0, :, :2], target[0, :, 1:3] = True, True  # overlap one row of three
    pred[1, 0, 0, 0], target[1, 2, 3, 3] = True, True  # no overlap
    got = fn(pred, target)
    compare(got, torch.tensor([1 / 3, 0.0]), what="mask_iou on masks of shape (2, 3, 4, 4) (every "
            "axis after the batch counts)")


MASK_IOU = Checker(
    "mask_iou",
    mask_iou,
    [_iou_case, _iou_shapes],
    hints=(
        "Per image: how many pixels both masks share, against how many pixels either one covers.",
        ("Flatten every axis after the batch, use & and | on the bool masks, and decide what two "
         "empty masks score (nothing to disagree about)."),
    ),
    see="lesson 19, section 2 (the adherence measure)",
)

# ---------------------------------------------------------------- attention injection


def _block(seed: int, heads: int = 2) -> CrossAttention:
    torch.manual_seed(seed)
    block = CrossAttention(8, 6, heads=heads, groups=2)
    with torch.no_grad():
        block.to_out.weight.normal_(0, 0.5)
        block.to_out.bias.normal_(0, 0.1)
    return block


def _injection_inputs(block: CrossAttention, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 8, 3, 3, generator=g)
    source = torch.randn(2, 5, 6, generator=g)  # the source prompt's context
    context = torch.randn(2, 5, 6, generator=g)  # the edited prompt's
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    q = block.to_q(rearrange(block.norm(x), "b c h w -> b (h w) c"))
    weights = attention_weights(q, block.to_kv(source).chunk(2, dim=-1)[0], block.heads, mask)
    return x, context, mask, weights.detach(), source


def _injection_mistakes(block, x, context, mask, weights, source) -> list[Mistake]:
    _, _, h, w = x.shape
    k_e, v_e = block.to_kv(context).chunk(2, dim=-1)
    _, v_s = block.to_kv(source).chunk(2, dim=-1)
    heads = block.heads

    def attend(p, v, *, project=True, residual=True, join="b n q d -> b q (n d)", base=None):
        v = rearrange(v, "b l (n d) -> b n l d", n=heads)
        out = rearrange(p @ v, join)
        out = block.to_out(out) if project else out
        out = rearrange(out, "b (h w) c -> b c h w", h=h, w=w)
        return (x if base is None else base) + out if residual else out

    q = block.to_q(rearrange(block.norm(x), "b c h w -> b (h w) c"))
    own = attention_weights(q, k_e, heads, mask)
    mean = weights.mean(1, keepdim=True).expand_as(weights)
    return [
        Mistake("the block's own attention of the edited prompt was used: the recorded weights "
                "(the source prompt's) take its place; that is what keeps the layout.",
                attend(own, v_e)),
        Mistake("the residual x + ... is missing: the injected block still adds its output to x, "
                "as the block's own forward pass does.", attend(weights, v_e, residual=False)),
        Mistake("block.to_out is missing: the heads' joined output is projected by to_out before "
                "it is added to x.", attend(weights, v_e, project=False)),
        Mistake("the keys were used as values: to_kv(context) gives keys then values, and the "
                "weights multiply the values (the second half).", attend(weights, k_e)),
        Mistake("the heads' weights were averaged: each head keeps its own recorded weights for "
                "its own slice of the values.", attend(mean, v_e)),
        Mistake("the heads were joined in the wrong order: join them as they were split, "
                "head by head ('b n q d -> b q (n d)'), so that each head's channels come back "
                "to their place before to_out.",
                attend(weights, v_e, join="b n q d -> b q (d n)")),
        Mistake("the block's output was added to GroupNorm(x): the residual adds it to x itself; "
                "the normalised x only makes the queries.",
                attend(weights, v_e, base=block.norm(x))),
        Mistake("the values came from the source prompt: the recorded weights say where each word "
                "acts, the edited prompt's values what it paints (to_kv of this call's context).",
                attend(weights, v_s)),
    ]


def _call_leaving_block_as_found(fn: Callable, block: CrossAttention, *args) -> torch.Tensor:
    """``fn(block, *args)``, failing when it leaves the block changed: a block whose ``attend`` or
    ``forward_fn`` was swapped (lesson 09's hook) and not put back computes every later call with
    these weights, the rest of the sampling and the next prompts alike, with no error."""
    before = {k: v for k, v in vars(block).items() if not k.startswith("_")}
    got = fn(block, *args)
    after = {k: v for k, v in vars(block).items() if not k.startswith("_")}
    changed = sorted(k for k in before.keys() | after.keys()
                     if before.get(k, None) is not after.get(k, None))
    if changed:
        names = ", ".join(f"block.{k}" for k in changed)
        raise Mismatch(f"injected_cross_attention changed the block ({names}) and left it "
                       "changed: every later call of this block would use these weights. Compute "
                       "the output from `weights` directly and leave the block as you found it.")
    return got


def _injection_case(seed: int, heads: int) -> Callable:
    def case(fn: Callable) -> None:
        block = _block(seed, heads)
        x, context, mask, weights, source = _injection_inputs(block, seed)
        with torch.no_grad():
            want = injected_cross_attention(block, x, context, mask, weights)
            got = _call_leaving_block_as_found(fn, block, x.clone(), context.clone(),
                                               mask.clone(), weights.clone())
            compare(got, want, what=f"injected_cross_attention ({heads} heads, a padded prompt)",
                    mistakes=_injection_mistakes(block, x, context, mask, weights, source),
                    otherwise="does not match the injected block of lesson 19's Math (Hertz et "
                              "al. 2022, Sec. 3.2) and none of the usual mistakes explains it: "
                              "check where the probabilities and the values come from, and what "
                              "the block does with the heads' output.")
    return case


def _injection_same_weights_is_the_block(fn: Callable) -> None:
    block = _block(5, heads=4)
    x, context, mask, _, _ = _injection_inputs(block, 5)
    q = block.to_q(rearrange(block.norm(x), "b c h w -> b (h w) c"))
    own = attention_weights(q, block.to_kv(context).chunk(2, dim=-1)[0], block.heads, mask)
    with torch.no_grad():
        got = _call_leaving_block_as_found(fn, block, x, context, mask, own)
        want = block(x, context, mask)
    compare(got, want, what="injected_cross_attention given the block's own weights (it must "
                            "then compute the block's own output)")


INJECTED_CROSS_ATTENTION = Checker(
    "injected_cross_attention",
    injected_cross_attention,
    [
        _injection_case(0, 2),
        _injection_case(1, 1),
        _injection_same_weights_is_the_block,
    ],
    hints=(
        ("The block's own forward pass computes attention probabilities from q and k; here they "
         "are given. What is left of the block is everything that comes after them."),
        ("Take the values of this call's context, split them into the heads as the weights are "
         "split, apply the weights, join the heads, then finish as the block does."),
    ),
    see="lesson 19's Math (Hertz et al. 2022, Sec. 3.2)",
)
