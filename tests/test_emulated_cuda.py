"""The CUDA kernels of csrc/cuda, executed on the CPU through the test-only emulation of the
CUDA execution model (tests/cuda_emulation, tests/emulated_cuda.py), against the CPU kernels
and cnnkit.reference.

What this proves: the kernels' arithmetic, indexing, bounds, grid and block mapping,
workspace use, and synchronisation within a block (each block's threads interleave exactly at
__syncthreads, in both orders; a missing barrier gives wrong results, as the probe shows). Under
scripts/sanitize.sh every access is checked by AddressSanitizer and UBSan. What it does not
prove: anything about the GPU's memory model, caches, warps or timing, and the 64-bit index
paths (the shapes are small). The tests marked `cuda` run the same kernels on a GPU.
"""

import pytest
import torch

from cnnkit import reference

import emulated_cuda

pytestmark = pytest.mark.emulated_cuda


@pytest.fixture(scope="module")
def kernels():
    if emulated_cuda.cuda_include_dir() is None:
        pytest.skip("the CUDA toolkit's headers (cuda_fp16.h) are not installed; set CUDA_HOME")
    library = emulated_cuda.load_library()
    yield library
    library.set_schedule("forward")


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# The GPU tests' tolerances (test_batch_norm.py, test_lrn.py): outputs of the input's dtype.
OUTPUT_TOLERANCE = {
    torch.float32: dict(atol=2e-5, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
}
# Statistics and sums are float (double for double) whatever the input: float32's bar.
STATS_TOLERANCE = {torch.float64: OUTPUT_TOLERANCE[torch.float64]}
# (shape, memory format): C below and above one block's 32 channel columns and not a multiple
# of it, a single element, BatchNorm1d's (N, C), N*S = 4551 (five slices of positions, with
# uneven boundaries), and a 5-d input.
CASES = [
    ((2, 3, 5, 7), torch.contiguous_format),
    ((2, 3, 5, 7), torch.channels_last),
    ((3, 37, 4, 3), torch.contiguous_format),
    ((3, 37, 4, 3), torch.channels_last),
    ((1, 1, 1, 1), torch.channels_last),
    ((1, 1, 1, 1), torch.contiguous_format),
    ((4, 5), torch.contiguous_format),
    ((3, 2, 37, 41), torch.contiguous_format),
    ((3, 2, 37, 41), torch.channels_last),
    ((2, 33, 2, 3, 4), torch.channels_last_3d),
]
CASE_IDS = [f"{'x'.join(map(str, shape))}-{str(fmt).split('.')[-1]}" for shape, fmt in CASES]


def stats_tolerance(dtype):
    return STATS_TOLERANCE.get(dtype, OUTPUT_TOLERANCE[torch.float32])


def reference_dtype(dtype):
    """The CPU kernels' dtype for a comparison: CPU has no float16 kernel, and float for both
    half types keeps the comparison to the emulated kernel's own rounding."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def make_input(shape, memory_format, dtype, scale=1.0, offset=0.0):
    x = torch.randn(shape, dtype=torch.float64) * scale + offset
    return x.to(dtype).contiguous(memory_format=memory_format)


def channel_params(channels, dtype):
    """weight, bias, mean, invstd of the statistics dtype, as the CUDA glue passes them."""
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.rand(channels, dtype=stats) + 0.5
    bias = torch.randn(channels, dtype=stats) * 0.2
    mean = torch.randn(channels, dtype=stats) * 0.1
    invstd = torch.rand(channels, dtype=stats) + 0.5
    return weight, bias, mean, invstd


# ---------------------------------------------------------------- the emulation itself


def test_emulation_exposes_a_missing_barrier(kernels):
    x = torch.randn(20 * 64)
    expected = x.view(20, 64).sum(1)
    for schedule in ("forward", "reverse"):
        kernels.set_schedule(schedule)
        torch.testing.assert_close(kernels.block_sum(x, synchronised=True), expected)
    kernels.set_schedule("forward")
    wrong = kernels.block_sum(x, synchronised=False)
    assert not torch.allclose(wrong, expected), "a block sum without __syncthreads came out right"


def test_a_launch_cuda_would_refuse_is_an_error(kernels):
    with pytest.raises(RuntimeError, match="CUDA error 9"):  # cudaErrorInvalidConfiguration
        kernels.block_sum(torch.randn(0), synchronised=True)


# ---------------------------------------------------------------- batch norm


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, memory_format", CASES, ids=CASE_IDS)
def test_batch_norm_stats(kernels, shape, memory_format, dtype, schedule):
    kernels.set_schedule(schedule)
    x = make_input(shape, memory_format, dtype, scale=2.0, offset=0.5)
    mean, var = kernels.batch_norm_stats(x)
    expected_mean, expected_var = torch.ops.cnnkit.batch_norm_stats(x.to(reference_dtype(dtype)))
    torch.testing.assert_close(mean, expected_mean, **stats_tolerance(dtype))
    torch.testing.assert_close(var, expected_var, **stats_tolerance(dtype))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_batch_statistics_are_stable_for_large_offsets(kernels, memory_format):
    # test_batch_norm.py's bar for the CPU kernel: Welford on raw values, one thread per
    # run of positions, missed it (2e-4 to 1e-3 relative error in the variance).
    x = torch.randn(16, 4, 64, 64, dtype=torch.float64) * 0.01 + 1000
    mean, var = kernels.batch_norm_stats(x.float().contiguous(memory_format=memory_format))
    torch.testing.assert_close(mean.double(), x.mean((0, 2, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(var.double(), x.var((0, 2, 3), unbiased=False), atol=0, rtol=1e-4)


def test_workspace_is_sized_by_the_slices_launched(kernels):
    # A wide BatchNorm1d: one slice of positions per channel, so 3 statistics per channel
    # (it was 3 * 64 per channel whatever the batch: 768 MB for a million channels).
    assert kernels.workspace_elements(torch.empty(4, 10**6)) == 3 * 10**6
    # Five slices (N*S = 4551, slices of at least 1024 positions), and the stats run within
    # that workspace: it starts as NaN, and ASan (scripts/sanitize.sh) sees any access past
    # its end.
    x = make_input((3, 2, 37, 41), torch.contiguous_format, torch.float32)
    assert kernels.workspace_elements(x) == 3 * 5 * 2
    mean, _ = kernels.batch_norm_stats(x)
    assert torch.isfinite(mean).all()


@pytest.mark.parametrize("shape", [(0, 5, 3, 3), (2, 0, 3, 3), (2, 5, 0, 3)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_empty_inputs(kernels, shape, memory_format):
    """No launch for an empty tensor (the emulation, like CUDA, refuses an empty grid), and
    the statistics of an empty batch are zero."""
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    mean, var = kernels.batch_norm_stats(x)
    assert mean.eq(0).all() and var.eq(0).all()
    weight, bias, mean, invstd = channel_params(shape[1], x.dtype)
    y, _ = kernels.batch_norm_act(x, weight, bias, x, mean, invstd, 1, 0.0, save_mask=True)
    assert y.shape == x.shape
    sums = kernels.batch_norm_act_backward_reduce(x, x, None, weight, bias, mean, invstd, 1, 0.0)
    assert all(s.eq(0).all() for s in sums)
    dx, _ = kernels.batch_norm_act_backward_apply(x, x, None, weight, bias, mean, invstd, mean,
                                                  mean, 1, 0.0, residual_grad=True)
    assert dx.shape == x.shape
    assert kernels.local_response_norm(x, 3, 1e-4, 0.75, 1.0, "torch").shape == x.shape
    assert kernels.local_response_norm_backward(x, x, 3, 1e-4, 0.75, 1.0, "torch").shape == x.shape


FORWARD_VARIANTS = [  # activation, residual, saved mask (the glue saves it with a residual)
    (0, False, False),
    (1, False, False),
    (2, False, False),
    (1, True, True),
    (2, True, True),
]


@pytest.mark.parametrize("activation, with_residual, save_mask", FORWARD_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, memory_format", CASES, ids=CASE_IDS)
def test_batch_norm_act_forward(
    kernels, shape, memory_format, dtype, activation, with_residual, save_mask
):
    x = make_input(shape, memory_format, dtype)
    residual = make_input(shape, memory_format, dtype) if with_residual else None
    weight, bias, mean, invstd = channel_params(shape[1], dtype)
    y, mask = kernels.batch_norm_act(
        x, weight, bias, residual, mean, invstd, activation, 0.1, save_mask
    )
    ref = reference_dtype(dtype)
    ref_residual = residual.to(ref) if with_residual else None
    expected, expected_mask = torch.ops.cnnkit.batch_norm_act(
        x.to(ref), weight, bias, ref_residual, mean, invstd, True, activation, 0.1)
    torch.testing.assert_close(y, expected.to(dtype), **OUTPUT_TOLERANCE[dtype])
    assert y.is_contiguous(memory_format=memory_format)
    if save_mask:
        torch.testing.assert_close(mask, expected_mask)


@pytest.mark.parametrize(
    "activation, with_mask", [(0, False), (1, False), (2, False), (1, True), (2, True)]
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, memory_format", CASES, ids=CASE_IDS)
def test_batch_norm_act_backward(kernels, shape, memory_format, dtype, activation, with_mask):
    """The backward's two launchers: the per-channel sums, then grad_input (and the residual's
    gradient) from their batch means."""
    x, dy = make_input(shape, memory_format, dtype), make_input(shape, memory_format, dtype)
    weight, bias, mean, invstd = channel_params(shape[1], dtype)
    mask = (torch.rand(shape) > 0.4).contiguous(memory_format=memory_format) if with_mask else None
    ref = reference_dtype(dtype)
    ref_mask = mask if with_mask else torch.empty(0, dtype=torch.bool)
    sums = kernels.batch_norm_act_backward_reduce(
        dy, x, mask, weight, bias, mean, invstd, activation, 0.1
    )
    expected_sums = torch.ops.cnnkit.batch_norm_act_backward_reduce(
        dy.to(ref), x.to(ref), weight, bias, ref_mask, mean, invstd, activation, 0.1
    )
    for got, expected in zip(sums, expected_sums):
        torch.testing.assert_close(got, expected, **stats_tolerance(dtype))

    count = x.numel() // x.shape[1]
    mean_grad, mean_grad_centered = (s / count for s in expected_sums)
    dx, dr = kernels.batch_norm_act_backward_apply(
        dy, x, mask, weight, bias, mean, invstd, mean_grad, mean_grad_centered, activation, 0.1,
        residual_grad=True)
    expected_dx, expected_dr = torch.ops.cnnkit.batch_norm_act_backward_apply(
        dy.to(ref), x.to(ref), weight, bias, ref_mask, mean, invstd, mean_grad, mean_grad_centered,
        activation, 0.1, True)
    torch.testing.assert_close(dx, expected_dx.to(dtype), **OUTPUT_TOLERANCE[dtype])
    torch.testing.assert_close(dr, expected_dr.to(dtype), **OUTPUT_TOLERANCE[dtype])
    assert dx.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "shape, memory_format", CASES[2:4] + CASES[7:], ids=CASE_IDS[2:4] + CASE_IDS[7:]
)
def test_training_step_matches_the_reference(kernels, shape, memory_format, dtype):
    """Statistics, BN + add + ReLU forward and its backward, composed as the op's training
    path composes them, against cnnkit.reference's formulas."""
    eps = 1e-5
    x = make_input(shape, memory_format, dtype, scale=3.0, offset=-1.0)
    residual, dy = make_input(shape, memory_format, dtype), make_input(shape, memory_format, dtype)
    weight, bias, _, _ = channel_params(shape[1], dtype)
    mean, var = kernels.batch_norm_stats(x)
    invstd = (var + eps).rsqrt()
    y, mask = kernels.batch_norm_act(
        x, weight, bias, residual, mean, invstd, 1, 0.0, save_mask=True
    )
    expected = reference.batch_norm_act(
        x, None, None, weight.to(dtype), bias.to(dtype), True, eps=eps, residual=residual
    )
    torch.testing.assert_close(y, expected, **OUTPUT_TOLERANCE[dtype])

    count = x.numel() // x.shape[1]
    sum_g, sum_gx = kernels.batch_norm_act_backward_reduce(
        dy, x, mask, weight, bias, mean, invstd, 1, 0.0
    )
    dx, dr = kernels.batch_norm_act_backward_apply(
        dy, x, mask, weight, bias, mean, invstd, sum_g / count, sum_gx / count, 1, 0.0,
        residual_grad=True)
    grads = reference.batch_norm_act_backward(dy, x, weight, bias, mask, mean, invstd, True, 1, 0.0)
    torch.testing.assert_close(dx, grads[0], **OUTPUT_TOLERANCE[dtype])
    torch.testing.assert_close(sum_gx * invstd, grads[1], **OUTPUT_TOLERANCE[dtype])  # grad_weight
    torch.testing.assert_close(sum_g, grads[2], **OUTPUT_TOLERANCE[dtype])  # grad_bias
    torch.testing.assert_close(dr, grads[3], **OUTPUT_TOLERANCE[dtype])


# ---------------------------------------------------------------- local response norm

LRN_CASES = [
    ((3, 37, 7, 9), torch.contiguous_format),
    ((3, 37, 7, 9), torch.channels_last),
    ((1, 1, 1, 1), torch.contiguous_format),
    ((2, 6, 5), torch.contiguous_format),
    ((2, 7, 2, 3, 2), torch.channels_last_3d),
]
LRN_IDS = [f"{'x'.join(map(str, shape))}-{str(fmt).split('.')[-1]}" for shape, fmt in LRN_CASES]


@pytest.mark.parametrize(
    "convention, size",
    [
        ("torch", 1),
        ("torch", 2),
        ("torch", 5),
        ("torch", 8),
        ("caffe", 5),
        ("cudnn", 4),
        ("tf", 3),
        ("paper", 5),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, memory_format", LRN_CASES, ids=LRN_IDS)
def test_local_response_norm(kernels, shape, memory_format, dtype, convention, size):
    x = make_input(shape, memory_format, dtype, scale=2.0)
    g = make_input(shape, memory_format, dtype)
    args = (size, 0.3, 0.75, 1.7, convention)
    ref = reference_dtype(dtype)
    y = kernels.local_response_norm(x, *args)
    expected = torch.ops.cnnkit.local_response_norm(x.to(ref), *args)
    tol = OUTPUT_TOLERANCE[dtype]
    torch.testing.assert_close(y, expected.to(dtype), **tol)
    assert y.is_contiguous(memory_format=memory_format)
    gx = kernels.local_response_norm_backward(g, x, *args)
    expected_gx = torch.ops.cnnkit.local_response_norm_backward(g.to(ref), x.to(ref), *args)
    torch.testing.assert_close(
        gx, expected_gx.to(dtype), atol=tol["atol"] * 2, rtol=tol["rtol"] * 2
    )
