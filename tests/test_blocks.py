"""BasicBlock, Bottleneck and PlainBlock: fused against torchvision's formula, the paper's
stride placement, memory-saving mode, and BN folding in inference."""

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.models import resnet50
from cnnkit.nn import BasicBlock, Bottleneck, PlainBlock
from cnnkit.nn.blocks import conv1x1

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def randomize(block, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in block.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("weight", "bias", "running_mean")) and tensor.dim() == 1:
                tensor.copy_(torch.rand(tensor.shape, generator=generator) - 0.5 + name.endswith("weight"))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return block


def make_block(kind, inplanes, planes, stride=1, fused=True, **kwargs):
    cls = BasicBlock if kind == "basic" else Bottleneck
    norm_layer = cnnkit.nn.BatchNormReLU2d if fused else nn.BatchNorm2d
    shortcut_norm = cnnkit.nn.BatchNorm2d if fused else nn.BatchNorm2d
    downsample = None
    if stride != 1 or inplanes != planes * cls.expansion:
        downsample = nn.Sequential(conv1x1(inplanes, planes * cls.expansion, stride),
                                   shortcut_norm(planes * cls.expansion))
    torch.manual_seed(0)
    return cls(inplanes, planes, stride, downsample, norm_layer=norm_layer, **kwargs).double()


def bn_formula(module, input):
    return nn.functional.batch_norm(input, module.running_mean, module.running_var, module.weight,
                                    module.bias, module.training, module.momentum, module.eps)


def torchvision_forward(block, x):
    """torchvision's BasicBlock / Bottleneck forward, step by step, on torch.nn ops only."""
    bn = bn_formula
    identity = x
    out = torch.relu(bn(block.bn1, block.conv1(x)))
    out = bn(block.bn2, block.conv2(out))
    if isinstance(block, Bottleneck):
        out = bn(block.bn3, block.conv3(torch.relu(out)))
    if block.downsample is not None:
        identity = bn(block.downsample[1], block.downsample[0](x))
    return torch.relu(out + identity)


CASES = [
    ("basic", 16, 16, 1),
    ("basic", 16, 32, 2),
    ("bottleneck", 64, 16, 1),
    ("bottleneck", 32, 16, 2),
]


@pytest.mark.parametrize("kind, inplanes, planes, stride", CASES)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_block_matches_torchvision_formula_in_eval(kind, inplanes, planes, stride, memory_format):
    block = randomize(make_block(kind, inplanes, planes, stride)).eval()
    x = torch.randn(2, inplanes, 8, 8, dtype=torch.float64).contiguous(memory_format=memory_format)
    with torch.no_grad():
        expected = torchvision_forward(block, x)
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("kind, inplanes, planes, stride", CASES)
@pytest.mark.parametrize("memory_efficient", [False, True, "block"])
def test_block_training_matches_eager(kind, inplanes, planes, stride, memory_efficient):
    fused = randomize(make_block(kind, inplanes, planes, stride, memory_efficient=memory_efficient))
    eager = make_block(kind, inplanes, planes, stride, fused=False)
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, inplanes, 8, 8, dtype=torch.float64)
    grad = torch.randn(2, planes * fused.expansion, 8 // stride, 8 // stride, dtype=torch.float64)
    results = []
    for block in (eager, fused):
        input = x.clone().requires_grad_()
        block(input).backward(grad)
        results.append((input.grad, {k: p.grad for k, p in block.named_parameters()}, block.state_dict()))
    torch.testing.assert_close(results[1][0], results[0][0])
    for key in results[0][1]:
        torch.testing.assert_close(results[1][1][key], results[0][1][key], msg=key)
    for key in results[0][2]:
        torch.testing.assert_close(results[1][2][key], results[0][2][key], msg=key)
    # And torchvision's own formula on the same weights gives the same training output.
    reference = make_block(kind, inplanes, planes, stride, fused=False)
    reference.load_state_dict(eager.state_dict())
    torch.testing.assert_close(fused(x), torchvision_forward(reference, x))


def plain_forward(block, x):
    """The ResNet paper's plain baseline: conv-BN-ReLU twice, no shortcut."""
    out = torch.relu(bn_formula(block.bn1, block.conv1(x)))
    return torch.relu(bn_formula(block.bn2, block.conv2(out)))


@pytest.mark.parametrize("inplanes, planes, stride", [(16, 16, 1), (16, 32, 2)])
@pytest.mark.parametrize("memory_efficient", [False, True, "block"])
def test_plain_block_is_two_conv_bn_relu(inplanes, planes, stride, memory_efficient):
    torch.manual_seed(0)
    fused = randomize(PlainBlock(inplanes, planes, stride, memory_efficient=memory_efficient).double())
    formula = PlainBlock(inplanes, planes, stride, norm_layer=nn.BatchNorm2d).double()
    formula.load_state_dict(fused.state_dict())
    assert fused.downsample is None and list(fused.state_dict()) == list(formula.state_dict())
    x = torch.randn(2, inplanes, 8, 8, dtype=torch.float64)
    grad = torch.randn(2, planes, 8 // stride, 8 // stride, dtype=torch.float64)
    results = []
    for forward in (fused, lambda input: plain_forward(formula, input)):
        input = x.clone().requires_grad_()
        out = forward(input)
        out.backward(grad)
        results.append((out, input.grad))
    torch.testing.assert_close(results[0], results[1])
    for key in ("bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"):
        torch.testing.assert_close(fused.state_dict()[key], formula.state_dict()[key], msg=key)
    for block in (fused, formula):
        block.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)),
                                   plain_forward(formula, x))


def test_state_dict_keys_are_torchvisions():
    keys = list(make_block("bottleneck", 32, 16, 2).state_dict())
    expected = []
    for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample.0", "downsample.1"):
        if name.startswith("conv") or name == "downsample.0":
            expected.append(f"{name}.weight")
        else:
            expected += [f"{name}.{k}" for k in BN_KEYS + ("num_batches_tracked",)]
    assert keys == expected


def test_stride_placement():
    v15 = make_block("bottleneck", 64, 32, 2)
    paper = make_block("bottleneck", 64, 32, 2, stride_in_1x1=True)
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert (paper.conv1.stride, paper.conv2.stride) == ((2, 2), (1, 1))
    x = torch.randn(1, 64, 8, 8, dtype=torch.float64)
    assert paper(x).shape == v15(x).shape == (1, 128, 4, 4)


def test_grouped_bottleneck_width():
    block = Bottleneck(64, 64, groups=32, base_width=4)  # ResNeXt-50 32x4d's first block
    assert block.conv2.weight.shape == (128, 4, 3, 3)
    assert block.conv3.weight.shape == (256, 128, 1, 1)


def test_basic_block_rejects_what_torchvision_rejects():
    with pytest.raises(ValueError, match="groups=1 and base_width=64"):
        BasicBlock(16, 16, groups=2)
    with pytest.raises(ValueError, match="groups=1 and base_width=64"):
        BasicBlock(16, 16, base_width=32)
    with pytest.raises(NotImplementedError, match="Dilation > 1"):
        BasicBlock(16, 16, dilation=2)


def test_conv_weights_match_the_papers_arithmetic():
    basic = BasicBlock(64, 64)
    bottleneck = Bottleneck(256, 64)
    conv_weights = lambda block: sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Conv2d))  # noqa: E731
    assert conv_weights(basic) == 64 * 64 * 3 * 3 * 2 == 73_728
    assert conv_weights(bottleneck) == 16_384 + 36_864 + 16_384 == 69_632


def test_zero_init_residual_makes_each_block_start_as_identity():
    model = resnet50(zero_init_residual=True).double().eval()
    assert all(torch.count_nonzero(m.bn3.weight) == 0 for m in model.modules() if isinstance(m, Bottleneck))
    block = model.layer1[1]  # no downsample: out = relu(0 + x)
    x = torch.rand(1, 256, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))


def test_eval_follows_parameter_updates():
    fused = randomize(make_block("basic", 16, 16)).eval()
    eager = make_block("basic", 16, 16, fused=False).eval()
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        fused(x)
        fused.bn1.weight.mul_(2)
        fused.conv2.weight.add_(0.1)
        fused.bn2.running_var.add_(1)
        eager.load_state_dict(fused.state_dict())
        torch.testing.assert_close(fused(x), eager(x))
        fused.load_state_dict(randomize(make_block("basic", 16, 16), seed=3).state_dict())
        eager.load_state_dict(fused.state_dict())
        torch.testing.assert_close(fused(x), eager(x))


def test_eval_follows_a_data_swap():
    fused = randomize(make_block("basic", 16, 16)).eval()
    eager = make_block("basic", 16, 16, fused=False).eval()
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        fused(x)
        new_weight = torch.randn_like(fused.conv1.weight) * 0.1
        fused.conv1.weight.data = new_weight.clone()  # a new storage, the same version
        eager.conv1.weight.data = new_weight.clone()
        torch.testing.assert_close(fused(x), eager(x))


def test_eval_gradients_match_eager():
    fused = randomize(make_block("bottleneck", 32, 8, 2)).eval()
    eager = make_block("bottleneck", 32, 8, 2, fused=False).eval()
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, 32, 8, 8, dtype=torch.float64)
    for block in (fused, eager):
        block(x).square().sum().backward()
    for (name, p), q in zip(fused.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def saved_bytes(block, x):
    """Bytes autograd keeps for backward during one training forward of `block`."""
    seen = {}

    def pack(tensor):
        seen[(tensor.data_ptr(), tensor.dtype)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return sum(seen.values())


def test_memory_efficient_mode_keeps_one_tensor_per_link():
    x = torch.randn(4, 64, 16, 16, requires_grad=True)
    normal = make_block("bottleneck", 64, 16).float()
    saving = make_block("bottleneck", 64, 16, memory_efficient=True).float()
    # The two BN-ReLU outputs inside the block (inputs of conv2 and conv3) are not stored.
    link = 4 * 16 * 16 * 16 * 4  # N * width * H * W * sizeof(float)
    assert saved_bytes(saving, x) <= saved_bytes(normal, x) - 2 * link + 4096


def test_block_checkpointing_keeps_only_the_input():
    x = torch.randn(4, 64, 16, 16, requires_grad=True)
    normal = make_block("bottleneck", 64, 16).float()
    checkpointed = make_block("bottleneck", 64, 16, memory_efficient="block").float()
    assert saved_bytes(checkpointed, x) <= x.numel() * 4 + 4096  # the input and small vectors
    assert saved_bytes(normal, x) > 3 * x.numel() * 4


def test_memory_efficient_rejects_unknown_modes():
    with pytest.raises(ValueError, match="memory_efficient must be"):
        Bottleneck(64, 16, memory_efficient="everything")


@pytest.mark.parametrize("kind, inplanes, planes, stride", CASES)
def test_float32_channels_last_inference_matches_eager(kind, inplanes, planes, stride):
    """The prepacked oneDNN path (float32, channels_last, no autograd), twice: packing, reuse."""
    fused = randomize(make_block(kind, inplanes, planes, stride)).float().eval()
    eager = make_block(kind, inplanes, planes, stride, fused=False).float().eval()
    eager.load_state_dict(fused.state_dict())
    x = torch.randn(2, inplanes, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = eager(x)
        for _ in range(2):
            output = fused(x)
            torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4)
            assert output.is_contiguous(memory_format=torch.channels_last)
        fused.conv1.weight.mul_(0.5)  # a new fold, hence a new packed weight
        eager.conv1.weight.mul_(0.5)
        torch.testing.assert_close(fused(x), eager(x), rtol=1e-4, atol=1e-4)
        other_batch = torch.randn(3, inplanes, 8, 8).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fused(other_batch), eager(other_batch), rtol=1e-4, atol=1e-4)
