"""Reader for the IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/).

Layout: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
dimension, then the values in row-major order, big-endian. Files may be gzip-compressed
(detected by content, not by name).
"""

import gzip
import math
import os
import zlib

import numpy as np
import torch

from .errors import DataFormatError, DataNotFoundError

# type code -> (big-endian numpy dtype, torch dtype)
IDX_TYPES = {
    0x08: (np.dtype(">u1"), torch.uint8),
    0x09: (np.dtype(">i1"), torch.int8),
    0x0B: (np.dtype(">i2"), torch.int16),
    0x0C: (np.dtype(">i4"), torch.int32),
    0x0D: (np.dtype(">f4"), torch.float32),
    0x0E: (np.dtype(">f8"), torch.float64),
}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path):
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a directory, expected an IDX file") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataFormatError(
            f"{path}: corrupt or truncated gzip data ({error}); download the file again"
        ) from None


def read_idx(path):
    """Read an IDX file (raw or gzip) into a tensor of its dtype and shape.

    Raises DataNotFoundError if the file is missing and DataFormatError, naming the file
    and the problem, for a bad magic number, an unknown type code or a size mismatch.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise DataFormatError(
            f"{path}: bad magic number 0x{data[:4].hex()}, expected 0x0000TTNN; not an IDX file"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_TYPES:
        raise DataFormatError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    if ndim == 0:
        raise DataFormatError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataFormatError(
            f"{path}: truncated header, {ndim} dimensions need {header_size} bytes, "
            f"found {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    np_dtype = IDX_TYPES[type_code][0]
    # Exact integers: a fixed-width product of (2^31, 2^31, 4) wraps to 0 and would pass.
    expected = math.prod(shape) * np_dtype.itemsize
    found = len(data) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DataFormatError(
            f"{path}: {problem}: shape {shape} needs {expected} bytes of data, found {found}; "
            "download the file again"
        )
    values = np.frombuffer(data, dtype=np_dtype, offset=header_size).reshape(shape)
    # One copy into native byte order, owned by the tensor (frombuffer's array is read-only).
    return torch.from_numpy(values.astype(np_dtype.newbyteorder("="), copy=True))


def write_idx(path, tensor, compress=None):
    """Write a tensor as an IDX file; gzip-compressed when compress is True or the path
    ends in .gz. The inverse of read_idx (used to make small test and sample files)."""
    path = os.fspath(path)
    codes = {torch_dtype: code for code, (_, torch_dtype) in IDX_TYPES.items()}
    if tensor.dtype not in codes:
        raise TypeError(f"write_idx: dtype {tensor.dtype} has no IDX type code")
    code = codes[tensor.dtype]
    array = tensor.detach().cpu().contiguous().numpy().astype(IDX_TYPES[code][0])
    header = bytes([0, 0, code, tensor.dim()]) + np.asarray(tensor.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    if compress if compress is not None else path.endswith(".gz"):
        payload = gzip.compress(payload)
    with open(path, "wb") as file:
        file.write(payload)
