"""Lesson 18's library: the noise-aware classifier (models.noisy_classifier, trained by
training.noisy_classifier), classifier guidance through eps, and classifier-free guidance with a
negative condition (diffusion.classifier_guidance)."""

import pytest
import torch
import torch.nn.functional as F

from diffuse_edu.diffusion import classifier_guidance as cg
from diffuse_edu.diffusion.guidance import guided_forward
from diffuse_edu.diffusion.schedules import cosine_schedule
from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from diffuse_edu.training.noisy_classifier import train_noisy_classifier


def _two_classes(n=256, seed=0):
    """Class 0: a bright left half; class 1: a bright right half (1 x 8 x 8, in [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = -torch.ones(n, 1, 8, 8)
    x[labels == 0, :, :, :4] = 1
    x[labels == 1, :, :, 4:] = 1
    return x + 0.1 * torch.randn(x.shape, generator=g), labels


def test_the_noisy_classifier_gives_logits_per_example_and_depends_on_t():
    clf = NoisyClassifier(NoisyClassifierConfig(in_channels=3, num_classes=7,
                                                       widths=(8, 16)))
    x = torch.randn(5, 3, 8, 8)
    a, b = clf(x, torch.full((5,), 10)), clf(x, torch.full((5,), 900))
    assert a.shape == (5, 7)
    assert not torch.allclose(a, b)  # the time embedding modulates every stage


def test_the_loss_draws_t_in_1_to_T_then_eps_and_is_reproducible():
    schedule = cosine_schedule(20)
    x0, labels = _two_classes(64)
    seen = []

    def clf(x, t):
        seen.append(t)
        return torch.zeros(len(x), 2, requires_grad=True) + x.mean((1, 2, 3))[:, None]

    losses = [cg.noisy_classifier_loss(clf, x0, labels, schedule,
                                       generator=torch.Generator().manual_seed(3))
              for _ in range(2)]
    assert torch.equal(losses[0], losses[1]) and losses[0].shape == ()
    g = torch.Generator().manual_seed(3)
    t = torch.randint(1, 21, (64,), generator=g)
    assert torch.equal(seen[0], t)
    for _ in range(30):
        cg.noisy_classifier_loss(clf, x0, labels, schedule, generator=g)
    assert set(torch.cat(seen).tolist()) == set(range(1, 21))


def test_training_gives_a_classifier_that_reads_noised_images():
    schedule = cosine_schedule(100)
    x, labels = _two_classes(512)
    config = NoisyClassifierConfig(widths=(8, 16), time_dim=16)
    clf, losses = train_noisy_classifier(x, labels, schedule, config, steps=60,
                                            batch_size=64, lr=1e-2, seed=0)
    assert sum(losses[-10:]) / 10 < losses[0]
    assert cg.noisy_accuracy(clf, x, labels, schedule, 10) > 0.95
    assert not clf.training


def _toy_classifier():
    w = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) / 8

    def clf(x, t):
        h = torch.einsum("bchw,kchw->bk", x, w.to(x.dtype))
        return torch.tanh(h) * (1 + t.to(x.dtype)[:, None] / 50)
    return clf


def test_the_guided_eps_is_eps_minus_scale_sigma_times_the_log_probability_gradient():
    schedule = cosine_schedule(50)
    clf = _toy_classifier()
    x, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    t, labels = torch.tensor([5, 25, 45]), torch.tensor([0, 1, 1])
    got = cg.classifier_guided_eps(eps, clf, x, t, labels, 2.5, schedule)
    # the gradient by finite differences, one pixel of each example
    h, i = 1e-3, (0, 3, 4)
    for b in range(3):
        def log_p(xb, b=b):
            return F.log_softmax(clf(xb[None].double(), t[b:b + 1]), -1)[0, labels[b]]
        bump = torch.zeros(1, 8, 8, dtype=torch.float64)
        bump[i] = h
        grad = (log_p(x[b].double() + bump) - log_p(x[b].double() - bump)) / (2 * h)
        sigma = (1 - schedule.alpha_bar[t[b]]) ** 0.5
        want = eps[b][i] - 2.5 * sigma * grad
        assert abs(got[b][i].item() - want.item()) < 1e-3
    assert torch.equal(cg.classifier_guided_eps(eps, clf, x, t, labels, 0.0, schedule), eps)


def test_the_guided_eps_works_under_no_grad_and_leaves_x_alone():
    schedule = cosine_schedule(50)
    clf = _toy_classifier()
    x, eps = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    t, labels = torch.tensor([10, 40]), torch.tensor([1, 0])
    with torch.no_grad():
        got = cg.classifier_guided_eps(eps, clf, x, t, labels, 1.0, schedule)
    assert not got.requires_grad and not x.requires_grad and x.grad is None
    assert not torch.equal(got, eps)


def test_a_step_along_the_guided_eps_raises_the_asked_class_probability():
    """x0_hat = (x - sigma eps_hat) / sqrt(alpha_bar): guidance moves it up log p(y | x)."""
    schedule = cosine_schedule(50)
    clf = _toy_classifier()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t, labels = torch.full((8,), 20), torch.tensor([0, 1] * 4)
    eps = torch.zeros_like(x)
    x_moved = x - (1 - schedule.alpha_bar[20]) ** 0.5 * cg.classifier_guided_eps(
        eps, clf, x, t, labels, 0.05, schedule)

    def log_p(z):
        return F.log_softmax(clf(z, t), -1).gather(1, labels[:, None]).squeeze(1)
    assert (log_p(x_moved) > log_p(x)).all()


def test_classifier_guided_asks_the_network_with_the_null_label_and_refuses_v():
    schedule = cosine_schedule(50)
    asked = []

    def net(x, t, cond):
        asked.append(cond.labels)
        return torch.zeros_like(x)
    net.predicts = "eps"
    guided = cg.ClassifierGuided(net, _toy_classifier(), 1.0, Cond(labels=torch.tensor(10)),
                                 schedule)
    out = guided(torch.randn(2, 1, 8, 8), torch.tensor([5, 6]), Cond(labels=torch.tensor([0, 1])))
    assert out.shape == (2, 1, 8, 8) and asked[0].tolist() == [10, 10]
    with pytest.raises(ValueError, match="Cond\\(labels"):
        guided(torch.randn(2, 1, 8, 8), torch.tensor([5, 6]))
    net.predicts = "v"
    with pytest.raises(ValueError, match="eps-prediction"):
        cg.ClassifierGuided(net, _toy_classifier(), 1.0, Cond(labels=torch.tensor(10)), schedule)


def _text_net(x, t, cond):
    m = cond.context_mask.to(x.dtype)[..., None]
    pooled = (cond.context * m).sum(1) / m.sum(1).clamp_min(1)
    return torch.sin(x * (1 + pooled[:, :1, None, None])) + pooled[:, 1:2, None, None]


def _text_conds(B=3, L=4, D=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond = Cond(context=torch.randn(B, L, D, generator=g),
                context_mask=torch.arange(L)[None] < torch.tensor([2, 4, 3])[:B, None])
    negative = Cond(context=torch.randn(B, L, D, generator=g),
                    context_mask=torch.arange(L)[None] < torch.tensor([1, 3, 4])[:B, None])
    return cond, negative


def test_the_negative_condition_takes_the_null_ones_place():
    x, t = torch.randn(3, 1, 2, 2), torch.tensor([3, 30, 300])
    cond, negative = _text_conds()
    c, n = _text_net(x, t, cond), _text_net(x, t, negative)
    for s in (0.0, 1.0, 4.0):
        got = cg.negative_guided_forward(_text_net, x, t, cond, negative, s)
        assert torch.allclose(got, n + s * (c - n), atol=1e-6)
    one = negative.index(torch.tensor(0))  # one example's negative, for the whole batch
    assert torch.allclose(cg.negative_guided_forward(_text_net, x, t, cond, one, 3.0),
                          guided_forward(_text_net, x, t, cond, one, 3.0))
    wrapped = cg.NegativeGuided(_text_net, 3.0, negative)
    assert torch.allclose(wrapped(x, t, cond), n + 3 * (c - n), atol=1e-6)
    with pytest.raises(ValueError, match="prompt"):
        wrapped(x, t)


def test_bracketing_scales_interpolates_between_measured_scales_and_never_extrapolates():
    # read between the two neighbouring scales whose adherences bracket the target
    lo, hi, w = cg.bracketing_scales({1.0: 0.8, 2.0: 0.9, 3.0: 0.95}, 0.85)
    assert (lo, hi) == (1.0, 2.0) and w == pytest.approx(0.5)
    # the scales are sorted first (a dict in any order)
    assert cg.bracketing_scales({3.0: 0.95, 1.0: 0.8, 2.0: 0.9}, 0.925)[:2] == (2.0, 3.0)
    # outside the measured adherences: no point, not the nearest end
    assert cg.bracketing_scales({1.0: 0.8, 2.0: 0.9}, 0.95) is None
    assert cg.bracketing_scales({1.0: 0.8, 2.0: 0.9}, 0.7) is None
    assert cg.bracketing_scales({1.0: 0.8}, 0.8) is None  # one scale brackets nothing
    # a curve that dips: the smallest scale that reaches the target, not the sorted adherences
    lo, hi, w = cg.bracketing_scales({1.0: 0.8, 2.0: 0.96, 3.0: 0.93, 4.0: 0.97}, 0.95)
    assert (lo, hi) == (1.0, 2.0) and w == pytest.approx(0.15 / 0.16)
    # a measured scale exactly on the target: all the weight on it (114 / 120 is 0.95)
    assert cg.bracketing_scales({10.0: 0.9, 20.0: 114 / 120, 30.0: 0.96}, 0.95) == (10.0, 20.0, 1.0)
    # two neighbours both on the target: the smaller one
    assert cg.bracketing_scales({1.0: 0.95, 2.0: 0.95}, 0.95) == (1.0, 2.0, 0.0)
