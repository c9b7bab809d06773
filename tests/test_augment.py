"""Batched augmentations: exact geometry against a per-image loop, statistics, seeding,
and the distributed split of the random draws."""

import math

import pytest
import torch

from cnnkit.data import (
    BatchLoader,
    ImageDataset,
    augment,
    compute_color_pca,
    crop_at,
    fit_size,
    normalize,
    pca_color_noise,
    random_crop,
    random_horizontal_flip,
    ten_crop,
)


def _images(n=6, c=3, h=8, w=10, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_crop_at_matches_slicing():
    images = _images()
    top, left = torch.tensor([0, 1, 2, 3, 0, 4]), torch.tensor([5, 0, 1, 2, 3, 0])
    crops = crop_at(images, top, left, (4, 5))
    for i in range(len(images)):
        assert torch.equal(crops[i], images[i, :, top[i]:top[i] + 4, left[i]:left[i] + 5])


def test_random_crop_is_a_translation_of_the_padded_image():
    images = _images(n=64, h=8, w=8)
    out = random_crop(images, 8, padding=2, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = set()
    for i in range(len(images)):
        matches = [(top, left) for top in range(5) for left in range(5)
                   if torch.equal(out[i], padded[i, :, top:top + 8, left:left + 8])]
        assert matches, f"image {i} is not a window of its padded image"
        shifts.add(matches[0])
    assert len(shifts) > 10  # offsets really vary


def test_random_crop_without_padding_at_full_size_is_identity():
    images = _images()
    assert torch.equal(random_crop(images, (8, 10)), images)
    with pytest.raises(ValueError, match="larger"):
        random_crop(images, 12)


def test_seeded_augmentations_are_deterministic():
    images = _images(n=32)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        out = random_crop(images, 6, padding=1, generator=generator)
        return random_horizontal_flip(out, generator=generator)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_flip_probability_and_content():
    images = _images(n=4000, c=1, h=2, w=3)
    out = random_horizontal_flip(images, generator=torch.Generator().manual_seed(0))
    flipped = (out == images.flip(-1)).flatten(1).all(1)
    same = (out == images).flatten(1).all(1)
    assert bool((flipped | same).all())
    asymmetric = ~(images == images.flip(-1)).flatten(1).all(1)  # mirror-symmetric: ambiguous
    rate = (~same)[asymmetric].float().mean()
    assert abs(rate.item() - 0.5) < 0.03


def test_color_pca_recovers_a_known_covariance():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    variances = torch.tensor([0.001, 0.004, 0.02], dtype=torch.float64)
    pixels = (torch.randn(200_000, 3, dtype=torch.float64) * variances.sqrt()) @ basis.T + 0.5
    images = (pixels * 255).round().clamp(0, 255).to(torch.uint8).T.reshape(3, 200, 1000)
    eigenvalues, eigenvectors = compute_color_pca(images.unsqueeze(0).permute(0, 1, 2, 3))
    assert torch.allclose(eigenvalues.double(), variances, rtol=0.05, atol=2e-5)
    for k in range(3):  # eigenvectors up to sign
        assert abs(float(eigenvectors[:, k].double() @ basis[:, k])) > 0.999


def test_pca_noise_statistics():
    eigenvalues = torch.tensor([0.01, 0.05, 0.2])
    eigenvectors = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2)))[0]
    images = torch.zeros(20_000, 3, 2, 2)
    out = pca_color_noise(images, eigenvalues, eigenvectors, std=0.1,
                          generator=torch.Generator().manual_seed(0))
    shift = out[:, :, 0, 0]
    assert torch.equal(out, shift.view(-1, 3, 1, 1).expand_as(out))  # one shift per image
    # shift = V (alpha * lambda), alpha ~ N(0, 0.1): covariance V diag((0.1 lambda)^2) V^T
    expected = eigenvectors @ torch.diag((0.1 * eigenvalues) ** 2) @ eigenvectors.T
    covariance = shift.T @ shift / len(shift)
    assert torch.allclose(covariance, expected, atol=2e-5)
    assert shift.mean(0).abs().max() < 3 * 0.1 * 0.2 / math.sqrt(len(shift)) * 2


def test_normalize_and_fit_size():
    images = torch.rand(2, 3, 5, 5)
    mean, std = [0.1, 0.2, 0.3], [0.5, 1.0, 2.0]
    out = normalize(images, mean, std)
    assert torch.allclose(out[:, 2], (images[:, 2] - 0.3) / 2.0)
    small = _images(n=2, c=1, h=28, w=28)
    padded = fit_size(small, (32, 32))
    assert padded.shape == (2, 1, 32, 32) and torch.equal(padded[:, :, 2:30, 2:30], small)
    assert padded[:, :, :2].sum() == 0
    assert torch.equal(fit_size(padded, (28, 28)), small)  # centre crop
    assert fit_size(images, (64, 64)).shape == (2, 3, 64, 64)  # bilinear resize


def test_ten_crop():
    images = _images(n=2, h=8, w=8)
    crops = ten_crop(images, 6)
    assert crops.shape == (10, 2, 3, 6, 6)
    assert torch.equal(crops[0], images[..., :6, :6])
    assert torch.equal(crops[3], images[..., 2:, 2:])
    assert torch.equal(crops[4], images[..., 1:7, 1:7])
    assert torch.equal(crops[5:], crops[:5].flip(-1))


def test_loader_shards_rebuild_the_global_batch():
    dataset = ImageDataset(torch.arange(48, dtype=torch.uint8).view(48, 1, 1, 1),
                           torch.arange(48), tuple(range(48)))
    single = BatchLoader(dataset, 8, shuffle=True, seed=5)
    shards = [BatchLoader(dataset, 4, shuffle=True, seed=5, rank=r, world_size=2)
              for r in range(2)]
    assert len(single) == len(shards[0]) == 6
    for batch, parts in zip(single, zip(*shards)):
        assert torch.equal(batch[1][0::2], parts[0][1]) and torch.equal(batch[1][1::2], parts[1][1])
    single.set_epoch(1)
    assert sorted(torch.cat([labels for _, labels in single]).tolist()) == list(range(48))


def test_augmentation_draws_split_like_the_batch():
    images = _images(n=8)
    whole = random_crop(images, 6, padding=1, generator=torch.Generator().manual_seed(9))
    for rank in range(2):
        part = random_crop(images[rank::2], 6, padding=1,
                           generator=torch.Generator().manual_seed(9), shard=(rank, 2))
        assert torch.equal(part, whole[rank::2])


def test_uneven_shards_without_padding_cover_every_example_once():
    dataset = ImageDataset(torch.zeros(7, 1, 1, 1, dtype=torch.uint8), torch.arange(7), "abcdefg")
    seen = [label for rank in range(3)
            for _, labels in BatchLoader(dataset, 2, rank=rank, world_size=3, pad=False)
            for label in labels.tolist()]
    assert sorted(seen) == list(range(7))


def test_channel_stats():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 3, 3)
    mean, std = augment.channel_stats(images.contiguous())
    assert mean == pytest.approx([0.5]) and std == pytest.approx([0.5])
