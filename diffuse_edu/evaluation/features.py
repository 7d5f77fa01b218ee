"""Feature networks for FID and friends (lesson 06).

FID compares the statistics of two sets of images in the feature space of a network trained for
something else. The course trains its own small classifier (:mod:`diffuse_edu.models.classifier`)
per data set, cached by :func:`diffuse_edu.training.pretrained.course_classifier` (digits at quick
scale; MNIST at full scale): fast, offline, and suited to tiny grey images. Inception-v3, the
network of the original FID (Heusel et al. 2017), is used when its weights are present on the
machine.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse_edu.config import explain_out_of_memory
from diffuse_edu.models.classifier import Classifier, ClassifierConfig
from diffuse_edu.progress import progress


def train_classifier(images: Tensor, labels: Tensor, config: ClassifierConfig = ClassifierConfig(),
                     *, steps: int = 600, batch_size: int = 128, lr: float = 3e-3,
                     generator: torch.Generator | None = None,
                     groups: tuple[int, ...] | None = None, shift: int = 1) -> Classifier:
    """Train a classifier with AdamW and light shift augmentation (up to ``shift`` pixels).

    With ``groups`` (sizes summing to ``config.num_classes``), the logits are that many separate
    classifiers over consecutive slices, and ``labels`` holds one column per group (lesson 09's
    attributes). Shapes: images (N, C, H, W); labels (N,) or (N, len(groups)).
    """
    model = Classifier(config).to(images.device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in progress(range(steps), desc="classifier"):
        idx = torch.randint(0, len(images), (batch_size,), generator=generator).to(images.device)
        dx, dy = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
        x = torch.roll(images[idx], shifts=(dy, dx), dims=(-2, -1))
        logits, y = model(x), labels[idx]
        if groups is None:
            loss = F.cross_entropy(logits, y)
        else:
            loss = sum(F.cross_entropy(part, y[:, j]) for j,
                       part in enumerate(logits.split(groups, dim=1)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


#: On an accelerator out of memory, the feature functions say what to lower.
_features = explain_out_of_memory("running the classifier",
                                  "batch_size= of this call (images per batch)")


@_features
@torch.no_grad()
def accuracy(model: Classifier, images: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Share of images whose predicted class is the label."""
    preds = torch.cat([model(b).argmax(1) for b in images.split(batch_size)])
    return (preds == labels).float().mean().item()


@_features
@torch.no_grad()
def confidence(model: Classifier, images: Tensor, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """The classifier's largest softmax probability per image and the class it belongs to; lessons
    05-11 call an image recognisable at a confidence of at least 0.9. Shapes: (N, C, H, W) -> (N,),
    (N,)."""
    p = torch.cat([model(b).softmax(1) for b in images.split(batch_size)])
    values, classes = p.max(1)
    return values, classes


RECOGNISABLE = 0.9  # the confidence at which the course calls an image recognisable


def recognisable(model: Classifier, images: Tensor, batch_size: int = 1024) -> Tensor:
    """1.0 for each image the classifier is sure of (confidence at least ``RECOGNISABLE``), else
    0.0: a per-image score, so that two arms drawn from the same noise can be compared pair by pair.
    Shapes: (N, C, H, W) -> (N,)."""
    return (confidence(model, images, batch_size)[0] >= RECOGNISABLE).float()


@_features
@torch.no_grad()
def extract(model: Classifier, images: Tensor, batch_size: int = 1024) -> Tensor:
    """Features of many images, batch by batch, as float64. Shapes: (N, C, H, W) -> (N, D)."""
    return torch.cat([model.features(b).double() for b in images.split(batch_size)])


def inception_available() -> bool:
    """Whether torchvision's Inception-v3 weights are on this machine (never downloads)."""
    from torchvision.models import Inception_V3_Weights

    url = Inception_V3_Weights.IMAGENET1K_V1.url
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def inception_features() -> nn.Module:
    """Inception-v3's 2048-d pool features for images in [-1, 1] (1 or 3 channels, any size)."""
    if not inception_available():
        raise FileNotFoundError(
            "Inception-v3 weights are not on this machine. Online, run once: python -c \"import "
            "torchvision; torchvision.models.inception_v3(weights='IMAGENET1K_V1')\"; offline, "
            f"copy the file into {Path(torch.hub.get_dir()) / 'checkpoints'}. The course's own "
            "classifier features work without them.")
    from torchvision.models import Inception_V3_Weights, inception_v3

    net = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1).eval()
    net.fc = nn.Identity()

    class _Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406])[:, None, None])
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225])[:, None, None])

        def features(self, x: Tensor) -> Tensor:
            x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
            x = F.interpolate((x + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
            return self.net((x - self.mean) / self.std)

    return _Wrapped()
