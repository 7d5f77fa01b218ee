"""Probes: measurements of images and models beside FID (lessons 03, 04 and 06).

* detail: the share of an image's energy at high spatial frequencies (a sharp denoiser against a
  blurry one, lesson 03);
* the loss of a trained model in ranges of t, under the objective it was trained with (lesson 04);
* improved precision and recall, and nearest neighbours in the training set (lesson 06);
* the seams of an inpainted region (lesson 11);
* what one output pixel sees (receptive field), how straight sampling paths are, and how many
  subjects a canvas shows (lesson 12).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def radial_frequency(h: int, w: int, *, device: torch.device | None = None) -> Tensor:
    """|f| of each 2-D FFT bin, as a share of the Nyquist frequency (0 .. sqrt(2)). Shapes:
    (h, w)."""
    fy = torch.fft.fftfreq(h, device=device)[:, None]
    fx = torch.fft.fftfreq(w, device=device)[None, :]
    return torch.sqrt(fx**2 + fy**2) / 0.5


def high_frequency_energy(images: Tensor, *, cutoff: float = 0.5) -> Tensor:
    """Mean spectral energy per image above ``cutoff`` x Nyquist, after removing each image's mean.

    Shapes: images (N, C, H, W) -> (N,).
    """
    x = images.float() - images.float().mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2 / (x.shape[-1] * x.shape[-2])  # (N, C, H, W)
    mask = radial_frequency(*x.shape[-2:], device=x.device) > cutoff
    return (power * mask).sum(dim=(-3, -2, -1)) / x.shape[-3]


def _kth_neighbour_radius(features: Tensor, k: int, batch: int = 2048) -> Tensor:
    """Distance from each vector to its k-th nearest other vector in the same set. Shapes: (N,)."""
    radii = [torch.cdist(chunk, features).kthvalue(k + 1,
                                                   dim=1).values for chunk in features.split(batch)]
    return torch.cat(radii)


def _inside_any_ball(queries: Tensor, centres: Tensor, radii: Tensor, batch: int = 2048) -> Tensor:
    """For each query, whether it lies within radii[j] of some centre j. Shapes: (M,) bool."""
    return torch.cat([(torch.cdist(q,
                                   centres) <= radii[None]).any(1) for q in queries.split(batch)])


def in_manifold(reference: Tensor, queries: Tensor, *, k: int = 3) -> Tensor:
    """For each query vector, whether it lies inside the manifold of ``reference`` (Kynkaanniemi
    et al. 2019, Eq. 1): the union of balls around each reference vector reaching its k-th
    neighbour. With real features as the reference it is each sample's share of precision: a
    per-image measure of realism, which pairs image by image (lesson 11). Shapes: (N, D), (M, D) ->
    (M,) bool."""
    reference = reference.double()
    return _inside_any_ball(queries.double(), reference, _kth_neighbour_radius(reference, k))


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-3) on feature vectors.

    Precision: share of fake samples inside the real manifold (the union of balls around each real
    vector reaching its k-th neighbour); recall: share of real samples inside the fake manifold.
    """
    precision = in_manifold(real, fake, k=k).double().mean().item()
    recall = in_manifold(fake, real, k=k).double().mean().item()
    return precision, recall


def nearest_neighbour(queries: Tensor, reference: Tensor,
                      batch: int = 1024) -> tuple[Tensor, Tensor]:
    """L2 distance from each query to its nearest reference, and that reference's index.

    Shapes: queries (M, ...), reference (N, ...) -> (M,), (M,).
    """
    ref = reference.flatten(1).double()
    dists, idxs = [], []
    for chunk in queries.flatten(1).double().split(batch):
        d, i = torch.cdist(chunk, ref).min(dim=1)
        dists.append(d)
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def bucket_edges(t_max: float, buckets: int) -> Tensor:
    """Edges of ``buckets`` equal ranges of noise level from 0 to ``t_max``: integer steps for a
    schedule of T steps, fractions for a flow's time in [0, 1]. Bucket k covers (edges[k], edges[k +
    1]]. The training loop records its loss in these ranges and :func:`loss_by_t` measures in them.
    Shapes: (buckets + 1,)."""
    edges = torch.linspace(0, t_max, buckets + 1)
    return edges.round().long() if float(t_max).is_integer() and t_max > 1 else edges


@torch.no_grad()
def loss_by_t(model: Callable, x0: Tensor, objective: Callable, *, buckets: int = 10,
              draws: int = 1, generator: torch.Generator | None = None,
              batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """A trained model's loss under ``objective`` (the one it was trained with: its target and
    schedule) in ``buckets`` equal ranges of the noise level, each image at a random level per
    bucket.

    Returns (edges, losses): bucket k covers (edges[k], edges[k + 1]] (:func:`bucket_edges`).
    ``generator`` is a CPU generator (the draws are the same on every device).
    Shapes: x0 (N, ...) -> edges (buckets + 1,), losses (buckets,).
    """
    edges = bucket_edges(objective.t_max, buckets)
    losses = torch.zeros(buckets)
    for k in range(buckets):
        total = x0.new_zeros((), dtype=torch.float64)
        for _ in range(draws):
            for batch in x0.split(batch_size):
                n = batch.shape[0]
                if edges.dtype == torch.long:
                    t = torch.randint(int(edges[k]) + 1, int(edges[k + 1]) + 1, (n,),
                                      generator=generator)
                else:
                    t = edges[k] + (edges[k + 1] - edges[k]) * (1 - torch.rand(n,
                                                                               generator=generator))
                eps = torch.randn(batch.shape, generator=generator).to(batch.device)
                total += objective(model, batch, t=t.to(batch.device), eps=eps)[0].sum()
        losses[k] = total.item() / (draws * x0.shape[0])
    return edges, losses


def seam_jump(images: Tensor, mask: Tensor) -> Tensor:
    """How sharply images change across the border of a mask (lesson 11's inpainting seams): the
    mean absolute difference between neighbouring pixels, one known (mask 1) and one generated
    (mask 0), horizontally and vertically. Compare with the same number on real images.

    Shapes: images (B, C, H, W), mask broadcastable to (B, 1, H, W) with values 0 or 1 -> (B,).
    """
    m = mask.to(images.dtype).expand(images.shape[0], 1, *images.shape[-2:])
    jumps, counts = images.new_zeros(images.shape[0]), images.new_zeros(images.shape[0])
    for dim in (-1, -2):
        diff = (images.diff(dim=dim)).abs().mean(1, keepdim=True)  # (B, 1, ...) over channels
        border = (m.diff(dim=dim) != 0).to(images.dtype)
        jumps += (diff * border).flatten(1).sum(1)
        counts += border.flatten(1).sum(1)
    if (counts == 0).any():
        raise ValueError("The mask has no border inside the image: nothing to measure.")
    return jumps / counts


def receptive_field(model: Callable, x: Tensor, t: Tensor, pixel: tuple[int, int],
                    cond: object = None) -> Tensor:
    """|d output[pixel] / d input|, summed over channels: how strongly each input pixel moves one
    output pixel (lesson 12). Shapes: x (1, C, H, W), t (1,) -> (H, W)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(x, t, cond)
        out[0, :, pixel[0], pixel[1]].sum().backward()
    return x.grad[0].abs().sum(0)


def straightness(path: list[Tensor], times: list[float]) -> Tensor:
    """How far a sampling path bends (Liu et al. 2023, Def. of straightness, discretised): the mean
    over its steps of ||v_k - v_chord||^2 / ||v_chord||^2, where v_k = (x_{k+1} - x_k) / (s_{k+1} -
    s_k) is each step's velocity and v_chord that of the straight line between the path's two ends.
    0 for a straight path. ``path`` is x at ``times`` (in one time variable, e.g. a flow's tau).
    Shapes: each x (B, ...) -> (B,)."""
    if len(path) != len(times) or len(path) < 3:
        raise ValueError("straightness needs at least three states and one time per state.")
    chord = ((path[-1] - path[0]) / (times[-1] - times[0])).flatten(1)  # (B, D)
    deviation = torch.stack([((b - a) / (tb - ta)).flatten(1) - chord
                             for a, b, ta,
                             tb in zip(path[:-1], path[1:], times[:-1], times[1:])])  # (K, B, D)
    return deviation.square().sum(-1).mean(0) / chord.square().sum(-1).clamp_min(1e-12)


def subjects_across(images: Tensor, *, ink: float = 0.0, min_width: int = 2) -> Tensor:
    """How many subjects each image shows side by side (lesson 12's aspect-ratio test): runs of at
    least ``min_width`` columns that hold ink (a pixel above ``ink``), separated by columns with
    none. Check it on real one- and two-subject canvases before trusting it on samples. Shapes:
    images (N, C, H, W) in [-1, 1] -> (N,) int64."""
    inked = (images > ink).flatten(1, 2).any(1)  # (N, W): columns that hold ink
    counts = []
    for row in inked.tolist():
        runs, width = 0, 0
        for filled in row + [False]:
            if filled:
                width += 1
            else:
                runs += width >= min_width
                width = 0
        counts.append(runs)
    return torch.tensor(counts)


def near_data(reference: Tensor, held_out: Tensor, *,
              quantile: float = 0.99) -> Callable[[Tensor], Tensor]:
    """A gate that asks of an image whether it looks like the data at all: 1.0 where its nearest
    ``reference`` image (pixels, L2) is as close as that of ``quantile`` of the real ``held_out``
    images, else 0.0. Calibrated on real data, it does not depend on how a classifier happened to
    train: a classifier's confidence on a blob of ink that is no digit is arbitrary (seeds of the
    course's judge called a filled square "sure" 20-73% of the time), while a blob is far from
    every training digit. Shapes: reference (N, C, H, W), held_out (M, C, H, W); the gate maps
    (K, C, H, W) -> (K,)."""
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile {quantile} is a share of the held-out images: "
                         "give one in (0, 1].")
    if held_out.shape[1:] != reference.shape[1:]:
        raise ValueError(f"held_out images {tuple(held_out.shape[1:])} and reference images "
                         f"{tuple(reference.shape[1:])} differ in shape: pass two splits of "
                         "one data set.")
    radius = torch.quantile(nearest_neighbour(held_out, reference)[0], quantile)

    def gate(images: Tensor) -> Tensor:
        if images.shape[1:] != reference.shape[1:]:
            raise ValueError(f"near_data's gate reads images of shape "
                             f"{tuple(reference.shape[1:])}, not {tuple(images.shape[1:])}: pass "
                             "halves of a wide canvas, one at a time.")
        return (nearest_neighbour(images, reference)[0] <= radius).float()

    gate.radius = radius.item()
    return gate


def digits_per_half(canvases: Tensor, judge: Callable[[Tensor], Tensor], *, digit_ink: float,
                    typical: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """How many halves of each wide canvas hold a digit (lesson 12's subject counter for samples):
    a half counts when it holds at least half a digit's ink (``digit_ink``: the mean
    :func:`ink_share` of real digits on a square canvas), ``judge`` is sure of it and, where
    ``typical`` is given (a :func:`near_data` gate), it lies as near the training digits as real
    digits do. ``judge`` maps halves (N, C, H, W / 2) to 1.0 where a classifier is sure of the
    image, else 0.0 (e.g. ``lambda h: recognisable(classifier, recipe.view(h))``). Without the ink
    test a classifier is "sure" of many empty or half-filled halves; without the classifier any
    blob of ink is a subject, as :func:`subjects_across` counts it; without ``typical`` a blob is
    a digit whenever the classifier's confidence on it, which nothing trained, is high. Two
    subjects: a count of 2. Shapes: canvases (N, C, H, W) with W even -> (N,) int64 in {0, 1, 2}."""
    if canvases.shape[-1] % 2:
        raise ValueError(f"digits_per_half splits a canvas into two halves; its width "
                         f"{canvases.shape[-1]} is odd: pass canvases twice a square's width.")
    w = canvases.shape[-1] // 2
    halves = (canvases[..., :w].clamp(-1, 1), canvases[..., w:].clamp(-1, 1))

    def counts(h: Tensor) -> Tensor:
        found = judge(h).bool() & (ink_share(h) >= 0.5 * digit_ink)
        return found & typical(h).bool() if typical is not None else found

    return sum(counts(h).long() for h in halves)


def ink_share(images: Tensor) -> Tensor:
    """The share of each image's pixels that hold ink (above 0, the middle of [-1, 1]): how bold a
    digit's strokes are, or how much of a canvas it fills. Shapes: (N, C, H, W) -> (N,)."""
    return (images > 0).float().flatten(1).mean(1)


def slant(images: Tensor) -> Tensor:
    """How far each image's strokes lean to the right: the ink-weighted regression of column on row,
    minus, in pixels of horizontal shift per pixel of height (0 upright, > 0 leaning right like
    italics). Lesson 13 tells its subject's slanted digits apart with it. Shapes: (N, C, H, W) ->
    (N,)."""
    w = images.float().clamp_min(0).sum(1)  # (N, H, W): ink intensity
    h, wd = w.shape[-2:]
    rows = torch.arange(h, device=w.device, dtype=w.dtype)[:, None].expand(h, wd)
    cols = torch.arange(wd, device=w.device, dtype=w.dtype)[None, :].expand(h, wd)
    mass = w.sum((1, 2)).clamp_min(1e-8)
    r_mean, c_mean = (w * rows).sum((1, 2)) / mass, (w * cols).sum((1, 2)) / mass
    dr, dc = rows - r_mean[:, None, None], cols - c_mean[:, None, None]
    return -(w * dr * dc).sum((1, 2)) / (w * dr.square()).sum((1, 2)).clamp_min(1e-8)


def thin_strokes(images: Tensor) -> Tensor:
    """1 on ink pixels that a 3 x 3 erosion removes (edges, one-pixel lines), else 0: the fine
    detail a strong compression loses first (lessons 10 and 13). Shapes: like images."""
    ink = (images > 0).float()
    interior = -torch.nn.functional.max_pool2d(-ink, 3, stride=1,
                                               padding=1)  # erosion: 1 where the whole 3x3 is ink
    return ink * (1 - interior)


def thin_stroke_error(rebuilt: Tensor, original: Tensor) -> Tensor:
    """Mean |rebuilt - original| over the original's thin-stroke pixels, per image.
    Shapes: (N, C, H, W) twice -> (N,)."""
    thin = thin_strokes(original)
    return ((rebuilt - original).abs() * thin).flatten(1).sum(1) / (
        thin.flatten(1).sum(1).clamp_min(1))


def edge_magnitude(images: Tensor) -> Tensor:
    """The Sobel gradient magnitude of each image, summed over channels: large on strokes' edges and
    thin lines (lesson 13 weights a decoder's loss with it). Shapes: (N, C, H, W) -> (N, 1, H,
    W)."""
    kx = images.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    flat = images.flatten(0, 1)[:, None]  # (N C, 1, H, W)
    g = torch.nn.functional.conv2d(torch.nn.functional.pad(flat, (1, 1, 1, 1), mode="replicate"),
                                   kernels)
    return g.square().sum(1).sqrt().reshape(images.shape).sum(1, keepdim=True)
