"""cnnkit.fuse: existing torch.nn models onto the fused modules, same weights, same results."""

import copy
import importlib
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnkit
from cnnkit.fuse import fuse
from cnnkit.models import get_model


# torchvision's ResNet building blocks, as torchvision writes them (plain torch.nn).
class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNet(nn.Module):
    """torchvision's ResNet forward, two stages, narrow, so the test stays fast."""

    def __init__(self, block, checked_input=False):
        super().__init__()
        self.checked_input = checked_input
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        out = 16 * block.expansion
        shortcut = nn.Sequential(nn.Conv2d(16, out, 1, bias=False), nn.BatchNorm2d(out))
        self.layer1 = nn.Sequential(block(16, 16, 1, shortcut if out != 16 else None), block(out, 16))
        shortcut = nn.Sequential(nn.Conv2d(out, 2 * out, 1, 2, bias=False), nn.BatchNorm2d(2 * out))
        self.layer2 = nn.Sequential(block(out, 32, 2, shortcut), block(2 * out, 32))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * out, 10)

    def forward(self, x):
        if self.checked_input and x.shape[1] != 3:  # data-dependent Python: fx cannot trace this
            raise ValueError("expected 3 channels")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_batch_norms(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model


def assert_same_results(original, fused, input):
    """Eval outputs, train outputs, every gradient and every buffer after a step."""
    assert list(fused.state_dict()) == list(original.state_dict())
    for training in (False, True):
        original.train(training)
        fused.train(training)
        outputs = []
        for model in (original, fused):
            model.zero_grad(set_to_none=True)
            output = model(input)
            output.square().sum().backward()
            outputs.append(output)
        torch.testing.assert_close(outputs[1], outputs[0])
        grads = [dict((k, p.grad) for k, p in m.named_parameters()) for m in (original, fused)]
        for key in grads[0]:
            torch.testing.assert_close(grads[1][key], grads[0][key], msg=key)
        buffers = [m.state_dict() for m in (original, fused)]
        for key in buffers[0]:
            torch.testing.assert_close(buffers[1][key], buffers[0][key], msg=key)


def plain_batch_norms(model):
    return [name for name, m in model.named_modules() if type(m) is nn.BatchNorm2d]


def fused_norms(model):
    return [name for name, m in model.named_modules() if isinstance(m, cnnkit.nn.BatchNormReLU2d)]


@pytest.mark.parametrize("block", [TVBasicBlock, TVBottleneck])
def test_fuse_traced_torchvision_resnet(block):
    torch.manual_seed(0)
    original = randomize_batch_norms(TVResNet(block)).double()
    fused = fuse(original)
    assert isinstance(fused, torch.fx.GraphModule)
    assert plain_batch_norms(fused) == []
    # Every BN except the shortcut's ends in a ReLU: all of those are fused.
    expected = [n for n in plain_batch_norms(original) if "downsample" not in n and not n.endswith(".1")]
    assert sorted(fused_norms(fused)) == sorted(expected)
    assert "residual" in fused.code  # the BN + add + ReLU ends of the blocks
    assert_same_results(original, fused, torch.randn(2, 3, 32, 32, dtype=torch.float64))


@pytest.mark.parametrize("block", [TVBasicBlock, TVBottleneck])
def test_fuse_untraceable_model_walks_its_modules(block):
    torch.manual_seed(0)
    original = randomize_batch_norms(TVResNet(block, checked_input=True)).double()
    fused = fuse(original)
    assert type(fused) is TVResNet
    blocks = [m for m in fused.modules() if isinstance(m, (cnnkit.nn.BasicBlock, cnnkit.nn.Bottleneck))]
    assert len(blocks) == 4
    assert_same_results(original, fused, torch.randn(2, 3, 32, 32, dtype=torch.float64))


def test_fuse_user_sequential():
    torch.manual_seed(0)
    original = randomize_batch_norms(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
    )).double()
    fused = fuse(original)
    assert sorted(fused_norms(fused)) == ["1", "4"]
    assert plain_batch_norms(fused) == []
    assert_same_results(original, fused, torch.randn(3, 3, 8, 8, dtype=torch.float64))


def test_fuse_vgg_bn_and_reference_resnet():
    """Models of the zoo built from torch.nn (fused=False) trace with torch.fx, their input
    checks included: fuse rewrites their graphs."""
    for name, size in (("vgg11_bn", 32), ("resnet20", 16), ("plain20", 16)):
        torch.manual_seed(0)
        with torch.device("meta"):
            original = get_model(name, fused=False, num_classes=10)
            if name.startswith("vgg"):
                original.classifier = nn.Linear(512 * 7 * 7, 10)  # 100M fewer weights to make
        original = original.to_empty(device="cpu").double()
        for module in original.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        randomize_batch_norms(original)
        fused = fuse(original)
        assert isinstance(fused, torch.fx.GraphModule)
        assert len(fused_norms(fused)) > 0
        assert plain_batch_norms(fused) == []
        assert_same_results(original, fused, torch.randn(2, 3, size, size, dtype=torch.float64))


def test_fuse_leaves_a_lookalike_block_alone():
    class PreActivationBlock(TVBasicBlock):  # same attributes, different function
        def forward(self, x):
            out = self.conv1(self.relu(self.bn1(x)))
            return self.conv2(self.relu(self.bn2(out))) + x

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = PreActivationBlock(8, 8)

        def forward(self, x):
            return self.block(x) if x.sum() > -1e9 else x  # data-dependent: no fx

    original = Untraceable().double()
    fused = fuse(original)
    assert type(fused.block) is PreActivationBlock
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fused(x), original(x))


def test_fuse_copies_unless_inplace():
    original = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    fused = fuse(original)
    assert type(original[1]) is nn.BatchNorm2d
    fused[0].weight.data.zero_()
    assert original[0].weight.abs().sum() > 0
    same = fuse(original, inplace=True)
    assert same is not None and isinstance(original[1], cnnkit.nn.BatchNormReLU2d)


def test_fuse_keeps_the_global_rng_untouched():
    model = TVResNet(TVBasicBlock, checked_input=True)
    state = torch.get_rng_state()
    fuse(model)
    assert torch.equal(torch.get_rng_state(), state)


def test_fused_copy_is_independent_of_the_original():
    original = randomize_batch_norms(TVResNet(TVBasicBlock)).double()
    before = copy.deepcopy(original.state_dict())
    fused = fuse(original).train()
    fused(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    for key, value in original.state_dict().items():
        assert torch.equal(value, before[key]), key


class ResidualOf(nn.Module):
    """relu(bn(conv(x)) + other), `other` chosen by `kind`; builds only what it uses, so
    fx keeps tracing it."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        if kind == "channel bias":
            self.bias = nn.Parameter(torch.rand(4, 1, 1))

    def forward(self, x):
        if self.kind == "broadcast bn":  # squeeze-excite style: the BN output broadcasts
            return F.relu(self.bn(self.conv(x).mean((2, 3), keepdim=True)) + x)
        y = self.bn(self.conv(x))
        other = {"same shape": x, "scalar": 1.0, "itself": y, "float64": x.double()}.get(self.kind)
        return F.relu(y + (self.bias if self.kind == "channel bias" else other))


@pytest.mark.parametrize(
    "kind", ["same shape", "scalar", "channel bias", "broadcast bn", "itself", "float64"]
)
def test_fx_add_fusion_checks_the_other_operand(kind):
    torch.manual_seed(0)
    original = randomize_batch_norms(ResidualOf(kind))
    if kind != "float64":  # the float64 residual against a float32 BN is the case itself
        original = original.double()
    fused = fuse(original)
    assert isinstance(fused, torch.fx.GraphModule)
    if kind == "same shape":
        assert "residual" in fused.code
    x = torch.randn(2, 4, 6, 6, dtype=next(original.parameters()).dtype)
    assert_same_results(original, fused, x)


def test_failed_graph_rewrite_falls_back_to_the_walk(monkeypatch):
    def broken(gm):
        raise RuntimeError("rewrite failed")

    monkeypatch.setattr(importlib.import_module("cnnkit.fuse"), "fuse_graph", broken)
    original = randomize_batch_norms(TVResNet(TVBasicBlock)).double()
    fused = fuse(original)
    assert type(fused) is TVResNet
    assert_same_results(original, fused, torch.randn(2, 3, 32, 32, dtype=torch.float64))


class TrainOnlyHead(nn.Module):
    """Dropout by self.training, and an auxiliary head returned only in training."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)
        self.aux = nn.Linear(4, 10)

    def forward(self, x):
        features = F.dropout(F.relu(self.bn(self.conv(x))), 0.5, self.training).mean((2, 3))
        return (self.fc(features), self.aux(features)) if self.training else self.fc(features)


@pytest.mark.parametrize("fused_in_training", [False, True])
def test_fuse_keeps_a_mode_dependent_forward(fused_in_training):
    original = randomize_batch_norms(TrainOnlyHead()).double().train(fused_in_training)
    fused = fuse(original)
    assert list(fused.state_dict()) == list(original.state_dict())
    assert all(m.training == fused_in_training for m in original.modules())  # modes restored
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for training in (False, True):
        outputs = []
        for model in (original, fused):
            torch.manual_seed(0)  # the same dropout masks
            outputs.append(model.train(training)(x))
        torch.testing.assert_close(outputs[1], outputs[0])


def test_fuse_keeps_what_only_other_methods_use():
    class WithLossParameter(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.temperature = nn.Parameter(torch.ones(()))  # used by the loss, not forward

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

        def loss(self, output):
            return output.mean() / self.temperature

    original = WithLossParameter()
    fused = fuse(original)
    assert list(fused.state_dict()) == list(original.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused.loss(fused(x)), original.loss(original(x)))


class ScaledBlock(nn.Module):
    """torchvision's BasicBlock attributes, with a learnable branch scale starting at 1."""

    def __init__(self, channels, relu):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = relu
        self.downsample = None
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) * self.gamma + x)


class CheckedInput(nn.Module):
    """Runs `inner`, after an input check fx cannot trace: fuse takes the module walk."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if x.sum() < -1e9:
            raise ValueError("unexpected input")
        return self.inner(x)


@pytest.mark.parametrize("relu", [nn.ReLU(), nn.ReLU6()], ids=["ReLU", "ReLU6"])
def test_fuse_leaves_blocks_with_more_than_torchvisions_alone(relu):
    torch.manual_seed(0)
    original = CheckedInput(ScaledBlock(8, relu)).double()
    fused = fuse(original)
    assert type(fused.inner) is ScaledBlock
    assert type(fused.inner.relu) is type(relu)
    assert list(fused.state_dict()) == list(original.state_dict())
    x = 10 * torch.randn(2, 8, 8, 8, dtype=torch.float64)  # large enough for ReLU6 to clip
    torch.testing.assert_close(fused.eval()(x), original.eval()(x))


def test_fuse_sequential_subclass_with_its_own_forward():
    class Taps(nn.Sequential):  # every layer's output, the BN's included
        def forward(self, x):
            outputs = []
            for layer in self:
                x = layer(x)
                outputs.append(x)
            return outputs

    torch.manual_seed(0)
    for wrap in (lambda m: m, CheckedInput):  # fx, and the module walk
        taps = Taps(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        original = wrap(randomize_batch_norms(taps))
        fused = fuse(original)
        x = torch.randn(2, 4, 6, 6)
        for training in (False, True):
            torch.testing.assert_close(fused.train(training)(x), original.train(training)(x))


def test_fuse_leaves_cnnkit_blocks_with_other_norms_alone():
    group_norm = get_model("resnet18", fused=False, num_classes=4,
                           norm_layer=lambda channels: nn.GroupNorm(4, channels)).double()
    fused = fuse(group_norm)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(fused.eval()(x), group_norm.eval()(x))
    sync = fuse(get_model("resnet18", fused=False, num_classes=4, norm_layer=nn.SyncBatchNorm))
    norms = [m for name, m in sync.named_modules() if name.rpartition(".")[2].startswith("bn")]
    assert norms and all(type(m) is nn.SyncBatchNorm for m in norms)  # still synchronised


def test_inplace_fuse_of_a_traced_model_shares_but_keeps_the_model():
    original = randomize_batch_norms(TVResNet(TVBasicBlock)).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = original(x)
    fused = fuse(original, inplace=True)
    assert isinstance(fused, torch.fx.GraphModule)
    assert fused.get_submodule("layer1.0.conv1") is original.layer1[0].conv1
    assert fused.get_submodule("layer1.0.bn2").weight is original.layer1[0].bn2.weight
    assert type(original.layer1[0].bn2) is nn.BatchNorm2d  # the model's own forward still works
    torch.testing.assert_close(original(x), expected)
    torch.testing.assert_close(fused(x), expected)


def test_traced_fused_model_saves_and_fuses_again():
    original = randomize_batch_norms(TVResNet(TVBasicBlock)).double().eval()
    fused = fuse(original)
    buffer = io.BytesIO()
    torch.save(fused, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # re-traces the generated code
    again = fuse(fused)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for model in (loaded, again):
        assert "residual" in model.code
        torch.testing.assert_close(model.eval()(x), original(x))
