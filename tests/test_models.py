"""The model zoo: fused models against their torch.nn reference builds, torchvision's
state_dict layout and parameter counts, input checks, channels_last and torch.compile."""

import pytest
import torch
from torch import nn

from cnnkit.models import get_model, list_models, model_info

TORCHVISION_NAMES = [
    "alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
]

# Published parameter counts (torchvision's model cards; the ResNet paper for CIFAR).
PARAM_COUNTS = {
    "lenet5": 61_706,
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnet20": 269_722,
}

# name -> (input size of the parity test, builder kwargs, slow?). Small inputs keep the
# suite fast; in float64 even two values per channel give a tight comparison. AlexNet and
# plain VGG have nothing to fuse but LRN, and spend their time in 100M-weight classifiers.
PARITY_CASES = {
    "lenet5": (32, {}, False),
    "alexnet": (63, {}, True),
    "alexnet_original": (67, {"groups": 2}, True),
    "vgg11": (32, {}, True),
    "vgg11_bn": (32, {}, True),
    "vgg13": (32, {}, True),
    "vgg13_bn": (32, {}, True),
    "vgg16": (32, {}, True),
    "vgg16_bn": (32, {}, True),
    "vgg19": (32, {}, True),
    "vgg19_bn": (32, {}, True),
    "resnet18": (32, {}, False),
    "resnet34": (64, {}, True),
    "resnet50": (32, {}, False),
    "resnet101": (64, {}, True),
    "resnet152": (64, {}, True),
    "resnet20": (16, {}, False),
    "resnet32": (16, {}, True),
    "resnet44": (16, {}, True),
    "resnet56": (16, {}, True),
    "resnet110": (16, {}, True),
    "plain20": (16, {}, False),
    "plain32": (16, {}, True),
    "plain44": (16, {}, True),
    "plain56": (16, {}, True),
}


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name, **kwargs):
    with torch.device("meta"):
        return get_model(name, **kwargs)


def randomize_batch_norms(model, generator):
    """BN at init is the identity on normalized values; give every BN its own affine and
    running statistics so that eval mode and the folding paths compute something."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_mean.copy_(torch.rand(c, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)


def reference_and_fused(name, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    reference = get_model(name, fused=False, num_classes=10, **kwargs).to(dtype)
    randomize_batch_norms(reference, torch.Generator().manual_seed(1))
    fused = get_model(name, fused=True, num_classes=10, **kwargs).to(dtype)
    fused.load_state_dict(reference.state_dict())  # strict: the same keys
    return reference, fused


def train_step_results(model, input, grad_output, seed=0):
    """Output, parameter gradients and buffers after one training forward and backward
    (the seed makes dropout draw the same masks in both models)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    output = model(input)
    output.backward(grad_output)
    grads = {name: p.grad for name, p in model.named_parameters()}
    return output, grads, dict(model.named_buffers())


def assert_close_scaled(actual, expected, rtol, name=""):
    """max |actual - expected| <= rtol * max |expected|: a norm-wise comparison, since deep
    networks' gradients hold elements near zero whose elementwise relative error says
    nothing about the computation."""
    assert actual.shape == expected.shape, name
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert error <= rtol * scale + 1e-12, f"{name}: max error {error:.3g}, max |expected| {scale:.3g}"


def assert_models_match(reference, fused, input, rtol=1e-6):
    reference.eval()
    fused.eval()
    with torch.no_grad():
        expected = reference(input)
        assert_close_scaled(fused(input), expected, rtol, "eval output")
        channels_last = input.contiguous(memory_format=torch.channels_last)
        assert_close_scaled(fused(channels_last), expected, rtol, "eval output, channels_last")

    grad_output = torch.randn(expected.shape, dtype=expected.dtype, generator=torch.Generator().manual_seed(2))
    out_ref, grads_ref, buffers_ref = train_step_results(reference, input, grad_output)
    out_fused, grads_fused, buffers_fused = train_step_results(fused, input, grad_output)
    assert_close_scaled(out_fused, out_ref, rtol, "train output")
    assert grads_fused.keys() == grads_ref.keys()
    for name in grads_ref:
        assert_close_scaled(grads_fused[name], grads_ref[name], rtol, f"gradient of {name}")
    assert buffers_fused.keys() == buffers_ref.keys()
    for name in buffers_ref:
        assert_close_scaled(buffers_fused[name], buffers_ref[name], rtol, f"buffer {name}")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if PARITY_CASES[n][2] else []) for n in PARITY_CASES],
)
def test_fused_matches_reference(name):
    size, kwargs, _ = PARITY_CASES[name]
    reference, fused = reference_and_fused(name, **kwargs)
    channels = model_info(name).input_size[0]
    # ResNets end at 1x1 here: a batch of 4 keeps their last BatchNorms well conditioned
    # (with 2 values per channel, float64 rounding is amplified to ~1e-6).
    batch = 4 if name.startswith(("resnet", "plain")) else 2
    input = torch.randn(batch, channels, size, size, dtype=torch.float64)
    assert_models_match(reference, fused, input)


@pytest.mark.parametrize("name, size, kwargs", [("vgg11_bn", 32, {}), ("alexnet_original", 67, {"groups": 2})])
def test_fused_features_match_reference(name, size, kwargs):
    """The fused part of VGG-BN and AlexNet, the conv stack, fast: their classifiers are
    plain 100M-weight Linear layers, compared with the whole models in the slow cases."""
    reference, fused = (
        build_on_meta(name, fused=fused, **kwargs).features.to_empty(device="cpu").double()
        for fused in (False, True)
    )
    torch.manual_seed(0)
    for module in reference.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    randomize_batch_norms(reference, torch.Generator().manual_seed(1))
    fused.load_state_dict(reference.state_dict())
    input = torch.randn(2, 3, size, size, dtype=torch.float64)
    assert_models_match(reference, fused, input)


def test_every_model_has_a_parity_case():
    assert sorted(PARITY_CASES) == sorted(list_models())


def max_scaled_error(results, truth):
    """Largest norm-wise relative error over a train step's output, gradients, buffers."""
    pairs = [(results[0], truth[0])]
    pairs += [(results[1][k], truth[1][k]) for k in truth[1]]
    pairs += [(results[2][k], truth[2][k]) for k in truth[2] if truth[2][k].is_floating_point()]
    return max(((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in pairs)


@pytest.mark.parametrize("name, size", [("resnet20", 32), ("resnet18", 64)])
def test_fused_float32_is_as_accurate_as_eager(name, size):
    """float32 training step, both models measured against a float64 one: the fused model's
    rounding error stays within a small factor of eager torch.nn's own."""
    reference, fused = reference_and_fused(name, dtype=torch.float32)
    input = torch.randn(4, 3, size, size)
    truth_model = get_model(name, fused=False, num_classes=10).double()
    truth_model.load_state_dict(reference.state_dict())
    grad_output = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    truth = train_step_results(truth_model, input.double(), grad_output.double())
    eager_error = max_scaled_error(train_step_results(reference, input, grad_output), truth)
    fused_error = max_scaled_error(train_step_results(fused, input, grad_output), truth)
    assert fused_error <= 4 * eager_error + 1e-4, (fused_error, eager_error)

    reference.eval()
    fused.eval()
    truth_model.eval()
    with torch.no_grad():
        expected = truth_model(input.double())
        channels_last = input.contiguous(memory_format=torch.channels_last)
        for model in (reference, fused):
            assert_close_scaled(model(input), expected, 1e-4, type(model).__name__)
            assert_close_scaled(model(channels_last), expected, 1e-4, type(model).__name__)


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
@pytest.mark.parametrize("fused", [False, True])
def test_parameter_counts(name, fused):
    model = build_on_meta(name, fused=fused)
    assert count_params(model) == PARAM_COUNTS[name]
    assert model_info(name).params == PARAM_COUNTS[name]


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_plain_networks_are_resnets_without_shortcuts(depth):
    """The paper's comparison: the same convolutions, BatchNorms and widths, so the same
    parameters under the same names as the option-A ResNet; option B adds its projections
    (two stage transitions: a 1x1 conv and a BatchNorm each, 16->32 and 32->64)."""
    plain = build_on_meta(f"plain{depth}")
    option_a = build_on_meta(f"resnet{depth}")
    option_b = build_on_meta(f"resnet{depth}", shortcut="B")
    assert plain.state_dict().keys() == option_a.state_dict().keys()
    assert count_params(plain) == count_params(option_a) == model_info(f"plain{depth}").params
    assert count_params(option_b) - count_params(option_a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert not any("downsample" in name for name, _ in plain.named_modules())


def test_option_b_resnet_matches_reference():
    reference, fused = reference_and_fused("resnet20", shortcut="B")
    assert_models_match(reference, fused, torch.randn(4, 3, 16, 16, dtype=torch.float64))


def test_bad_shortcut_and_depth_are_rejected():
    from cnnkit.models import CifarPlainNet

    with pytest.raises(ValueError, match="shortcut: expected 'A' .* or 'B' .*, got 'C'"):
        get_model("resnet20", shortcut="C")
    with pytest.raises(ValueError, match="plain: depth must be 6n \\+ 2 with n >= 1, got 21"):
        CifarPlainNet(21)


@pytest.mark.parametrize("name", list_models())
def test_metadata_params_match_the_built_model(name):
    info = model_info(name)
    assert count_params(build_on_meta(name)) == info.params
    assert info.paper and len(info.input_size) == 3 and info.num_classes > 0


def torchvision_resnet_state(block_counts, bottleneck, num_classes=1000):
    """(key, shape) of torchvision's ResNet state_dict, in its order."""
    def bn(prefix, c):
        return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
                (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]

    expansion = 4 if bottleneck else 1
    state = [("conv1.weight", (64, 3, 7, 7))] + bn("bn1", 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), block_counts)):
        for index in range(count):
            p = f"layer{stage + 1}.{index}"
            stride = 2 if stage > 0 and index == 0 else 1
            if bottleneck:
                state += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1))] + bn(f"{p}.bn1", planes)
                state += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + bn(f"{p}.bn2", planes)
                state += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1))] + bn(f"{p}.bn3", planes * 4)
            else:
                state += [(f"{p}.conv1.weight", (planes, inplanes, 3, 3))] + bn(f"{p}.bn1", planes)
                state += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + bn(f"{p}.bn2", planes)
            if stride != 1 or inplanes != planes * expansion:
                state += [(f"{p}.downsample.0.weight", (planes * expansion, inplanes, 1, 1))]
                state += bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return state + [("fc.weight", (num_classes, 512 * expansion)), ("fc.bias", (num_classes,))]


def torchvision_vgg_state(config, batch_norm, num_classes=1000):
    state, index, in_channels = [], 0, 3
    for value in config:
        if value == "M":
            index += 1
            continue
        state += [(f"features.{index}.weight", (value, in_channels, 3, 3)), (f"features.{index}.bias", (value,))]
        if batch_norm:
            p = f"features.{index + 1}"
            state += [(f"{p}.weight", (value,)), (f"{p}.bias", (value,)), (f"{p}.running_mean", (value,)),
                      (f"{p}.running_var", (value,)), (f"{p}.num_batches_tracked", ())]
        index += 3 if batch_norm else 2
        in_channels = value
    return state + [
        ("classifier.0.weight", (4096, 25088)), ("classifier.0.bias", (4096,)),
        ("classifier.3.weight", (4096, 4096)), ("classifier.3.bias", (4096,)),
        ("classifier.6.weight", (num_classes, 4096)), ("classifier.6.bias", (num_classes,)),
    ]


_VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}

_RESNET_LAYOUTS = {
    "resnet18": ([2, 2, 2, 2], False),
    "resnet34": ([3, 4, 6, 3], False),
    "resnet50": ([3, 4, 6, 3], True),
    "resnet101": ([3, 4, 23, 3], True),
    "resnet152": ([3, 8, 36, 3], True),
}

TORCHVISION_ALEXNET = [
    ("features.0.weight", (64, 3, 11, 11)), ("features.0.bias", (64,)),
    ("features.3.weight", (192, 64, 5, 5)), ("features.3.bias", (192,)),
    ("features.6.weight", (384, 192, 3, 3)), ("features.6.bias", (384,)),
    ("features.8.weight", (256, 384, 3, 3)), ("features.8.bias", (256,)),
    ("features.10.weight", (256, 256, 3, 3)), ("features.10.bias", (256,)),
    ("classifier.1.weight", (4096, 9216)), ("classifier.1.bias", (4096,)),
    ("classifier.4.weight", (4096, 4096)), ("classifier.4.bias", (4096,)),
    ("classifier.6.weight", (1000, 4096)), ("classifier.6.bias", (1000,)),
]


def torchvision_state(name):
    if name == "alexnet":
        return TORCHVISION_ALEXNET
    if name.startswith("vgg"):
        return torchvision_vgg_state(_VGG_CONFIGS[name.removesuffix("_bn")], name.endswith("_bn"))
    return torchvision_resnet_state(*_RESNET_LAYOUTS[name])


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
@pytest.mark.parametrize("fused", [False, True])
def test_state_dict_is_torchvisions(name, fused):
    state = build_on_meta(name, fused=fused).state_dict()
    assert [(key, tuple(value.shape)) for key, value in state.items()] == torchvision_state(name)


@pytest.mark.parametrize(
    "name, key, shape",
    [
        ("resnet50", "layer1.0.downsample.0.weight", (256, 64, 1, 1)),
        ("resnet50", "layer4.2.bn3.running_var", (2048,)),
        ("resnet50", "fc.weight", (1000, 2048)),
        ("resnet18", "layer2.0.downsample.1.num_batches_tracked", ()),
        ("vgg16", "features.28.weight", (512, 512, 3, 3)),
        ("vgg16_bn", "features.41.running_var", (512,)),
        ("vgg19_bn", "features.49.weight", (512, 512, 3, 3)),
    ],
)
def test_well_known_torchvision_keys(name, key, shape):
    state = build_on_meta(name).state_dict()
    assert tuple(state[key].shape) == shape


def test_resnet18_has_no_shortcut_projection_in_layer1():
    assert not any("layer1.0.downsample" in key for key in build_on_meta("resnet18").state_dict())


@pytest.mark.parametrize("name", ["resnet18", "resnet20"])
def test_state_dict_round_trip(name):
    reference, fused = reference_and_fused(name, dtype=torch.float32)
    back = get_model(name, fused=False, num_classes=10)
    back.load_state_dict(fused.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_lenet5_pads_28x28_input_by_2():
    model = get_model("lenet5").eval()
    digits = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(digits), model(nn.functional.pad(digits, (2, 2, 2, 2))))
        assert model(digits).shape == (3, 10)


def test_alexnet_original_is_the_papers():
    model = get_model("alexnet_original", groups=2)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 256, 384, 384, 256]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    assert [c.kernel_size[0] for c in convs] == [11, 5, 3, 3, 3]
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3  # overlapping pooling
    lrns = [m for m in model.features if "LocalResponseNorm" in type(m).__name__]
    assert len(lrns) == 2
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 227, 227)).shape == (1, 1000)


def test_alexnet_paper_lrn_matches_its_formula():
    """b = a / (k + alpha * sum of a^2 over 5 neighbouring channels) ** beta, alpha not / n."""
    lrn = get_model("alexnet_original", fused=False).features[2]
    a = torch.rand(1, 8, 2, 2, dtype=torch.float64)
    squares = nn.functional.pad(a.square(), (0, 0, 0, 0, 2, 2))
    window = sum(squares[:, i:i + 8] for i in range(5))
    torch.testing.assert_close(lrn(a), a / (2 + 1e-4 * window) ** 0.75)


def test_builders_take_num_classes_and_in_channels():
    for name in ["lenet5", "resnet20", "resnet18", "alexnet", "vgg11_bn"]:
        model = build_on_meta(name, num_classes=7, in_channels=5)
        size = 32 if name in ("lenet5", "resnet20") else 64
        assert model(torch.empty(2, 5, size, size, device="meta")).shape == (2, 7)


@pytest.mark.parametrize(
    "name, shape, expected",
    [
        ("resnet18", (1, 1, 64, 64), "3 channels"),
        ("resnet20", (1, 3, 32), "(N, 3, H, W)"),
        ("lenet5", (1, 1, 30, 30), "32x32 or 28x28"),
        ("lenet5", (1, 3, 32, 32), "1 channels"),
        ("vgg11_bn", (1, 3, 31, 64), "at least 32x32"),
        ("alexnet", (1, 3, 62, 62), "at least 63x63"),
        ("alexnet_original", (1, 3, 66, 66), "at least 67x67"),
    ],
)
def test_bad_input_names_the_expected_input(name, shape, expected):
    model = build_on_meta(name)
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        model(torch.empty(shape, device="meta"))


@pytest.mark.parametrize("name, size", [("alexnet", 63), ("alexnet_original", 67), ("vgg11", 32)])
def test_smallest_accepted_input_runs(name, size):
    model = build_on_meta(name)
    assert model(torch.empty(1, 3, size, size, device="meta")).shape == (1, 1000)


def test_get_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        get_model("resnet19")


def test_list_models_covers_the_zoo():
    cifar = {f"resnet{depth}" for depth in (20, 32, 44, 56, 110)} | {f"plain{depth}" for depth in (20, 32, 44, 56)}
    expected = {"lenet5", "alexnet", "alexnet_original"} | cifar | set(TORCHVISION_NAMES)
    assert set(list_models()) == expected


@pytest.mark.parametrize("training", [False, True])
def test_channels_last_end_to_end(training):
    model = get_model("resnet18", num_classes=10).train(training)
    layouts = {}

    def record(module, args, output):
        if output.dim() == 4 and output.size(1) > 1 and output.size(2) * output.size(3) > 1:
            layouts[module] = output.is_contiguous(memory_format=torch.channels_last)

    for module in model.modules():
        module.register_forward_hook(record)
    input = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(training):
        output = model(input)
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert all(block in layouts for block in blocks)
    assert all(layouts.values()), [type(m).__name__ for m, ok in layouts.items() if not ok]
    assert output.shape == (2, 10)


@pytest.mark.parametrize("training", [False, True])
def test_compile_has_no_graph_break(training):
    torch._dynamo.reset()
    model = get_model("resnet20").train(training)
    input = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    explanation = torch._dynamo.explain(model)(input)
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.parametrize("name, mode", [("resnet20", True), ("resnet20", "block"), ("resnet50", "block"),
                                        ("plain20", True)])
def test_memory_saving_models_match_reference(name, mode):
    reference, _ = reference_and_fused(name)
    saving = get_model(name, fused=True, num_classes=10, memory_efficient=mode).double()
    saving.load_state_dict(reference.state_dict())
    input = torch.randn(4, 3, 32 if name == "resnet50" else 16, 32 if name == "resnet50" else 16,
                        dtype=torch.float64)
    assert_models_match(reference, saving, input)
