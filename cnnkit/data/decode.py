"""Image files to uint8 tensors of one size: the per-image half of the input pipeline.

Each transform picks a box of the source image (`box(width, height, rng)`) and an output
size; `decode_image` then crops and resizes in one Pillow call, after asking the JPEG
decoder for a reduced-size decode (`Image.draft`: 1/2, 1/4 or 1/8 scale, several times
faster) whenever the box is at least twice the output. Everything after this step (random
crops of the decoded images, flips, colour noise) runs batched (cnnkit.data.augment).
"""

import math
import struct

import torch

# What Pillow raises for a file it cannot read: not an image, a truncated or damaged one.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ResizeCenterCrop:
    """The short side resized to `size` and the central size x size square kept: AlexNet's
    256x256 training images, and evaluation's "resize 256, centre crop"."""

    def __init__(self, size):
        self.size = (size, size)

    def box(self, width, height, rng=None):
        short = min(width, height)
        left, top = (width - short) // 2, (height - short) // 2
        return (left, top, left + short, top + short)


class RandomResizedCrop:
    """A random box of 8% to 100% of the image's area and aspect ratio 3/4 to 4/3 (both
    drawn log-uniformly for the ratio), resized to `size`: the scale augmentation of the
    Inception and ResNet reference recipes. After 10 boxes that do not fit, the largest
    central box of an allowed ratio."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size = tuple(size)
        self.scale = scale
        self.ratio = ratio

    def box(self, width, height, rng):
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = rng.randint(0, width - w), rng.randint(0, height - h)
                return (left, top, left + w, top + h)
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = (width, round(width / aspect)) if width / height < aspect else (
            round(height * aspect), height)
        w, h = min(w, width), min(h, height)
        left, top = (width - w) // 2, (height - h) // 2
        return (left, top, left + w, top + h)


def decode_image(path, transform, rng=None):
    """uint8 (H, W, 3) tensor of the file's `transform.box`, resized to transform.size
    (h, w). Raises one of DECODE_ERRORS for a file Pillow cannot read."""
    from PIL import Image

    try:
        return _decode(Image, path, transform, rng)
    except Image.DecompressionBombError as error:  # not an OSError, but a file we skip alike
        raise OSError(str(error)) from None


def _decode(Image, path, transform, rng):
    out_h, out_w = transform.size
    with Image.open(path) as image:
        width, height = image.size
        left, top, right, bottom = transform.box(width, height, rng)
        reduction = min((right - left) / out_w, (bottom - top) / out_h)
        if reduction >= 2:
            # JPEG only (other formats ignore it); the decoded size stays >= the request.
            image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
        sx, sy = image.size[0] / width, image.size[1] / height
        image = image.convert("RGB")  # decodes; grayscale, palette and CMYK become RGB
        resized = image.resize((out_w, out_h), Image.BILINEAR,
                               box=(left * sx, top * sy, right * sx, bottom * sy))
    return torch.frombuffer(bytearray(resized.tobytes()), dtype=torch.uint8).view(out_h, out_w, 3)
