"""A ControlNet-style adapter (lesson 19; Zhang et al. 2023), and the baseline it is measured
against.

The adapter keeps a trained U-Net frozen and adds a **trainable copy of its encoder** (stem,
encoder levels, middle block) that reads x_t plus a control map (here: the ink mask of a digit).
The copy's features join the frozen model through **zero-initialised 1x1 convolutions**: one per
skip connection and one after the middle block, and one more that brings the control map (through a
small convolutional "hint" network) into the copy's stem features. Since every joining convolution
starts at zero, the combined model is exactly the frozen model at initialisation, and training moves
it away only as far as the control asks (Zhang et al. 2023, Sec. 3.1-3.2, Eq. 2-4).

The baseline (:func:`widen_input`) fine-tunes the whole U-Net with the map as extra input
channels, the new channels' weights starting at zero (so that it too starts as the base model).

The frozen U-Net is not changed: :func:`run_encoder` and :func:`decode` run its parts from outside,
as :func:`diffuse_edu.models.unet.unet_forward` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn

from diffuse_edu.models.conditioning import Cond
from diffuse_edu.models.unet import UNet, encoder_levels


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1x1 convolution whose weight and bias start at zero ("zero convolution", Zhang et al.
    2023, Sec. 3.1). Shapes: (B, C, H, W) -> same."""
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def run_encoder(unet: UNet, h: Tensor, emb: Tensor | None,
                cond: Cond | None) -> tuple[Tensor, list[Tensor]]:
    """The encoder levels of ``unet`` from stem features ``h``: the lowest-resolution features and
    the skip stack (one map per level but the last, full resolution first), as
    :func:`diffuse_edu.models.unet.encode` runs them after the stem.

    Shapes: h (B, channels[0], H, W) -> (B, channels[-1], H / 2**(L-1), ...), [(B, C_i, H_i, W_i)].
    """
    return encoder_levels(unet, h, emb, cond)


def decode(unet: UNet, h: Tensor, skips: list[Tensor], emb: Tensor | None,
           cond: Cond | None) -> Tensor:
    """The decoder and output head of ``unet`` from the middle block's output ``h`` and the skip
    stack, as :func:`diffuse_edu.models.unet.unet_forward` runs them.

    Shapes: h (B, channels[-1], h, w), skips as :func:`run_encoder` returns -> (B, out, H, W).
    """
    for level in reversed(range(len(unet.decoder))):
        h = unet.upsamples[level](h)
        if unet.config.skip_connections:
            h = torch.cat([h, skips[level]], dim=1)
        for block in unet.decoder[level]:
            h = block(h, emb, cond)
    return unet.out(h)


class ControlAdapter(nn.Module):
    """A frozen U-Net ``base`` with a trainable copy of its encoder for a control map.

    Parts: ``base`` (frozen, never trained), ``copy`` (a full copy of the base made at
    construction; its stem, time and label embeddings, encoder levels and middle block are the
    trainable encoder copy), ``hint`` (a small network from the control map to the stem's width),
    ``zero_in`` (zero convolution: the hint's features into the copy's stem features),
    ``zero_skips`` (one zero convolution per skip connection) and ``zero_middle`` (after the
    middle block). ``forward_fn(adapter, x, t, control, cond)`` computes the forward pass
    (:func:`adapter_forward`, or a learner's).

    Shapes: x (B, C, H, W), t (B,), control (B, control_channels, H, W) -> (B, C, H, W).
    """

    def __init__(self, base: UNet, control_channels: int = 1, hint_width: int = 16):
        super().__init__()
        self.base = base.requires_grad_(False).eval()
        self.copy = copy.deepcopy(base).requires_grad_(True).train()
        self.copy.decoder, self.copy.upsamples, self.copy.out = (  # the copy is an encoder only
            nn.ModuleList(), nn.ModuleList(), nn.Identity())
        ch = base.config.channels
        self.forward_fn: Callable[..., Tensor] = adapter_forward
        self.hint = nn.Sequential(nn.Conv2d(control_channels, hint_width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(hint_width, ch[0], 3, padding=1))
        self.zero_in = zero_conv(ch[0])
        self.zero_skips = nn.ModuleList(zero_conv(c) for c in ch[:-1])
        self.zero_middle = zero_conv(ch[-1])
        self.predicts = getattr(base, "predicts", None)

    def trainable(self) -> list[nn.Parameter]:
        """The parameters training moves: everything but the frozen base."""
        return [p for name, p in self.named_parameters() if not name.startswith("base.")]

    def train(self, mode: bool = True) -> ControlAdapter:
        super().train(mode)
        self.base.eval()  # the frozen model stays in eval mode (dropout off)
        return self

    def forward(self, x: Tensor, t: Tensor, control: Tensor, cond: Cond | None = None) -> Tensor:
        if control.shape[0] != x.shape[0] or control.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"the control map must be one per image at the image's size: x "
                             f"{tuple(x.shape)}, control {tuple(control.shape)}.")
        return self.forward_fn(self, x, t, control, cond)


def adapter_forward(adapter: ControlAdapter, x: Tensor, t: Tensor, control: Tensor,
                    cond: Cond | None = None) -> Tensor:
    """The combined model's forward pass (lesson 19's exercise; Zhang et al. 2023, Eq. 4 and
    Fig. 3): the trainable copy reads x plus the control (hint network, then ``zero_in``, added to
    its stem's features) and runs its encoder and middle block with its own embedding; the frozen
    base runs as usual, except that each of its skip connections gets the copy's matching feature
    map through its zero convolution added, and its middle block's output gets the copy's middle
    output through ``zero_middle`` added, before its decoder runs.

    Shapes: x (B, C, H, W), t (B,), control (B, K, H, W) -> (B, C, H, W).
    """
    base, twin = adapter.base, adapter.copy
    h_c = twin.stem(x) + adapter.zero_in(adapter.hint(control))
    emb_c = twin.embed(t, cond)
    h_c, skips_c = run_encoder(twin, h_c, emb_c, cond)
    h_c = twin.middle(h_c, emb_c, cond)
    emb = base.embed(t, cond)
    h, skips = run_encoder(base, base.stem(x), emb, cond)
    skips = [s + z(c) for s, z, c in zip(skips, adapter.zero_skips, skips_c)]
    h = base.middle(h, emb, cond) + adapter.zero_middle(h_c)
    return decode(base, h, skips, emb, cond)


class WidenedUNet(nn.Module):
    """The baseline: a whole U-Net fine-tuned with the control map as extra input channels.
    ``model(x, t, control, cond)`` runs ``unet`` (whose stem reads C + K channels) on the map
    concatenated after x. Shapes: x (B, C, H, W), control (B, K, H, W) -> (B, C, H, W)."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet
        self.predicts = getattr(unet, "predicts", None)

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def forward(self, x: Tensor, t: Tensor, control: Tensor, cond: Cond | None = None) -> Tensor:
        return self.unet(torch.cat([x, control], dim=1), t, cond)


def widen_input(base: UNet, control_channels: int = 1) -> WidenedUNet:
    """A trainable copy of ``base`` whose stem also reads ``control_channels`` map channels, their
    weights starting at zero: at initialisation it is exactly ``base`` (whatever the map), and
    fine-tuning then trains every weight. ``base`` itself is not changed."""
    cfg = base.config
    out = cfg.out_channels or cfg.in_channels
    wide = UNet(replace(cfg, in_channels=cfg.in_channels + control_channels,
                        out_channels=out)).to(next(base.parameters()).device)
    state = base.state_dict()
    stem = state["stem.weight"]
    state["stem.weight"] = torch.cat([stem, stem.new_zeros(stem.shape[0], control_channels,
                                                           *stem.shape[2:])], dim=1)
    wide.load_state_dict(state)
    if getattr(base, "predicts", None) is not None:
        wide.predicts = base.predicts
    return WidenedUNet(wide.train())


class Controlled:
    """``model`` with its control map fixed: a callable ``(x, t, cond) -> prediction`` for the
    course's samplers. A batch twice the map's (classifier-free guidance's conditional and null
    halves) gets the map twice. ``control=None`` runs the model with an all-zero map ("no
    control")."""

    def __init__(self, model: Callable, control: Tensor | None, channels: int = 1):
        self.model, self.control, self.channels = model, control, channels
        self.predicts = getattr(model, "predicts", None)

    def __call__(self, x: Tensor, t: Tensor, cond: Cond | None = None) -> Tensor:
        c = self.control
        if c is None:
            c = x.new_zeros(x.shape[0], self.channels, *x.shape[-2:])
        elif c.shape[0] != x.shape[0]:
            c = c.repeat(x.shape[0] // c.shape[0], 1, 1, 1)
        return self.model(x, t, c.to(x), cond)


def ink_mask(images: Tensor, threshold: float = 0.0) -> Tensor:
    """Where the ink is: pixels brighter than ``threshold`` in some channel (images in [-1, 1],
    background -1). Shapes: (B, C, H, W) -> (B, 1, H, W) bool."""
    return (images > threshold).any(dim=1, keepdim=True)


def mask_iou(pred: Tensor, target: Tensor) -> Tensor:
    """Intersection over union of two masks, per image (lesson 19's adherence measure): the pixels
    in both over the pixels in either; 1 where both masks are empty (they agree).

    Shapes: pred and target (B, ...) bool -> (B,) float32 in [0, 1].
    """
    pred, target = pred.flatten(1), target.flatten(1)
    inter = (pred & target).sum(1).float()
    union = (pred | target).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
