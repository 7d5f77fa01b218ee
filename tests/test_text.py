"""Lesson 09's pieces: captioned shapes, tokenizer and text encoder, mini-CLIP, cross-attention
weights, adherence judges, and the text-conditioned recipe."""

import pytest
import torch

from diffuse_edu.data.captioned import (
    ATTRIBUTES,
    HELD_OUT,
    SHAPE_WORDS,
    digit_captions,
    make_shapes,
)
from diffuse_edu.evaluation.adherence import colour_binding, region_colour
from diffuse_edu.models.attention import (
    CrossAttention,
    attention_weights,
    multi_head_attention,
    recorded_cross_attention,
    use_attention,
)
from diffuse_edu.models.clip import MiniCLIP, MiniCLIPConfig, contrastive_loss
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.text import TextEncoder, TextEncoderConfig, build_vocab, tokenize
from diffuse_edu.models.unet import UNet, UNetConfig

VOCAB = build_vocab([" ".join(SHAPE_WORDS)])


def test_shapes_are_deterministic_and_in_range():
    a, b = make_shapes(64, seed=3), make_shapes(64, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (64, 3, 16, 16) and a.images.min() >= -1 and a.images.max() <= 1
    assert not torch.equal(a.images, make_shapes(64, seed=4).images)
    assert make_shapes(8, size=32).images.shape == (8, 3, 32, 32)


def test_held_out_pairs_never_in_training_and_always_in_held_out():
    colours, shapes = list(ATTRIBUTES["colour"]), list(ATTRIBUTES["shape"])
    pairs = {(colours.index(c), shapes.index(s)) for c, s in HELD_OUT}
    for split, want in (("train", False), ("test", False), ("held_out", True)):
        s = make_shapes(400, split=split)
        has = [any((int(o[0]), int(o[1])) in pairs for o in objs if o[0] >= 0)
               for objs in s.objects]
        assert all(h == want for h in has), split


def test_captions_say_what_is_drawn():
    s = make_shapes(200, seed=1)
    for i in range(200):
        o, cap = s.objects[i], s.captions[i]
        assert ATTRIBUTES["colour"][o[0, 0]] in cap and ATTRIBUTES["shape"][o[0, 1]] in cap
        if s.relation[i] < 0:
            assert (cap.endswith(ATTRIBUTES["position"][o[0, 3]])
                    and ATTRIBUTES["size"][o[0, 2]] in cap)
            assert s.masks[i, 0].any() and not s.masks[i, 1].any()
        else:
            assert ATTRIBUTES["colour"][o[1, 0]] in cap and o[0, 0] != o[1, 0]
    # the drawn colour is the captioned one, and two-shape relations are where the caption says
    assert (region_colour(s.images, s.masks[:, 0]) == s.objects[:, 0, 0]).all()
    two = s.subset(~s.single)
    assert colour_binding(two.images, two.objects, two.relation)["bound"] == 1.0


def test_colour_binding_counts_a_swap_and_a_leak():
    s = make_shapes(300, seed=2)
    two = s.subset(~s.single)
    swapped = colour_binding(two.images, two.objects.flip(1), two.relation)
    assert swapped["swapped"] == 1.0 and swapped["bound"] == 0.0
    objs = two.objects.clone()
    # ask for the first colour twice: what the image shows is not "leaked"
    objs[:, 1, 0] = objs[:, 0, 0]
    assert colour_binding(two.images, objs, two.relation)["bound"] == 0.0


def test_digit_captions_name_the_digit():
    caps = digit_captions(torch.tensor([7, 0, 3]))
    assert "seven" in caps[0] and "zero" in caps[1] and "three" in caps[2]


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(VOCAB, max_len=12)).eval()
    ids, mask = enc.tokenize(["a red circle left of a blue square", "a red circle"])
    feats = enc(ids, mask)
    ids2, mask2 = ids.clone(), mask
    ids2[~mask] = 5  # other tokens where the padding is: the real tokens' features must not move
    assert torch.allclose(enc(ids2, mask2)[mask], feats[mask], atol=1e-6)
    assert TextEncoder.pooled(feats, mask).shape == (2, 64)
    cond = enc.condition(["a red circle", ""])
    assert cond.context.shape == (2, 12, 64) and cond.context_mask[1].sum() == 2
    with pytest.raises(ValueError, match="tokenize"):
        enc(ids.float(), mask)


def test_contrastive_loss_is_low_for_matching_pairs_and_spreads_over_duplicates():
    logits = torch.eye(4) * 20
    assert contrastive_loss(logits) < 1e-6
    same = torch.eye(4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # two identical captions
    tied = logits.clone()
    tied[0, 1] = tied[1, 0] = 20
    # with the duplicates marked, tying their logits is best; without, the diagonal alone is
    assert contrastive_loss(tied, same) < contrastive_loss(logits, same) - 1
    assert contrastive_loss(logits) < contrastive_loss(tied) - 0.1


def test_mini_clip_shapes_and_error_message():
    clip = MiniCLIP(MiniCLIPConfig(VOCAB, text_width=32, image_widths=(16, 32, 64)))
    ids, mask = tokenize(["a red circle", "a blue square"], VOCAB, 12)
    assert clip(torch.zeros(2, 3, 16, 16), ids, mask).shape == (2, 2)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        clip.embed_images(torch.zeros(2, 1, 16, 16))


def test_attention_weights_match_the_attention_output():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 8, generator=g), torch.randn(2, 6, 8, generator=g),
               torch.randn(2, 6, 8, generator=g))
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    w = attention_weights(q, k, 2, mask)  # (B, h, Lq, Lk)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 5)) and (w[1, :, :, 3:] == 0).all()
    by_hand = torch.cat([w[:, h] @ v[..., 4 * h:4 * h + 4] for h in range(2)], -1)
    assert torch.allclose(by_hand, multi_head_attention(q, k, v, 2, mask), atol=1e-6)


def test_unet_cross_attention_can_run_a_learners_function_and_be_recorded():
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=3, channels=(16, 32), attention_levels=(1,),
                          context_dim=8)).eval()
    for m in net.modules():
        if isinstance(m, CrossAttention):
            torch.nn.init.normal_(m.to_out.weight)  # zero-initialised: give the context an effect
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    cond = Cond(context=torch.randn(2, 4, 8),
                context_mask=torch.tensor([[True] * 4, [True, True, False, False]]))
    calls = []

    def mine(q, k, v, heads, mask=None):
        calls.append(heads)
        return multi_head_attention(q, k, v, heads, mask)

    with torch.no_grad():
        before = net(x, t, cond)
        # self- and cross-attention at level 1 and in the middle
        assert use_attention(net, mine) == 4
        with recorded_cross_attention(net) as blocks:
            after = net(x, t, cond)
    assert calls and torch.allclose(before, after)
    assert [tuple(b.weights.shape) for b in blocks] == [(2, 4, 16, 4), (2, 4, 16, 4)]
    assert (blocks[0].weights[1, :, :, 2:] == 0).all() and not blocks[0].record


def test_a_learners_cross_attention_block_runs_in_the_unet_and_is_still_recorded():
    from diffuse_edu.models.attention import cross_attention_block, use_cross_attention_block

    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=3, channels=(16, 32), attention_levels=(1,),
                          context_dim=8)).eval()
    for m in net.modules():
        if isinstance(m, CrossAttention):
            torch.nn.init.normal_(m.to_out.weight)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 500])
    cond = Cond(context=torch.randn(2, 4, 8),
                context_mask=torch.tensor([[True] * 4, [True, True, False, False]]))
    calls = []

    def mine(block, x, context, mask=None):
        calls.append(mask is not None)
        return cross_attention_block(block, x, context, mask)

    with torch.no_grad():
        before = net(x, t, cond)
        assert use_cross_attention_block(net, mine) == 2
        with recorded_cross_attention(net) as blocks:
            after = net(x, t, cond)
    assert calls == [True, True] and torch.allclose(before, after)
    assert [tuple(b.weights.shape) for b in blocks] == [(2, 4, 16, 4), (2, 4, 16, 4)]


def test_clip_training_runs_the_loss_it_is_given():
    from diffuse_edu.training.contrastive import train_clip

    seen = []

    def spy(logits, same):
        seen.append((logits.shape, same.dtype, bool(same.diagonal().all())))
        return contrastive_loss(logits, same)

    model = MiniCLIP(MiniCLIPConfig(VOCAB, text_width=16, image_widths=(8, 16), embed_dim=16))
    shapes = make_shapes(64, size=16)
    ids, mask = model.text.tokenize(shapes.captions)
    train_clip(model, shapes.images, ids, mask, steps=2, batch_size=16, loss_fn=spy)
    assert seen == [(torch.Size([16, 16]), torch.bool, True)] * 2


def test_text_recipe_null_condition_needs_the_encoder():
    from diffuse_edu.training.recipes import TDDPM_QUICK
    with pytest.raises(ValueError, match="empty prompt"):
        TDDPM_QUICK.null_cond()
    enc = TextEncoder(TDDPM_QUICK.text.model.text)
    null = TDDPM_QUICK.null_cond(enc)
    assert null.context.shape == (12, 32) and null.context_mask.sum() == 2
    assert "text" in TDDPM_QUICK.stamp() and TDDPM_QUICK.conditional


def test_shape_judge_reads_seen_and_held_out_pairs(tmp_path):
    """The judge trains on balanced colour-shape pairs, so no colour gives its shape away."""
    from diffuse_edu.evaluation.adherence import attribute_accuracy
    from diffuse_edu.training.pretrained import shape_judge
    judge = shape_judge(folder=tmp_path)
    for split in ("test", "held_out"):
        s = make_shapes(600, split=split, seed=5)
        one = s.subset(s.single)
        assert attribute_accuracy(judge, one.images, one.objects[:, 0])["all"] > 0.95, split
