"""Patterns of torch.fx graphs that cnnkit rewrites (cnnkit.fuse, cnnkit.optimize_for_inference):
ReLU and residual adds, in every spelling a traced model may use."""

import operator

import torch
import torch.fx
from torch import nn

_RELU_FUNCTIONS = (torch.relu, torch.relu_, nn.functional.relu)
_RELU_METHODS = ("relu", "relu_")
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
_IN_PLACE_ADDS = (operator.iadd, "add_")


def module_call_counts(gm):
    """How often the graph calls each submodule, by qualified name."""
    calls = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def is_relu(gm, node):
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS and len(node.args) == 1
    return node.op == "call_method" and node.target in _RELU_METHODS and len(node.args) == 1


def is_add(node):
    if node.op == "call_function":
        plain = node.target in _ADD_FUNCTIONS
    else:
        plain = node.op == "call_method" and node.target in _ADD_METHODS
    return plain and len(node.args) == 2 and not node.kwargs


def only_user(node):
    """The one node using `node`'s value, or None."""
    return next(iter(node.users)) if len(node.users) == 1 else None


def residual_of(bn_node, add):
    """The other operand of `add` where it can go to the fused op as ``residual=``, or None:
    a traced value other than the BN output itself (relu(y + y) is no residual add), and
    not the target of an in-place add (r.add_(bn(x)) changes r, which the fused op would not)."""
    first, second = add.args
    residual = second if first is bn_node else first
    if not isinstance(residual, torch.fx.Node) or residual is bn_node:
        return None
    if add.target in _IN_PLACE_ADDS and first is not bn_node:
        return None
    return residual


def replace_module(root, target, module):
    """Put `module` at the qualified name `target` of `root`."""
    parent_name, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, name, module)
