"""Lesson 19: the ControlNet-style adapter, prompt-to-prompt's hooks, and their checkers."""

import pytest
import torch
from einops import rearrange

from diffuse_edu.data.captioned import make_shapes, palette_rgb, render
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.exercises import run_checker
from diffuse_edu.exercises.control_adapter import (
    ADAPTER_FORWARD,
    INJECTED_CROSS_ATTENTION,
    MASK_IOU,
)
from diffuse_edu.models.attention import CrossAttention
from diffuse_edu.models.attention_control import (
    colour_layout,
    colour_layout_change,
    injected_cross_attention,
    injecting_attention,
    recording_attention,
    word_maps_locate,
)
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.control_adapter import (
    ControlAdapter,
    Controlled,
    adapter_forward,
    decode,
    ink_mask,
    mask_iou,
    run_encoder,
    widen_input,
)
from diffuse_edu.models.unet import UNet, UNetConfig
from diffuse_edu.training.control_adapter import train_control


def _base(labels=True, context=False):
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=1, channels=(8, 16, 16), attention_levels=(2,), groups=4,
                     num_classes=3 if labels else None, context_dim=6 if context else None)
    base = UNet(cfg).eval()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base


def _batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(4, 1, 8, 8, generator=g), torch.tensor([1, 10, 500, 999]),
            (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float(),
            Cond(labels=torch.tensor([0, 1, 2, 0])))


def test_encoder_and_decoder_parts_rebuild_the_unet():
    base = _base()
    x, t, _, cond = _batch()
    emb = base.embed(t, cond)
    h, skips = run_encoder(base, base.stem(x), emb, cond)
    out = decode(base, base.middle(h, emb, cond), skips, emb, cond)
    assert torch.allclose(out, base(x, t, cond), atol=1e-6)


def test_adapter_is_exactly_the_base_at_init_and_not_after_a_step():
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    adapter = ControlAdapter(base)
    x, t, control, cond = _batch()
    with torch.no_grad():
        assert torch.equal(adapter(x, t, control, cond), base(x, t, cond))
    objective = DiffusionObjective(cosine_schedule(1000))
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    result = train_control(adapter, images, ink_mask(images).float(), objective, steps=3,
                           batch_size=4, lr=1e-2, labels=torch.zeros(16, dtype=torch.long),
                           generator=torch.Generator().manual_seed(0))
    assert result["steps"] == 3 and not result["stopped_by_clock"]
    with torch.no_grad():
        assert not torch.allclose(adapter(x, t, control, cond), base(x, t, cond))
    for k, v in base.state_dict().items():  # the frozen model never moved
        assert torch.equal(v, before[k]), k
    assert all(not p.requires_grad for p in base.parameters())


def test_widened_unet_starts_as_the_base_and_leaves_it_alone():
    base = _base()
    wide = widen_input(base)
    x, t, control, cond = _batch()
    with torch.no_grad():
        assert torch.allclose(wide(x, t, control, cond), base(x, t, cond), atol=1e-6)
        wide.unet.stem.weight.add_(1.0)
        assert not torch.allclose(wide(x, t, control, cond), base(x, t, cond))
    assert wide.unet.stem.weight.shape[1] == 2 and base.stem.weight.shape[1] == 1


def test_controlled_repeats_the_map_for_guidance_and_zeroes_it_for_none():
    seen = []
    model = lambda x, t, c, cond: seen.append(c) or x
    x = torch.zeros(4, 1, 2, 2)
    Controlled(model, torch.ones(2, 1, 2, 2))(x, torch.zeros(4))
    Controlled(model, None)(x, torch.zeros(4))
    assert seen[0].shape == (4, 1, 2, 2) and seen[0].eq(1).all() and seen[1].eq(0).all()


def test_mask_iou_values():
    a = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    b = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    a[0, 0, 0] = True  # two pixels
    b[0, 0, :, 0] = True  # two pixels, one shared
    a[1, 0, 0, 0] = True  # b empty
    assert torch.allclose(mask_iou(a, b), torch.tensor([1 / 3, 0.0, 1.0]))


def _text_unet():
    torch.manual_seed(0)
    cfg = UNetConfig(in_channels=3, channels=(8, 16), attention_levels=(1,), groups=4,
                     context_dim=6)
    net = UNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def _sample(net, context, x, steps=4):
    cond = Cond(context=context, context_mask=torch.ones(context.shape[:2], dtype=torch.bool))
    for k in range(steps):  # any fixed sequence of network calls
        x = x - 0.1 * net(x, torch.full((len(x),), 900 - 200 * k), cond)
    return x


def test_recording_then_injecting_the_same_prompt_changes_nothing():
    net = _text_unet()
    g = torch.Generator().manual_seed(2)
    x, src, edit = (torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 6, generator=g),
                    torch.randn(2, 5, 6, generator=g))
    with torch.no_grad():
        with recording_attention(net) as maps:
            a = _sample(net, src, x)
        assert len(maps) == 2 and all(len(m) == 4 for m in maps)
        with injecting_attention(net, maps, 1.0) as counts:
            same = _sample(net, src, x)
        assert torch.allclose(a, same, atol=1e-5) and counts == {"injected": 8, "own": 0}
        alone = _sample(net, edit, x)
        with injecting_attention(net, maps, 0.0):
            assert torch.allclose(_sample(net, edit, x), alone)
        with injecting_attention(net, maps, 0.5) as counts:
            half = _sample(net, edit, x)
        assert counts == {"injected": 4, "own": 4} and not torch.allclose(half, alone)
    from diffuse_edu.models.attention import cross_attention_block
    assert all(b.forward_fn is cross_attention_block for b in net.modules()
               if isinstance(b, CrossAttention))  # hooks removed on leaving


def test_injection_refuses_a_wrong_share_or_batch():
    net = _text_unet()
    with pytest.raises(ValueError, match="fraction"), injecting_attention(net, [[], []], 1.5):
        pass
    with torch.no_grad():
        with recording_attention(net) as maps:
            _sample(net, torch.randn(2, 5, 6), torch.randn(2, 3, 4, 4), steps=1)
        with pytest.raises(ValueError, match="batch"), injecting_attention(net, maps, 1.0):
            _sample(net, torch.randn(3, 5, 6), torch.randn(3, 3, 4, 4), steps=1)


def test_cond_half_injects_the_conditions_and_leaves_the_nulls_their_own_maps():
    net = _text_unet()
    g = torch.Generator().manual_seed(3)
    x, src, edit, null = (torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 6, generator=g),
                          torch.randn(2, 5, 6, generator=g), torch.randn(1, 5, 6, generator=g))
    guided = lambda c: torch.cat([c, null.expand(2, -1, -1)])  # noqa: E731 conditions, then nulls
    xx = torch.cat([x, x])
    with torch.no_grad():
        with recording_attention(net) as maps:
            a = _sample(net, guided(src), xx)
        with injecting_attention(net, maps, 1.0, cond_half=True) as counts:
            assert torch.allclose(_sample(net, guided(src), xx), a, atol=1e-5)  # the same prompt
        assert counts == {"injected": 8, "own": 0}
        alone = _sample(net, guided(edit), xx)
        with injecting_attention(net, maps, 1.0, cond_half=True):
            half = _sample(net, guided(edit), xx)
        with injecting_attention(net, maps, 1.0):
            both = _sample(net, guided(edit), xx)
        assert not torch.allclose(half[:2], alone[:2])  # the conditional half takes the maps
        # the null half runs its own maps: at the first call it matches the edit alone exactly
        block = next(m for m in net.modules() if isinstance(m, CrossAttention))
        h = torch.randn(4, block.to_q.in_features, 2, 2, generator=g)
        ctx, w = guided(edit), maps[0][0]
        own = block(h, ctx, None)
        with injecting_attention(net, [[w] for _ in maps], 1.0, cond_half=True):
            mixed = block(h, ctx, None)
        assert torch.allclose(mixed[2:], own[2:]) and not torch.allclose(mixed[:2], own[:2])
        assert torch.allclose(mixed[:2], injected_cross_attention(block, h[:2], ctx[:2], None,
                                                                  w[:2]))
        assert not torch.allclose(half, both)
        with pytest.raises(ValueError, match="guided batch"), \
                injecting_attention(net, [[w[:3]] for _ in maps], 1.0, cond_half=True):
            block(h[:3], ctx[:3], None)


def test_word_maps_locate_reads_each_words_map_against_the_shapes():
    b, side, length = 2, 4, 5
    a = torch.full((b, 1, side * side, length), 0.01)
    a[0, 0, 0, 2] = 1.0  # prompt 0: word 2 on pixel (0, 0) of the 4x4 map, word 4 on (3, 3)
    a[0, 0, 15, 4] = 1.0
    a[1, 0, :, :] = 1.0  # prompt 1: uniform maps
    cen = torch.tensor([[[1.5, 1.5], [14.5, 14.5]], [[1.5, 1.5], [14.5, 14.5]]])
    right = word_maps_locate([[a, a]], torch.tensor([[2, 4], [2, 4]]), cen, 16)[0]
    assert right["side"] == 4 and right["nearer"].tolist()[0] is True
    assert right["gap"][1] == pytest.approx(0.0, abs=1e-5) and right["nearer"][1].item() is False
    assert 0.5 < right["gap"][0] / right["shape_gap"][0] < 1.0  # peaks at 1.5 and 13.5, blurred
    assert right["shape_gap"].tolist() == pytest.approx([13 * 2 ** 0.5] * 2)
    crossed = word_maps_locate([[a]], torch.tensor([[4, 2], [4, 2]]), cen, 16)[0]
    assert crossed["nearer"].tolist() == [False, False]
    doubled = torch.cat([a, torch.rand_like(a)])  # a guided batch: only the first half is read
    assert torch.equal(word_maps_locate([[doubled]], torch.tensor([[2, 4], [2, 4]]), cen,
                                        16)[0]["nearer"], right["nearer"])


def test_box_centre_keeps_a_shape_edit_in_place_where_the_centroid_moves():
    palette = palette_rgb()
    objects = torch.tensor([[[0, 0, 1, -1], [2, 1, 1, -1]]])  # big red circle, big blue square
    triangle = objects.clone()
    triangle[0, 0, 1] = 2  # the red circle becomes a triangle at the same centre
    centres = torch.tensor([[[4.0, 8.0], [12.0, 8.0]]])
    a, b = render(objects, centres, 16)[0], render(triangle, centres, 16)[0]
    keep = colour_layout_change(a, objects[:, :, 0], b, triangle[:, :, 0], palette)
    assert keep["shift"][0, 0] < 0.51 and keep["shift"][0, 1] == 0  # box centres stay
    assert keep["placed"][0] < 0.26 and keep["swapped"].tolist() == [False]
    lit = (b[0].amax(0) > 0).float()
    ys = torch.arange(16.0)[:, None]
    mass_y = (lit[:, :8] * ys).sum() / lit[:, :8].sum()
    assert mass_y - 7.5 > 0.5  # the triangle's centroid sits below its box centre
    ext = colour_layout(a, objects[:, :, 0], palette)["extent"]
    assert ext[0, 0].tolist() == [6.0, 6.0]  # the pixels lit over half: radius 3.6 -> 6 px


def test_shape_sets_keep_where_the_renderer_drew_each_shape():
    shapes = make_shapes(12, size=16, two_shapes=0.5)
    again, masks = render(shapes.objects, shapes.centres, 16)  # the data's own renderer
    assert torch.equal(again, shapes.images) and torch.equal(masks, shapes.masks)
    part = shapes.subset(torch.tensor([3, 1]))
    assert torch.equal(part.centres, shapes.centres[[3, 1]])
    assert torch.equal(palette_rgb()[shapes.objects[0, 0, 0]],
                       shapes.images[0][:, shapes.masks[0, 0]].amax(1))  # the first shape's colour


def test_colour_layout_finds_each_shape_by_its_colour():
    palette = palette_rgb()  # red, green, blue, yellow
    img = -torch.ones(1, 3, 8, 8)
    img[0, :, 0:2, 0:2] = palette[0].view(3, 1, 1)  # red 2x2 at the top left, centre (0.5, 0.5)
    img[0, :, 5:8, 6:8] = palette[2].view(3, 1, 1)  # blue 3x2, centre (6.5, 6)
    lay = colour_layout(img, torch.tensor([[0, 2, 1]]), palette)  # red, blue, green (absent)
    assert torch.allclose(lay["centre"][0, :2], torch.tensor([[0.5, 0.5], [6.5, 6.0]]))
    assert lay["area"][0].tolist() == [4.0, 6.0, 0.0]
    assert lay["found"][0].tolist() == [True, True, False]
    assert torch.allclose(lay["centre"][0, 2], torch.tensor([3.5, 3.5]))  # none: the centre
    recoloured = img.clone()  # the red shape turns green and moves one pixel right
    recoloured[0, :, 0:2, 0:2] = -1
    recoloured[0, :, 0:2, 1:3] = palette[1].view(3, 1, 1)
    change = colour_layout_change(img, torch.tensor([[0, 2]]), recoloured, torch.tensor([[1, 2]]),
                                  palette)
    assert change["shift"][0].tolist() == [1.0, 0.0]
    assert change["size"][0].tolist() == [0.0, 0.0] and change["found"].all()
    gone = colour_layout_change(img, torch.tensor([[0, 2]]), recoloured, torch.tensor([[0, 2]]),
                                palette)
    assert gone["found"][0].tolist() == [False, True]  # red is no longer there
    assert change["placed"].tolist() == [0.5] and change["swapped"].tolist() == [False]
    assert lay["extent"][0].tolist() == [[2.0, 2.0], [2.0, 3.0], [0.0, 0.0]]  # (width, height)
    assert change["placed_size"].tolist() == [0.0]
    traded = -torch.ones(1, 3, 8, 8)  # blue where red was, green where blue was: the colours trade
    traded[0, :, 0:2, 0:2] = palette[2].view(3, 1, 1)
    traded[0, :, 5:8, 6:8] = palette[1].view(3, 1, 1)
    swap = colour_layout_change(img, torch.tensor([[0, 2]]), traded, torch.tensor([[1, 2]]),
                                palette)
    assert swap["shift"][0, 0] == pytest.approx((6 ** 2 + 5.5 ** 2) ** 0.5)
    assert swap["placed"].tolist() == [0.0] and swap["swapped"].tolist() == [True]
    assert swap["placed_size"].tolist() == [0.0]  # each place keeps its box under the matching
    assert swap["size"][0, 0] == pytest.approx(torch.tensor(7 / 5).log().item())
    three = colour_layout_change(img, torch.tensor([[0, 2, 1]]), img, torch.tensor([[0, 2, 1]]),
                                 palette)
    assert "placed" not in three  # the matching is defined for two shapes only


@pytest.mark.parametrize("checker", [ADAPTER_FORWARD, MASK_IOU, INJECTED_CROSS_ATTENTION])
def test_references_pass(checker):
    assert run_checker(checker.reference, checker).status == "passed"


def _wrong_adapters():
    from diffuse_edu.models.control_adapter import decode as dec
    from diffuse_edu.models.control_adapter import run_encoder as enc

    def build(skip_res=True, mid_res=True, zero=True, hint=True, with_x=True, sign=1.0):
        def fn(a, x, t, control, cond=None):
            base, twin = a.base, a.copy
            h0 = twin.stem(x) if with_x else 0.0
            if hint:
                h0 = h0 + a.zero_in(a.hint(control))
            emb_c = twin.embed(t, cond)
            h_c, skips_c = enc(twin, h0, emb_c, cond)
            h_c = twin.middle(h_c, emb_c, cond)
            emb = base.embed(t, cond)
            h, skips = enc(base, base.stem(x), emb, cond)
            if skip_res:
                skips = [s + sign * (z(c) if zero else c)
                         for s, z, c in zip(skips, a.zero_skips, skips_c)]
            h = base.middle(h, emb, cond)
            if mid_res:
                h = h + sign * (a.zero_middle(h_c) if zero else h_c)
            return dec(base, h, skips, emb, cond)
        return fn

    return [
        (build(zero=False), "without their zero convolutions"),
        (build(hint=False), "never reached the copy"),
        (build(with_x=False), "read the control map alone"),
        (build(mid_res=False), "middle output is missing"),
        (build(skip_res=False), "skip connections got nothing"),
        (build(sign=-1.0), "subtracted"),
        (build(skip_res=False, mid_res=False), "frozen base model alone"),
    ]


@pytest.mark.parametrize("wrong,message", _wrong_adapters())
def test_adapter_checker_names_each_mistake(wrong, message):
    verdict = run_checker(wrong, ADAPTER_FORWARD)
    assert verdict.status == "failed" and message in verdict.message, verdict.message


def test_adapter_checker_catches_a_frozen_base_that_trains_and_a_detached_copy():
    def detached(a, x, t, control, cond=None):
        with torch.no_grad():
            out = adapter_forward(a, x, t, control, cond)
        return out + 0 * a.base.stem.weight.sum().detach()

    verdict = run_checker(detached, ADAPTER_FORWARD)
    assert verdict.status == "failed" and "no gradient reached" in verdict.message


def _ious():
    def recall(p, q):
        p, q = p.flatten(1), q.flatten(1)
        i, n = (p & q).sum(1).float(), q.sum(1).float()
        return torch.where(n > 0, i / n.clamp_min(1), torch.ones_like(n))

    def summed(p, q):
        p, q = p.flatten(1).float(), q.flatten(1).float()
        u = (p.sum(1) + q.sum(1))
        return torch.where(((p + q) > 0).any(1), (p * q).sum(1) / u.clamp_min(1),
                           torch.ones_like(u))

    def zero_empty(p, q):
        p, q = p.flatten(1), q.flatten(1)
        return (p & q).sum(1).float() / (p | q).sum(1).float().clamp_min(1)

    def nan_empty(p, q):
        p, q = p.flatten(1), q.flatten(1)
        return (p & q).sum(1).float() / (p | q).sum(1).float()

    def batch(p, q):
        return ((p & q).sum().float() / (p | q).sum().float()).expand(p.shape[0])

    def precision(p, q):
        p, q = p.flatten(1), q.flatten(1)
        i, n = (p & q).sum(1).float(), p.sum(1).float()
        return torch.where(n > 0, i / n.clamp_min(1), torch.ones_like(n))

    def swapped(p, q):
        p, q = p.flatten(1), q.flatten(1)
        i, u = (p & q).sum(1).float(), (p | q).sum(1).float()
        return torch.where(i > 0, u / i.clamp_min(1), torch.ones_like(u))

    def dice(p, q):
        p, q = p.flatten(1), q.flatten(1)
        i, n = (p & q).sum(1).float(), (p.sum(1) + q.sum(1)).float()
        return torch.where(n > 0, 2 * i / n.clamp_min(1), torch.ones_like(n))

    def distance(p, q):
        return 1 - mask_iou(p, q)

    def scalar(p, q):
        return (p & q).sum().float() / (p | q).sum().float()

    def doubled(p, q):
        return mask_iou(p, q).double()

    def floored(p, q):
        p, q = p.flatten(1), q.flatten(1)
        i, u = (p & q).sum(1), (p | q).sum(1)
        return torch.where(u > 0, i // u.clamp_min(1), torch.ones_like(u))

    return [(dice, "Dice score"), (distance, "1 - IoU"), (scalar, "scalar of shape ()"),
            (doubled, "return float32: the masks are bool"),
            (floored, "return float32: the masks are bool"),
            (precision, "precision"), (swapped, "swapped"),
            (recall, "recall"), (summed, "counting the overlap twice"),
            (zero_empty, "two empty masks agree"), (nan_empty, "NaN where both"),
            (batch, "per image")]


@pytest.mark.parametrize("wrong,message", _ious())
def test_iou_checker_names_each_mistake(wrong, message):
    verdict = run_checker(wrong, MASK_IOU)
    assert verdict.status == "failed" and message in verdict.message, verdict.message


def _wrong_injections():
    def make(own=False, residual=True, project=True, keys=False, mean=False,
             join="b n q d -> b q (n d)", normed=False):
        def fn(block, x, context, mask, weights):
            _, _, h, w = x.shape
            k, v = block.to_kv(context).chunk(2, dim=-1)
            if own:
                from diffuse_edu.models.attention import attention_weights
                q = block.to_q(rearrange(block.norm(x), "b c h w -> b (h w) c"))
                weights = attention_weights(q, k, block.heads, mask)
            if mean:
                weights = weights.mean(1, keepdim=True).expand_as(weights)
            v = rearrange(k if keys else v, "b l (n d) -> b n l d", n=block.heads)
            out = rearrange(weights @ v, join)
            out = block.to_out(out) if project else out
            out = rearrange(out, "b (h w) c -> b c h w", h=h, w=w)
            return (block.norm(x) if normed else x) + out if residual else out
        return fn

    return [(make(own=True), "own attention"), (make(residual=False), "residual"),
            (make(project=False), "to_out is missing"), (make(keys=True), "keys were used"),
            (make(mean=True), "averaged"), (make(join="b n q d -> b q (d n)"), "wrong order"),
            (make(normed=True), "added to GroupNorm(x)")]


@pytest.mark.parametrize("wrong,message", _wrong_injections())
def test_injection_checker_names_each_mistake(wrong, message):
    verdict = run_checker(wrong, INJECTED_CROSS_ATTENTION)
    assert verdict.status == "failed" and message in verdict.message, verdict.message


def test_injection_checker_names_source_values():
    # the values of the source prompt: only the checker's own case knows the source context, so
    # feed it a function that reads them from the weights' origin is impossible; check the mistake
    # list itself names it
    from diffuse_edu.exercises.control_adapter import _block, _injection_inputs, _injection_mistakes
    block = _block(0)
    args = _injection_inputs(block, 0)
    messages = [m.message for m in _injection_mistakes(block, *args)]
    assert any("values came from the source prompt" in m for m in messages)
    assert len(messages) >= 4


def test_injection_that_swaps_the_blocks_attend_and_leaves_it_fails():
    """Lesson 09's hook, block.attend swapped for one returning the recorded weights' output and
    never put back: the values come out right once, and every later call of the block is wrong
    (a learner trial found it passed and corrupted the rest of lesson 19)."""
    from diffuse_edu.models.attention import cross_attention_block

    def swap_attend(block, x, context, mask, weights):
        block.attend = lambda q, k, v, heads, mask=None: rearrange(
            weights @ rearrange(v, "b l (n d) -> b n l d", n=heads), "b n q d -> b q (n d)")
        return cross_attention_block(block, x, context, mask)

    verdict = run_checker(swap_attend, INJECTED_CROSS_ATTENTION)
    assert verdict.status == "failed" and "block.attend" in verdict.message, verdict.message
    assert "left it changed" in verdict.message
    assert run_checker(injected_cross_attention, INJECTED_CROSS_ATTENTION).status == "passed"
