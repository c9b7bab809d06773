"""cnnkit.optimize_for_inference(model): a frozen copy of an eval-mode model for serving.

Each Conv2d [-> BatchNorm2d] [-> + residual] [-> ReLU] becomes one FrozenConv2d: the BN
folded into the convolution's weight and bias, the add and the activation its epilogue,
the weight prepacked once for oneDNN; each Linear [-> ReLU] a FrozenLinear; each
nn.MaxPool2d cnnkit's, which computes no indices. The patterns are found in a torch.fx trace
of the model, in every form cnnkit and torchvision write them:
- torch.nn: Conv2d, BatchNorm2d, then optionally an add of another traced tensor (+, +=,
  torch.add, .add), then optionally a ReLU (module, torch.relu, F.relu, .relu());
- cnnkit: Conv2d, then a cnnkit BatchNorm2d / BatchNormReLU2d (its activation, and its
  ``residual=``), a ConvBNReLU2d, or a cnnkit.fuse graph's BN-add-ReLU call.
A model torch.fx cannot trace (data-dependent control flow, ...) keeps its own forward, and
each of its children is optimised the same way, recursively.
"""

import copy

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.fuse import _bn_add_relu
from cnnkit.fx_patterns import (
    is_add,
    is_relu,
    module_call_counts,
    only_user,
    replace_module,
    residual_of,
)
from cnnkit.nn.batchnorm import _BatchNormAct2d
from cnnkit.nn.conv_bn import ConvBNReLU2d
from cnnkit.nn.lrn import LocalResponseNorm
from cnnkit.nn.pooling import MaxPool2d

from .frozen_conv import FrozenConv2d
from .frozen_linear import FrozenLinear
from .frozen_module import FrozenModule


def optimize_for_inference(model, example_inputs=None):
    """A new, frozen module computing what the eval-mode ``model`` computes, faster.

    ``model``: an nn.Module in eval mode (a cnnkit model, a torchvision one, anything
    torch.fx traces, or a module whose children do). ``example_inputs``: a tensor or a
    tuple of the forward's arguments; where given, each convolution's weight is prepacked
    for the input shape it sees there (any other shape still runs, and correctly).

    The result shares no tensor with ``model``, keeps no cache, and is safe to call from
    several threads at once. It refuses ``.train()``, ``load_state_dict``, conversions
    (``.to()``, ``.double()``, ...) and gradients with a FrozenModuleError: change the
    original model and optimise it again.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"optimize_for_inference: model must be an nn.Module, got {type(model).__name__}"
        )
    if model.training:
        raise ValueError("optimize_for_inference: model must be in eval mode (call model.eval())")
    if isinstance(model, FrozenModule):
        return model
    model = copy.deepcopy(model)  # the source stays as it is, and trainable
    with torch.no_grad():
        input_shapes = _input_shapes(model, example_inputs)
        model = _optimized(model, input_shapes)
        model.requires_grad_(False)
    return FrozenModule(model)


def _input_shapes(model, example_inputs):
    """{conv or linear module: the shape of its input} over one forward of
    ``example_inputs``."""
    if example_inputs is None:
        return {}
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError(
            "optimize_for_inference: example_inputs must be a tensor or a tuple of the "
            f"forward's arguments, got {type(example_inputs).__name__}"
        )
    shapes = {}

    def record(layer, args):
        shapes.setdefault(layer, tuple(args[0].shape))

    layers = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear)]
    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    try:
        model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


# --------------------------------------------------------------------------------------
# Tracing


class _InferenceTracer(torch.fx.Tracer):
    """Traces through containers (blocks, models, Sequentials) down to the ops: every
    BatchNorm, ConvBNReLU2d and LocalResponseNorm stays one call_module node. The models'
    input checks record themselves in the graph (cnnkit.nn.tracing), so the frozen model
    still checks its input."""

    def __init__(self):
        super().__init__(autowrap_functions=(_bn_add_relu,))

    def is_leaf_module(self, module, qualified_name):
        if isinstance(module, (_BatchNorm, ConvBNReLU2d, LocalResponseNorm)):
            return True
        return super().is_leaf_module(module, qualified_name)


def _optimized(module, input_shapes):
    """``module`` traced and rewritten, or, where it does not trace, ``module`` itself with
    each child optimised."""
    try:
        graph = _InferenceTracer().trace(module)
    except Exception:  # noqa: BLE001 -- an untraceable forward: optimise its children instead
        for name, child in list(module.named_children()):
            setattr(module, name, _optimized(child, input_shapes))
        return module
    graph_module = torch.fx.GraphModule(module, graph, type(module).__name__)
    if _freeze_layers(graph_module, input_shapes) + _index_free_max_pools(graph_module):
        return graph_module
    # Nothing to fold at this level: keep the module's own class (and its children's).
    for name, child in list(module.named_children()):
        setattr(module, name, _optimized(child, input_shapes))
    return module


# --------------------------------------------------------------------------------------
# Conv [-> BN] [-> add] [-> ReLU] to FrozenConv2d, Linear [-> ReLU] to FrozenLinear


class _Match:
    """One foldable chain: the conv (or linear) and BN modules, what follows them, and the
    node whose value the frozen layer replaces."""

    def __init__(self, layer, bn, last, activation=None, negative_slope=0.01, residual=None):
        self.layer, self.bn, self.last = layer, bn, last
        self.activation, self.negative_slope, self.residual = activation, negative_slope, residual

    def frozen(self, input_shapes):
        input_shape = input_shapes.get(self.layer)
        if isinstance(self.layer, nn.Linear):
            return FrozenLinear.from_linear(self.layer, self.activation, input_shape)
        return FrozenConv2d.from_conv_bn(self.layer, self.bn, self.activation,
                                         self.negative_slope, input_shape)


def _freeze_layers(gm, input_shapes):
    """Rewrite every conv (and linear) chain of ``gm``'s graph into its frozen layer, in
    place; the number rewritten.

    Each chain is rewritten as soon as it is found, so the next one is matched on the
    graph as it now is (one block's output is the next block's input and shortcut)."""
    calls = module_call_counts(gm)
    # A call whose value nothing uses ran for its effect (an input check): it stays.
    called_for_effect = {node for node in gm.graph.nodes if not node.users and node.op != "output"}
    folded = 0
    for node in list(gm.graph.nodes):
        match = _match(gm, node, calls)
        if match is None:
            continue
        # At the conv's (linear's, ConvBNReLU2d's) name.
        replace_module(gm, node.target, match.frozen(input_shapes))
        # Just before the chain's end, after the residual: torchvision computes the
        # shortcut after the last BN.
        with gm.graph.inserting_before(match.last):
            kwargs = {} if match.residual is None else {"residual": match.residual}
            fused = gm.graph.call_module(node.target, node.args[:1], kwargs)
        match.last.replace_all_uses_with(fused)
        folded += 1
    gm.graph.eliminate_dead_code(
        is_impure_node=lambda node: node.is_impure() or node in called_for_effect
    )
    _write_into_dead_residuals(gm)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return folded


def _index_free_max_pools(gm):
    """Swap each nn.MaxPool2d for cnnkit's, which computes no indices; the number swapped."""
    swapped = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(gm.get_submodule(node.target)) is nn.MaxPool2d:
            replace_module(gm, node.target, MaxPool2d.from_torch(gm.get_submodule(node.target)))
            swapped += 1
    return swapped


# Modules whose output is a new tensor, never a view of their input (nn.Identity, an
# in-place ReLU, a slice or a user's module may return their input or a view of it).
_FRESH_OUTPUT = (FrozenConv2d, nn.MaxPool2d)


def _write_into_dead_residuals(gm):
    """Let each frozen convolution accumulate into its residual where that is a fresh
    tensor which nothing reads afterwards, nor through a view (a ResNet block's shortcut):
    made by a _FRESH_OUTPUT module, and read before only by such modules, which keep no
    view of it."""
    order = {node: index for index, node in enumerate(gm.graph.nodes)}

    def fresh(node):
        return node.op == "call_module" and isinstance(gm.get_submodule(node.target), _FRESH_OUTPUT)

    for node in gm.graph.nodes:
        residual = node.kwargs.get("residual") if node.op == "call_module" else None
        if not isinstance(residual, torch.fx.Node) or not fresh(residual):
            continue
        readers = [user for user in residual.users if user is not node]
        if (isinstance(gm.get_submodule(node.target), FrozenConv2d)
                and residual is not node.args[0]  # its own input: read while written
                and all(fresh(user) and order[user] < order[node] for user in readers)):
            gm.get_submodule(node.target).writes_into_residual = True


def _match(gm, node, calls):
    """The foldable chain starting at ``node``, or None."""
    if node.op != "call_module" or calls[node.target] != 1:
        return None
    module = gm.get_submodule(node.target)
    if isinstance(module, ConvBNReLU2d):
        return _match_conv_bn_relu(node, module)
    if type(module) is nn.Linear and len(node.args) == 1 and not node.kwargs:
        return _match_linear_relu(gm, node, module)
    if type(module) is not nn.Conv2d or module.padding_mode != "zeros":
        return None
    user = only_user(node)
    if user is None or len(node.args) != 1 or node.kwargs:
        return None
    if user.op == "call_function" and user.target is _bn_add_relu:
        return _match_fused_graph_call(gm, node, module, user)
    if (user.op == "call_module" and calls[user.target] == 1 and user.args[:1] == (node,)
            and _folds(gm.get_submodule(user.target))):
        bn = gm.get_submodule(user.target)
        activation = getattr(bn, "activation", None)
        residual = user.kwargs.get("residual", user.args[1] if len(user.args) > 1 else None)
        match = _Match(module, bn, user, activation, getattr(bn, "negative_slope", 0.01),
                       residual)
    else:  # a convolution without BatchNorm still gains its epilogue and a prepacked weight
        match = _Match(module, None, node)
    if match.activation is None:
        _extend_with_add_and_relu(gm, match)
    return match


def _folds(bn):
    """An eval-mode BatchNorm on running statistics, of a kind whose forward is known
    (a subclass may compute something else)."""
    known = type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm) or isinstance(bn, _BatchNormAct2d)
    return (known and not bn.training and bn.running_mean is not None
            and bn.running_var is not None)


def _extend_with_add_and_relu(gm, match):
    """Take in a following residual add (where there is none yet) and ReLU."""
    user = only_user(match.last)
    if match.residual is None and user is not None and is_add(user):
        residual = residual_of(match.last, user)
        if residual is None:
            return
        match.residual, match.last = residual, user
        user = only_user(user)
    if user is not None and is_relu(gm, user):
        match.activation, match.last = "relu", user


def _match_linear_relu(gm, node, linear):
    user = only_user(node)
    if user is not None and is_relu(gm, user):
        return _Match(linear, None, user, "relu")
    return _Match(linear, None, node)


def _match_conv_bn_relu(node, module):
    if not _folds(module.bn) or module.conv.padding_mode != "zeros" or not node.args:
        return None
    residual = node.kwargs.get("residual", node.args[1] if len(node.args) > 1 else None)
    return _Match(module.conv, module.bn, node, module.activation, module.negative_slope,
                  residual)


def _match_fused_graph_call(gm, conv_node, conv, call):
    """cnnkit.fuse's relu(bn(conv(x)) + residual) call, in a fused model traced again."""
    bn_attr, input = call.args
    if input is not conv_node or bn_attr.op != "get_attr":
        return None
    bn = gm.get_submodule(bn_attr.target)
    if not _folds(bn):
        return None
    return _Match(conv, bn, call, "relu", residual=call.kwargs["residual"])
