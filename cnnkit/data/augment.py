"""Batched tensor augmentations: whole batches at once, on the batch's device.

Random parameters (crop offsets, flip flags, colour-noise weights) are a few numbers per
image; they are drawn on the CPU from a torch.Generator and moved to the batch's device,
so a seed gives the same augmentation on every device. `shard=(rank, world_size)` draws
the parameters for the whole global batch and keeps this process's share (positions
rank, rank + world_size, ..., matching BatchLoader), so a DDP run augments each image
exactly as a single process would.
"""

import torch
import torch.nn.functional as F

ALEXNET_PCA_STD = 0.1  # Krizhevsky et al. 2012, section 4.1
# ImageNet's channel mean and std in [0, 1] units, as torchvision's and timm's recipes
# normalise with them; an image folder is normalised alike (decoding it all to measure
# its own would take a pass over every file).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The principal components of ImageNet's RGB pixels in [0, 1] units (eigenvectors as
# columns), for AlexNet's colour noise. The paper prints none; these are the values
# computed as it describes and published with fb.resnet.torch, used by most reproductions.
IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                             (-0.5808, -0.0045, -0.8140),
                             (-0.5836, -0.6948, 0.4203))


def _draw(sampler, count, shard):
    """sampler(n) -> tensor with n rows, for this shard's `count` images."""
    rank, world_size = shard
    if world_size == 1:
        return sampler(count)
    return sampler(count * world_size)[rank::world_size]


def to_float(images, dtype=torch.float32):
    """uint8 [0, 255] -> floating point [0, 1]."""
    return images.to(dtype).div_(255)


def normalize(images, mean, std):
    """(x - mean) / std per channel; mean and std are sequences of C numbers."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


def channel_stats(images, chunk=4096):
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].to(torch.float64).div_(255)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def crop_at(images, top, left, size):
    """Per-image crops: image i's window starts at (top[i], left[i]); size is (h, w)."""
    n, c, _, width = images.shape
    h, w = size
    rows = (top.view(n, 1) + torch.arange(h, device=images.device)).view(n, 1, h, 1)
    images = images.gather(2, rows.expand(n, c, h, width))
    cols = (left.view(n, 1) + torch.arange(w, device=images.device)).view(n, 1, 1, w)
    return images.gather(3, cols.expand(n, c, h, w))


def random_crop(images, size, padding=0, generator=None, shard=(0, 1)):
    """Random (h, w) windows of zero-padded images: a translation by up to `padding`
    pixels when size equals the image size (CIFAR), AlexNet's random 224 crops otherwise."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if padding:
        images = F.pad(images, (padding,) * 4)
    n, _, height, width = images.shape
    if size[0] > height or size[1] > width:
        raise ValueError(f"size: crop {size} larger than the padded image {(height, width)}")
    top = _draw(lambda k: torch.randint(height - size[0] + 1, (k,), generator=generator),
                n, shard)
    left = _draw(lambda k: torch.randint(width - size[1] + 1, (k,), generator=generator),
                 n, shard)
    return crop_at(images, top.to(images.device), left.to(images.device), size)


def random_horizontal_flip(images, p=0.5, generator=None, shard=(0, 1)):
    """Mirror each image left-right with probability p."""
    flip = _draw(lambda k: torch.rand(k, generator=generator) < p, images.shape[0], shard)
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def compute_color_pca(images, max_pixels=10_000_000, chunk=2048):
    """Eigenvalues (3,) and eigenvectors (3, 3, one per column) of the RGB covariance of
    uint8 (N, 3, H, W) training images, in [0, 1] units (AlexNet's colour PCA).

    Uses an evenly spaced subset of at most max_pixels pixels: the 3x3 covariance is
    settled long before every pixel of a large data set is seen."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W), got shape {tuple(images.shape)}")
    per_image = images.shape[2] * images.shape[3]
    step = max(1, (images.shape[0] * per_image) // max_pixels)
    images = images[::step]
    total = torch.zeros(3, dtype=torch.float64)
    outer = torch.zeros(3, 3, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        pixels = images[start:start + chunk].to(torch.float64).div_(255)
        pixels = pixels.permute(1, 0, 2, 3).reshape(3, -1)
        total += pixels.sum(dim=1)
        outer += pixels @ pixels.T
    count = images.shape[0] * per_image
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    return eigenvalues.clamp_min(0).float(), eigenvectors.float()


def pca_color_noise(images, eigenvalues, eigenvectors, std=ALEXNET_PCA_STD, generator=None,
                    shard=(0, 1)):
    """Add eigenvectors @ (alpha * eigenvalues) to every pixel of each image, alpha ~
    N(0, std) drawn per image and component (Krizhevsky et al. 2012); images are float
    (N, 3, H, W) in [0, 1] units."""
    alpha = _draw(lambda k: torch.randn(k, 3, generator=generator) * std, images.shape[0], shard)
    shift = (alpha * eigenvalues.cpu().view(1, 3)) @ eigenvectors.cpu().T  # (N, 3)
    return images + shift.to(images.device, images.dtype).view(-1, 3, 1, 1)


def fit_size(images, size):
    """Bring images to the model's (h, w): zero-pad a small difference (MNIST's 28x28
    digits in LeNet's 32x32 field, as in the paper), centre-crop a larger image, and
    resize bilinearly a much smaller one (CIFAR's 32x32 for a 224x224 network)."""
    height, width = images.shape[-2:]
    h, w = size
    if (height, width) == (h, w):
        return images
    if height <= h <= height + 8 and width <= w <= width + 8:
        return center_pad(images, size)
    if height >= h and width >= w:
        top, left = (height - h) // 2, (width - w) // 2
        return images[..., top:top + h, left:left + w]
    if not images.is_floating_point():
        raise ValueError("fit_size: resizing needs floating-point images")
    return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)


def center_pad(images, size):
    """Zero-pad images to (h, w), centred; an odd margin puts the extra pixel after."""
    height, width = images.shape[-2:]
    h, w = size
    if h < height or w < width:
        raise ValueError(f"size: {(h, w)} smaller than the image {(height, width)}")
    top, left = (h - height) // 2, (w - width) // 2
    return F.pad(images, (left, w - width - left, top, h - height - top))


def ten_crop(images, size):
    """AlexNet's test-time crops: the four corners and the centre, and their mirror
    images. Returns (10, N, C, h, w); average the model's predictions over dim 0."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    height, width = images.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"size: crop {(h, w)} larger than the image {(height, width)}")
    corners = [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w),
               ((height - h) // 2, (width - w) // 2)]
    crops = torch.stack([images[..., top:top + h, left:left + w] for top, left in corners])
    return torch.cat([crops, crops.flip(-1)])
