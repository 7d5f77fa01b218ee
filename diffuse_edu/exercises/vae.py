"""Checkers for lesson 10: the reparameterisation trick, the KL of a diagonal Gaussian, the VAE's
loss and the latent pipeline (encode and scale; unscale and decode)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffuse_edu.exercises import Checker, Mismatch, Mistake, compare, compare_gradients
from diffuse_edu.models.vae import (
    VAE,
    VAEConfig,
    decode_latents,
    encode_latents,
    kl_diagonal_gaussian,
    reparameterise,
    vae_loss,
)


def _moments(seed: int, shape=(3, 2, 4, 5), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g).to(dtype)
    logvar = (torch.randn(shape, generator=g) * 1.5).to(dtype)
    noise = torch.randn(shape, generator=g).to(dtype)
    return mean, logvar, noise


def _reparam_case(seed: int, dtype=torch.float32) -> Callable:
    def case(fn: Callable) -> None:
        mean, logvar, noise = _moments(seed, dtype=dtype)
        what = f"reparameterise(mean, logvar, noise) of shape {tuple(mean.shape)}, {dtype}"
        mistakes = [
            Mistake("the noise is scaled by the variance exp(logvar); scale it by the standard "
                    "deviation exp(logvar / 2).", mean + logvar.exp() * noise),
            Mistake("logvar is a log-variance, not a standard deviation: the scale is exp(logvar "
                    "/ 2).",
                    mean + logvar * noise),
            Mistake("the noise is scaled by exp(logvar) ** 2; the standard deviation is "
                    "exp(logvar / 2).",
                    mean + (2 * logvar).exp() * noise),
            Mistake("the mean is missing: z = mean + std * noise.", (0.5 * logvar).exp() * noise),
            Mistake("that is the mean alone: the sample needs the scaled noise added.", mean),
            Mistake("the mean is multiplied in; it is added: z = mean + std * noise (a sample "
                    "moves away from the mean by the scaled noise).",
                    mean * (0.5 * logvar).exp() * noise),
            Mistake("the scaled noise is subtracted: z = mean + std * noise, with the noise you "
                    "are given.",
                    mean - (0.5 * logvar).exp() * noise),
        ]
        got = fn(mean.clone(), logvar.clone(), noise.clone())
        if (
            isinstance(got, torch.Tensor)
            and got.shape == mean.shape
            and torch.isnan(got).any()
            and (logvar < 0).any()
        ):
            raise Mismatch(f"{what} returned NaN: logvar is a log, so it is negative for "
                           "variances below 1, and sqrt(logvar) is NaN there. The standard "
                           "deviation is exp(logvar / 2).")
        compare(got, reparameterise(mean, logvar, noise), what=what, mistakes=mistakes)
    return case


def _reparam_gradient(fn: Callable) -> None:
    mean, logvar, noise = _moments(7)
    mean.requires_grad_(True)
    logvar.requires_grad_(True)
    z = fn(mean, logvar, noise)
    if not isinstance(z, torch.Tensor) or not z.requires_grad:
        raise Mismatch("the sample carries no gradient back to mean and logvar: build z from them "
                       "with tensor operations (no .detach(), no torch.normal, no "
                       "torch.no_grad()) - that is the trick.")
    compare_gradients(
        z, reparameterise(mean, logvar, noise), {"mean": mean, "logvar": logvar},
        what="the gradients of the sample (the VAE's encoder trains through them)",
        mistakes=[
            Mistake("the mean is detached (or taken from .data): z = mean + std * noise must pass "
                    "the reconstruction's gradient back to the mean, dz/dmean = 1, or the encoder "
                    "never learns where to put each image's latent.",
                    reparameterise(mean.detach(), logvar, noise)),
            Mistake("the standard deviation is detached: dz/dlogvar = exp(logvar / 2) * noise / 2 "
                    "must reach logvar, or the encoder cannot learn how wide each posterior is.",
                    reparameterise(mean, logvar.detach(), noise)),
        ],
        otherwise="dz/dmean must be 1 and dz/dlogvar exp(logvar / 2) * noise / 2: z depends on "
                  "mean and logvar only through mean + exp(logvar / 2) * noise")


def _reparam_zero_noise(fn: Callable) -> None:
    mean, logvar, _ = _moments(3)
    compare(fn(mean, logvar, torch.zeros_like(mean)), mean, what="reparameterise with noise = 0",
            otherwise="with zero noise the sample must be the mean itself.")


def _reparam_uses_noise(fn: Callable) -> None:
    mean, logvar, noise = _moments(9)
    torch.manual_seed(1)
    a = fn(mean, logvar, noise)
    torch.manual_seed(2)
    b = fn(mean, logvar, noise)
    if (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and not torch.allclose(a, b, equal_nan=True)
    ):
        raise Mismatch("two calls with the same noise gave different samples: use the noise you "
                       "are given, not fresh random numbers (the caller seeds it, so that "
                       "training repeats).")


REPARAMETERISE = Checker(
    "reparameterise",
    reparameterise,
    [
        _reparam_uses_noise,
        _reparam_case(0),
        _reparam_case(1, torch.float64),
        _reparam_zero_noise,
        _reparam_gradient,
    ],
    hints=(
        ("A sample of N(mean, std^2) is the mean plus std times standard noise; the encoder "
         "gives you log(std^2), not std."),
        ("Turn the log-variance into a standard deviation (a square root is a halving in log "
         "space) and keep every operation on the tensors, so that gradients reach mean and "
         "logvar."),
    ),
    see="Kingma & Welling 2014, Sec. 2.4, in lesson 10, section 1: mean + exp(logvar / 2) noise",
)


def _kl_mistakes(mean, logvar) -> list[Mistake]:
    terms = mean.square() + logvar.exp() - 1 - logvar
    return [
        Mistake(
            "the KL is averaged over the latent dimensions; it is their sum (nats per example).",
            0.5 * terms.flatten(1).mean(1),
        ),
        Mistake("the factor 1/2 is missing.", terms.flatten(1).sum(1)),
        Mistake(
            "the -1 is missing: a posterior equal to the prior N(0, I) must have KL = 0.",
            0.5 * (mean.square() + logvar.exp() - logvar).flatten(1).sum(1),
        ),
        Mistake(
            "the sign of logvar is flipped: the term is - logvar.",
            0.5 * (mean.square() + logvar.exp() - 1 + logvar).flatten(1).sum(1),
        ),
        Mistake(
            "that is the KL summed over the whole batch; return one value per example, shape (B,).",
            0.5 * terms.sum().expand(mean.shape[0]),
        ),
        Mistake(
            "logvar was used as the variance itself; the variance is exp(logvar).",
            0.5 * (mean.square() + logvar - 1 - logvar.clamp_min(1e-6).log()).flatten(1).sum(1),
        ),
        Mistake(
            "exp(logvar / 2) is the standard deviation; the KL's term is the variance exp(logvar).",
            0.5 * (mean.square() + (0.5 * logvar).exp() - 1 - logvar).flatten(1).sum(1),
        ),
        Mistake(
            "the mean enters squared: mean^2, not mean.",
            0.5 * (mean + logvar.exp() - 1 - logvar).flatten(1).sum(1),
        ),
        Mistake(
            "the log term is the log-variance logvar, not the log of the standard deviation "
            "(logvar / 2).",
            0.5 * (mean.square() + logvar.exp() - 1 - 0.5 * logvar).flatten(1).sum(1),
        ),
    ]


def _kl_case(seed: int, shape=(3, 2, 4, 5), dtype=torch.float32) -> Callable:
    def case(fn: Callable) -> None:
        mean, logvar, _ = _moments(seed, shape, dtype)
        got = fn(mean.clone(), logvar.clone())
        if isinstance(got, torch.Tensor) and got.ndim == 0:
            raise Mismatch("kl_diagonal_gaussian returned one number for the whole batch; return "
                           f"one per example (shape ({shape[0]},)), summed over the latent "
                           "dimensions.")
        compare(got, kl_diagonal_gaussian(mean, logvar), what="kl_diagonal_gaussian on latents of "
                                                              f"shape {shape}",
                mistakes=_kl_mistakes(mean, logvar))
    return case


def _kl_prior(fn: Callable) -> None:
    zeros = torch.zeros(2, 4, 3, 3)
    compare(fn(zeros, zeros), torch.zeros(2), what="kl_diagonal_gaussian(mean = 0, logvar = 0), "
                                                   "the prior itself",
            otherwise="the KL of N(0, I) from itself must be exactly 0.")


def _kl_gradient(fn: Callable) -> None:
    """The KL is the VAE's regulariser: its gradient must reach both moments."""
    mean, logvar, _ = _moments(4)
    mean.requires_grad_(True)
    logvar.requires_grad_(True)
    got = fn(mean, logvar)
    if not isinstance(got, torch.Tensor) or not got.requires_grad:
        raise Mismatch("the KL carries no gradient to mean and logvar (was it computed under "
                       "torch.no_grad(), or with .item() or .detach()?): it is the VAE's "
                       "regulariser, and the encoder learns from its gradient.")
    terms = mean.square() + logvar.exp() - 1 - logvar
    compare_gradients(
        got, kl_diagonal_gaussian(mean, logvar), {"mean": mean, "logvar": logvar},
        what="the gradients of the KL (the encoder trains through them)",
        mistakes=[Mistake(message, 0.5 * value.flatten(1).sum(1)) for message, value in (
            (("exp(logvar) is detached: the KL's gradient with respect to logvar, (exp(logvar) - "
              "1) / 2, needs it; only then does the KL pull each variance towards 1."),
             mean.square() + logvar.exp().detach() - 1 - logvar),
            (("the mean's term is detached: the KL's gradient with respect to the mean, the mean "
              "itself, is what pulls the latents towards 0."),
             mean.detach().square() + logvar.exp() - 1 - logvar),
            (("the log-variance's term is detached: (exp(logvar) - 1) / 2 is the gradient with "
              "respect to logvar, the - logvar term included."), terms + logvar - logvar.detach()),
        )])


KL_DIAGONAL_GAUSSIAN = Checker(
    "kl_diagonal_gaussian", kl_diagonal_gaussian,
    [_kl_case(0), _kl_case(1, (4, 8)), _kl_case(2, (2, 4, 2, 2), torch.float64), _kl_prior,
     _kl_gradient],
    hints=(("Each latent dimension is an independent Gaussian, so the KL is a sum of "
            "one-dimensional KLs, each a function of that dimension's mean and log-variance only."),
           ("Take the one-dimensional KL of N(m, v) from N(0, 1) in the lesson's Math section, "
            "with the variance v = exp(logvar) and log v = logvar; then sum it over every axis but "
            "the batch.")),
    see="Kingma & Welling 2014, App. B, in lesson 10, section 1: 1/2 sum(mean^2 + exp(logvar) - 1 "
        "- logvar)",
)


# ----------------------------------------------------------------------------- the VAE's loss
def _vae(seed: int) -> VAE:
    torch.manual_seed(seed)
    vae = VAE(VAEConfig(in_channels=1, channels=(8, 8), latent_channels=2, groups=4)).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return vae


def _vae_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    return x, torch.randn(3, 2, 4, 4, generator=g)


def _vae_variant(vae, x, noise, w, *, recon="sum", sample=True, weight="kl",
                 sign=1.0, kl_mean=False):
    mean, logvar = vae.encode(x)
    z = reparameterise(mean, logvar, noise) if sample else mean
    err = vae.decode(z) - x
    r = {"sum": err.square().flatten(1).sum(1), "mean": err.square().flatten(1).mean(1),
         "half": 0.5 * err.square().flatten(1).sum(1), "abs": err.abs().flatten(1).sum(1)}[recon]
    kl = kl_diagonal_gaussian(mean, logvar)
    if kl_mean:  # averaged over the latent's numbers instead of summed
        kl = kl / mean[0].numel()
    if weight == "recon":
        return w * r + sign * kl
    return r + sign * (w if weight == "kl" else 1.0) * kl


def _vae_case(seed: int, w: float) -> Callable:
    def case(fn: Callable) -> None:
        vae, (x, noise) = _vae(seed), _vae_batch(seed)
        what = f"vae_loss on 3 images of 8x8, kl_weight = {w}"
        with torch.no_grad():
            got = fn(vae, x.clone(), noise.clone(), w)
            if isinstance(got, torch.Tensor) and got.ndim == 0:
                raise Mismatch(f"{what} returned one number; return the loss of each image, shape "
                               "(3,) (the loop records it per example and averages it itself).")
            args = (vae, x, noise, w)
            mistakes = [
                Mistake("the squared error is averaged over the pixels; sum it: the summed "
                        "squared error is the negative log-likelihood of a Gaussian decoder of "
                        "variance 1/2, which makes kl_weight = 1 the negative ELBO.",
                        _vae_variant(*args, recon="mean")),
                Mistake("you decoded the mean; decode a sample z = reparameterise(mean, logvar, "
                        "noise), with the noise you are given (the ELBO is an expectation over "
                        "q(z | x)).",
                        _vae_variant(*args, sample=False)),
                Mistake("kl_weight multiplies the reconstruction; it weighs the KL.",
                        _vae_variant(*args, weight="recon")),
                Mistake("kl_weight was ignored: the KL is multiplied by it.",
                        _vae_variant(*args, weight="none")),
                Mistake("half the squared error is the decoder of variance 1; this course's loss "
                        "is the summed squared error (variance 1/2), without the 1/2.",
                        _vae_variant(*args, recon="half")),
                Mistake("absolute errors are a Laplace decoder's; the loss uses squared errors.",
                        _vae_variant(*args, recon="abs")),
                Mistake("the KL is subtracted; the negative ELBO adds it.",
                        _vae_variant(*args, sign=-1.0)),
                Mistake("the KL was averaged over the latent's numbers; it is a sum over them "
                        "(the KL of a diagonal Gaussian adds up its dimensions, as the squared "
                        "error adds up the pixels).",
                        _vae_variant(*args, kl_mean=True)),
            ]
        compare(got, vae_loss(vae, x, noise, w), what=what, mistakes=mistakes)
    return case


def _vae_noise_used(fn: Callable) -> None:
    vae, (x, noise) = _vae(5), _vae_batch(5)
    with torch.no_grad():
        torch.manual_seed(1)
        a = fn(vae, x, noise, 0.5)
        torch.manual_seed(2)
        b = fn(vae, x, noise, 0.5)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and not torch.allclose(a, b):
        raise Mismatch("two calls with the same noise gave different losses: draw z from the "
                       "noise you are given (reparameterise(mean, logvar, noise)), not from fresh "
                       "random numbers.")


def _vae_gradient(fn: Callable) -> None:
    vae, (x, noise) = _vae(6), _vae_batch(6)
    loss = fn(vae, x, noise, 0.1)
    if not isinstance(loss, torch.Tensor) or loss.grad_fn is None:
        raise Mismatch("the loss carries no gradient to the VAE's weights (was it computed under "
                       "torch.no_grad(), or with .item()?): the loop could not train the VAE.")
    loss.sum().backward()
    if vae.encoder[0].weight.grad is None or vae.encoder[0].weight.grad.abs().sum() == 0:
        raise Mismatch("the encoder gets no gradient: build z from the encoder's mean and logvar.")
    # With kl_weight = 0 only the reconstruction trains the encoder: through z. A z detached before
    # decoding
    # passes every value check (and the KL alone still moves the encoder), yet trains a VAE whose
    # latents
    # the decoder cannot use.
    vae.zero_grad(set_to_none=True)
    fn(vae, x, noise, 0.0).sum().backward()
    got = vae.encoder[0].weight.grad
    vae.zero_grad(set_to_none=True)
    vae_loss(vae, x, noise, 0.0).sum().backward()
    want = vae.encoder[0].weight.grad
    if got is None or got.abs().sum() == 0:
        raise Mismatch("with kl_weight = 0 the encoder gets no gradient: the reconstruction's "
                       "gradient must reach it through z. Was z (or mean, or logvar) detached, or "
                       "made under torch.no_grad()? Decode reparameterise(mean, logvar, noise) as "
                       "it is.")
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-6):
        raise Mismatch("the loss has the right values but the encoder's gradient differs from the "
                       f"reference (largest gap {(got - want).abs().max().item():.2e}): part of "
                       "the path from the encoder through z to the reconstruction is cut or "
                       "altered (a .detach(), .data, or a no_grad block?).")
    # With kl_weight > 0 both terms train the encoder, and the reconstruction trains the decoder: a
    # KL
    # computed under torch.no_grad() passes every value check, yet leaves the latents unregularised.
    vae.zero_grad(set_to_none=True)
    w = 0.1
    mean, logvar = vae.encode(x)
    recon = (vae.decode(reparameterise(mean, logvar, noise)) - x).square().flatten(1).sum(1)
    kl = kl_diagonal_gaussian(mean, logvar)
    compare_gradients(
        fn(vae, x, noise, w), vae_loss(vae, x, noise, w),
        {"the encoder's weights": list(vae.encoder.parameters()),
         "the decoder's weights": list(vae.decoder.parameters())},
        what=f"the gradients of vae_loss with kl_weight = {w}",
        mistakes=[
            Mistake("the KL term carries no gradient (computed under torch.no_grad(), or "
                    "detached): the values are right, but the KL only regularises the latents "
                    "through its gradient, which must reach the encoder.", recon + w * kl.detach()),
            Mistake("the reconstruction term carries no gradient (computed under torch.no_grad(), "
                    "or detached): the decoder and the encoder learn from it.",
                    recon.detach() + w * kl),
        ])


VAE_LOSS = Checker(
    "vae_loss", vae_loss,
    [_vae_noise_used, _vae_case(0, 1.0), _vae_case(1, 0.01), _vae_gradient],
    hints=(
        ("Three steps, all in one pass: the posterior's moments from the encoder, a latent drawn "
         "from them with the noise you are given, and a reconstruction of the image from that "
         "latent. The loss compares and regularises."),
        ("Per image: how far the reconstruction is from the image (squared, every pixel counted), "
         "plus the weighted KL of the moments. Your reparameterise and kl_diagonal_gaussian are in "
         "the notebook."),
    ),
    see="lesson 10, section 2: ||x - decode(z)||^2 summed over pixels + lambda KL, z = "
        "reparameterise(mean, logvar, noise)",
)


# ----------------------------------------------------------------------------- the latent pipeline
def _pipeline_inputs(seed: int):
    vae = _vae(seed)
    x, _ = _vae_batch(seed)
    z = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(seed + 7)) * 2
    return vae, x, z


def _encode_case(seed: int, scale: float) -> Callable:
    def case(fn: Callable) -> None:
        vae, x, _ = _pipeline_inputs(seed)
        what = f"encode_latents(vae, 3 images, scale={scale})"
        with torch.no_grad():
            mean, logvar = vae.encode(x)
        torch.manual_seed(0)
        got = fn(vae, x.clone(), scale)
        if isinstance(got, tuple):
            raise Mismatch(f"{what} returned a tuple; return one tensor, the scaled posterior "
                           "means.")
        if isinstance(got, torch.Tensor) and got.requires_grad:
            raise Mismatch(f"{what} returned latents that carry gradients to the VAE; the VAE is "
                           "frozen by now: encode under torch.no_grad() (or detach).")
        mistakes = [
            Mistake("the latents are not scaled: multiply the means by scale (unit standard "
                    "deviation).", mean),
            Mistake("you divided by scale; the latents are multiplied by it on the way in "
                    "(divided on the way out).",
                    mean / scale),
            Mistake("you returned the log-variances; the latents are the means.", scale * logvar),
            Mistake("the scale multiplies the latent, after the encoder: you scaled the images.",
                    vae.encode(scale * x)[0].detach()),
        ]
        compare(got, encode_latents(vae, x, scale), what=what, mistakes=mistakes)
    return case


def _encode_deterministic(fn: Callable) -> None:
    vae, x, _ = _pipeline_inputs(3)
    torch.manual_seed(1)
    a = fn(vae, x, 0.7)
    torch.manual_seed(2)
    b = fn(vae, x, 0.7)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and not torch.allclose(a, b):
        raise Mismatch("encoding the same images twice gave different latents: use the posterior "
                       "means, not samples of q(z | x) (the diffusion model learns the "
                       "distribution of the means).")


def _decode_case(seed: int, scale: float) -> Callable:
    def case(fn: Callable) -> None:
        vae, _, z = _pipeline_inputs(seed)
        what = f"decode_latents(vae, latents of shape {tuple(z.shape)}, scale={scale})"
        got = fn(vae, z.clone(), scale)
        if isinstance(got, tuple):
            raise Mismatch(f"{what} returned a tuple; return the decoded images alone, one tensor.")
        if isinstance(got, torch.Tensor) and got.requires_grad:
            raise Mismatch(f"{what} returned images that carry gradients: decode under "
                           "torch.no_grad().")
        with torch.no_grad():
            mistakes = [
                Mistake("the latents were not unscaled: divide them by scale before decoding.",
                        vae.decode(z)),
                Mistake("you multiplied by scale; undo the scaling: divide by it.",
                        vae.decode(z * scale)),
                Mistake("the latents were clipped to [-1, 1] like pixels; latents have no such "
                        "range.",
                        vae.decode(z.clamp(-1, 1) / scale)),
                Mistake("the latents were clipped to [-1, 1] like pixels; latents have no such "
                        "range.",
                        vae.decode((z / scale).clamp(-1, 1))),
                Mistake("you decoded the latents and then divided the images by scale; unscale "
                        "the latents first.",
                        vae.decode(z) / scale),
                Mistake("the decoded images were clipped to [-1, 1]: return the decoder's output "
                        "as it is (the lesson clips where it shows or scores images, and clipping "
                        "here would hide how far the decoder strays).",
                        vae.decode(z / scale).clamp(-1, 1)),
            ]
            compare(got, decode_latents(vae, z, scale), what=what, mistakes=mistakes)
    return case


def _unchanged(fn: Callable, *, encode: bool) -> None:
    vae, x, z = _pipeline_inputs(4)
    arg = x if encode else z
    before = arg.clone()
    fn(vae, arg, 0.5)
    if not torch.equal(arg, before):
        raise Mismatch(f"{'encode' if encode else 'decode'}_latents changed its input in place "
                       "(mul_ or div_?): the sampler's output and the data set are used again; "
                       "build new tensors.")


ENCODE_LATENTS = Checker(
    "encode_latents",
    encode_latents,
    [
        lambda fn: _unchanged(fn, encode=True),
        _encode_deterministic,
        _encode_case(0, 0.7),
        _encode_case(1, 2.5),
    ],
    hints=(
        "The diffusion model trains on one fixed latent per image, with unit standard deviation.",
        ("vae.encode gives two tensors; one of them is the latent. The scale factor was measured "
         "so that multiplying by it gives standard deviation 1. Nothing here needs gradients."),
    ),
    see="lesson 10, section 4: latents = scale * mean of q(z | x), no gradients",
)

DECODE_LATENTS = Checker(
    "decode_latents", decode_latents,
    [_decode_case(0, 0.7), _decode_case(1, 2.5), lambda fn: _unchanged(fn, encode=False)],
    hints=(
        ("What the sampler returns lives in the scaled latent space; the decoder was trained on "
         "unscaled latents."),
        ("Undo what encode_latents did to the latents, then let the decoder make the image. "
         "Latents are not pixels: nothing clips them."),
    ),
    see="lesson 10, section 4: images = decode(latents / scale)",
)
