"""MNIST and Fashion-MNIST from a directory holding the four standard IDX files."""

import os

import torch

from .dataset import ImageDataset
from .errors import DataFormatError, DataNotFoundError
from .idx import read_idx

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SPLIT_PREFIX = {True: "train", False: "t10k"}


def _find(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise DataNotFoundError(
        f"{os.path.join(directory, stem)}[.gz]: no such file; point --data-dir (or CNNKIT_DATA) "
        "at a directory holding the four MNIST-format IDX files"
    )


def load_mnist_format(directory, train=True, classes=MNIST_CLASSES, name="mnist"):
    """The training (train=True) or test split of an MNIST-format data set."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataNotFoundError(
            f"{directory}: no such directory; pass --data-dir (or set CNNKIT_DATA) to the "
            f"directory holding the {name} IDX files"
        )
    prefix = SPLIT_PREFIX[bool(train)]
    images_path = _find(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise DataFormatError(
            f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
            f"of shape {tuple(images.shape)}"
        )
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise DataFormatError(
            f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} "
            f"of shape {tuple(labels.shape)}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DataFormatError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in "
            f"{images_path}"
        )
    if labels.numel() and int(labels.max()) >= len(classes):
        raise DataFormatError(
            f"{labels_path}: label {int(labels.max())} out of range for {len(classes)} classes"
        )
    return ImageDataset(images.unsqueeze(1), labels.long(), classes, name)


def load_mnist(directory, train=True):
    return load_mnist_format(directory, train, MNIST_CLASSES, "mnist")


def load_fashion_mnist(directory, train=True):
    return load_mnist_format(directory, train, FASHION_MNIST_CLASSES, "fashion-mnist")
