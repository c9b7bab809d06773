"""cnnkit's modules and models where torch.nn's go: torch.fx, isinstance, torch's converters,
norms swapped after construction, torch.ao's fuse_modules."""

import copy
import warnings

import pytest
import torch
import torch.fx
from torch import nn

import cnnkit
from cnnkit.models import get_model, list_models, model_info

# Small inputs each model accepts (channels and the sizes its classifier allows).
SMALL_INPUT = {"lenet5": (1, 28, 28), "alexnet_original": (3, 227, 227), "alexnet": (3, 224, 224)}


def small_input(name, batch=2):
    channels = model_info(name).input_size[0]
    return torch.randn(batch, *SMALL_INPUT.get(name, (channels, 32, 32)))


def randomize_batch_norms(model):
    """Running statistics and affine parameters away from their initial 0 and 1, so a
    swapped or skipped norm shows in the outputs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.5, generator=generator)


# --------------------------------------------------------------------------------------
# torch.fx


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", list_models())
def test_every_model_traces(name, fused):
    """Built on the meta device (no weights to make): the graph holds each norm and LRN as
    one call_module node, and the input check as one call."""
    with torch.device("meta"):
        model = get_model(name, fused=fused)
    graph_module = torch.fx.symbolic_trace(model)
    nodes = list(graph_module.graph.nodes)
    called = {node.target for node in nodes if node.op == "call_module"}
    norms = {name for name, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.LocalResponseNorm))}
    assert norms <= called
    checks = [node for node in nodes if node.op == "call_function" and node.target.__name__ == "check_image_batch"]
    assert len(checks) == 1


@pytest.mark.parametrize("name", ["lenet5", "alexnet_original", "vgg11_bn", "resnet18", "resnet20"])
def test_traced_model_computes_what_the_model_does(name):
    torch.manual_seed(0)
    model = get_model(name)
    randomize_batch_norms(model)
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    input = small_input(name)
    for training in (False, True):  # training: batch statistics, running stats updated
        model.train(training)
        traced.train(training)
        outputs = []
        for module in (traced, model):
            torch.manual_seed(1)  # the same dropout masks
            outputs.append(module(input))
        torch.testing.assert_close(*outputs)
        torch.testing.assert_close(traced.state_dict(), model.state_dict())
    with pytest.raises(ValueError, match="channels"):  # the check is in the graph
        traced(torch.randn(2, 5, 32, 32))


def test_traced_memory_efficient_block_keeps_its_recomputation():
    """A memory-saving block decides per call: it stays one node, and its backward is the
    block's own (gradients equal the model's)."""
    torch.manual_seed(0)
    model = get_model("resnet20", memory_efficient="block")
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    assert "layer1.0" in {node.target for node in traced.graph.nodes if node.op == "call_module"}
    input = torch.randn(2, 3, 16, 16)
    model(input).sum().backward()
    traced(input).sum().backward()
    for (name, a), (_, b) in zip(model.named_parameters(), traced.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def extract_features(model, return_modules):
    """torchvision's create_feature_extractor, reduced to its recipe: trace, take the last
    node inside each requested module's scope as that module's output, make those the
    graph's outputs and drop the rest."""
    graph_module = torch.fx.symbolic_trace(model)
    last_node = {}
    for node in graph_module.graph.nodes:
        scopes = set(node.meta.get("nn_module_stack", {}))
        if node.op == "call_module":
            scopes.add(node.target)
        for scope in scopes:
            last_node[scope] = node
    order = {node: index for index, node in enumerate(graph_module.graph.nodes)}
    outputs = {}
    for name in return_modules:  # a module path as torchvision writes it: "layer1"
        candidates = [node for scope, node in last_node.items() if scope == name or scope.startswith(name + ".")]
        outputs[name] = max(candidates, key=order.__getitem__)
    output = next(node for node in graph_module.graph.nodes if node.op == "output")
    graph_module.graph.erase_node(output)
    graph_module.graph.output(outputs)
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


@pytest.mark.parametrize("fused", [True, False])
def test_feature_extraction_recipe(fused):
    torch.manual_seed(0)
    model = get_model("resnet18", fused=fused).eval()
    randomize_batch_norms(model)
    extractor = extract_features(model, ["layer2", "layer4"])
    expected = {}
    for name in ("layer2", "layer4"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: expected.__setitem__(name, o))
    input = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(input)
        features = extractor(input)
    assert set(features) == {"layer2", "layer4"}
    for name in features:
        torch.testing.assert_close(features[name], expected[name])


def test_fuse_and_optimize_accept_a_traced_model():
    torch.manual_seed(0)
    model = get_model("resnet20", fused=False).eval()
    randomize_batch_norms(model)
    traced = torch.fx.symbolic_trace(model)
    input = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(input)
        fused = cnnkit.fuse(traced).eval()
        assert any(isinstance(m, cnnkit.nn.BatchNormReLU2d) for m in fused.modules())
        # Outputs reach ~200: float32 rounding of another BN kernel is ~1e-5 there.
        torch.testing.assert_close(fused(input), expected, rtol=1e-4, atol=1e-4)
        frozen = cnnkit.optimize_for_inference(traced)
        assert any(type(m).__name__ == "FrozenConv2d" for m in frozen.modules())
        torch.testing.assert_close(frozen(input), expected, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------
# isinstance and torch's converters


def test_cnnkit_modules_are_their_torch_nn_counterparts():
    assert isinstance(cnnkit.nn.BatchNorm2d(4), nn.BatchNorm2d)
    assert isinstance(cnnkit.nn.BatchNormReLU2d(4), nn.BatchNorm2d)
    assert isinstance(cnnkit.nn.SyncBatchNorm2d(4), nn.BatchNorm2d)
    assert isinstance(cnnkit.nn.LocalResponseNorm(5), nn.LocalResponseNorm)
    assert isinstance(cnnkit.nn.MaxPool2d(2), nn.MaxPool2d)
    # Same state and repr as before they were subclasses.
    assert list(cnnkit.nn.BatchNorm2d(4).state_dict()) == list(nn.BatchNorm2d(4).state_dict())
    assert repr(cnnkit.nn.BatchNorm2d(4)) == repr(nn.BatchNorm2d(4))
    assert repr(cnnkit.nn.LocalResponseNorm(5)) == repr(nn.LocalResponseNorm(5))
    assert repr(cnnkit.nn.LocalResponseNorm(convention="paper")) == (
        "LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0, convention='paper')")
    input = torch.randn(2, 7, 3, 3)
    torch.testing.assert_close(cnnkit.nn.LocalResponseNorm(3)(input), nn.LocalResponseNorm(3)(input))


def trained_copies(model, swap, steps=2, lr=0.1):
    """(model's, swapped copy's) outputs and parameters after the same SGD steps."""
    results = []
    for candidate in (model, swap(copy.deepcopy(model))):
        torch.manual_seed(0)
        optimizer = torch.optim.SGD(candidate.parameters(), lr=lr)
        candidate.train()
        for _ in range(steps):
            input = torch.randn(4, 3, 16, 16)
            loss = candidate(input).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        candidate.eval()
        with torch.no_grad():
            results.append((candidate(torch.ones(2, 3, 16, 16)), candidate.state_dict()))
    return results


def test_torch_convert_sync_batchnorm_trains_like_the_model():
    """torch's converter replaces every norm (fused ones too) with torch.nn.SyncBatchNorm: the
    blocks see that at forward time and apply the add and ReLU themselves, with a warning
    pointing at cnnkit's converter."""
    model = get_model("resnet20", num_classes=4).double()
    randomize_batch_norms(model)
    model = model.float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # lr 0.01: at 0.1 this model's outputs grow to 1e15 in two steps, where rounding
        # differences of any two BatchNorm implementations grow to a percent.
        (out, state), (swapped_out, swapped_state) = trained_copies(
            model, nn.SyncBatchNorm.convert_sync_batchnorm, lr=0.01)
    assert any("cnnkit.nn.convert_sync_batchnorm" in str(w.message) for w in caught)
    torch.testing.assert_close(swapped_out, out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(swapped_state, state, rtol=1e-4, atol=1e-4)


def replace_norms(module, make):
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make(child))
        else:
            replace_norms(child, make)
    return module


@pytest.mark.parametrize("norm", ["group_norm", "identity", "torch_batch_norm"])
@pytest.mark.parametrize("name", ["resnet20", "vgg11_bn", "resnet50"])
def test_norm_swapped_after_construction(name, norm):
    """The same model built from the swapped-in norm (fused=False, then the same swap) is
    the reference, in train and eval mode."""
    make = {
        "group_norm": lambda bn: nn.GroupNorm(4, bn.num_features),
        "identity": lambda bn: nn.Identity(),
        "torch_batch_norm": lambda bn: nn.BatchNorm2d(bn.num_features),
    }[norm]
    torch.manual_seed(0)
    with torch.device("meta"):
        fused = get_model(name, num_classes=4)
    if name.startswith("vgg"):
        fused.classifier = nn.Linear(512 * 7 * 7, 4, device="meta")
    fused = fused.to_empty(device="cpu")
    for module in fused.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    reference = get_model(name, num_classes=4, fused=False)
    if name.startswith("vgg"):
        reference.classifier = nn.Linear(512 * 7 * 7, 4)
    replace_norms(fused, make)
    replace_norms(reference, make)
    reference.load_state_dict(fused.state_dict())
    input = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        fused.train(training)
        reference.train(training)
        torch.testing.assert_close(fused(input), reference(input))


def test_fuse_modules_with_cnnkit_fuser_methods():
    from torch.ao.quantization import fuse_modules

    torch.manual_seed(0)
    model = get_model("resnet18").eval()
    randomize_batch_norms(model)
    input = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(input)
    groups = [["conv1", "bn1", "relu"], ["layer1.0.conv1", "layer1.0.bn1"], ["layer1.0.conv2", "layer1.0.bn2"],
              ["layer2.0.downsample.0", "layer2.0.downsample.1"]]
    fused = fuse_modules(model, groups, fuse_custom_config_dict={
        "additional_fuser_method_mapping": cnnkit.nn.fuser_method_mapping()})
    assert isinstance(fused.bn1, nn.Identity) and isinstance(fused.layer1[0].bn1, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(fused(input), expected, rtol=1e-4, atol=1e-4)


def test_torch_export_keeps_cnnkit_ops():
    torch.manual_seed(0)
    model = get_model("resnet20").eval()
    randomize_batch_norms(model)
    input = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(model, (input,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "cnnkit.batch_norm_act.default" in targets
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(input), model(input))
