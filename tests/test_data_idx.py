"""IDX reader and MNIST-format data sets, on small files written here (and on the real
Fashion-MNIST where Debian's dataset-fashion-mnist is installed)."""

import gzip
import os

import pytest
import torch

from cnnkit.data import (
    DataFormatError,
    DataNotFoundError,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    read_idx,
    write_idx,
    write_synthetic_mnist,
)

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32,
                                   torch.float32, torch.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    tensor = (torch.arange(2 * 3 * 5) * 7 - 20).to(dtype).view(2, 3, 5)
    if dtype == torch.uint8:
        tensor = torch.arange(30, dtype=torch.uint8).view(2, 3, 5) * 8
    path = tmp_path / f"values{suffix}"
    write_idx(path, tensor)
    assert (open(path, "rb").read(2) == b"\x1f\x8b") == (suffix == ".gz")
    result = read_idx(path)
    assert result.dtype == dtype and result.shape == (2, 3, 5)
    assert torch.equal(result, tensor)


def test_idx_is_big_endian(tmp_path):
    path = tmp_path / "be"
    path.write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    assert read_idx(path).tolist() == [0x0102, -2]


def _raw(tmp_path, payload, name="bad"):
    path = tmp_path / name
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("payload, message", [
    (b"\x00\x00", "too short"),
    (b"\x01\x00\x08\x01\x00\x00\x00\x01\x00", "bad magic number"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", r"truncated: shape \(4,\) needs 4 bytes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
])
def test_idx_rejects_malformed_files_naming_the_file(tmp_path, payload, message):
    path = _raw(tmp_path, payload)
    with pytest.raises(DataFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_truncated_gzip(tmp_path):
    data = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    path = _raw(tmp_path, data[: len(data) // 2], "cut.gz")
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="no such file"):
        read_idx(tmp_path / "nothing")
    assert issubclass(DataNotFoundError, FileNotFoundError)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_format_directory(tmp_path, compress):
    write_synthetic_mnist(tmp_path, train=50, test=20, compress=compress)
    train, test = load_mnist(tmp_path, train=True), load_mnist(tmp_path, train=False)
    assert train.images.shape == (50, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (20, 1, 28, 28) and test.labels.dtype == torch.int64
    assert train.num_classes == 10
    raw_labels = read_idx(tmp_path / ("train-labels-idx1-ubyte" + (".gz" if compress else "")))
    assert torch.equal(train.labels, raw_labels.long())


def test_mnist_count_mismatch_and_label_range(tmp_path):
    write_synthetic_mnist(tmp_path, train=10, test=5)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.zeros(9, dtype=torch.uint8))
    with pytest.raises(DataFormatError, match="9 labels for 10 images"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.full((5,), 10, dtype=torch.uint8))
    with pytest.raises(DataFormatError, match="label 10 out of range"):
        load_mnist(tmp_path, train=False)


def test_mnist_missing_directory_and_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="no such directory"):
        load_mnist(tmp_path / "absent")
    write_synthetic_mnist(tmp_path, train=10, test=5)
    os.unlink(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, train=False)


def test_data_dir_precedence(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    write_synthetic_mnist(first, train=12, test=4)
    write_synthetic_mnist(second, train=7, test=3)
    monkeypatch.setenv("CNNKIT_DATA", str(second))
    assert len(load_dataset("mnist")) == 7
    assert len(load_dataset("mnist", data_dir=first)) == 12
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="no such directory.*or download"):
        load_dataset("mnist")


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    train = load_fashion_mnist(FASHION_DIR, train=True)
    test = load_fashion_mnist(FASHION_DIR, train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class.
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert train.classes[9] == "Ankle boot"
