"""Inference as an explicit step: cnnkit.optimize_for_inference(model) returns a frozen copy
with each BatchNorm folded into its convolution and the residual add and ReLU as that
convolution's epilogue."""

from .errors import FrozenModuleError
from .frozen_conv import FrozenConv2d
from .frozen_linear import FrozenLinear
from .frozen_module import FrozenModule
from .optimize import optimize_for_inference

__all__ = [
    "FrozenConv2d",
    "FrozenLinear",
    "FrozenModule",
    "FrozenModuleError",
    "optimize_for_inference",
]
