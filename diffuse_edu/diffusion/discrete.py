"""Masked (absorbing-state) diffusion on tokens (lesson 17), and the autoregressive model it is
measured against.

Tokens take values 0 .. V - 1; one more id, ``mask_id`` (= V by the lesson's convention), stands for
[MASK]. The forward process masks each token independently: at time t in [0, 1] a token is kept with
probability alpha(t) and replaced by [MASK] otherwise, alpha falling from alpha(0) = 1 (the data) to
alpha(1) = 0 (every token masked) (Austin et al. 2021; Sahoo et al. 2024, "MDLM"; Shi et al. 2024,
"MD4"). A masked token never comes back in the forward process, so the reverse process only ever
reveals tokens: a denoiser predicts, at every masked position, a distribution over the V tokens.

The continuous-time ELBO (Sahoo et al. 2024, Eq. 10; Shi et al. 2024, Eq. 5) is a weighted
cross-entropy over the masked positions only::

    -log p(x0) <= integral over t of  -alpha'(t) / (1 - alpha(t)) * E[ sum over masked i of
                                                                 -log p_theta(x0_i | x_t) ] dt

(the weight is 1 / t for the linear schedule alpha(t) = 1 - t). For a denoiser that does not read t
the integral equals the expected autoregressive loss over a uniformly random order of the positions
(Ou et al. 2024), whatever the schedule: ``tests/test_discrete.py`` checks the loss against that,
enumerating every masking pattern of a tiny vocabulary and length.

Conventions: tokens (B, L) int64; t (B,) in (0, 1]; a model maps tokens (B, L) (with [MASK] ids) to
logits (B, L, V). Randomness comes in as explicit tensors (the uniform draws ``u``, Gumbel noise) or
an explicit generator, never from the global generator.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Model = Callable[[Tensor], Tensor]  # tokens (B, L) -> logits (B, L, V)


# --- the schedule ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MaskSchedule:
    """alpha(t): the probability that a token is still unmasked at time t, from 1 at t = 0 to 0 at
    t = 1. ``"linear"``: 1 - t; ``"cosine"``: cos(pi t / 2) (Shi et al. 2024, Table 1)."""

    name: str = "linear"

    def __post_init__(self) -> None:
        if self.name not in ("linear", "cosine"):
            raise ValueError(f"MaskSchedule: unknown schedule {self.name!r}; use 'linear' or "
                             "'cosine'.")

    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t), elementwise."""
        return 1 - t if self.name == "linear" else torch.cos(0.5 * math.pi * t)

    def alpha_prime(self, t: Tensor) -> Tensor:
        """d alpha / dt, elementwise (negative: alpha falls)."""
        if self.name == "linear":
            return -torch.ones_like(t)
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def weight(self, t: Tensor) -> Tensor:
        """The ELBO's weight -alpha'(t) / (1 - alpha(t)), elementwise (1 / t for the linear one)."""
        return -self.alpha_prime(t) / (1 - self.alpha(t))


LINEAR = MaskSchedule("linear")
COSINE = MaskSchedule("cosine")


# --- 1. the forward process --------------------------------------------------------------------

def mask_tokens(x0: Tensor, t: Tensor, u: Tensor, mask_id: int,
                schedule: MaskSchedule = LINEAR) -> Tensor:
    """x_t: each token of ``x0`` replaced by ``mask_id`` where its uniform draw ``u`` falls below
    the masking probability 1 - alpha(t) of its example. Shapes: x0 (B, L) int64, t (B,), u (B, L)
    in [0, 1) -> (B, L) int64."""
    masked = u < (1 - schedule.alpha(t))[:, None]
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


# --- 2. the objective ------------------------------------------------------------------------

def masked_diffusion_loss(logits: Tensor, x0: Tensor, xt: Tensor, t: Tensor, mask_id: int,
                          schedule: MaskSchedule = LINEAR) -> Tensor:
    """The continuous-time ELBO's integrand per example (nats per sequence): the weight
    -alpha'(t) / (1 - alpha(t)) times the sum, over the positions masked in ``xt``, of the
    cross-entropy -log softmax(logits)[x0]. Shapes: logits (B, L, V), x0 and xt (B, L), t (B,)
    -> (B,)."""
    nll = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")  # (B, L)
    masked = (xt == mask_id).to(nll.dtype)
    weight = -schedule.alpha_prime(t) / (1 - schedule.alpha(t))  # any schedule with alpha, alpha'
    return weight.to(nll.dtype) * (nll * masked).sum(1)


LossFn = Callable[..., Tensor]
MaskFn = Callable[..., Tensor]


@dataclass
class MaskedDiffusion:
    """The training objective: t ~ U(t_min, 1) per example, x_t from ``mask`` (default
    :func:`mask_tokens`), the model's logits at x_t, and ``loss`` (default
    :func:`masked_diffusion_loss`); ``__call__`` returns the batch mean in nats per token.

    The batch's times are stratified (Kingma et al. 2021's low-discrepancy sampler, as MDLM
    trains): one uniform draw shifts the evenly spaced (0, 1/B, ..., (B-1)/B) modulo 1, so each
    example's t is still uniform while the batch covers (0, 1) evenly, which lowers the variance
    of the 1/t-weighted loss."""

    mask_id: int
    schedule: MaskSchedule = LINEAR
    loss: LossFn = masked_diffusion_loss
    mask: MaskFn = mask_tokens
    t_min: float = 1e-3  # the weight 1 / t is unbounded at 0; so few tokens are masked there

    def __call__(self, model: Model, x0: Tensor, generator: torch.Generator) -> Tensor:
        b, length = x0.shape
        shift = torch.rand(1, generator=generator)
        t = (shift + torch.arange(b) / b) % 1
        t = (self.t_min + (1 - self.t_min) * t).to(x0.device)
        u = torch.rand(b, length, generator=generator).to(x0.device)
        xt = self.mask(x0, t, u, self.mask_id, self.schedule)
        return (self.loss(model(xt), x0, xt, t, self.mask_id, self.schedule) / length).mean()


@torch.no_grad()
def elbo_bits(model: Model, x0: Tensor, mask_id: int, *, draws: int,
              generator: torch.Generator, schedule: MaskSchedule = LINEAR,
              batch_size: int = 512) -> Tensor:
    """The negative ELBO in bits per token, one value per sequence, estimated with ``draws``
    stratified times t_k = (k + U) / draws and one masking each: an upper bound on -log2 p(x0) / L
    on average. Shapes: x0 (N, L) -> (N,)."""
    n, length = x0.shape
    total = torch.zeros(n, dtype=torch.float64)
    for k in range(draws):
        t = (k + torch.rand(n, generator=generator)) / draws
        t = t.clamp_min(1e-6).to(x0.device)
        u = torch.rand(n, length, generator=generator).to(x0.device)
        xt = mask_tokens(x0, t, u, mask_id, schedule)
        parts = [masked_diffusion_loss(model(a), b, c, d, mask_id, schedule)
                 for a, b, c, d in zip(xt.split(batch_size), x0.split(batch_size),
                                       xt.split(batch_size), t.split(batch_size))]
        total += torch.cat(parts).double().cpu()
    return total / draws / (length * math.log(2))


# --- 3. sampling -------------------------------------------------------------------------------

ORDERS = ("random", "confidence")


def unmask_step(x: Tensor, logits: Tensor, k: int, mask_id: int, order: str, gumbel: Tensor,
                u: Tensor) -> Tensor:
    """Reveal ``k`` of the masked positions of each row of ``x``.

    A token is drawn at every position from softmax(logits) by the Gumbel-max trick,
    argmax(logits + gumbel); the ``k`` masked positions with the highest priority take their drawn
    token, every other position keeps what it holds. The priority is ``u`` for ``order="random"``
    (the ELBO's own order) and, for ``order="confidence"`` (MaskGIT, Chang et al. 2022), the
    model's log-probability of the token drawn there. Shapes: x (B, L) int64, logits (B, L, V),
    gumbel (B, L, V), u (B, L) -> (B, L) int64.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}.")
    masked = x == mask_id
    if k > int(masked.sum(1).min()):
        raise ValueError(f"cannot reveal {k} tokens: a row has only "
                         f"{int(masked.sum(1).min())} masked.")
    drawn = (logits + gumbel).argmax(-1)  # (B, L)
    if order == "random":
        priority = u
    else:
        priority = logits.log_softmax(-1).gather(-1, drawn[..., None])[..., 0]
    priority = priority.masked_fill(~masked, float("-inf"))
    chosen = torch.zeros_like(masked).scatter(1, priority.topk(k, dim=1).indices, True)
    return torch.where(chosen & masked, drawn, x)


def reveal_counts(length: int, steps: int) -> list[int]:
    """How many tokens each of ``steps`` steps reveals, as equal as integers allow (they sum to
    ``length``): the linear schedule's expected share, L / steps a step."""
    if not 1 <= steps <= length:
        raise ValueError(f"steps must be between 1 and the length {length}, got {steps}.")
    edges = [round(length * j / steps) for j in range(steps + 1)]
    return [b - a for a, b in itertools.pairwise(edges)]


@torch.no_grad()
def sample_masked(model: Model, n: int, length: int, mask_id: int, *, steps: int,
                  order: str = "random", generator: torch.Generator,
                  step: Callable[..., Tensor] = unmask_step,
                  device: torch.device | str = "cpu") -> Tensor:
    """``n`` sequences from all [MASK] to none in ``steps`` parallel steps (``step``:
    :func:`unmask_step` or a learner's), one forward pass each. Shapes: -> (n, length) int64."""
    x = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    for k in reveal_counts(length, steps):
        logits = model(x)
        gumbel = -torch.log(-torch.log(
            torch.rand(logits.shape, generator=generator).clamp(1e-12, 1 - 1e-7))).to(logits)
        u = torch.rand(n, length, generator=generator).to(logits)
        x = step(x, logits, k, mask_id, order, gumbel, u)
    return x


# --- 4. the autoregressive model -----------------------------------------------------------

def ar_inputs(x0: Tensor, bos_id: int) -> Tensor:
    """The causal model's input: a start token, then x0 without its last token. (B, L) -> (B, L)."""
    return torch.cat([torch.full_like(x0[:, :1], bos_id), x0[:, :-1]], dim=1)


def ar_loss(model: Model, x0: Tensor, bos_id: int) -> Tensor:
    """-log p(x0) per sequence (nats), exactly: the causal model's cross-entropy at every position
    given the ones before. Shapes: x0 (B, L) -> (B,)."""
    logits = model(ar_inputs(x0, bos_id))
    return F.cross_entropy(logits.transpose(1, 2), x0, reduction="none").sum(1)


@dataclass
class Autoregressive:
    """The training objective of the causal model: its exact negative log-likelihood, the batch
    mean in nats per token (the same units as :class:`MaskedDiffusion`)."""

    bos_id: int

    def __call__(self, model: Model, x0: Tensor, generator: torch.Generator) -> Tensor:
        return (ar_loss(model, x0, self.bos_id) / x0.shape[1]).mean()


@torch.no_grad()
def ar_bits(model: Model, x0: Tensor, bos_id: int, batch_size: int = 512) -> Tensor:
    """-log2 p(x0) / L per sequence, exact. Shapes: (N, L) -> (N,)."""
    parts = [ar_loss(model, b, bos_id).double().cpu() for b in x0.split(batch_size)]
    return torch.cat(parts) / (x0.shape[1] * math.log(2))


@torch.no_grad()
def sample_ar(model: Model, n: int, length: int, bos_id: int, *, generator: torch.Generator,
              device: torch.device | str = "cpu") -> Tensor:
    """``n`` sequences, one token a step (``length`` forward passes), each drawn from the causal
    model's softmax. Shapes: -> (n, length) int64."""
    x = torch.full((n, length), bos_id, dtype=torch.long, device=device)
    for i in range(length):
        logits = model(ar_inputs(x, bos_id))[:, i]  # positions after i do not reach position i
        p = logits.double().softmax(-1).cpu()
        x[:, i] = torch.multinomial(p, 1, generator=generator)[:, 0].to(device)
    return x


# --- the transformer ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenConfig:
    """A small pre-norm transformer over token sequences; ``causal`` makes it autoregressive."""

    vocab: int  # V data tokens; the embedding has one more row, [MASK] (or the AR start token)
    length: int
    width: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    causal: bool = False


class _Block(nn.Module):
    def __init__(self, c: TokenConfig):
        super().__init__()
        self.heads, self.causal = c.heads, c.causal
        self.norm1, self.norm2 = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.qkv, self.out = nn.Linear(c.width, 3 * c.width), nn.Linear(c.width, c.width)
        hidden = int(c.width * c.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(c.width, hidden), nn.GELU(), nn.Linear(hidden, c.width))

    def forward(self, x: Tensor) -> Tensor:
        b, length, width = x.shape
        q, k, v = (z.reshape(b, length, self.heads, -1).transpose(1, 2)
                   for z in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.out(a.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x))


class TokenTransformer(nn.Module):
    """Token and position embeddings, ``depth`` pre-norm blocks (self-attention, bidirectional or
    causal, and an MLP), a final LayerNorm and a linear map to V logits. The bidirectional and
    the causal model have exactly the same parameters. Shapes: (B, L) int64 -> (B, L, V)."""

    def __init__(self, config: TokenConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab + 1, config.width)
        self.position = nn.Parameter(torch.randn(config.length, config.width))
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


# --- training -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenTrainConfig:
    steps: int = 1_000
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01


def train_tokens(model: nn.Module, tokens: Tensor, objective: Callable[..., Tensor],
                 config: TokenTrainConfig, *, generator: torch.Generator) -> list[float]:
    """AdamW on ``objective(model, batch, generator)`` for ``config.steps`` steps (no clock: every
    training reaches its plan), batches drawn with ``generator``, a linear warm-up then a cosine
    decay. Returns the loss of every step (nats per token)."""
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def rate(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * done))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    losses = []
    model.train()
    for _ in range(config.steps):
        idx = torch.randint(0, tokens.shape[0], (config.batch_size,), generator=generator)
        loss = objective(model, tokens[idx.to(tokens.device)], generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


# --- binarised digits -------------------------------------------------------------------------

def binarise(images: Tensor) -> Tensor:
    """Images in [-1, 1] (N, 1, H, W) to binary tokens (N, H * W): 1 where the pixel is above the
    middle grey."""
    return (images.flatten(1) > 0).long()


def tokens_to_images(tokens: Tensor, size: int = 8) -> Tensor:
    """Binary tokens (N, size * size) back to images in {-1, 1}, (N, 1, size, size)."""
    return (tokens.float() * 2 - 1).reshape(-1, 1, size, size)
