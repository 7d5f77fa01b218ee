"""Lesson 13's fine-tuning pieces: LoRA adapters, a new class label, prior preservation, the decoder
alone, and the measurements that tell a subject apart."""

import pytest
import torch
from torch import nn

from diffuse_edu import data
from diffuse_edu.data.subject import bolder, make_subject, shear
from diffuse_edu.diffusion.objectives import DiffusionObjective
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.evaluation.probes import (
    edge_magnitude,
    ink_share,
    slant,
    thin_stroke_error,
    thin_strokes,
)
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.lora import (
    LoRAConv2d,
    LoRALinear,
    adapters,
    inject_lora,
    is_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
)
from diffuse_edu.models.unet import UNet, UNetConfig, add_class
from diffuse_edu.models.vae import VAE, VAEConfig
from diffuse_edu.training.finetune import DecoderObjective, PriorPreservation
from diffuse_edu.training.loop import TrainConfig, train

CFG = UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2, num_classes=10)


@pytest.mark.parametrize("make, x",
                         [(lambda: LoRALinear(nn.Linear(6, 4), 2, 4.0), torch.randn(3, 6)),
                          (lambda: LoRAConv2d(nn.Conv2d(2, 3, 3, padding=1), 2, 1.0),
                           torch.randn(2, 2, 5, 5))])
def test_an_adapter_starts_as_the_base_trains_only_a_and_b_and_merges_exactly(make, x):
    torch.manual_seed(0)
    layer = make()
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0 at first
    layer(x).square().sum().backward()
    assert layer.base.weight.grad is None and layer.lora_B.weight.grad.abs().sum() > 0
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    adapted, original = layer(x), layer.base.weight.detach().clone()
    layer.merge()
    # merged: the base alone computes it
    torch.testing.assert_close(layer(x), adapted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base(x), adapted, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, rtol=0, atol=1e-6)


def test_the_scale_is_alpha_over_rank():
    layer = LoRALinear(nn.Linear(3, 3), rank=4, alpha=2.0)
    with torch.no_grad():
        layer.lora_A.weight.fill_(1.0)
        layer.lora_B.weight.fill_(1.0)
    x = torch.ones(1, 3)
    # (2 / 4) * sum over r of 3
    torch.testing.assert_close(layer(x) - layer.base(x), torch.full((1, 3), 0.5 * 4 * 3))


def test_inject_by_name_freeze_the_rest_and_ship_only_the_adapters():
    torch.manual_seed(0)
    model = UNet(CFG)
    names = inject_lora(model, rank=2)
    assert names and all(n.split(".")[-1] in ("conv1", "conv2", "to_qkv", "to_out") for n in names)
    assert all(p.requires_grad == is_lora(n) for n, p in model.named_parameters())
    state = lora_state_dict(model)
    assert (set(state) == {k for k in model.state_dict() if is_lora(k)}
            and len(state) == 2 * len(names))
    twin = UNet(CFG)
    inject_lora(twin, rank=2)
    load_lora(twin, state)
    assert all(torch.equal(twin.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="do not fit this model"):
        load_lora(UNet(CFG), state)
    with pytest.raises(ValueError, match="nothing to adapt"):
        inject_lora(nn.Sequential(nn.ReLU()), rank=2)


def test_merge_unmerge_round_trip_drifts_in_bfloat16_not_in_float32():
    def drift(dtype):
        torch.manual_seed(0)
        model = UNet(CFG)
        inject_lora(model, rank=4)
        model = model.to(dtype)
        with torch.no_grad():
            for m in adapters(model):
                m.lora_B.weight.normal_(0, 0.05)
        before = [m.base.weight.detach().clone() for m in adapters(model)]
        assert merge_lora(model) == unmerge_lora(model) == len(before)
        return max((m.base.weight - b).abs().max().item() for m, b in zip(adapters(model), before))
    # 8 bits of mantissa: orders of magnitude apart
    assert drift(torch.float32) < 1e-6 and drift(torch.bfloat16) > 1e-4


def test_add_class_keeps_every_class_and_starts_the_new_one_as_its_model():
    torch.manual_seed(0)
    model = UNet(CFG).eval()
    model.predicts = "eps"
    bigger = add_class(model, like=3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    for old, new in ((4, 4), (3, 10), (10, 11)):
        # a class; the new label as "3"; the null label moved
        torch.testing.assert_close(bigger(x, t, Cond(labels=torch.full((2,), new))),
                                   model(x, t, Cond(labels=torch.full((2,), old))))
    assert bigger.config.num_classes == 11 and bigger.predicts == "eps"
    with pytest.raises(ValueError, match="class-conditional"):
        add_class(UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2)),
                  like=0)
    with pytest.raises(ValueError, match="offset is a distance"):
        add_class(model, like=3, offset=-1.0)


def test_add_class_with_an_offset_starts_the_new_label_near_its_class_and_apart_from_it():
    """A label of its own near the class (DreamBooth's rare word beside the class word): at the
    asked distance, in units of the mean distance between two classes, in a direction the generator
    draws."""
    torch.manual_seed(0)
    model = UNet(CFG).eval()
    emb = model.label_emb.weight.detach()
    spacing = torch.pdist(emb[:10]).mean()
    bigger = add_class(model, like=3, offset=0.5, generator=torch.Generator().manual_seed(1))
    new = bigger.label_emb.weight.detach()
    torch.testing.assert_close((new[10] - emb[3]).norm(), 0.5 * spacing)
    torch.testing.assert_close(new[:10], emb[:10])
    torch.testing.assert_close(new[11], emb[10])  # the null label, moved
    again = add_class(model, like=3, offset=0.5, generator=torch.Generator().manual_seed(1))
    # the generator decides
    torch.testing.assert_close(again.label_emb.weight, bigger.label_emb.weight)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    torch.testing.assert_close(bigger(x, t, Cond(labels=torch.full((2,), 4))),
                               model(x, t, Cond(labels=torch.full((2,), 4))))


def test_prior_preservation_trains_on_subject_and_class_images_through_the_loop():
    seen = []

    def spy(model, objective, subject, cond, pool, label, weight, generator):
        seen.append((subject.shape[0], label, weight))
        from diffuse_edu.training.finetune import prior_preservation_loss
        return prior_preservation_loss(model, objective, subject, cond, pool, label, weight,
                                       generator)
    torch.manual_seed(0)
    model = UNet(CFG)
    subject, pool = torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(10, 1, 8, 8) * 2 - 1
    objective = PriorPreservation(DiffusionObjective(cosine_schedule(100)), pool, 3, 0.5, loss=spy)
    result = train(model, subject, objective, TrainConfig(steps=3, batch_size=4, ema_decay=None),
                   cond=Cond(labels=torch.full((4,), 7)), show_progress=False)
    assert seen == [(4, 3, 0.5)] * 3 and result.steps == 3 and model.predicts == "eps"
    with pytest.raises(ValueError, match="needs the subject's condition"):
        objective(model, subject)


def test_the_decoder_alone_trains_and_the_encoder_stays():
    torch.manual_seed(0)
    vae = VAE(VAEConfig(channels=(8, 8), latent_channels=2, groups=4))
    encoder = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    train(vae, images, DecoderObjective(4.0), TrainConfig(steps=3, batch_size=8, ema_decay=None),
          trainable=lambda name: name.startswith("decoder."), show_progress=False)
    assert all(torch.equal(v, encoder[k]) for k, v in vae.encoder.state_dict().items())
    assert any(not torch.equal(v, decoder[k]) for k, v in vae.decoder.state_dict().items())


def test_slant_ink_edges_and_thin_strokes_read_what_they_should():
    digits = data.load_digits("train", size=16).images[:200]
    for k in (0.2, 0.5):
        assert abs((slant(shear(digits, k)) - slant(digits)).mean().item() - k) < 0.06
    assert (ink_share(bolder(digits)) > ink_share(digits)).float().mean() > 0.95
    line = -torch.ones(1, 1, 8, 8)
    line[..., 4] = 1.0  # a one-pixel vertical line: all of it thin, edges on both sides
    assert thin_strokes(line).sum() == 8 and edge_magnitude(line)[0, 0, 4, 3] > 0
    assert thin_stroke_error(line, line).item() == 0 and thin_stroke_error(-line, line).item() == 2
    subject = make_subject(data.load_digits("train", size=16), 3, 8,
                           generator=torch.Generator().manual_seed(0))
    assert subject.shape == (8, 1, 16, 16) and slant(subject).mean() > 0.3
    with pytest.raises(ValueError, match="the subject needs"):
        make_subject(data.load_digits("train", size=16), 3, 10_000)
