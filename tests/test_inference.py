"""cnnkit.optimize_for_inference: same outputs as the source model, every pattern folded,
immutable, thread-safe, exportable, compilable."""

import copy
import io
import threading

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import cnnkit
from cnnkit.inference import FrozenConv2d, FrozenLinear, FrozenModule, FrozenModuleError
from cnnkit.models import get_model
from cnnkit.nn import ConvBNReLU2d

F32_EPS = 2.0**-24

# model -> input shape of the parity cases (small, so that the suite stays quick)
MODELS = {
    "resnet18": (2, 3, 64, 64),
    "resnet50": (2, 3, 64, 64),
    "resnet20": (2, 3, 32, 32),
    "plain20": (2, 3, 32, 32),
    "vgg11_bn": (2, 3, 32, 32),
    "alexnet_original": (1, 3, 227, 227),
    "lenet5": (2, 1, 32, 32),
}


def randomized(model, seed=0):
    """`model` in eval mode with BN statistics and affine parameters away from their
    initial values, so that a fold is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return model.eval()


def relative_error(value, truth):
    return ((value.double() - truth).norm() / truth.norm()).item()


def assert_within_float32_rounding(frozen, source, x):
    """The frozen model is as close to the float64 truth as the float32 source model is:
    folding moves the roundings (one more on each weight, none in BN), it must not add
    error beyond that. Twice the source's error plus a few ulps bounds it."""
    truth_model = copy.deepcopy(source).double()
    with torch.no_grad():
        truth = truth_model(x.double())
        ours, theirs = frozen(x), source(x)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert relative_error(ours, truth) <= 2 * relative_error(theirs, truth) + 8 * F32_EPS


def frozen_convs(module):
    return [m for m in module.modules() if isinstance(m, FrozenConv2d)]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_models_match_their_source(name, layout):
    source = randomized(get_model(name))
    x = torch.randn(MODELS[name]).contiguous(memory_format=layout)
    frozen = cnnkit.optimize_for_inference(source, x)
    assert isinstance(frozen, FrozenModule)
    convs = [m for m in source.modules() if isinstance(m, nn.Conv2d)]
    assert len(frozen_convs(frozen)) == len(convs)  # every conv folded, with what follows
    linears = [m for m in source.modules() if isinstance(m, nn.Linear)]
    assert len([m for m in frozen.modules() if isinstance(m, FrozenLinear)]) == len(linears)
    assert not any(isinstance(m, (_BatchNorm, nn.Conv2d, nn.Linear)) for m in frozen.modules())
    assert_within_float32_rounding(frozen, source, x)


def test_the_tolerance_catches_a_slightly_wrong_fold():
    """What the parity bound rejects: BN's eps off by 1e-4 (a fold of slightly wrong
    statistics) moves the output by far more than float32 rounding."""
    source = randomized(get_model("resnet20"))
    x = torch.randn(MODELS["resnet20"])
    wrong = copy.deepcopy(source)
    for module in wrong.modules():
        if isinstance(module, _BatchNorm):
            module.eps += 1e-4
    with pytest.raises(AssertionError):
        assert_within_float32_rounding(cnnkit.optimize_for_inference(wrong), source, x)


def test_torch_nn_models_fold_as_well():
    """A model built from torch.nn modules only (torchvision's structure: BN, ``out +=
    identity``, ReLU modules) folds the same way."""
    source = randomized(get_model("resnet18", fused=False))
    x = torch.randn(2, 3, 64, 64)
    frozen = cnnkit.optimize_for_inference(source, x)
    assert len(frozen_convs(frozen)) == 20
    assert not any(isinstance(m, (_BatchNorm, nn.ReLU)) for m in frozen.modules())
    assert_within_float32_rounding(frozen, source, x)


def test_a_fused_graph_folds_as_well():
    source = randomized(get_model("resnet18", fused=False))
    fused = cnnkit.fuse(source).eval()
    x = torch.randn(2, 3, 64, 64)
    frozen = cnnkit.optimize_for_inference(fused, x)
    assert len(frozen_convs(frozen)) == 20
    assert_within_float32_rounding(frozen, source, x)


def test_float64_and_bfloat16_models():
    source = randomized(get_model("resnet20")).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    frozen = cnnkit.optimize_for_inference(source)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), source(x), rtol=1e-10, atol=1e-10)
    source = randomized(get_model("resnet20"))
    low = cnnkit.optimize_for_inference(copy.deepcopy(source).to(torch.bfloat16))
    with torch.no_grad():
        got = low(x.float().to(torch.bfloat16))
        plain = copy.deepcopy(source).to(torch.bfloat16)(x.float().to(torch.bfloat16))
        truth = source.double()(x)
    assert got.dtype == torch.bfloat16
    # bfloat16 rounds at other places than the source does, not more often.
    assert relative_error(got, truth) <= 2 * relative_error(plain, truth) + 2.0**-8


def test_autocast_runs_in_the_autocast_dtype():
    source = randomized(get_model("resnet20"))
    frozen = cnnkit.optimize_for_inference(source)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = frozen(x), source(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    with torch.no_grad():
        truth = source.double()(x.double())
    assert relative_error(got, truth) <= 2 * relative_error(expected, truth) + 2.0**-8


class _Patterns(nn.Module):
    """Every spelling of conv -> BN -> (add) -> ReLU that a traced model may use, and the
    cases that must not fold."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(7))
        self.bns = nn.ModuleList(nn.BatchNorm2d(8) for _ in range(7))
        self.relu = nn.ReLU(inplace=True)
        self.fused = ConvBNReLU2d(8, 8, 3, padding=1, activation="leaky_relu")
        self.channel_bias = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x):
        c, b = self.convs, self.bns
        y = torch.relu(b[0](c[0](x)) + x)  # residual: the graph's input (never written)
        y = self.relu(torch.add(y, b[1](c[1](y))))  # the add's operands swapped
        z = b[2](c[2](y))
        z += y  # in-place add into the BN output
        z = z.relu()
        w = b[3](c[3](z)) + self.channel_bias  # a residual that broadcasts
        shared = c[4](w)  # a conv output used twice: not folded into the BN
        v = nn.functional.relu(b[4](shared)) + shared
        u = self.fused(v, residual=z)  # leaky_relu after the add: no oneDNN epilogue
        t = b[5](c[5](u))  # BN alone
        return b[6](c[6](t)).relu_(), y


def test_every_pattern_folds_and_matches():
    source = randomized(_Patterns())
    x = torch.randn(2, 8, 6, 6)
    x_copy = x.clone()
    frozen = cnnkit.optimize_for_inference(source, x)
    with torch.no_grad():
        for got, expected in zip(frozen(x), source(x)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, x_copy)  # the input is never written to
    assert len(frozen_convs(frozen)) == 7  # all but the conv used twice
    kept = [m for m in frozen.modules() if isinstance(m, (nn.Conv2d, _BatchNorm))]
    assert len(kept) == 2  # the conv used twice and its BN


def test_block_outputs_accumulate_in_place_only_where_nothing_reads_them_after():
    frozen = cnnkit.optimize_for_inference(randomized(get_model("resnet50")))
    graph = frozen.module.graph
    writers = [n for n in graph.nodes if n.op == "call_module"
               and getattr(frozen.module.get_submodule(n.target), "writes_into_residual", False)]
    assert len(writers) == 16  # the last conv of every Bottleneck
    order = {node: index for index, node in enumerate(graph.nodes)}
    for node in writers:
        assert all(order[user] <= order[node] for user in node.kwargs["residual"].users)


class _ViewOfShortcut(nn.Module):
    """A shortcut also read through a view after the block's end: the add must not write
    into it."""

    def __init__(self):
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x):
        shortcut = self.first(x)
        half = shortcut[:, :4]
        return torch.relu(self.bn(self.conv(shortcut)) + shortcut), half * 2


def test_a_shortcut_read_through_a_view_is_not_written():
    source = randomized(_ViewOfShortcut())
    frozen = cnnkit.optimize_for_inference(source)
    assert not any(m.writes_into_residual for m in frozen_convs(frozen))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        for got, expected in zip(frozen(x), source(x)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class _Untraceable(nn.Module):
    """A forward torch.fx cannot trace (it branches on a value): its children are
    optimised instead."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.body(x)
        if y.mean() > 1e9:
            y = y * 0
        return self.head(y.mean((2, 3)))


def test_an_untraceable_model_has_its_children_optimised():
    source = randomized(_Untraceable())
    frozen = cnnkit.optimize_for_inference(source)
    assert type(frozen.module) is _Untraceable
    assert len(frozen_convs(frozen)) == 1
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), source(x), rtol=1e-5, atol=1e-5)


def test_input_checks_stay():
    frozen = cnnkit.optimize_for_inference(get_model("resnet20").eval())
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        frozen(torch.randn(1, 1, 32, 32))


def test_refuses_misuse():
    source = get_model("resnet20").eval()
    frozen = cnnkit.optimize_for_inference(source)
    for action in (frozen.train, lambda: frozen.load_state_dict(source.state_dict()),
                   lambda: frozen.requires_grad_(True), frozen.double,
                   lambda: frozen.to("cpu"),
                   lambda: frozen(torch.randn(1, 3, 32, 32, requires_grad=True))):
        with pytest.raises(FrozenModuleError, match="optimize_for_inference on it again"):
            action()
    assert isinstance(FrozenModuleError("x"), RuntimeError)
    assert frozen.eval() is frozen and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    with pytest.raises(ValueError, match="eval mode"):
        cnnkit.optimize_for_inference(get_model("resnet20"))
    with pytest.raises(TypeError, match="example_inputs"):
        cnnkit.optimize_for_inference(source, example_inputs="x")


def test_shares_nothing_with_its_source():
    source = randomized(get_model("resnet20"))
    x = torch.randn(2, 3, 32, 32)
    frozen = cnnkit.optimize_for_inference(source, x)
    with torch.no_grad():
        before = frozen(x)
        for p in source.parameters():
            p.data.mul_(0.5)
        source.train()(x)  # a training step's statistics update
        torch.testing.assert_close(frozen(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("name, shapes", [
    ("resnet20", ((4, 3, 32, 32), (1, 3, 32, 32), (3, 3, 40, 24))),
    ("vgg11", ((4, 3, 32, 32), (1, 3, 32, 32), (3, 3, 64, 48))),  # conv and linear layers
])
def test_weights_packed_for_one_shape_serve_any(name, shapes):
    source = randomized(get_model(name))
    frozen = cnnkit.optimize_for_inference(source, torch.randn(shapes[0]))
    assert frozen_convs(frozen)[0].input_shape == shapes[0]
    for shape in shapes[1:]:
        assert_within_float32_rounding(frozen, source, torch.randn(shape))


def test_copies_and_pickles_run():
    source = randomized(get_model("resnet20"))
    frozen = cnnkit.optimize_for_inference(source)
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    torch.save(frozen, buffer)
    buffer.seek(0)
    with torch.no_grad():
        expected = frozen(x)
        for other in (copy.deepcopy(frozen), torch.load(buffer, weights_only=False)):
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)


# What the threads serve, and its input channels: the frozen model, and plain eval-mode
# modules (which keep no cache either).
SERVED = {
    "frozen resnet20": lambda: cnnkit.optimize_for_inference(
        randomized(get_model("resnet20")), torch.randn(2, 3, 32, 32)),
    "resnet20": lambda: randomized(get_model("resnet20")),
    "BasicBlock": lambda: randomized(cnnkit.nn.BasicBlock(16, 16)),
    "ConvBNReLU2d": lambda: randomized(ConvBNReLU2d(3, 16, 3, padding=1)),
}


@pytest.mark.parametrize("name", list(SERVED))
def test_two_threads_with_mixed_shapes_get_their_own_answers(name):
    """2 threads x 300 calls, inputs of different shapes and layouts, against each input's
    answer computed alone beforehand: a shared mutable state would mix them up."""
    module = SERVED[name]()
    channels = 16 if name == "BasicBlock" else 3
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(n, channels, size, size, generator=generator) for n, size in
              ((1, 32), (2, 40), (3, 24), (2, 32))]
    inputs += [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    with torch.no_grad():
        expected = [module(x) for x in inputs]
    failures = []

    def serve(offset):
        try:
            with torch.no_grad():
                for call in range(300):
                    index = (call + offset) % len(inputs)
                    got = module(inputs[index])
                    if not torch.allclose(got, expected[index], rtol=1e-5, atol=1e-5):
                        failures.append(index)
        except Exception as error:  # noqa: BLE001 -- reported below
            failures.append(error)

    threads = [threading.Thread(target=serve, args=(offset,)) for offset in (0, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_export():
    source = randomized(get_model("resnet20"))
    frozen = cnnkit.optimize_for_inference(source)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = frozen(x)
    program = torch.export.export(frozen, (x,))
    torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-5)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("batch_norm" in op for op in ops)  # exported folded


@pytest.mark.slow
def test_compile():
    frozen = cnnkit.optimize_for_inference(randomized(get_model("resnet20")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(frozen)(x), frozen(x), rtol=1e-5, atol=1e-5)


def test_optimizing_a_frozen_module_returns_it():
    frozen = cnnkit.optimize_for_inference(get_model("resnet20").eval())
    assert cnnkit.optimize_for_inference(frozen) is frozen


def test_no_optimizer_hook_is_left_in_the_process():
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    assert len(_global_optimizer_post_hooks) == len(_global_optimizer_pre_hooks) == 0
