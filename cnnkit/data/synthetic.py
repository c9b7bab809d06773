"""Small, learnable stand-ins for MNIST (the four IDX files), CIFAR-10 (its pickles) and
an image folder (JPEG and PNG files).

Each class is a bright square at its own place on a noisy background: a network that
learns anything gets it right, so a few seconds of training must beat chance by far.
Used by the tests and benchmarks, and handy for trying the training command without
real data.
"""

import os
import pickle

import torch

from .idx import write_idx


def synthetic_images(count, num_classes=10, size=28, generator=None, channels=None):
    """(uint8 images (count, size, size) or (count, channels, size, size), labels (count,))."""
    labels = torch.randint(num_classes, (count,), generator=generator)
    shape = (count, size, size) if channels is None else (count, channels, size, size)
    images = torch.randint(0, 90, shape, generator=generator, dtype=torch.int64)
    cells = max(int(num_classes ** 0.5 + 0.999), 1)
    step = (size - 8) // max(cells - 1, 1)
    for label in range(num_classes):
        top, left = (label // cells) * step, (label % cells) * step
        rows = labels == label
        images[rows, ..., top:top + 8, left:left + 8] += 150
    return images.clamp_(0, 255).to(torch.uint8), labels


def write_synthetic_mnist(directory, train=1000, test=200, seed=0, compress=True):
    """Write train/t10k images and labels IDX files into `directory`; returns it."""
    os.makedirs(directory, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    suffix = ".gz" if compress else ""
    for prefix, count in (("train", train), ("t10k", test)):
        images, labels = synthetic_images(count, generator=generator)
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"),
                  labels.to(torch.uint8))
    return directory


def write_synthetic_cifar10(directory, train=1000, test=200, seed=0):
    """Write the same kind of data, 3x32x32, as CIFAR-10's python-pickle batches."""
    import numpy as np

    os.makedirs(directory, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    per_batch = -(-train // 5)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    counts = [min(per_batch, max(train - i * per_batch, 0)) for i in range(5)] + [test]
    for name, count in zip(names, counts):
        images, labels = synthetic_images(count, size=32, channels=3, generator=generator)
        batch = {b"data": images.reshape(count, -1).numpy().astype(np.uint8),
                 b"labels": labels.tolist()}
        with open(os.path.join(directory, name), "wb") as file:
            pickle.dump(batch, file, protocol=2)
    return directory


def write_synthetic_image_folder(directory, classes=("cat", "dog", "fish"), train=4, val=2,
                                 size=(500, 375), seed=0, formats=("jpg", "png")):
    """Write DIR/train/<class>/ and DIR/val/<class>/ images of `size` (width, height),
    cycling through `formats` (JPEG at quality 90, about the size of an ImageNet photo of
    these dimensions); returns the directory."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    width, height = size
    side = max(min(width, height) // 4, 1)
    # A smooth colour field under mild noise: what a camera gives, for the JPEG decoder.
    rows = torch.linspace(0, 1, height).view(-1, 1, 1)
    cols = torch.linspace(0, 1, width).view(1, -1, 1)
    for split, count in (("train", train), ("val", val)):
        for label, name in enumerate(classes):
            folder = os.path.join(directory, split, name)
            os.makedirs(folder, exist_ok=True)
            for index in range(count):
                tint = torch.rand(2, 1, 1, 3, generator=generator) * 120
                noise = torch.randint(0, 40, (height, width, 3), generator=generator)
                image = tint[0] * rows + tint[1] * cols + noise
                top = (label * side) % max(height - side, 1)
                left = (label * side // 2) % max(width - side, 1)
                image[top:top + side, left:left + side] += 100
                pixels = image.clamp_(0, 255).to(torch.uint8).numpy()
                extension = formats[index % len(formats)]
                Image.fromarray(pixels).save(os.path.join(folder, f"{index:05d}.{extension}"),
                                             quality=90)
    return directory
