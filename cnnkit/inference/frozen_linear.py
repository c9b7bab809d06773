"""FrozenLinear: act(linear(input)) with the weight prepacked for oneDNN, for serving.

On CPUs where MKL's float32 GEMM takes a slow path (AMD's), oneDNN's prepacked matmul is
1.5x (batch 1) to 3x (batch 8) faster on AlexNet's and VGG's classifier layers (measured on
a Zen 4 EPYC, 2 threads); torch.nn.Linear has no prepacked form.
"""

import torch
import torch.nn.functional as F

from cnnkit.functional.conv_bn import apply_activation_, onednn_unary

from .prepacked import PrepackedLayer

ACTIVATIONS = (None, "relu")
# oneDNN's matmul costs about 15 us more per call than MKL's: below 2^18 weights (ResNet's
# 512x1000 classifier has 2^19) F.linear was faster in every measured case (LeNet-5's layers,
# 1024x128 at batch 1: 12 against 20 us), above it oneDNN (512x1000 at batch 1: 36-65
# against 70 us).
ONEDNN_MIN_WEIGHTS = 2**18


class FrozenLinear(PrepackedLayer):
    """The inference form of Linear [-> ReLU]: ``forward(input)`` is one oneDNN matmul with
    the bias and ReLU as post-ops for float32 2-D input on CPU, F.linear and the activation
    elsewhere."""

    def __init__(self, weight, bias, activation=None, input_shape=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        super().__init__(weight, bias, input_shape)
        self.activation = activation
        self._onednn_unary = onednn_unary(activation, 0.0)
        self._packed = self._pack()

    @classmethod
    def from_linear(cls, linear, activation=None, input_shape=None):
        return cls(linear.weight, linear.bias, activation, input_shape)

    def prepack(self):
        if self.weight.numel() < ONEDNN_MIN_WEIGHTS:
            return None
        shape = self.input_shape
        batch = shape[0] if shape is not None and len(shape) == 2 else None
        return torch.ops.mkldnn._reorder_linear_weight(self.weight, batch)

    def forward(self, input):
        self.refuse_gradients(input)
        if self._onednn_runs(input) and input.dim() == 2:
            return torch.ops.mkldnn._linear_pointwise(input, self._packed, self.bias,
                                                      *self._onednn_unary, "")
        return apply_activation_(F.linear(input, self.weight, self.bias), self.activation)

    def extra_repr(self):
        text = (f"in_features={self.weight.size(1)}, out_features={self.weight.size(0)}, "
                f"activation={self.activation!r}")
        if self.input_shape is not None:
            text += f", packed_for={self.input_shape}"
        return text
