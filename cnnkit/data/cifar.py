"""CIFAR-10 from the standard python-pickle batches (cifar-10-batches-py).

The batches are pickles; the unpickler here accepts only the numpy classes that an array
needs, so a tampered file cannot run code.
"""

import math
import os
import pickle

import numpy as np
import torch

from .dataset import ImageDataset
from .errors import DataFormatError, DataNotFoundError

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
BATCHES_DIR = "cifar-10-batches-py"
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CheckedArray(np.ndarray):
    """The ndarray class as a CIFAR batch's pickle sees it: its state (shape, dtype, data)
    must describe exactly the bytes it carries, checked in exact integers before numpy
    allocates anything."""

    def __setstate__(self, state):
        shape, dtype, data = state[-4], state[-3], state[-1]
        if not isinstance(data, bytes) or not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise pickle.UnpicklingError("an array's data must be raw bytes of a plain dtype")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise pickle.UnpicklingError(f"bad array shape {_describe(shape)}")
        needed = math.prod(shape) * dtype.itemsize
        if needed != len(data):
            raise pickle.UnpicklingError(f"an array of shape {_describe(shape)} needs {needed} bytes, got {len(data)}")
        super().__setstate__(state)


def _reconstruct(subtype, shape, dtype):
    """numpy's _reconstruct for the empty placeholder numpy pickles an array as (shape
    (0,)): its real shape comes with its data, in _CheckedArray.__setstate__."""
    if not isinstance(shape, tuple) or math.prod(d if isinstance(d, int) else 1 for d in shape) != 0:
        raise pickle.UnpicklingError(f"array placeholder of shape {_describe(shape)}, expected an empty one")
    return np.ndarray.__new__(_CheckedArray, shape, dtype)


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if name == "_reconstruct":
            return _reconstruct
        if name == "ndarray":
            return _CheckedArray
        return super().find_class(module, name)


def _data(path, values):
    try:
        return np.asarray(values).view(np.ndarray)
    except (TypeError, ValueError) as error:  # ragged nested lists, for one
        raise DataFormatError(f"{path}: data is not an array ({error})") from None


def _labels(path, values):
    """int64 labels; strings, None, floats, a lone number or ragged lists are refused,
    not converted or truncated."""
    try:
        labels = np.asarray(values)
    except (TypeError, ValueError):
        labels = None
    # An empty list comes out as float64: no label, nothing to refuse.
    if labels is None or labels.ndim != 1 or (labels.dtype.kind not in "iu" and labels.size):
        raise DataFormatError(
            f"{path}: labels must be a list of integers, got {_describe(values)}")
    return labels.astype(np.int64)


def _describe(values):
    """A short one-line repr, for an error message."""
    text = " ".join(repr(values).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _read_batch(path):
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except FileNotFoundError:
        raise DataNotFoundError(
            f"{path}: no such file; point --data-dir (or CNNKIT_DATA) at the extracted "
            f"{BATCHES_DIR} directory of CIFAR-10"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, MemoryError) as error:
        raise DataFormatError(
            f"{path}: not a readable CIFAR-10 batch ({error}); download and extract it again"
        ) from None
    if not isinstance(batch, dict):
        raise DataFormatError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    try:
        data, labels = _data(path, batch["data"]), _labels(path, batch["labels"])
    except KeyError as error:
        raise DataFormatError(f"{path}: missing key {error.args[0]!r}") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(
            f"{path}: expected uint8 data of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (data.shape[0],):
        raise DataFormatError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataFormatError(f"{path}: labels out of range 0..{len(CIFAR10_CLASSES) - 1}")
    return data, labels


def _batches_directory(directory):
    """cifar-10-batches-py itself, given it or its parent."""
    directory = os.fspath(directory)
    inner = os.path.join(directory, BATCHES_DIR)
    return inner if os.path.isdir(inner) else directory


def is_cifar10_directory(directory):
    """True if `directory` (cifar-10-batches-py or its parent) holds all six batch files."""
    directory = _batches_directory(directory)
    return all(os.path.isfile(os.path.join(directory, name)) for name in TRAIN_BATCHES + TEST_BATCHES)


def load_cifar10(directory, train=True):
    """The training (50,000) or test (10,000) split; `directory` is cifar-10-batches-py or
    its parent."""
    directory = _batches_directory(directory)
    if not os.path.isdir(directory):
        raise DataNotFoundError(
            f"{directory}: no such directory; pass --data-dir (or set CNNKIT_DATA) to the "
            f"extracted {BATCHES_DIR} directory of CIFAR-10"
        )
    parts = [_read_batch(os.path.join(directory, name))
             for name in (TRAIN_BATCHES if train else TEST_BATCHES)]
    data = np.concatenate([data for data, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    images = torch.from_numpy(data).view(-1, 3, 32, 32)  # rows are R plane, G plane, B plane
    return ImageDataset(images, torch.from_numpy(labels), CIFAR10_CLASSES, "cifar10")
