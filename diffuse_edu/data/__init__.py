"""Every data set of the course behind one loader API (lesson 00), and the lessons' generated data.

* :func:`course_images`: the one place that says which image set each scale uses;
* :mod:`~diffuse_edu.data.images`: :class:`ImageSet`, the built-in digits and photos, and pixel
  helpers;
* :mod:`~diffuse_edu.data.toy2d`: 2-D toy sets for lesson 02;
* :mod:`~diffuse_edu.data.staged`: MNIST, Fashion-MNIST and CIFAR-10 from a data folder or
  torchvision, checked against their cards;
* :mod:`~diffuse_edu.data.captioned`: captioned shapes and digits for lesson 09;
* :mod:`~diffuse_edu.data.canvas`: brightness, wider canvases and aspect-ratio buckets for
  lesson 12;
* :mod:`~diffuse_edu.data.subject`: a new subject made from the data for lesson 13.

Every image loader returns images in [-1, 1], shape (N, C, H, W).
"""

from diffuse_edu.config import Scale, resolve_scale
from diffuse_edu.data.images import (
    CIFAR10_CLASSES,
    DIGIT_CLASSES,
    DIGITS_TEST,
    FASHION_CLASSES,
    ImageSet,
    load_digits,
    load_photos,
    resize,
    to_uint8,
    to_unit_range,
)
from diffuse_edu.data.staged import (
    CARDS,
    DataCorruptError,
    DataMissingError,
    DatasetCard,
    availability,
    content_sha256,
    fetch,
    find_staged,
    load_cifar10,
    load_fashion_mnist,
    load_keras_arrays,
    load_mnist,
    read_npz,
    stage,
)
from diffuse_edu.data.toy2d import (
    gaussian_ring,
    gaussian_ring_with_modes,
    mode_coverage,
    moons,
    swiss_roll,
)

__all__ = [
    "CARDS", "CIFAR10_CLASSES", "DIGITS_TEST", "DIGIT_CLASSES", "DataCorruptError",
           "DataMissingError",
    "DatasetCard", "FASHION_CLASSES", "ImageSet", "availability", "content_sha256", "course_images",
    "fetch", "find_staged", "gaussian_ring", "gaussian_ring_with_modes", "load_cifar10",
           "load_digits",
    "load_fashion_mnist", "load_keras_arrays", "load_mnist", "load_photos", "mode_coverage",
           "moons",
    "read_npz", "resize", "stage", "swiss_roll", "to_uint8", "to_unit_range",
]


def course_images(split: str = "train", scale: Scale | str | None = None) -> ImageSet:
    """The course's image set at ``scale`` (default: the scale in force; "quick" or "full" work as
    well as the Scale members): the digits at quick scale, MNIST at 32x32 at full scale.
    ``split``: "train" or "test"."""
    return load_digits(split) if resolve_scale(scale) is Scale.QUICK else load_mnist(split)
