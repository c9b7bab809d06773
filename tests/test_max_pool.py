"""cnnkit.ops.max_pool2d (index-free max pooling for inference) against torch's max_pool2d:
the same values exactly (a maximum rounds nothing), the same errors."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnkit
from cnnkit.functional import max_pool2d

pytestmark = pytest.mark.skipif(not cnnkit._ops.has_kernel("max_pool2d", "cpu"),
                                reason="cnnkit built without its CPU kernels")

# (kernel_size, stride, padding, dilation, ceil_mode)
WINDOWS = [
    (2, None, 0, 1, False),  # VGG's
    (3, 2, 1, 1, False),  # ResNet's
    (3, 2, 0, 1, True),  # AlexNet's, with ceil_mode
    ((3, 2), (2, 1), (1, 0), (1, 2), False),
    (3, 1, 1, 2, True),
    (1, 1, 0, 1, False),
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# channels: fewer than one vector, not a multiple of it, several vectors
CHANNELS = [3, 17, 64]


def in_layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # dense in neither order: the kernel copies it first
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x.contiguous()


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("channels", CHANNELS)
def test_values_equal_torch(window, dtype, layout, channels):
    kernel, stride, padding, dilation, ceil_mode = window
    x = in_layout(torch.randn(2, channels, 11, 9).to(dtype), layout)
    expected = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    got = max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    assert got.dtype == dtype and got.shape == expected.shape
    assert torch.equal(got, expected)
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_infinity_as_torch(layout):
    x = torch.randn(1, 19, 8, 8)
    x[0, 3, 2, 2] = float("nan")
    x[0, 18, 5, 5] = float("nan")
    x[0, 7] = float("-inf")
    x = in_layout(x, layout)
    expected = F.max_pool2d(x, 3, 2, 1)
    torch.testing.assert_close(max_pool2d(x, 3, 2, 1), expected, rtol=0, atol=0, equal_nan=True)
    assert max_pool2d(x, 3, 2, 1).isnan().sum() == expected.isnan().sum() > 0


def test_empty_batch():
    x = torch.randn(0, 8, 6, 6)
    assert max_pool2d(x, 2).shape == (0, 8, 3, 3)


@pytest.mark.parametrize("args", [
    (3, 2, 2, 1, False),  # padding above half the kernel
    (3, 1, 0, 1, False),  # a 2x2 input is smaller than the window
    (0, 1, 0, 1, False),
    (2, 0, 0, 1, False),
    (2, 1, 0, 0, False),
])
def test_errors_as_torch(args):
    x = torch.randn(1, 2, 2, 2)
    with pytest.raises(Exception) as theirs:
        F.max_pool2d(x, *args)
    with pytest.raises(type(theirs.value)):
        torch.ops.cnnkit.max_pool2d(x, *([a] if isinstance(a, int) else a for a in args[:4]),
                                    args[4])


def test_opcheck():
    for layout, window in itertools.product(["contiguous", "channels_last"], WINDOWS[:3]):
        kernel, stride, padding, dilation, ceil_mode = window
        x = in_layout(torch.randn(2, 5, 9, 9), layout)
        args = ([kernel], [] if stride is None else [stride], [padding], [dilation], ceil_mode)
        torch.library.opcheck(torch.ops.cnnkit.max_pool2d.default, (x, *args))


def test_module_is_a_drop_in():
    ours = cnnkit.nn.MaxPool2d(3, 2, 1)
    assert isinstance(ours, nn.MaxPool2d) and repr(ours) == repr(nn.MaxPool2d(3, 2, 1))
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    y = ours(x)  # gradients needed: torch's pooling, with its indices
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(F.max_pool2d(x, 3, 2, 1).sum(), x)[0])
    with torch.no_grad():
        assert torch.equal(ours(x), F.max_pool2d(x, 3, 2, 1))
    values, indices = cnnkit.nn.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(indices, F.max_pool2d(x, 2, return_indices=True)[1])


def test_the_index_free_kernel_runs_without_autograd():
    recorded = []

    class Record(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            recorded.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Record():
        cnnkit.nn.MaxPool2d(2)(torch.randn(1, 3, 4, 4))
    assert recorded[-1] == "cnnkit.max_pool2d"
