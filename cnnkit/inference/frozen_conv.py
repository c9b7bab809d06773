"""FrozenConv2d: act(conv2d(input) [+ residual]) with a BatchNorm folded into the weights and
the bias, residual add and activation as the convolution's epilogue, for serving.

Nothing in it changes after construction: concurrent calls share its tensors read-only.
"""

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from cnnkit.functional.conv_bn import (
    ONEDNN_RESIDUAL_ACTIVATIONS,
    apply_activation_,
    check_activation,
    conv2d_bias_act,
    conv_output_shape,
    fold_bn_into_conv,
    onednn_unary,
)

from .prepacked import PrepackedLayer


class FrozenConv2d(PrepackedLayer):
    """The inference form of Conv2d [-> BatchNorm2d] [-> + residual] [-> activation].

    ``weight`` and ``bias`` hold the BatchNorm folded into the convolution.
    ``forward(input, residual=None)`` is one vendor call where one applies: on CPU,
    oneDNN's convolution with the bias, add and activation as post-ops, on a weight
    reordered once into oneDNN's blocked layout (float32; the input runs channels_last);
    on CUDA, cuDNN's conv-bias-(add-)ReLU. Elsewhere (other dtypes, autocast, under
    torch.compile / torch.export, which fold and fuse by themselves) it is the plain
    convolution followed by the add and the activation.
    """

    def __init__(self, weight, bias, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, negative_slope=0.01, input_shape=None):
        check_activation(activation, negative_slope)
        super().__init__(weight, bias, input_shape)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.activation = activation
        self.negative_slope = negative_slope
        # Set where the residual is a fresh tensor that nothing reads after this call: the
        # output then accumulates into it (oneDNN's sum post-op), one pass over memory fewer
        # than an add that reads it (measured 1.2x on ResNet-50's 1x1 expansions).
        self.writes_into_residual = False
        # oneDNN's order: padding first.
        self._onednn_geometry = (list(self.padding), list(self.stride), list(self.dilation),
                                 groups)
        self._onednn_unary = onednn_unary(activation, negative_slope)
        self._residual_activation_fuses = activation in ONEDNN_RESIDUAL_ACTIVATIONS
        self._packed = self._pack()

    @classmethod
    def from_conv_bn(cls, conv, bn=None, activation=None, negative_slope=0.01,
                     input_shape=None):
        """The frozen form of eval-mode act(bn(conv(x)) [+ residual]); ``conv`` an
        nn.Conv2d with zero padding, ``bn`` None or a BatchNorm2d with running statistics."""
        with torch.no_grad():
            if bn is None:
                weight, bias = conv.weight, conv.bias  # the caller's copy: nothing shared
            else:
                weight, bias = fold_bn_into_conv(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight,
                    bn.bias, bn.eps,
                )
        return cls(weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                   activation, negative_slope, input_shape)

    def prepack(self):
        """The weight reordered for oneDNN's convolution. Without it oneDNN reorders the
        weight on every call (measured 1.6x slower on a 3x3 conv of ResNet-50); a weight
        packed for one input shape stays correct for any other."""
        return torch.ops.mkldnn._reorder_convolution_weight(
            self.weight, list(self.padding), list(self.stride), list(self.dilation),
            self.groups, None if self.input_shape is None else list(self.input_shape),
        )

    def forward(self, input, residual=None):
        self.refuse_gradients(input, residual)
        if self._onednn_applies(input, residual):
            return self._onednn(input, residual)
        weight, bias = self.weight, self.bias
        device_type = input.device.type
        if torch.is_autocast_enabled(device_type):
            input, weight, bias, residual = _autocast(device_type, input, weight, bias, residual)
        if residual is not None and not self._epilogue_adds(input, weight, residual):
            return self._conv_then_add(input, weight, bias, residual)
        return conv2d_bias_act(input, weight, bias, self.stride, self.padding, self.dilation,
                               self.groups, self.activation, self.negative_slope, residual)

    def _onednn_applies(self, input, residual):
        """True where the call runs on the prepacked weight (of any input layout: it runs
        channels_last) and the epilogue can add the residual."""
        return (
            self._onednn_runs(input)
            and input.dim() == 4
            and (residual is None or (self._residual_activation_fuses
                                      and self._epilogue_adds(input, self.weight, residual)))
        )

    def _onednn(self, input, residual):
        """The one oneDNN call, on channels_last activations and the prepacked weight."""
        input = input.contiguous(memory_format=torch.channels_last)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                input, self._packed, self.bias, *self._onednn_geometry, *self._onednn_unary, ""
            )
        residual = residual.contiguous(memory_format=torch.channels_last)
        unary = None if self._onednn_unary[0] == "none" else self._onednn_unary[0]
        if self.writes_into_residual:
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, input, self._packed, self.bias, *self._onednn_geometry, "add", None,
                unary, [], None,
            )
        return torch.ops.mkldnn._convolution_pointwise.binary(
            input, residual, self._packed, self.bias, *self._onednn_geometry, "add", None,
            unary, [], None,
        )

    def _epilogue_adds(self, input, weight, residual):
        """True if the epilogue can add ``residual``: a tensor of the output's shape, dtype
        and device."""
        return (
            isinstance(residual, torch.Tensor)
            and residual.dtype == input.dtype == weight.dtype
            and residual.device == input.device
            and input.dim() == 4
            and residual.shape == conv_output_shape(input, weight, self.stride, self.padding,
                                                    self.dilation)
        )

    def _conv_then_add(self, input, weight, bias, residual):
        """A residual the epilogue cannot take (it broadcasts, or has another dtype or
        device): torch's add, which broadcasts and promotes as the source model's did."""
        out = F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return apply_activation_(out + residual, self.activation, self.negative_slope)

    def extra_repr(self):
        text = (f"{self.weight.size(1) * self.groups}, {self.weight.size(0)}, "
                f"kernel_size={tuple(self.weight.shape[2:])}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        text += f", activation={self.activation!r}"
        if self.input_shape is not None:
            text += f", packed_for={self.input_shape}"
        return text


def _autocast(device_type, *tensors):
    """The tensors in the autocast dtype, as the eager convolution would see them (float64
    and non-float tensors stay as they are, as autocast leaves them); the residual goes
    with them, so that the epilogue adds like dtypes."""
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point()
        and t.dtype != torch.float64 else t
        for t in tensors
    )
