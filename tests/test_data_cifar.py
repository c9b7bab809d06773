"""CIFAR-10 reader on small batches in the standard python-pickle format, written here."""

import os
import pickle

import numpy as np
import pytest
import torch

from cnnkit.data import CIFAR10_CLASSES, DataFormatError, DataNotFoundError, load_cifar10


def _write_batch(path, data, labels):
    # The originals are Python 2 pickles with byte-string keys.
    with open(path, "wb") as file:
        pickle.dump({b"batch_label": b"x", b"labels": list(labels), b"data": data,
                     b"filenames": [b"f"] * len(labels)}, file, protocol=2)


def _write_cifar(root, per_batch=4):
    directory = root / "cifar-10-batches-py"
    directory.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        _write_batch(directory / name, data, labels)
        batches[name] = (data, labels)
    return directory, batches


def test_cifar10_reads_train_and_test(tmp_path):
    directory, batches = _write_cifar(tmp_path)
    for source in (tmp_path, directory):  # the batches directory or its parent
        train = load_cifar10(source, train=True)
        assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
        assert train.classes == CIFAR10_CLASSES
    test = load_cifar10(directory, train=False)
    data, labels = batches["test_batch"]
    assert test.labels.tolist() == labels.tolist()
    # Each row is the red plane, then green, then blue, each row-major 32x32.
    image = data[1]
    assert test.images[1, 0, 0, 5] == image[5]
    assert test.images[1, 1, 2, 3] == image[1024 + 2 * 32 + 3]
    assert test.images[1, 2, 31, 31] == image[3071]
    second_batch = torch.from_numpy(batches["data_batch_2"][0])
    assert torch.equal(train.images[4:8].reshape(4, -1), second_batch)


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match="no such directory"):
        load_cifar10(tmp_path / "absent")
    directory, _ = _write_cifar(tmp_path)
    os.unlink(directory / "data_batch_3")
    with pytest.raises(DataNotFoundError, match="data_batch_3"):
        load_cifar10(directory)


def test_cifar10_bad_content(tmp_path):
    directory, _ = _write_cifar(tmp_path)
    _write_batch(directory / "test_batch", np.zeros((2, 100), np.uint8), [0, 1])
    with pytest.raises(DataFormatError, match=r"shape \(N, 3072\)"):
        load_cifar10(directory, train=False)
    (directory / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataFormatError, match="not a readable CIFAR-10 batch"):
        load_cifar10(directory, train=False)


@pytest.mark.parametrize("labels", [["a", "b"], None, [0.5, 1.5], [[0], [1, 2]], 3])
def test_cifar10_labels_that_are_not_integers(tmp_path, labels):
    directory, _ = _write_cifar(tmp_path)
    with open(directory / "test_batch", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, file)
    with pytest.raises(DataFormatError, match=r"test_batch: labels must be a list of integers"):
        load_cifar10(directory, train=False)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path):
    directory, _ = _write_cifar(tmp_path)
    with open(directory / "test_batch", "wb") as file:
        pickle.dump({b"data": _Exploit(), b"labels": []}, file)
    with pytest.raises(DataFormatError, match="not allowed"):
        load_cifar10(directory, train=False)
