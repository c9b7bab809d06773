"""FrozenConv2d: act(conv2d(input) [+ residual]) with a BatchNorm folded into the weights and
the bias, residual add and activation as the convolution's epilogue, for serving.

Nothing in it changes after construction: concurrent calls share its tensors read-only.
"""

import torch
import torch.nn.functional as F
from torch import nn
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

from .errors import FROZEN, FrozenModuleError


class FrozenConv2d(nn.Module):
    """The inference form of Conv2d -> BatchNorm2d [-> + residual] [-> activation].

    ``weight`` and ``bias`` (buffers: nothing here trains) hold the BatchNorm folded into
    the convolution. ``forward(input, residual=None)`` is one vendor call where one applies:
    oneDNN's convolution with the bias, add and activation as post-ops on CPU, on a weight
    reordered once into oneDNN's blocked layout (float32; the input runs channels_last),
    cuDNN's conv-bias-(add-)ReLU on CUDA. Elsewhere (other dtypes, autocast, under
    torch.compile / torch.export, which fold and fuse by themselves) it is the plain
    convolution followed by the add and the activation.
    """

    def __init__(self, weight, bias, stride=1, padding=0, dilation=1, groups=1,
                 activation=None, negative_slope=0.01, input_shape=None):
        super().__init__()
        check_activation(activation, negative_slope)
        self.register_buffer("weight", weight.detach())
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.activation = activation
        self.negative_slope = negative_slope
        self.input_shape = None if input_shape is None else tuple(input_shape)
        # Set where the residual is a fresh tensor that nothing reads after this call: the
        # output then accumulates into it (oneDNN's sum post-op), one pass over memory fewer
        # than an add that reads it (measured 1.2x on ResNet-50's 1x1 expansions).
        self.writes_into_residual = False
        # oneDNN's order: padding first.
        self._onednn_geometry = (list(self.padding), list(self.stride), list(self.dilation),
                                 groups)
        self._onednn_unary = onednn_unary(activation, negative_slope)
        self._residual_activation_fuses = activation in ONEDNN_RESIDUAL_ACTIVATIONS
        self._packed = self._prepacked_weight()

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

    def _prepacked_weight(self):
        """The weight reordered once into oneDNN's blocked layout, for inputs of
        ``input_shape`` (or any shape where it is None); None where oneDNN does not run.
        Without it oneDNN reorders the weight on every call (measured 1.6x slower on a 3x3
        conv of ResNet-50); a weight packed for one shape stays correct for any other."""
        weight = self.weight
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 4:
            return None
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return None
        return torch.ops.mkldnn._reorder_convolution_weight(
            weight, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            None if self.input_shape is None else list(self.input_shape),
        )

    def forward(self, input, residual=None):
        if torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in (input, residual)
        ):
            raise FrozenModuleError(FROZEN.format(action="computing gradients"))
        # Compilers see only the plain tensors (the oneDNN weight is opaque to them): checked
        # before anything touches it.
        if not torch.compiler.is_compiling() and self._onednn_applies(input, residual):
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
        """True where the call runs on the prepacked weight: float32 CPU input (of any
        layout: it runs channels_last), no autocast, and a residual the epilogue can add."""
        return (
            self._packed is not None
            and input.dtype == torch.float32
            and input.device.type == "cpu"
            and input.dim() == 4
            and input.numel() > 0
            and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu")
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

    # The reordered weight is an opaque oneDNN tensor: copies and pickles reorder again.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._packed = self._prepacked_weight()

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
