"""cnnkit.functional.bn_act_conv2d: conv(act(BN(x))) that keeps only x for backward."""

import pytest
import torch
from torch import nn

from cnnkit.functional import conv_bn
from cnnkit.functional.conv_bn import bn_act_conv2d
from cnnkit.nn.conv_bn import bn_act_conv
from cnnkit.reference import conv_bn as reference

ACTIVATIONS = ["relu", "leaky_relu", None]


def bn_conv_args(channels=6, out_channels=8, groups=2, dtype=torch.float64, bias=True):
    """(running_mean, running_var, bn_weight, bn_bias, conv_weight, conv_bias)."""
    return (
        torch.randn(channels, dtype=dtype) * 0.2,
        torch.rand(channels, dtype=dtype) + 0.5,
        (torch.rand(channels, dtype=dtype) + 0.5).requires_grad_(),
        torch.randn(channels, dtype=dtype).requires_grad_(),
        torch.randn(out_channels, channels // groups, 3, 3, dtype=dtype).requires_grad_(),
        torch.randn(out_channels, dtype=dtype).requires_grad_() if bias else None,
    )


@pytest.fixture(params=["kernels", "torch_ops"])
def bn_backend(request, monkeypatch):
    """Runs a test on cnnkit's BN-act kernels and on the torch-op fallback."""
    if request.param == "torch_ops":
        monkeypatch.setattr(conv_bn, "_use_kernels", lambda *args: False)
    elif not conv_bn._use_kernels(torch.zeros(1, 1, 1, 1), None, None):
        pytest.skip("cnnkit._C has no batch_norm_act kernel")
    return request.param


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(training, activation, layout, bn_backend):
    rm, rv, g, b, w, cb = bn_conv_args(channels=4, out_channels=4)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    conv = dict(stride=2, padding=1, groups=2)

    def function(x, g, b, w, cb):  # fresh running stats: each call updates them in training
        return bn_act_conv2d(
            x, rm.clone(), rv.clone(), g, b, w, cb, training, 0.1, 1e-5, activation, 0.2, **conv
        )

    assert torch.autograd.gradcheck(function, (x, g, b, w, cb), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_eager_with_running_stats(affine, training, layout, dtype, bn_backend):
    rm, rv, g, b, w, _ = bn_conv_args(dtype=torch.float32, bias=False)
    if not affine:
        g = b = None
    w = w.detach().to(dtype).requires_grad_()
    x = torch.randn(4, 6, 9, 9, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = bn_act_conv2d(
        x_ours, rm, rv, g, b, w, None, training, 0.3, 1e-5, "relu", padding=1, groups=2
    )
    expected = reference.bn_act_conv2d(
        x_ref, rm_ref, rv_ref, g, b, w, None, training, 0.3, 1e-5, "relu", padding=1, groups=2
    )
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=1e-1)
    torch.testing.assert_close(ours, expected, **tol)
    torch.testing.assert_close(rm, rm_ref), torch.testing.assert_close(rv, rv_ref)
    grad = torch.randn_like(expected)
    params = [t for t in (g, b, w) if t is not None]
    got = torch.autograd.grad(ours, [x_ours, *params], grad)
    want = torch.autograd.grad(expected, [x_ref, *params], grad)
    for name, a, e in zip(["input", "bn_weight", "bn_bias", "conv_weight"][: len(got)], got, want):
        scale = e.abs().max().clamp_min(1.0)  # bf16 sums over N*H*W: compare relative to size
        torch.testing.assert_close(a / scale, e / scale, **tol, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track_running_stats", [True, False])
def test_module_helper_matches_nn_modules(momentum, track_running_stats):
    bn = nn.BatchNorm2d(4, momentum=momentum, track_running_stats=track_running_stats)
    conv = nn.Conv2d(4, 5, 3, padding=1, bias=False)
    bn_ref, conv_ref = (
        nn.BatchNorm2d(4, momentum=momentum, track_running_stats=track_running_stats),
        nn.Conv2d(4, 5, 3, padding=1, bias=False),
    )
    bn_ref.load_state_dict(bn.state_dict()), conv_ref.load_state_dict(conv.state_dict())
    for step in range(3):
        training = step < 2
        bn.train(training), bn_ref.train(training)
        x = torch.randn(2, 4, 6, 6, requires_grad=True)
        out = bn_act_conv(bn, conv, x)
        expected = conv_ref(torch.relu(bn_ref(x)))
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        out.sum().backward(), expected.sum().backward()
    for (name, mine), theirs in zip(bn.state_dict().items(), bn_ref.state_dict().values()):
        torch.testing.assert_close(mine, theirs, msg=name)
    torch.testing.assert_close(conv.weight.grad, conv_ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.weight.grad, bn_ref.weight.grad, rtol=1e-4, atol=1e-4)


def test_empty_batch():
    rm, rv, g, b, w, cb = bn_conv_args(dtype=torch.float32)
    x = torch.randn(0, 6, 5, 5, requires_grad=True)
    out = bn_act_conv2d(x, rm, rv, g, b, w, cb, True, 0.1, 1e-5, "relu", groups=2)
    assert out.shape == (0, 8, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(w.grad) == 0


def test_bad_input():
    rm, rv, g, b, w, cb = bn_conv_args(dtype=torch.float32)
    with pytest.raises(ValueError, match="4D input"):
        bn_act_conv2d(torch.randn(6, 5, 5), rm, rv, g, b, w, cb, groups=2)
    with pytest.raises(RuntimeError, match="running_mean should contain 6 elements not 5"):
        bn_act_conv2d(torch.randn(2, 6, 5, 5), rm[:5], rv, g, b, w, cb, groups=2)
    with pytest.raises(RuntimeError, match="conv_weight"):
        bn_act_conv2d(torch.randn(2, 6, 5, 5), rm, rv, g, b, w, cb, groups=1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_act_conv2d(torch.randn(1, 6, 1, 1), rm, rv, g, b, w, cb, True, padding=1, groups=2)
    with pytest.raises(ValueError, match="activation"):
        bn_act_conv2d(torch.randn(2, 6, 5, 5), rm, rv, g, b, w, cb, activation="gelu", groups=2)
    with pytest.raises(ValueError, match="padding"):
        bn_act_conv2d(torch.randn(2, 6, 5, 5), rm, rv, g, b, w, cb, padding="same", groups=2)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        bn_act_conv2d(torch.randn(2, 6, 5, 5), None, None, g, b, w, cb, False, groups=2)


def test_module_helper_rejects_padding_modes():
    conv = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding_mode"):
        bn_act_conv(nn.BatchNorm2d(4), conv, torch.randn(2, 4, 5, 5))


def saved_bytes(function):
    """Bytes autograd keeps for backward while `function` runs, each storage counted once."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = function()
    return sum(storages.values()), output


def test_chain_keeps_one_activation_per_layer():
    """conv -> (BN -> ReLU -> conv) x 3: eager keeps the BN input and the ReLU output of
    every link; bn_act_conv2d keeps only the BN input."""
    torch.manual_seed(0)
    channels, links = 16, 3
    convs = [nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(links + 1)]
    norms = [nn.BatchNorm2d(channels) for _ in range(links)]
    x = torch.randn(4, channels, 16, 16, requires_grad=True)
    activation_bytes = x.numel() * x.element_size()

    def eager():
        out = convs[0](x)
        for bn, conv in zip(norms, convs[1:]):
            out = conv(torch.relu(bn(out)))
        return out

    def ours():
        out = convs[0](x)
        for bn, conv in zip(norms, convs[1:]):
            out = bn_act_conv(bn, conv, out)
        return out

    eager_bytes, expected = saved_bytes(eager)
    ours_bytes, got = saved_bytes(ours)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    weights_and_stats = sum(c.weight.numel() * 4 for c in convs) + 4 * links * channels * 4 * 2
    # x, the first conv's output and each link's BN input: links + 1 activations.
    assert ours_bytes <= (links + 1) * activation_bytes + weights_and_stats
    # Eager also keeps each link's ReLU output: `links` more activations.
    assert eager_bytes - ours_bytes >= links * activation_bytes


@pytest.mark.slow
def test_compile_fullgraph():
    rm, rv, g, b, w, cb = bn_conv_args(dtype=torch.float32)
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    compiled = torch.compile(bn_act_conv2d, fullgraph=True)
    out = compiled(x, rm, rv, g, b, w, cb, True, 0.1, 1e-5, "relu", 0.01, 1, 1, 1, 2)
    expected = reference.bn_act_conv2d(
        x, rm_ref, rv_ref, g, b, w, cb, True, 0.1, 1e-5, "relu", padding=1, groups=2
    )
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rm, rm_ref)
    got = torch.autograd.grad(out.square().sum(), [x, g, w])
    want = torch.autograd.grad(expected.square().sum(), [x, g, w])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("training", [True, False])
@torch.backends.cudnn.flags(enabled=True, allow_tf32=False)  # TF32 would blur the comparison
def test_cuda_matches_eager(training):
    rm, rv, g, b, w, cb = (
        t.detach().cuda().float() if t is not None else None for t in bn_conv_args()
    )
    g.requires_grad_(), w.requires_grad_()
    x = torch.randn(4, 6, 9, 9, device="cuda", requires_grad=True)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    out = bn_act_conv2d(x, rm, rv, g, b, w, cb, training, 0.1, 1e-5, "relu", padding=1, groups=2)
    expected = reference.bn_act_conv2d(
        x, rm_ref, rv_ref, g, b, w, cb, training, 0.1, 1e-5, "relu", padding=1, groups=2
    )
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rm, rm_ref), torch.testing.assert_close(rv, rv_ref)
    got = torch.autograd.grad(out.square().sum(), [x, g, w])
    want = torch.autograd.grad(expected.square().sum(), [x, g, w])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-3, atol=1e-3)
