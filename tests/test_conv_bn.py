"""cnnkit.nn.ConvBNReLU2d against nn.Sequential(nn.Conv2d, nn.BatchNorm2d, activation)."""

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.functional.conv_bn import conv2d_bias_act
from cnnkit.nn.batchnorm import BatchNormReLU2d
from cnnkit.nn.conv_bn import ConvBNReLU2d

TOL = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.bfloat16: dict(rtol=3e-2, atol=5e-2),
}

CONFIGS = [  # (in, out, kernel, stride, padding, dilation, groups, bias)
    dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
    dict(
        in_channels=4,
        out_channels=6,
        kernel_size=3,
        stride=2,
        padding=2,
        dilation=2,
        groups=2,
        bias=True,
    ),
    dict(in_channels=8, out_channels=4, kernel_size=1),
]
ACTIVATIONS = ["relu", "leaky_relu", None]


def eager_act(activation):
    return {"relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.01), None: nn.Identity()}[activation]


def make_pair(config, activation="relu", momentum=0.1, dtype=torch.float32):
    """(ours, eager) with identical, non-trivial state."""
    conv = nn.Conv2d(**{"bias": False, **config}, dtype=dtype)  # our default is bias=False
    bn = nn.BatchNorm2d(config["out_channels"], momentum=momentum, dtype=dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    eager = nn.Sequential(conv, bn, eager_act(activation))
    ours = ConvBNReLU2d(**config, momentum=momentum, activation=activation, dtype=dtype)
    ours.load_state_dict(eager.state_dict())  # nn.Sequential's 0.* / 1.* keys load
    return ours, eager


def to_layout(x, layout):
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x.contiguous()


def assert_state_equal(ours, eager, **tol):
    for (key, mine), (_, theirs) in zip(ours.state_dict().items(), eager.state_dict().items()):
        torch.testing.assert_close(mine, theirs, **tol, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_training_steps_match_eager(config, activation, layout):
    ours, eager = make_pair(config, activation)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        x = to_layout(torch.randn(4, config["in_channels"], 9, 9), layout)
        x_ours, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ours, y_eager = ours(x_ours), eager(x_eager)
        torch.testing.assert_close(y_ours, y_eager, **TOL[torch.float32])
        grad = torch.randn_like(y_eager)
        y_ours.backward(grad)
        y_eager.backward(grad)
        torch.testing.assert_close(x_ours.grad, x_eager.grad, **TOL[torch.float32])
        for (name, p_ours), p_eager in zip(ours.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p_ours.grad, p_eager.grad, **TOL[torch.float32], msg=name)
        opt_ours.step(), opt_eager.step()
        opt_ours.zero_grad(), opt_eager.zero_grad()
    assert ours.bn.num_batches_tracked.item() == 3
    assert_state_equal(ours, eager, **TOL[torch.float32])


def test_momentum_none_is_a_cumulative_average():
    ours, eager = make_pair(CONFIGS[0], momentum=None)
    for _ in range(3):
        x = torch.randn(2, 3, 6, 6)
        ours(x), eager(x)
    assert_state_equal(ours, eager, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_eval_matches_eager(config, activation, layout, dtype):
    ours, eager = make_pair(config, activation, dtype=dtype)
    ours.eval(), eager.eval()
    x = to_layout(torch.randn(3, config["in_channels"], 10, 10, dtype=dtype), layout)
    with torch.no_grad():
        expected = eager(x)
        got = ours(x)
    torch.testing.assert_close(got, expected, **TOL[dtype])
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), expected, **TOL[dtype])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_eval_gradients_match_eager(activation, layout):
    ours, eager = make_pair(CONFIGS[1], activation, dtype=torch.float64)
    ours.eval(), eager.eval()
    x = to_layout(torch.randn(2, 4, 9, 9, dtype=torch.float64), layout)
    x_ours, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_eager = ours(x_ours), eager(x_eager)
    grad = torch.randn_like(y_eager)
    y_ours.backward(grad), y_eager.backward(grad)
    torch.testing.assert_close(y_ours, y_eager)
    torch.testing.assert_close(x_ours.grad, x_eager.grad)
    for (name, p_ours), p_eager in zip(ours.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p_ours.grad, p_eager.grad, msg=name)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_residual_form(training, layout):
    ours, eager = make_pair(CONFIGS[0])
    ours.train(training), eager.train(training)
    conv, bn = eager[0], eager[1]
    x = to_layout(torch.randn(2, 3, 7, 7), layout)
    residual = to_layout(torch.randn(2, 8, 7, 7), layout)
    with torch.no_grad():
        expected = torch.relu(bn(conv(x)) + residual)
        got = ours(x, residual)
    torch.testing.assert_close(got, expected, **TOL[torch.float32])
    x_ours, r_ours = x.clone().requires_grad_(), residual.clone().requires_grad_()
    x_eager, r_eager = x.clone().requires_grad_(), residual.clone().requires_grad_()
    ours(x_ours, residual=r_ours).square().sum().backward()
    torch.relu(bn(conv(x_eager)) + r_eager).square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_eager.grad, **TOL[torch.float32])
    torch.testing.assert_close(r_ours.grad, r_eager.grad, **TOL[torch.float32])


@pytest.mark.parametrize("training", [True, False])
def test_empty_batch(training):
    ours, eager = make_pair(CONFIGS[0])
    ours.train(training), eager.train(training)
    x = torch.randn(0, 3, 5, 5)
    torch.testing.assert_close(ours(x), eager(x))
    assert_state_equal(ours, eager)


def test_state_dict_keys_and_loading():
    ours = ConvBNReLU2d(3, 8, 3, bias=True)
    assert list(ours.state_dict()) == [
        "conv.weight",
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "bn.running_mean",
        "bn.running_var",
        "bn.num_batches_tracked",
    ]
    source = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU())
    with torch.no_grad():
        source[1].running_mean.normal_()
        source[1].num_batches_tracked.fill_(7)
    assert ours.load_state_dict(source.state_dict()) is not None
    torch.testing.assert_close(ours.bn.running_mean, source[1].running_mean)
    assert ours.bn.num_batches_tracked.item() == 7

    class Named(nn.Module):  # a torchvision-style parent holding conv / bn attributes
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, bias=True), nn.BatchNorm2d(8)

    Named().load_state_dict(ours.state_dict())  # strict
    parent = nn.Sequential(ConvBNReLU2d(3, 8, 3, bias=True))
    parent.load_state_dict({"0." + k: v for k, v in source.state_dict().items()})
    torch.testing.assert_close(parent[0].conv.weight, source[0].weight)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ours.load_state_dict({**source.state_dict(), "2.weight": torch.zeros(1)})


def eval_output(module, x):
    with torch.no_grad():
        return module(x)


def test_eval_follows_every_change():
    """Nothing is cached: in-place edits, loads, eps, conversions, optimizer steps and
    edits through .data all show in the next eval call."""
    ours, eager = make_pair(CONFIGS[1])
    ours.eval(), eager.eval()
    x = torch.randn(2, 4, 9, 9)

    def check():
        torch.testing.assert_close(
            eval_output(ours, x), eval_output(eager, x), **TOL[torch.float32]
        )

    check()

    with torch.no_grad():  # in-place edits of every parameter and buffer
        for mine, theirs in zip(ours.state_dict().values(), eager.state_dict().values()):
            if mine.is_floating_point():
                mine.mul_(1.1), theirs.mul_(1.1)
                check()

    other = ConvBNReLU2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True)
    with torch.no_grad():
        other.bn.running_var.fill_(3.0)
    ours.load_state_dict(other.state_dict())
    eager.load_state_dict(
        {k.replace("conv.", "0.").replace("bn.", "1."): v for k, v in other.state_dict().items()}
    )
    check()

    ours.bn.eps = eager[1].eps = 0.5
    check()

    ours.double(), eager.double()
    x = x.double()
    assert eval_output(ours, x).dtype == torch.float64
    check()

    ours.train(), eager.train()
    opt = torch.optim.SGD(ours.parameters(), lr=0.5)
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.5)
    ours(x).sum().backward(), eager(x).sum().backward()
    opt.step(), opt_eager.step()
    ours.eval(), eager.eval()
    check()

    with torch.no_grad():  # .data edits bypass version counters
        ours.conv.weight.data.zero_(), eager[0].weight.data.zero_()
    check()


@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.Adam])
def test_eval_follows_fused_optimizer_steps(optimizer):
    """Fused optimizers update parameters without bumping their version counters."""
    ours, eager = make_pair(CONFIGS[0])
    ours.eval(), eager.eval()
    x = torch.randn(2, 3, 6, 6)
    eval_output(ours, x)
    opt = optimizer(ours.parameters(), lr=0.1, fused=True)
    version = ours.conv.weight._version
    ours(x).sum().backward()
    opt.step()
    assert ours.conv.weight._version == version  # what makes this case hard
    eager.load_state_dict({k.replace("conv.", "0.").replace("bn.", "1."): v for k, v in ours.state_dict().items()})
    torch.testing.assert_close(eval_output(ours, x), eval_output(eager, x), **TOL[torch.float32])


def test_eval_follows_a_parametrized_weight():
    """A parametrized weight is a new tensor on every access (often with the id, storage
    and version of the one freed just before it)."""
    torch.manual_seed(0)
    module = ConvBNReLU2d(4, 8, 3, padding=1).eval()
    torch.nn.utils.parametrizations.weight_norm(module.conv)
    x = torch.randn(2, 4, 6, 6)
    errors = []
    with torch.no_grad():
        for _ in range(40):
            module.conv.parametrizations.weight.original0.mul_(1.05)
            errors.append((module(x) - torch.relu(module.bn(module.conv(x)))).abs().max().item())
    assert max(errors) < 1e-4


def test_eval_under_autocast_runs_in_the_autocast_dtype():
    ours, eager = make_pair(CONFIGS[0])
    ours.eval(), eager.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = ours(x), eager(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


def test_copies_are_independent():
    ours, eager = make_pair(CONFIGS[0])
    ours.eval(), eager.eval()
    x = torch.randn(2, 3, 6, 6)
    eval_output(ours, x)
    clone = copy.deepcopy(ours)
    with torch.no_grad():
        clone.bn.bias.add_(1.0)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(eval_output(ours, x), eval_output(eager, x))
    torch.testing.assert_close(eval_output(loaded, x), eval_output(eager, x))
    assert not torch.allclose(eval_output(clone, x), eval_output(eager, x))


@pytest.mark.parametrize("training", [True, False])
def test_from_torch_keeps_the_modules_state(training):
    conv, bn = (
        nn.Conv2d(3, 5, 3, padding=1, padding_mode="reflect"),
        nn.BatchNorm2d(5, momentum=None),
    )
    with torch.no_grad():
        bn.running_mean.normal_(), bn.weight.normal_()
    eager = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn), nn.LeakyReLU(0.2)).train(training)
    fused = ConvBNReLU2d.from_torch(conv, bn, activation="leaky_relu", negative_slope=0.2).train(
        training
    )
    assert (
        fused.conv is conv
        and fused.bn.weight is bn.weight
        and fused.bn.running_var is bn.running_var
    )
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), eager(x), **TOL[torch.float32])
    torch.testing.assert_close(bn.running_mean, eager[1].running_mean)  # shared, so updated


def test_from_torch_leaves_a_frozen_bn_frozen():
    conv, bn = nn.Conv2d(3, 4, 1), BatchNormReLU2d(4).eval()  # conv trains, BN is frozen
    fused = ConvBNReLU2d.from_torch(conv, bn)
    assert fused.training and fused.bn is bn and not bn.training
    fused(torch.randn(2, 3, 5, 5))
    assert bn.num_batches_tracked.item() == 0 and bn.running_mean.abs().max().item() == 0


def test_from_torch_without_running_stats_or_affine():
    conv, bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, affine=False, track_running_stats=False)
    eager = nn.Sequential(conv, bn, nn.ReLU()).eval()  # eval with batch statistics
    fused = ConvBNReLU2d.from_torch(conv, bn).eval()
    x = torch.randn(3, 3, 5, 5)
    torch.testing.assert_close(fused(x), eager(x), **TOL[torch.float32])
    assert [k for k in fused.state_dict()] == ["conv.weight", "conv.bias"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        ConvBNReLU2d(3, 4, 3, activation="gelu")
    with pytest.raises(ValueError, match="groups"):
        ConvBNReLU2d(3, 4, 3, groups=2)  # nn.Conv2d's own check
    with pytest.raises(TypeError, match="conv"):
        ConvBNReLU2d.from_torch(nn.Linear(3, 4), nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match="bn"):
        ConvBNReLU2d.from_torch(nn.Conv2d(3, 4, 1), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="num_features"):
        ConvBNReLU2d.from_torch(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(5))
    module = ConvBNReLU2d(3, 4, 3)
    for training in (True, False):
        module.train(training)
        with pytest.raises(ValueError, match="expected 4D input"):
            module(torch.randn(3, 8, 8))  # the error nn.BatchNorm2d gives after an unbatched conv
        with pytest.raises(RuntimeError, match="channels"):
            module(torch.randn(2, 5, 8, 8))
        with pytest.raises(ValueError, match="residual"):
            module(torch.randn(2, 3, 8, 8), torch.randn(2, 4, 1, 1))  # no broadcasting
        with pytest.raises(TypeError, match="residual"):
            module(torch.randn(2, 3, 8, 8), torch.randn(2, 4, 6, 6, dtype=torch.float64))
    module.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        module(torch.randn(1, 3, 3, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_conv2d_bias_act_fused_call(layout, with_residual, activation, dtype):
    """The fused vendor path (no autograd) against conv + add + act."""
    x = to_layout(torch.randn(2, 8, 9, 9, dtype=dtype), layout)
    w = torch.randn(6, 4, 3, 3, dtype=dtype)
    b = torch.randn(6, dtype=dtype)
    residual = to_layout(torch.randn(2, 6, 5, 5, dtype=dtype), layout) if with_residual else None
    expected = F.conv2d(x.float(), w.float(), b.float(), 2, 1, 1, 2)
    if with_residual:
        expected = expected + residual.float()
    expected = {"relu": F.relu, "leaky_relu": lambda t: F.leaky_relu(t, 0.1), None: lambda t: t}[
        activation
    ](expected)
    residual_before = residual.clone() if with_residual else None
    with torch.no_grad():
        got = conv2d_bias_act(x, w, b, 2, 1, 1, 2, activation, 0.1, residual)
    if with_residual:
        assert torch.equal(residual, residual_before)
    torch.testing.assert_close(got.float(), expected, **TOL[dtype])
    assert got.dtype == dtype
    assert got.is_contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )


@pytest.mark.slow
def test_compile_fullgraph():
    ours, eager = make_pair(CONFIGS[0])
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(compiled(x), eager(x), **TOL[torch.float32])
    ours.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), **TOL[torch.float32])
    assert_state_equal(ours, eager, **TOL[torch.float32])


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@torch.backends.cudnn.flags(enabled=True, allow_tf32=False)  # TF32 would blur the comparison
def test_cuda_train_and_eval_match_eager(layout, dtype):
    """Training (conv + fused BN kernel) and eval (cuDNN conv-bias-(add-)ReLU) on the GPU."""
    ours, eager = make_pair(CONFIGS[0])
    ours.cuda().to(dtype), eager.cuda().to(dtype)
    tol = TOL[torch.float32] if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    x = to_layout(torch.randn(4, 3, 16, 16, device="cuda", dtype=dtype), layout)
    residual = to_layout(torch.randn(4, 8, 16, 16, device="cuda", dtype=dtype), layout)
    x_ours, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_eager = ours(x_ours), eager(x_eager)
    torch.testing.assert_close(y_ours, y_eager, **tol)
    y_ours.sum().backward(), y_eager.sum().backward()
    torch.testing.assert_close(x_ours.grad, x_eager.grad, **tol)
    assert_state_equal(ours, eager, **tol)
    ours.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), eager(x), **tol)
        torch.testing.assert_close(
            ours(x, residual), torch.relu(eager[1](eager[0](x)) + residual), **tol
        )


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_eval_is_the_convolution_and_one_fused_batch_norm(layout):
    """Eval runs BN, residual add and activation as one cnnkit op on the running
    statistics (folding them into the convolution is cnnkit.optimize_for_inference)."""
    module = ConvBNReLU2d(3, 8, 3, padding=1).eval()
    x = to_layout(torch.randn(2, 3, 8, 8), layout)
    residual = to_layout(torch.randn(2, 8, 8, 8), layout)
    with torch.no_grad(), _RecordOps() as recorded:
        module(x, residual)
    # add and rsqrt: 1 / sqrt(running_var + eps), per channel.
    assert recorded.names == ["aten.convolution", "aten.add", "aten.rsqrt", "cnnkit.batch_norm_act"]
