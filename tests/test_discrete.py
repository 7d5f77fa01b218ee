"""Masked diffusion on tokens (lesson 17): the forward process, the loss against a brute-force ELBO
on a tiny vocabulary and length (every masking pattern enumerated), the sampler and the
autoregressive model."""

import itertools
import math

import numpy as np
import pytest
import torch

from diffuse_edu.diffusion.discrete import (
    COSINE,
    LINEAR,
    Autoregressive,
    MaskedDiffusion,
    MaskSchedule,
    TokenConfig,
    TokenTrainConfig,
    TokenTransformer,
    ar_bits,
    ar_inputs,
    binarise,
    elbo_bits,
    mask_tokens,
    masked_diffusion_loss,
    reveal_counts,
    sample_ar,
    sample_masked,
    tokens_to_images,
    train_tokens,
    unmask_step,
)
from diffuse_edu.evaluation.captions import caption_parses, template_captions

V, L = 3, 3  # the tiny vocabulary and length of the brute-force checks
MASK = V


class TableDenoiser:
    """A made-up denoiser that does not read t: fixed random logits for each of the (V + 1)^L
    inputs (so that every masking pattern gets its own prediction)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn((V + 1) ** L, L, V, generator=g, dtype=torch.float64) * 1.5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        index = sum(x[:, i] * (V + 1) ** i for i in range(L))
        return self.table[index]


def token_nll(model, x0: torch.Tensor, masked: tuple[int, ...]) -> dict[int, float]:
    """-log p(x0_i | the unmasked tokens) at each masked position i, the rest of x0 shown."""
    x = x0.clone()
    x[list(masked)] = MASK
    logp = model(x[None])[0].log_softmax(-1)
    return {i: -logp[i, x0[i]].item() for i in masked}


def any_order_nelbo(model, x0: torch.Tensor) -> float:
    """The expected autoregressive loss over the L! orders of revealing the positions (Ou et al.
    2024): what the continuous-time ELBO equals for a denoiser that does not read t."""
    total = 0.0
    for order in itertools.permutations(range(L)):
        for j, i in enumerate(order):
            total += token_nll(model, x0, tuple(order[j:]))[i]
    return total / math.factorial(L)


def integrated_nelbo(model, x0: torch.Tensor, schedule: MaskSchedule, points: int = 64) -> float:
    """The loss's expectation over every masking pattern (with its probability under alpha(t)),
    integrated over t in (0, 1) by Gauss-Legendre quadrature."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    total = 0.0
    for node, w in zip(nodes, weights):
        t = torch.tensor([(node + 1) / 2], dtype=torch.float64)
        keep = schedule.alpha(t).item()
        expected = 0.0
        for pattern in itertools.product([False, True], repeat=L):
            prob = math.prod((1 - keep) if m else keep for m in pattern)
            xt = torch.where(torch.tensor(pattern), MASK, x0)[None]
            logits = model(xt)
            expected += prob * masked_diffusion_loss(logits, x0[None], xt, t, MASK,
                                                     schedule).item()
        total += w / 2 * expected
    return total


def sampler_probability(model, x0: torch.Tensor) -> float:
    """The probability that the one-token-a-step random-order sampler returns x0."""
    total = 0.0
    for order in itertools.permutations(range(L)):
        total += math.exp(-sum(token_nll(model, x0, tuple(order[j:]))[i]
                               for j, i in enumerate(order)))
    return total / math.factorial(L)


EVERY_SEQUENCE = [torch.tensor(s) for s in itertools.product(range(V), repeat=L)]


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_loss_integrates_to_the_brute_force_elbo(schedule):
    """The weighted masked cross-entropy, averaged over every masking pattern and integrated over t,
    is the any-order autoregressive loss, for both schedules: the weight -alpha'/(1 - alpha) makes
    the ELBO the same whatever alpha is. A weight missing or wrong (1 / (1 - t), no weight, the
    kept positions summed) breaks this."""
    model = TableDenoiser(0)
    for x0 in EVERY_SEQUENCE[::4]:
        assert integrated_nelbo(model, x0, schedule) == pytest.approx(
            any_order_nelbo(model, x0), rel=1e-4)


def test_wrong_weights_miss_the_brute_force_elbo():
    """The brute-force comparison above can tell: the loss with the weight left out does not
    integrate to the ELBO."""
    model, x0 = TableDenoiser(1), EVERY_SEQUENCE[5]

    class NoWeight(MaskSchedule):  # -alpha' / (1 - alpha) = 1: the loss reads alpha, alpha'
        def alpha_prime(self, t):
            return -(1 - self.alpha(t))
    assert integrated_nelbo(model, x0, NoWeight("linear")) != pytest.approx(
        any_order_nelbo(model, x0), rel=1e-2)


def test_elbo_bounds_the_sampler_likelihood():
    """The ELBO is a bound: the random-order sampler's exact probability of every sequence (they
    sum to one) is at least exp(-NELBO)."""
    model = TableDenoiser(2)
    probs = [sampler_probability(model, x0) for x0 in EVERY_SEQUENCE]
    assert sum(probs) == pytest.approx(1.0, abs=1e-9)
    for x0, p in zip(EVERY_SEQUENCE, probs):
        assert -math.log(p) <= any_order_nelbo(model, x0) + 1e-9


def test_training_objective_estimates_the_elbo():
    """MaskedDiffusion (random t and masking per example) averages to the exact NELBO per token,
    and elbo_bits to it in bits."""
    model = TableDenoiser(3)
    x0 = EVERY_SEQUENCE[7]
    exact = any_order_nelbo(model, x0)
    objective = MaskedDiffusion(MASK, t_min=1e-6)
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([objective(model, x0[None].repeat(4_000, 1), g).item()
                          for _ in range(40)])
    assert draws.mean().item() * L == pytest.approx(exact, rel=0.03)
    bits = elbo_bits(model, x0[None].repeat(20_000, 1), MASK, draws=4,
                     generator=torch.Generator().manual_seed(1))
    assert bits.mean().item() == pytest.approx(exact / (L * math.log(2)), rel=0.03)


def test_mask_tokens_rate_and_ends():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 2, (4, 20_000), generator=g)
    t = torch.tensor([0.0, 0.25, 0.7, 1.0])
    for schedule in (LINEAR, COSINE):
        xt = mask_tokens(x0, t, torch.rand(x0.shape, generator=g), 2, schedule)
        rate = (xt == 2).float().mean(1)
        assert torch.allclose(rate, 1 - schedule.alpha(t), atol=0.015), (schedule, rate)
        assert torch.equal(xt[xt != 2], x0[xt != 2])  # kept tokens unchanged


def test_schedule_weight_and_names():
    t = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(LINEAR.weight(t), 1 / t)
    assert COSINE.alpha(torch.tensor([0.0, 1.0])).tolist() == pytest.approx([1.0, 0.0], abs=1e-7)
    with pytest.raises(ValueError, match="linear"):
        MaskSchedule("square")


def test_unmask_step_reveals_k_masked_positions():
    g = torch.Generator().manual_seed(0)
    x = torch.full((5, 10), 2)
    x[:, :3] = 1  # three revealed already
    logits = torch.randn(5, 10, 2, generator=g)
    gumbel = -torch.log(-torch.log(torch.rand(5, 10, 2, generator=g)))
    u = torch.rand(5, 10, generator=g)
    for order in ("random", "confidence"):
        y = unmask_step(x, logits, 4, 2, order, gumbel, u)
        assert torch.equal(y[:, :3], x[:, :3])
        assert ((y == 2).sum(1) == 3).all()
        assert torch.equal(y[y != x], (logits + gumbel).argmax(-1)[y != x])
    confident = unmask_step(x, logits, 1, 2, "confidence", gumbel, u)
    prio = logits.log_softmax(-1).gather(-1, (logits + gumbel).argmax(-1)[..., None])[..., 0]
    prio[:, :3] = -math.inf
    assert torch.equal((confident != x).float().argmax(1), prio.argmax(1))
    with pytest.raises(ValueError, match="order"):
        unmask_step(x, logits, 1, 2, "left-to-right", gumbel, u)
    with pytest.raises(ValueError, match="only 7"):
        unmask_step(x, logits, 8, 2, "random", gumbel, u)


def test_reveal_counts():
    assert reveal_counts(64, 1) == [64]
    assert reveal_counts(64, 64) == [1] * 64
    for steps in (3, 8, 16, 17):
        counts = reveal_counts(64, steps)
        assert sum(counts) == 64 and len(counts) == steps and min(counts) >= 1
    with pytest.raises(ValueError):
        reveal_counts(8, 9)


def test_sampler_distribution_matches_the_exact_one():
    """One token a step in random order, the sampler's frequencies match its exact probabilities
    (computed by enumerating the orders)."""
    model = TableDenoiser(4)
    x = sample_masked(model, 30_000, L, MASK, steps=L, generator=torch.Generator().manual_seed(0))
    assert not (x == MASK).any()
    index = sum(x[:, i] * V**i for i in range(L))
    freq = torch.bincount(index, minlength=V**L).double() / len(x)
    exact = torch.tensor([sampler_probability(model, s) for s in EVERY_SEQUENCE],
                         dtype=torch.float64)
    order = [sum(int(s[i]) * V**i for i in range(L)) for s in EVERY_SEQUENCE]
    assert torch.allclose(freq[order], exact, atol=0.012)


def test_causal_model_and_exact_likelihood():
    """The causal transformer's output at i does not depend on tokens at i or after (so its
    likelihood is exact: it sums to one over every sequence), and it has exactly the parameters of
    the bidirectional one."""
    torch.manual_seed(0)
    config = TokenConfig(vocab=V, length=L, width=16, depth=1, heads=2, causal=True)
    ar = TokenTransformer(config).double()
    bi = TokenTransformer(TokenConfig(vocab=V, length=L, width=16, depth=1, heads=2))
    assert (sum(p.numel() for p in ar.parameters()) == sum(p.numel() for p in bi.parameters()))
    x = torch.tensor([[0, 1, 2], [2, 2, 0]])
    y = x.clone()
    y[:, 2] = (y[:, 2] + 1) % V
    assert torch.allclose(ar(x)[:, :2], ar(y)[:, :2])
    assert not torch.allclose(bi(x)[:, :2], bi(y)[:, :2])
    every = torch.stack(EVERY_SEQUENCE)
    total = torch.exp(-ar_bits(ar, every, MASK) * L * math.log(2)).sum()
    assert total.item() == pytest.approx(1.0, abs=1e-9)
    assert torch.equal(ar_inputs(x, MASK), torch.tensor([[MASK, 0, 1], [MASK, 2, 2]]))
    s = sample_ar(ar, 7, L, MASK, generator=torch.Generator().manual_seed(0))
    assert s.shape == (7, L) and s.max() < V


def test_training_lowers_both_losses():
    tokens = torch.randint(0, 2, (64, 8), generator=torch.Generator().manual_seed(0))
    tokens[:, 4:] = tokens[:, :4]  # something to learn
    for causal, objective in ((False, MaskedDiffusion(2)), (True, Autoregressive(2))):
        torch.manual_seed(0)
        model = TokenTransformer(TokenConfig(2, 8, width=16, depth=1, heads=2, causal=causal))
        losses = train_tokens(model, tokens, objective,
                              TokenTrainConfig(steps=150, batch_size=32, lr=1e-2, warmup_steps=5),
                              generator=torch.Generator().manual_seed(1))
        assert sum(losses[-20:]) / 20 < 0.8 * sum(losses[:5]) / 5, causal


def test_binarise_round_trip():
    images = torch.tensor([[[[-1.0, 0.3], [0.9, -0.2]]]])
    tokens = binarise(images)
    assert tokens.tolist() == [[0, 1, 1, 0]]
    assert torch.equal(tokens_to_images(tokens, 2), torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]]))


def test_every_generated_caption_parses_and_only_those_words():
    from diffuse_edu.data.captioned import SHAPE_WORDS, make_shapes
    from diffuse_edu.models.text import build_vocab, tokenize

    grammar = template_captions()
    assert len(grammar) == 2 * 4 * 3 * 4 + (4 * 3) ** 2 * 4  # one shape; two shapes, 4 relations
    vocab = build_vocab(SHAPE_WORDS)
    for split in ("train", "test", "held_out"):
        captions = make_shapes(200, split=split, size=8).captions
        rows = tokenize(captions, vocab, 10)[0][:, 1:]  # no <bos>
        assert caption_parses(rows, vocab).all(), split
    good = tokenize(["a big red circle at the top left", "a red circle above a blue square"],
                    vocab, 10)[0][:, 1:]
    assert caption_parses(good, vocab).tolist() == [True, True]
    ids = {w: i for i, w in enumerate(vocab)}
    wrong = [good[0].clone() for _ in range(6)]
    wrong[0][[1, 2]] = wrong[0][[2, 1]]  # "a red big circle ...": the words out of order
    wrong[1][7] = ids["top"]  # "... at the top top"
    wrong[2][8] = ids["<pad>"]  # no <eos>
    wrong[3] = good[1].clone()
    wrong[3][8] = ids["a"]  # a word after <eos>
    wrong[4][3] = len(vocab)  # a [MASK] left over
    wrong[5][4:] = torch.tensor([ids["<eos>"]] + [ids["<pad>"]] * 4)  # "a big red circle": short
    assert caption_parses(torch.stack(wrong), vocab).tolist() == [False] * 6
