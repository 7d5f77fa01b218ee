"""Classifier-free guidance: identities (scale 1 is the conditional model, 0 the unconditional one,
guided DDIM is DDIM on the guided eps), one batched forward, and the two remedies."""

import pytest
import torch

from diffuse_edu.diffusion.guidance import Guided, guided_prediction, rescale_guidance
from diffuse_edu.diffusion.prediction import predict_x0
from diffuse_edu.diffusion.samplers import ddim_step, sample_ddim, sample_dpmpp_2m, timesteps
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.unet import UNet, UNetConfig

SCHEDULE = cosine_schedule(100)
NULL = Cond(labels=torch.tensor(10))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = UNet(UNetConfig(channels=(8, 16), attention_levels=(1,), groups=4, heads=2,
                          num_classes=10)).eval()
    with torch.no_grad():
        # give the label embedding some effect (it starts random, the blocks at zero)
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _inputs(b=3):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 1, 8, 8, generator=g), torch.tensor([5, 50, 95]),
            Cond(labels=torch.tensor([1, 4, 7])))


@torch.no_grad()
def test_scale_one_is_the_conditional_model_and_zero_the_unconditional(model):
    x, t, cond = _inputs()
    torch.testing.assert_close(Guided(model, 1.0, NULL)(x, t, cond), model(x, t, cond), rtol=1e-5,
                               atol=1e-6)
    uncond = model(x, t, Cond(labels=torch.full((3,), 10)))
    torch.testing.assert_close(Guided(model, 0.0, NULL)(x, t, cond), uncond, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(uncond, model(x, t, cond))  # the label does matter


@torch.no_grad()
def test_guided_ddim_is_ddim_on_the_guided_eps(model):
    x, _, cond = _inputs()
    got = sample_ddim(Guided(model, 4.0, NULL), x, SCHEDULE, steps=6, cond=cond)
    want, ts = x, timesteps(SCHEDULE, 6)
    null = Cond(labels=torch.full((3,), 10))
    for t, t_prev in zip(ts[:-1], ts[1:]):
        tt = torch.full((3,), t)
        eps = guided_prediction(model(want, tt, cond), model(want, tt, null), 4.0)
        want = ddim_step(want, predict_x0(want, eps, t, SCHEDULE), eps, t, t_prev, SCHEDULE)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_one_batched_forward_per_evaluation(model):
    calls = []

    def spy(x, t, cond):
        calls.append((x.shape[0], cond.labels.tolist()))
        return model(x, t, cond)

    x, _, cond = _inputs()
    sample_dpmpp_2m(Guided(spy, 3.0, NULL), x, SCHEDULE, steps=4, cond=cond)
    assert (len(calls) == 4
            and all(b == 6 and labels == [1, 4, 7, 10, 10, 10] for b, labels in calls))


@torch.no_grad()
def test_interval_guides_only_inside_and_the_learners_formula_is_used(model):
    x, t, cond = _inputs()
    guided = Guided(model, 5.0, NULL)(x, t, cond)
    limited = Guided(model, 5.0, NULL, interval=(40, 60))(x, t, cond)
    conditional = model(x, t, cond)
    torch.testing.assert_close(limited[1], guided[1])  # t = 50: inside
    # outside
    torch.testing.assert_close(limited[[0, 2]], conditional[[0, 2]], rtol=1e-5, atol=1e-6)
    mine = Guided(model, 5.0, NULL,
                  forward=lambda m, x, t, c, n, s, r, i: torch.zeros_like(x))(x, t, cond)
    assert mine.abs().max() == 0


def test_label_dropout_with_drop_labels_draws_what_drop_condition_draws():
    from diffuse_edu.models.conditioning import drop_condition, drop_labels, label_dropout

    cond = Cond(labels=torch.arange(40) % 10)
    mine = label_dropout(drop_labels)(cond, NULL, 0.3, generator=torch.Generator().manual_seed(4))
    theirs = drop_condition(cond, NULL, 0.3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(mine.labels, theirs.labels) and (mine.labels == 10).any()
    with pytest.raises(ValueError, match="drop_condition"):
        label_dropout()(Cond(context=torch.zeros(2, 3, 4)), NULL, 0.3)


def test_the_training_loop_runs_the_learners_condition_dropout():
    from diffuse_edu.diffusion.objectives import DiffusionObjective
    from diffuse_edu.models.conditioning import label_dropout
    from diffuse_edu.training.loop import TrainConfig, train

    seen = []

    def spy(labels, p, null_label, *, generator=None):
        seen.append((labels.clone(), p, null_label))
        return labels

    net = UNet(UNetConfig(in_channels=1, channels=(8, 16), attention_levels=(), num_classes=10))
    images, labels = torch.randn(32, 1, 8, 8), torch.arange(32) % 10
    train(net, images, DiffusionObjective(SCHEDULE),
          TrainConfig(steps=3, batch_size=8, cond_dropout=0.2, ema_decay=None),
          cond=Cond(labels=labels), null_cond=NULL, drop_fn=label_dropout(spy), show_progress=False)
    assert len(seen) == 3 and all(p == 0.2 and n == 10 and len(lb) == 8 for lb, p, n in seen)


def test_rescale_matches_the_conditional_std_and_phi_zero_does_nothing():
    g = torch.Generator().manual_seed(0)
    cond, guided = torch.randn(4, 1, 8, 8, generator=g), 3 * torch.randn(4, 1, 8, 8, generator=g)
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.0), guided)
    full = rescale_guidance(guided, cond, 1.0)
    torch.testing.assert_close(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    half = rescale_guidance(guided, cond, 0.5)
    torch.testing.assert_close(half, (full + guided) / 2)


def test_rescale_against_a_hand_computation():
    """Lin et al. 2024, Eq. 15-16, worked by hand on two examples of two numbers (the standard
    deviation per example, with Bessel's correction as torch.std): example 0 has std(guided) =
    sqrt(2), std(cond) = sqrt(2) / 2, so rescaled = guided / 2 = (0.5, 1.5) and phi = 0.7 gives
    0.7 (0.5, 1.5) + 0.3 (1, 3) = (0.65, 1.95); example 1 has equal stds, so it stays."""
    guided = torch.tensor([[1.0, 3.0], [-2.0, 2.0]])
    cond = torch.tensor([[0.0, 1.0], [0.0, 4.0]])
    torch.testing.assert_close(rescale_guidance(guided, cond, 0.7),
                               torch.tensor([[0.65, 1.95], [-2.0, 2.0]]))


def test_guidance_needs_a_condition_and_a_matching_null(model):
    x, t, cond = _inputs()
    with pytest.raises(ValueError, match="condition to guide towards"):
        Guided(model, 2.0, NULL)(x, t, None)
    with pytest.raises(ValueError, match="null context"):
        Guided(model, 2.0, NULL)(x, t, Cond(labels=cond.labels, context=torch.zeros(3, 2, 4)))
