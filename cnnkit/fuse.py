"""cnnkit.fuse(model): run an existing model's BatchNorm -> ReLU and BatchNorm -> add -> ReLU
on cnnkit's fused modules, keeping its weights, buffers and state_dict keys.

Two ways in, tried in order:

1. torch.fx, where the model traces (torchvision's ResNet and VGG do): the graph is
   searched for BN -> ReLU and BN -> add -> ReLU (ReLU as a module, torch.relu, F.relu or
   .relu(); add as +, +=, torch.add or .add), each rewritten to one call of a
   cnnkit.nn.BatchNormReLU2d (with ``residual=`` for the add), and every other
   BatchNorm2d becomes a cnnkit.nn.BatchNorm2d. The result is a torch.fx.GraphModule.
2. A module walk otherwise (a forward with data-dependent control flow, input checks, ...):
   inside every nn.Sequential, BatchNorm2d followed by ReLU becomes a BatchNormReLU2d and
   the ReLU an nn.Identity; every torchvision-style BasicBlock / Bottleneck (conv1, bn1,
   ..., downsample, ending in relu(bn(...) + identity)) becomes a cnnkit block with the
   same submodules, kept only if it gives the same outputs as the original on a probe
   input (a block that only looks like torchvision's is left alone); any other
   BatchNorm2d becomes a cnnkit.nn.BatchNorm2d. The result has the model's own class.

An nn.Sequential always takes the walk, which sees its whole data flow. The result
shares nothing with the input model unless ``inplace=True``, which converts the model's
own modules (a traced model comes back as a GraphModule over them).
"""

import copy
import operator

import torch
import torch.fx
from torch import nn

from cnnkit.nn.batchnorm import BatchNorm2d, BatchNormReLU2d
from cnnkit.nn.blocks import BasicBlock, Bottleneck

_RELU_FUNCTIONS = (torch.relu, torch.relu_, nn.functional.relu)
_RELU_METHODS = ("relu", "relu_")
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


def fuse(model, inplace=False):
    """A copy of `model` (or `model` itself with inplace=True) whose BatchNorm2d ->
    ReLU and BatchNorm2d -> add -> ReLU run as cnnkit's fused ops; same weights, same
    state_dict keys, same outputs and gradients in train and eval mode."""
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, nn.Sequential):
        return fuse_modules(model)  # the walk sees the whole data flow, and keeps the type
    try:
        graph_module = _CnnkitLeafTracer.trace_module(model)
    except Exception:  # noqa: BLE001 -- any tracing failure means: walk the modules instead
        return fuse_modules(model)
    return fuse_graph(graph_module)


# --------------------------------------------------------------------------------------
# torch.fx


class _CnnkitLeafTracer(torch.fx.Tracer):
    """Keeps cnnkit's own modules whole: their forwards branch on the mode (folded BN in
    eval), which a trace would freeze."""

    def is_leaf_module(self, module, qualified_name):
        return type(module).__module__.startswith("cnnkit.") or super().is_leaf_module(module, qualified_name)

    @classmethod
    def trace_module(cls, model):
        graph = cls().trace(model)
        return torch.fx.GraphModule(model, graph, model.__class__.__name__)


def _is_plain_batch_norm(gm, node):
    return node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.BatchNorm2d


def _is_relu(gm, node):
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1
    return node.op == "call_method" and node.target in _RELU_METHODS and len(node.args) == 1


def _is_add(node):
    if node.op == "call_function":
        plain = node.target in _ADD_FUNCTIONS
    else:
        plain = node.op == "call_method" and node.target in _ADD_METHODS
    return plain and len(node.args) == 2 and not node.kwargs


def _only_user(node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def fuse_graph(gm):
    """Rewrite the BN -> [add ->] ReLU patterns of a traced GraphModule in place."""
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        # A BN module called from several places keeps its torch.nn type.
        if not _is_plain_batch_norm(gm, node) or calls[node.target] != 1 or len(node.args) != 1:
            continue
        user = _only_user(node)
        if user is not None and _is_relu(gm, user):
            _replace_module(gm, node.target, BatchNormReLU2d.from_torch(gm.get_submodule(node.target)))
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
        elif user is not None and _is_add(user) and _only_user(user) is not None and _is_relu(gm, _only_user(user)):
            relu = _only_user(user)
            residual = user.args[1] if user.args[0] is node else user.args[0]
            _replace_module(gm, node.target, BatchNormReLU2d.from_torch(gm.get_submodule(node.target)))
            with gm.graph.inserting_before(relu):  # after both the BN input and the residual
                fused = gm.graph.call_module(node.target, node.args, {"residual": residual})
            relu.replace_all_uses_with(fused)
            for dead in (relu, user, node):
                gm.graph.erase_node(dead)
        else:
            _replace_module(gm, node.target, BatchNorm2d.from_torch(gm.get_submodule(node.target)))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _replace_module(root, target, module):
    parent_name, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, name, module)


# --------------------------------------------------------------------------------------
# Module walk


def fuse_modules(model):
    """The module-walk conversion (see the module docstring); returns `model`, changed."""
    for name, child in list(model.named_children()):
        replacement = _fused_block(child)
        if replacement is not None:
            setattr(model, name, replacement)
            continue
        if isinstance(child, (BasicBlock, Bottleneck)):
            _fuse_cnnkit_block(child)
        fuse_modules(child)
    if isinstance(model, nn.Sequential):
        _fuse_sequential(model)
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:  # any BN left: the drop-in, same forward
            setattr(model, name, BatchNorm2d.from_torch(child))
    return model


def _fuse_sequential(sequential):
    names = list(sequential._modules)
    for first, second in zip(names, names[1:]):
        bn, relu = sequential._modules[first], sequential._modules[second]
        if type(bn) is nn.BatchNorm2d and type(relu) is nn.ReLU:
            sequential._modules[first] = BatchNormReLU2d.from_torch(bn)
            sequential._modules[second] = nn.Identity()


def _fuse_cnnkit_block(block):
    """A cnnkit block built on torch.nn BatchNorm2d: give it the fused norms."""
    if block._fused:
        return
    for name in ("bn1", "bn2", "bn3"):
        if hasattr(block, name):
            setattr(block, name, BatchNormReLU2d.from_torch(getattr(block, name)))
    block._fused = True


def _looks_like_torchvision_block(module):
    names = ("conv1", "bn1", "conv2", "bn2") + (("conv3", "bn3") if hasattr(module, "conv3") else ())
    if type(module).__module__.startswith("cnnkit.") or not all(hasattr(module, n) for n in names):
        return False
    convs_ok = all(type(getattr(module, n)) is nn.Conv2d for n in names if n.startswith("conv"))
    norms_ok = all(type(getattr(module, n)) is nn.BatchNorm2d for n in names if n.startswith("bn"))
    return convs_ok and norms_ok and hasattr(module, "downsample")


def _fused_block(module):
    """A cnnkit block computing what a torchvision-style block computes, or None."""
    if not _looks_like_torchvision_block(module):
        return None
    bottleneck = hasattr(module, "conv3")
    conv1, conv2 = module.conv1, module.conv2
    if conv1.kernel_size != ((1, 1) if bottleneck else (3, 3)) or conv2.kernel_size != (3, 3):
        return None
    try:
        with torch.device("meta"):  # every weight is replaced by the original's below
            fused = _block_like(module, bottleneck)
        for name, child in module.named_children():
            if name.startswith("conv"):
                setattr(fused, name, child)
            elif name.startswith("bn"):
                setattr(fused, name, BatchNormReLU2d.from_torch(child))
        fused.downsample = module.downsample
    except (ValueError, NotImplementedError, AttributeError, TypeError, ZeroDivisionError):
        return None
    fused.train(module.training)
    return fused if _same_function(module, fused) else None


def _block_like(module, bottleneck):
    """A cnnkit block with `module`'s configuration (its weights still to be set)."""
    conv1, conv2 = module.conv1, module.conv2
    if bottleneck:
        planes = module.conv3.out_channels // Bottleneck.expansion
        groups = conv2.groups
        return Bottleneck(
            conv1.in_channels, planes, max(conv1.stride[0], conv2.stride[0]), None, groups,
            conv2.out_channels * 64 // (planes * groups), conv2.dilation[0], BatchNormReLU2d,
            stride_in_1x1=conv1.stride != (1, 1),
        )
    return BasicBlock(conv1.in_channels, conv1.out_channels, conv1.stride[0], None,
                      norm_layer=BatchNormReLU2d)


def _same_function(original, candidate):
    """Same outputs on a probe input, in eval and train mode (run on float64 copies, so
    neither module's running statistics change)."""
    original, candidate = copy.deepcopy(original).double(), copy.deepcopy(candidate).double()
    try:
        parameter = next(original.parameters())
        generator = torch.Generator().manual_seed(0)  # leaves the global RNG alone
        probe = torch.randn(2, original.conv1.in_channels, 8, 8, dtype=torch.float64,
                            generator=generator).to(parameter.device)
        for training in (False, True):
            original.train(training)
            candidate.train(training)
            with torch.no_grad():
                if not torch.allclose(original(probe), candidate(probe), rtol=1e-9, atol=1e-9):
                    return False
    except Exception:  # noqa: BLE001 -- a block that cannot even run the probe is not ours
        return False
    return True


__all__ = ["fuse", "fuse_graph", "fuse_modules"]
