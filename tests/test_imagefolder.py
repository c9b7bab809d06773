"""Image folders: scanning, decoding, the papers' crops, bad files, and `cnnkit train` /
`cnnkit evaluate` on a small JPEG and PNG tree."""

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from cnnkit.data import (
    DataFormatError,
    DataNotFoundError,
    FolderLoader,
    RandomResizedCrop,
    ResizeCenterCrop,
    augment,
    decode_image,
    load_image_folder,
    write_synthetic_image_folder,
)
from cnnkit.train import TrainConfig
from cnnkit.train.config import ConfigError
from cnnkit.train.pipeline import InputPipeline, data_statistics

PIL = pytest.importorskip("PIL.Image")
CLASSES = ["cat", "dog", "fish"]


def _write_bad_files(root):
    """One file that is no image, one JPEG cut in half: both must be skipped."""
    corrupt = os.path.join(root, "train", "cat", "corrupt.jpg")
    with open(corrupt, "wb") as file:
        file.write(b"not an image at all")
    good = os.path.join(root, "train", "dog", "00000.jpg")
    with open(good, "rb") as file:
        data = file.read()
    truncated = os.path.join(root, "train", "dog", "truncated.jpg")
    with open(truncated, "wb") as file:
        file.write(data[:len(data) // 2])
    return corrupt, truncated


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("images"))
    # Portrait and landscape files, JPEG and PNG, a grayscale one.
    write_synthetic_image_folder(root, CLASSES, train=4, val=2, size=(300, 260))
    write_synthetic_image_folder(os.path.join(root, "portrait"), CLASSES, train=1, val=0,
                                 size=(260, 300), seed=1)
    for name in CLASSES:
        os.rename(os.path.join(root, "portrait", "train", name, "00000.jpg"),
                  os.path.join(root, "train", name, "portrait.jpg"))
    gray = os.path.join(root, "train", "fish", "gray.png")
    PIL.new("L", (280, 270), 128).save(gray)
    _write_bad_files(root)
    return root


def _coordinate_image(width, height):
    """RGB pixels that name their own place: R = x mod 256, G = y, B = x // 256."""
    x = torch.arange(width).view(1, -1).expand(height, width)
    y = torch.arange(height).view(-1, 1).expand(height, width)
    return torch.stack([x % 256, y, x // 256], dim=-1).to(torch.uint8)


# ---- the folder layout -----------------------------------------------------------------

def test_classes_in_sorted_folder_order_and_every_file_listed(tree):
    train = load_image_folder(tree, train=True)
    assert list(train.classes) == CLASSES and train.num_classes == 3
    per_class = [sum(label == index for _, label in train.samples) for index in range(3)]
    assert per_class == [6, 6, 6]  # 4 + portrait + gray or a bad file each
    assert all(os.path.basename(os.path.dirname(path)) == CLASSES[label]
               for path, label in train.samples)
    val = load_image_folder(tree, train=False)
    assert list(val.classes) == CLASSES and len(val) == 6


def test_subset_spreads_over_the_classes(tree):
    subset = load_image_folder(tree, train=True).subset(3)
    assert sorted(label for _, label in subset.samples) == [0, 1, 2]


def test_layout_errors_name_the_problem(tmp_path):
    with pytest.raises(DataNotFoundError, match="no image-folder data set"):
        load_image_folder(str(tmp_path / "missing"))
    root = tmp_path / "data"
    write_synthetic_image_folder(str(root), ("a", "b"), train=1, val=1, size=(40, 30))
    os.makedirs(root / "train" / "c")
    with pytest.raises(DataFormatError, match="only in train: c; only in val: none"):
        load_image_folder(str(root))
    os.makedirs(root / "val" / "c")
    with pytest.raises(DataFormatError, match="train/c: class folder holds no image files"):
        load_image_folder(str(root))


# ---- decoding --------------------------------------------------------------------------

def test_resize_center_crop_keeps_the_central_square(tmp_path):
    path = str(tmp_path / "wide.png")
    PIL.fromarray(_coordinate_image(320, 256).numpy()).save(path)
    image = decode_image(path, ResizeCenterCrop(256))
    # The short side is 256 already: the central square, pixel for pixel.
    assert torch.equal(image, _coordinate_image(320, 256)[:, 32:288])


def test_reduced_size_jpeg_decoding_is_used_and_close(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    path = str(tmp_path / "big.jpg")
    write_synthetic_image_folder(str(tmp_path / "tree"), ("a",), train=1, val=0,
                                 size=(1200, 900))
    os.rename(tmp_path / "tree" / "train" / "a" / "00000.jpg", path)
    drafts = []
    draft = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(size) or draft(self, mode, size))
    reduced = decode_image(path, ResizeCenterCrop(224)).float()
    assert drafts and min(drafts[0]) >= 224
    with PIL.open(path) as image:  # the full decode, resized the same way
        full = image.convert("RGB").resize((224, 224), PIL.BILINEAR, box=(150, 0, 1050, 900))
    full = torch.frombuffer(bytearray(full.tobytes()), dtype=torch.uint8).view(224, 224, 3)
    assert (reduced - full.float()).abs().mean() < 3  # of 255: the same picture


def test_random_resized_crop_boxes_stay_in_bounds():
    transform = RandomResizedCrop((224, 224))
    rng = random.Random(0)
    areas, ratios = [], []
    for width, height in [(500, 375)] * 400 + [(2000, 20)] * 20:
        left, top, right, bottom = transform.box(width, height, rng)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        areas.append((right - left) * (bottom - top) / (width * height))
        ratios.append((right - left) / (bottom - top))
    regular = list(zip(areas, ratios))[:400]
    assert all(0.075 <= area <= 1 and 0.74 <= ratio <= 1.36 for area, ratio in regular)
    assert min(areas[:400]) < 0.2 and max(areas[:400]) > 0.8  # the whole range is drawn
    # A strip no box of an allowed ratio fits: the fallback is central at ratio 4/3.
    assert all(abs(ratio - 4 / 3) < 0.1 for ratio in ratios[400:])


def test_training_crops_and_flips_are_windows_of_the_decoded_image():
    images = _coordinate_image(256, 256).permute(2, 0, 1).unsqueeze(0).repeat(64, 1, 1, 1)
    pipeline = InputPipeline({"mean": [0, 0, 0], "std": [1, 1, 1]}, (224, 224), ("crop", "flip"))
    out = (pipeline.train(images, torch.Generator().manual_seed(0)) * 255).round().to(torch.uint8)
    assert out.shape == (64, 3, 224, 224)
    flipped = 0
    for crop in out:
        mirrored = bool(crop[0, 0, 0] > crop[0, 0, -1])  # x runs right to left
        view = crop.flip(-1) if mirrored else crop
        left, top = int(view[0, 0, 0]) + 256 * int(view[2, 0, 0]), int(view[1, 0, 0])
        assert torch.equal(view, images[0, :, top:top + 224, left:left + 224])
        flipped += mirrored
    assert 16 < flipped < 48


def test_evaluation_takes_the_centre_or_the_ten_crops():
    images = _coordinate_image(256, 256).permute(2, 0, 1).unsqueeze(0)
    stats = {"mean": [0, 0, 0], "std": [1, 1, 1]}
    centre = InputPipeline(stats, (224, 224)).evaluate(images)
    assert torch.equal((centre * 255).round().to(torch.uint8), images[..., 16:240, 16:240])
    crops = InputPipeline(stats, (224, 224), ten_crop=True).evaluate(images)
    tops, lefts = ((crops[:5, 0, channel, 0, 0] * 255).round().tolist() for channel in (1, 0))
    assert (tops, lefts) == ([0, 0, 32, 32, 16], [0, 32, 0, 32, 16])
    assert torch.equal(crops[5:], crops[:5].flip(-1))


def test_pca_noise_follows_the_imagenet_components():
    stats = data_statistics(load_folder_stub(), ("crop", "flip", "pca"))
    eigenvalues, eigenvectors = stats["pca"]["eigenvalues"], stats["pca"]["eigenvectors"]
    assert torch.allclose(eigenvectors.T @ eigenvectors, torch.eye(3), atol=2e-3)  # orthonormal
    count = 40_000
    images = torch.full((count, 3, 1, 1), 0.5)
    shifts = augment.pca_color_noise(images, eigenvalues, eigenvectors,
                                     generator=torch.Generator().manual_seed(0)) - images
    components = shifts.view(count, 3) @ eigenvectors  # back to the principal axes
    expected = augment.ALEXNET_PCA_STD * eigenvalues
    # Sample standard deviations of 40,000 draws are within 2% of the truth (5 sigma).
    assert torch.allclose(components.std(0), expected, rtol=0.02)
    correlation = torch.corrcoef(components.T)
    assert (correlation - torch.eye(3)).abs().max() < 0.03  # independent per component


def load_folder_stub():
    from cnnkit.data import ImageFolder

    return ImageFolder("", (), ("a",))


# ---- the loader ------------------------------------------------------------------------

def test_loader_skips_bad_files_once_and_decodes_alike_with_any_workers(tree):
    train = load_image_folder(tree, train=True)
    seen = []
    batches = {}
    for workers in (0, 2):
        loader = FolderLoader(train, 5, transform=RandomResizedCrop((64, 64)), workers=workers,
                              shuffle=True, seed=3, on_skip=lambda path, reason: seen.append(path))
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            batches[workers, epoch] = list(loader)
        assert loader.decode_rate() > 0
        loader.close()
    # Once per loader (two of them), though each reads the files twice.
    names = sorted(os.path.basename(path) for path in seen)
    assert names == ["corrupt.jpg", "corrupt.jpg", "truncated.jpg", "truncated.jpg"]
    for epoch in (0, 1):
        images = [torch.cat([batch[i] for batch in batches[0, epoch]]) for i in (0, 1)]
        assert images[0].shape == (16, 3, 64, 64) and images[0].dtype == torch.uint8
        pairs = zip(batches[0, epoch], batches[2, epoch])
        assert all(torch.equal(a[i], b[i]) for a, b in pairs for i in (0, 1))
    assert not torch.equal(batches[0, 0][0][0], batches[0, 1][0][0])  # new boxes each epoch


def test_resized_crop_config_checks():
    with pytest.raises(ConfigError, match="resized_crop needs --dataset imagefolder"):
        TrainConfig(model="resnet18", augment="resized_crop,flip").resolved()
    with pytest.raises(ConfigError, match="pick one"):
        TrainConfig(model="resnet18", dataset="imagefolder", augment="crop,resized_crop").resolved()


# ---- the command line ------------------------------------------------------------------

def _cnnkit(*args):
    environment = dict(os.environ, OMP_NUM_THREADS="2")
    environment.pop("CNNKIT_DATA", None)
    return subprocess.run([sys.executable, "-m", "cnnkit", *args], capture_output=True,
                          text=True, timeout=600, env=environment)


@pytest.mark.slow
@pytest.mark.parametrize("model, extra", [
    ("resnet18", ["--workers", "2", "--augment", "resized_crop,flip"]),
    ("alexnet_original", ["--workers", "1"]),  # its recipe: 227 crops of 256, flips, PCA
])
def test_train_and_evaluate_on_an_image_folder(tree, tmp_path, model, extra):
    output = str(tmp_path / model)
    run = _cnnkit("train", model, "--dataset", "imagefolder", "--data-dir", tree, "--epochs", "1",
                  "--batch-size", "8", "--eval-batch-size", "4", "--output", output,
                  "--no-progress", *extra)
    assert run.returncode == 0, run.stdout + run.stderr
    for path in ("cat/corrupt.jpg", "dog/truncated.jpg"):  # once, though read every epoch
        assert run.stdout.count(f"warning: skipping {os.path.join(tree, 'train', path)}") == 1
    assert "skipped 2 image file(s) that cannot be decoded" in run.stdout
    assert "Traceback" not in run.stderr
    with open(os.path.join(output, "metrics.jsonl")) as file:
        record = json.loads(file.readline())
    assert record["classes"] == CLASSES and math.isfinite(record["train_loss"])
    for ten_crop in ("--no-ten-crop", "--ten-crop"):
        evaluated = _cnnkit("evaluate", output, "--per-class", ten_crop)
        assert evaluated.returncode == 0, evaluated.stderr
        lines = evaluated.stdout.splitlines()
        assert [line.split()[0] for line in lines[:3]] == CLASSES
        assert "6 test images" in lines[3]


def test_evaluate_refuses_a_folder_of_other_classes(tree, tmp_path):
    from cnnkit.train.evaluate import _check_classes

    other = load_image_folder(tree, train=False)
    with pytest.raises(DataFormatError, match="trained on classes ant, bee"):
        _check_classes("run", {"classes": ["ant", "bee", "cow"]}, other)


def test_train_names_a_missing_data_dir():
    run = _cnnkit("train", "resnet18", "--dataset", "imagefolder", "--epochs", "1")
    assert run.returncode == 1
    assert run.stderr.startswith("cnnkit train: error: (no --data-dir): no image-folder data set")
