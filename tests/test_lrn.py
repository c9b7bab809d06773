"""Local Response Normalization: cnnkit's kernels against torch and an independent loop."""

import pytest
import torch
import torch.nn.functional as F

import cnnkit
from cnnkit.functional import local_response_norm

CONVENTIONS = ("torch", "caffe", "cudnn", "tf", "paper")


def layouts(x):
    """The same values as channels-first, channels-last and a non-contiguous view."""
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.to(memory_format=torch.channels_last)
    if x.dim() == 5:
        yield "channels_last_3d", x.to(memory_format=torch.channels_last_3d)
    yield "strided", torch.stack([x, x], dim=-1)[..., 0]


def loop_lrn(x, size, alpha, beta, k, convention):
    """An independent float64 loop over channels, written from each convention's formula."""
    x = x.double()
    C = x.shape[1]
    if convention == "tf":
        lo_off, hi_off, a = size, size, alpha
    elif convention == "paper":
        lo_off, hi_off, a = size // 2, size // 2, alpha
    elif convention == "cudnn":
        lo_off, hi_off, a = (size - 1) // 2, size - (size - 1) // 2 - 1, alpha / size
    elif convention == "caffe":
        lo_off, hi_off, a = (size - 1) // 2, (size - 1) // 2, alpha / size
    else:
        lo_off, hi_off, a = size // 2, (size - 1) // 2, alpha / size
    out = torch.empty_like(x)
    for c in range(C):
        lo, hi = max(0, c - lo_off), min(C - 1, c + hi_off)
        total = (x[:, lo : hi + 1] ** 2).sum(1)
        out[:, c] = x[:, c] / (k + a * total) ** beta
    return out


@pytest.mark.parametrize("size", range(1, 10))
@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (3, 1, 4, 4), (2, 40, 3, 5), (1, 70, 9, 9)])
def test_matches_torch_forward_and_backward(size, shape):
    x = torch.randn(shape) * 3
    grad = torch.randn(shape)
    expected_x = x.clone().requires_grad_()
    expected = F.local_response_norm(expected_x, size)
    expected.backward(grad)
    for name, view in layouts(x):
        ours_x = view.detach().requires_grad_()
        ours = local_response_norm(ours_x, size)
        ours.backward(grad)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(ours_x.grad, expected_x.grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("shape", [(2, 5, 11), (2, 6, 3, 4, 5), (1, 4, 2, 3, 2, 3)])
@pytest.mark.parametrize("size", [1, 2, 5, 8])
def test_ranks_other_than_four(shape, size):
    x = torch.randn(shape, requires_grad=True)
    for name, view in layouts(x.detach()):
        view = view.requires_grad_()
        torch.testing.assert_close(local_response_norm(view, size, 1e-2, 0.6, 1.5),
                                   F.local_response_norm(x, size, 1e-2, 0.6, 1.5), msg=name)


def test_channels_last_output_stays_channels_last():
    x = torch.randn(2, 8, 5, 5).to(memory_format=torch.channels_last)
    assert local_response_norm(x, 3).is_contiguous(memory_format=torch.channels_last)


def test_batch_zero_returns_empty():
    x = torch.randn(0, 4, 3, 3, requires_grad=True)
    y = local_response_norm(x, 3)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    "convention, size",
    # caffe accepts odd sizes only (its error is tested with the bad input)
    [(c, s) for c in CONVENTIONS for s in (1, 2, 3, 4, 5, 7) if c != "caffe" or s % 2],
)
def test_conventions_match_independent_loop(convention, size):
    x = torch.randn(2, 9, 3, 4, dtype=torch.float64)
    alpha, beta, k = 0.3, 0.75, 1.7
    expected = loop_lrn(x, size, alpha, beta, k, convention)
    for name, view in layouts(x):
        ours = local_response_norm(view, size, alpha, beta, k, convention=convention)
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12, msg=name)


def test_even_sizes_separate_torch_and_cudnn_windows():
    x = torch.randn(1, 6, 2, 2, dtype=torch.float64)
    torch_style = local_response_norm(x, 4, 1.0, 1.0, 1.0, convention="torch")
    cudnn_style = local_response_norm(x, 4, 1.0, 1.0, 1.0, convention="cudnn")
    assert not torch.allclose(torch_style, cudnn_style)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gradcheck_float64(convention, memory_format):
    size = 3
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64).to(memory_format=memory_format)
    x.requires_grad_()
    fn = lambda t: local_response_norm(t, size, 0.5, 0.75, 1.2, convention=convention)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("beta", [0.75, 0.5, 0.6])
def test_beta_fast_paths_match_pow(beta):
    x = torch.randn(2, 20, 33, dtype=torch.float64)
    torch.testing.assert_close(local_response_norm(x, 5, 2.0, beta, 0.5),
                               F.local_response_norm(x, 5, 2.0, beta, 0.5))


def test_bfloat16_within_tolerance():
    # bfloat16 keeps 8 bits of mantissa: the kernels accumulate in float, so the result is
    # the float result rounded once, within 1% (two bfloat16 ulps).
    x = torch.randn(4, 32, 9, 9) * 2
    for name, view in layouts(x.bfloat16()):
        ours = local_response_norm(view, 5)
        assert ours.dtype == torch.bfloat16
        torch.testing.assert_close(ours.float(), F.local_response_norm(view.float(), 5),
                                   rtol=1e-2, atol=1e-2, msg=name)
        view = view.detach().requires_grad_()
        local_response_norm(view, 5).sum().backward()
        reference = view.detach().float().requires_grad_()
        F.local_response_norm(reference, 5).sum().backward()
        torch.testing.assert_close(view.grad.float(), reference.grad, rtol=2e-2, atol=2e-2)


def test_sliding_sum_stays_accurate_across_large_magnitudes():
    # Large channels leaving the window must not leave round-off behind in the running sum.
    x = torch.full((1, 200, 4, 4), 1e-3)
    x[:, ::7] = 1e3
    expected = F.local_response_norm(x.double(), 5, 1.0, 0.75, 1e-6).float()
    torch.testing.assert_close(local_response_norm(x, 5, 1.0, 0.75, 1e-6), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("convention", ["torch", "tf"])
def test_opcheck(memory_format, convention):
    x = torch.randn(2, 7, 4, 5).to(memory_format=memory_format).requires_grad_()
    torch.library.opcheck(torch.ops.cnnkit.local_response_norm.default, (x, 3, 1e-3, 0.75, 1.0, convention))
    g = torch.randn(2, 7, 4, 5)
    torch.library.opcheck(torch.ops.cnnkit.local_response_norm_backward.default,
                          (g, x.detach(), 3, 1e-3, 0.75, 1.0, convention))


def test_torch_compile_fullgraph():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), cnnkit.nn.LocalResponseNorm(5), torch.nn.ReLU())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()


def test_module_matches_torch_module():
    ours, theirs = cnnkit.nn.LocalResponseNorm(4, alpha=2e-3, beta=0.6, k=1.5), torch.nn.LocalResponseNorm(4, 2e-3, 0.6, 1.5)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(2, 9, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x))


def test_module_paper_defaults():
    module = cnnkit.nn.LocalResponseNorm(convention="paper")
    assert (module.size, module.alpha, module.beta, module.k) == (5, 1e-4, 0.75, 2.0)
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(module(x), loop_lrn(x, 5, 1e-4, 0.75, 2.0, "paper"))
    with pytest.raises(TypeError, match="size"):
        cnnkit.nn.LocalResponseNorm()


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.randn(3, 4), 3), {}, ValueError, "3D or higher"),
        ((torch.randn(2, 4, 3), 0), {}, ValueError, "size must be >= 1"),
        ((torch.randn(2, 4, 3), -1), {"convention": "tf"}, ValueError, "depth radius"),
        ((torch.randint(0, 3, (2, 4, 3)), 3), {}, NotImplementedError, "floating-point"),
        ((torch.randn(2, 0, 3), 3), {}, ValueError, "at least one channel"),
        ((torch.randn(2, 4, 3), 4), {"convention": "caffe"}, ValueError, "odd"),
        ((torch.randn(2, 4, 3), 3), {"convention": "lua"}, ValueError, "convention"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        local_response_norm(*args, **kwargs)


def test_bad_input_reaches_the_op_directly():
    with pytest.raises(ValueError, match="size must be >= 1"):
        torch.ops.cnnkit.local_response_norm(torch.randn(2, 4, 3), 0, 1e-4, 0.75, 1.0, "torch")
    with pytest.raises(ValueError, match="3D or higher"):
        torch.ops.cnnkit.local_response_norm(torch.randn(4, 3), 3, 1e-4, 0.75, 1.0, "torch")
    with pytest.raises(ValueError, match="grad_output has shape"):
        torch.ops.cnnkit.local_response_norm_backward(torch.randn(2, 4, 4), torch.randn(2, 4, 3),
                                                      3, 1e-4, 0.75, 1.0, "torch")


def test_reference_fallback_on_a_device_without_kernel():
    x = torch.randn(2, 6, 3, 3, device="meta")
    assert local_response_norm(x, 3).shape == x.shape


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size", [1, 2, 5, 8])
def test_cuda_matches_cpu(dtype, memory_format, size):
    x = (torch.randn(3, 37, 7, 9) * 2).to(memory_format=memory_format)
    g = torch.randn(3, 37, 7, 9)
    xc = x.cuda().to(dtype).requires_grad_()
    y = local_response_norm(xc, size)
    y.backward(g.cuda().to(dtype))
    xr = x.to(dtype).float().requires_grad_()
    yr = F.local_response_norm(xr, size)
    yr.backward(g.to(dtype).float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.float().cpu(), yr, rtol=tol, atol=tol)
    torch.testing.assert_close(xc.grad.float().cpu(), xr.grad, rtol=tol * 2, atol=tol * 2)
    assert y.is_contiguous(memory_format=memory_format)


@pytest.mark.cuda
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_cuda_conventions(convention):
    x = torch.randn(2, 9, 3, 4, dtype=torch.float64)
    expected = loop_lrn(x, 3, 0.3, 0.75, 1.7, convention)
    ours = local_response_norm(x.float().cuda(), 3, 0.3, 0.75, 1.7, convention=convention)
    torch.testing.assert_close(ours.cpu().double(), expected, rtol=1e-5, atol=1e-6)


def test_torch_export_keeps_the_op():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), cnnkit.nn.LocalResponseNorm(5))
    exported = torch.export.export(model, (torch.randn(2, 3, 9, 9),))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "cnnkit.local_response_norm.default" in targets
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(exported.module()(x), model(x))
