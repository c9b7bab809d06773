"""cnnkit.fuse(model): run an existing model's BatchNorm -> ReLU and BatchNorm -> add -> ReLU
on cnnkit's fused modules, keeping its weights, buffers and state_dict keys.

Two ways in, tried in order:

1. torch.fx, where the model traces (torchvision's ResNet and VGG do) to the same graph in
   train and eval mode and the traced module keeps every submodule, parameter and buffer
   of the model (nothing used only outside forward): the graph is searched for BN -> ReLU
   and BN -> add -> ReLU (ReLU as a module, torch.relu, F.relu or .relu(); add as +, +=,
   torch.add or .add, of the BN output and another traced tensor), each rewritten to one
   call of a cnnkit.nn.BatchNormReLU2d (with ``residual=`` for the add; where the other
   operand turns out not to have the BN output's shape, dtype and device, that call runs
   torch's BN, add and ReLU instead), and every other BatchNorm2d becomes a
   cnnkit.nn.BatchNorm2d. The result is a torch.fx.GraphModule.
2. A module walk otherwise (a forward with data-dependent control flow, a mode-dependent
   graph, ...), or where the graph rewrite fails: inside every nn.Sequential
   that runs nn.Sequential's own forward, BatchNorm2d followed by ReLU becomes a
   BatchNormReLU2d and the ReLU an nn.Identity; every torchvision-style BasicBlock /
   Bottleneck (conv1, bn1, ..., downsample, relu, ending in relu(bn(...) + identity), with
   no other submodules, parameters or buffers of its own) becomes a cnnkit block with the
   same submodules, kept only if it gives the same outputs as the original on a probe
   input (a block that only looks like torchvision's is left alone); a cnnkit block built
   on plain BatchNorm2d gets the fused norms (one with any other norm is left alone); any
   other BatchNorm2d becomes a cnnkit.nn.BatchNorm2d. The result has the model's own class.

An nn.Sequential running its own forward always takes the walk, which sees its whole
data flow. Limitation of the walk: it cannot see a parent that calls a Sequential's
children one by one out of order (``seq[1](seq[0](x) + x)``); such a Sequential's BN and
ReLU are still fused, which changes what the parent computes.

The result shares nothing with the input model unless ``inplace=True``, which skips the
copy: the walk then converts the model's own modules and returns the model; a traced
result is a GraphModule that shares the model's leaf modules, parameters and buffers
while the model itself keeps its torch.nn BatchNorms (fusing them inside the model's own
containers would break the model's own forward, which runs the BN, add and ReLU apart).
"""

import copy
import itertools

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.fx_patterns import (
    is_add,
    is_relu,
    module_call_counts,
    only_user,
    replace_module,
    residual_of,
)
from cnnkit.nn.batchnorm import BatchNorm2d, BatchNormReLU2d
from cnnkit.nn.blocks import CNNKIT_BLOCKS, BasicBlock, Bottleneck


def fuse(model, inplace=False):
    """A copy of `model` (or `model` itself with inplace=True, see the module docstring)
    whose BatchNorm2d -> ReLU and BatchNorm2d -> add -> ReLU run as cnnkit's fused ops;
    same weights, same state_dict keys, same outputs and gradients in train and eval mode."""
    if not isinstance(model, nn.Module):  # else deepcopy and tracing fail far from the cause
        raise TypeError(f"fuse: model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    if _runs_in_order(model):
        return fuse_modules(model)  # the walk sees the whole data flow, and keeps the type
    try:
        graph_module = _trace_whole(model)
        if graph_module is not None:
            return fuse_graph(graph_module)
    except Exception:  # noqa: BLE001 -- a failed trace or rewrite means: walk the modules instead
        # A failed rewrite changed only the GraphModule's own containers (the leaf modules
        # it shares with the model are replaced there, not changed), so the model is whole.
        pass
    return fuse_modules(model)


# --------------------------------------------------------------------------------------
# torch.fx


class _FusedGraphTracer(torch.fx.Tracer):
    """torch.fx's tracer that keeps the _bn_add_relu calls of a fused graph whole (tracing
    it again: fuse of a fused model, torch.load of one). cnnkit's own modules record
    themselves as one node where their forward must run at every call (cnnkit.nn.tracing)."""

    def __init__(self):
        super().__init__(autowrap_functions=(_bn_add_relu,))


def _trace_whole(model):
    """A GraphModule of `model` whose graph holds in either mode and which holds every
    submodule, parameter and buffer of the model, or None where there is no such one."""
    modes = {module: module.training for module in model.modules()}
    try:
        graphs = []
        for training in (True, False):  # a forward reading self.training traces differently
            model.train(training)
            graphs.append(_FusedGraphTracer().trace(model))
    finally:
        for module, training in modes.items():
            module.training = training
    if graphs[0].python_code("self").src != graphs[1].python_code("self").src:
        return None
    graph_module = torch.fx.GraphModule(model, graphs[1], model.__class__.__name__)
    return graph_module if _names(model) <= _names(graph_module) else None


def _names(module):
    """Qualified names of every parameter and buffer: a GraphModule copies only what the
    traced forward used (an auxiliary head or a parameter only a loss uses would be lost)."""
    named = itertools.chain(
        module.named_parameters(remove_duplicate=False),
        module.named_buffers(remove_duplicate=False),
    )
    return {name for name, _ in named}


def _is_plain_batch_norm(gm, node):
    return node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.BatchNorm2d


def fuse_graph(gm):
    """Rewrite the BN -> [add ->] ReLU patterns of a traced GraphModule in place."""
    calls = module_call_counts(gm)
    for node in list(gm.graph.nodes):
        # A BN module called from several places keeps its torch.nn type.
        if not _is_plain_batch_norm(gm, node) or calls[node.target] != 1 or len(node.args) != 1:
            continue
        user = only_user(node)
        if user is not None and is_relu(gm, user):
            replace_module(gm, node.target, BatchNormReLU2d.from_torch(gm.get_submodule(node.target)))
            user.replace_all_uses_with(node)
            gm.graph.erase_node(user)
        elif _is_residual_add_relu(gm, node, user):
            _fuse_add_relu(gm, node, user)
        else:
            replace_module(gm, node.target, BatchNorm2d.from_torch(gm.get_submodule(node.target)))
    for module in gm.modules():  # blocks kept whole in the graph (memory-saving ones)
        if isinstance(module, CNNKIT_BLOCKS):
            _fuse_cnnkit_block(module)
    gm.graph.lint()
    gm.recompile()
    return gm


def _is_residual_add_relu(gm, bn_node, add):
    if add is None or not is_add(add):
        return False
    relu = only_user(add)
    return relu is not None and is_relu(gm, relu) and residual_of(bn_node, add) is not None


def _fuse_add_relu(gm, bn_node, add):
    """relu(bn(x) + residual) -> one _bn_add_relu call on the BN, now a BatchNormReLU2d."""
    relu = only_user(add)
    residual = residual_of(bn_node, add)
    bn_module = gm.get_submodule(bn_node.target)
    replace_module(gm, bn_node.target, BatchNormReLU2d.from_torch(bn_module))
    with gm.graph.inserting_before(relu):  # after both the BN input and the residual
        bn = gm.graph.get_attr(bn_node.target)
        fused = gm.graph.call_function(_bn_add_relu, (bn, *bn_node.args), {"residual": residual})
    relu.replace_all_uses_with(fused)
    for dead in (relu, add, bn_node):
        gm.graph.erase_node(dead)


def _bn_add_relu(bn, input, residual):
    """relu(bn(input) + residual) for a BatchNormReLU2d `bn`: one fused call where the
    residual is a tensor of the BN output's shape, dtype and device (all the fused op
    takes); otherwise torch's BN, add and ReLU, which broadcast and promote as the traced
    model did (a per-channel bias, a float64 residual, a BN output that broadcasts)."""
    if (isinstance(residual, torch.Tensor) and residual.shape == input.shape
            and residual.dtype == input.dtype and residual.device == input.device):
        return bn(input, residual=residual)
    return torch.relu(_BatchNorm.forward(bn, input) + residual)  # nn.BatchNorm2d's forward


# --------------------------------------------------------------------------------------
# Module walk


def fuse_modules(model):
    """The module-walk conversion (see the module docstring); returns `model`, changed."""
    for name, child in list(model.named_children()):
        replacement = _fused_block(child)
        if replacement is not None:
            setattr(model, name, replacement)
            continue
        if isinstance(child, CNNKIT_BLOCKS):
            _fuse_cnnkit_block(child)
        fuse_modules(child)
    if _runs_in_order(model):
        _fuse_sequential(model)
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:  # any BN left: the drop-in, same forward
            setattr(model, name, BatchNorm2d.from_torch(child))
    return model


def _runs_in_order(module):
    """An nn.Sequential whose forward is nn.Sequential's own: each child feeds only the
    next. A subclass with its own forward may use a child's output elsewhere too."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _fuse_sequential(sequential):
    names = list(sequential._modules)
    for first, second in zip(names, names[1:]):
        bn, relu = sequential._modules[first], sequential._modules[second]
        if type(bn) is nn.BatchNorm2d and type(relu) is nn.ReLU:
            sequential._modules[first] = BatchNormReLU2d.from_torch(bn)
            sequential._modules[second] = nn.Identity()


def _fuse_cnnkit_block(block):
    """A cnnkit block built on plain BatchNorm2d: give it the fused norms. Any other norm
    (GroupNorm, SyncBatchNorm, ...) has no fused counterpart here that computes the same,
    so such a block is left alone."""
    if not all(type(norm) in (nn.BatchNorm2d, BatchNorm2d) for norm in block._norms()):
        return  # fused already, or another norm
    for name in ("bn1", "bn2", "bn3"):
        if hasattr(block, name):
            setattr(block, name, BatchNormReLU2d.from_torch(getattr(block, name)))


def _looks_like_torchvision_block(module):
    names = ("conv1", "bn1", "conv2", "bn2") + (("conv3", "bn3") if hasattr(module, "conv3") else ())
    if type(module).__module__.startswith("cnnkit.") or not all(hasattr(module, n) for n in names):
        return False
    convs_ok = all(type(getattr(module, n)) is nn.Conv2d for n in names if n.startswith("conv"))
    norms_ok = all(type(getattr(module, n)) is nn.BatchNorm2d for n in names if n.startswith("bn"))
    shape_ok = convs_ok and norms_ok and hasattr(module, "downsample")
    return shape_ok and _holds_only_block_parts(module)


_BLOCK_PARTS = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"}


def _holds_only_block_parts(module):
    """Nothing the cnnkit block would drop or compute differently: a probe on one random
    input cannot tell a scale initialised to 1, or a ReLU6 that the probe never clips,
    from torchvision's block."""
    if hasattr(module, "relu") and type(module.relu) is not nn.ReLU:
        return False
    own_tensors = itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
    return next(own_tensors, None) is None and set(dict(module.named_children())) <= _BLOCK_PARTS


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
