"""Convolution with BatchNorm around it, functional form.

- ``fold_bn_into_conv``: the eval-mode weight and bias of conv -> BN as one convolution.
- ``conv2d_bias_act``: act(conv2d(input, weight, bias) [+ residual]) as one oneDNN call on
  CPU where that is available, otherwise the vendor convolution and in-place epilogues.
- ``bn_act_conv2d``: conv2d(act(BN(input))) for training, keeping only ``input`` and the
  per-channel statistics for backward (the BN-act output is recomputed there).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from cnnkit import _ops
from cnnkit.functional.batch_norm import update_running_stats
from cnnkit.reference import conv_bn as reference
from cnnkit.reference.batch_norm import activation_code, stats_dtype

ACTIVATIONS = (None, "identity", "relu", "leaky_relu")

# oneDNN's fused conv + bias + activation (one pass over the output) handles these dtypes.
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
# torch's binary entry point takes no leaky_relu after the add ("undefined").
ONEDNN_RESIDUAL_ACTIVATIONS = (None, "identity", "relu")


def check_activation(activation, negative_slope=0.01):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if activation == "leaky_relu" and not isinstance(negative_slope, (int, float)):
        raise TypeError(f"negative_slope must be a number, got {type(negative_slope).__name__}")


def apply_activation_(tensor, activation, negative_slope=0.01):
    """act(tensor) in place; `tensor` must be a fresh result nobody else holds."""
    if activation == "relu":
        return tensor.relu_()
    if activation == "leaky_relu":
        return F.leaky_relu_(tensor, negative_slope)
    return tensor


def fold_bn_into_conv(conv_weight, conv_bias, running_mean, running_var, bn_weight, bn_bias, eps):
    """(weight, bias) of the single convolution equal to BN_eval(conv(x)).

    Same formula as torch.nn.utils.fusion.fuse_conv_bn_weights; bfloat16/float16 weights
    are folded in float32 and rounded once. Differentiable: under autograd the gradients
    flow back to the conv and BN parameters. ``bn_weight``/``bn_bias`` may be None
    (affine=False), and so may ``conv_bias``.
    """
    dtype = conv_weight.dtype
    compute = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    var_rsqrt = torch.rsqrt(running_var.to(compute) + eps)
    scale = var_rsqrt if bn_weight is None else bn_weight.to(compute) * var_rsqrt
    shape = [-1] + [1] * (conv_weight.dim() - 1)
    weight = (conv_weight.to(compute) * scale.reshape(shape)).to(dtype)
    mean = running_mean.to(compute)
    shift = (-mean if conv_bias is None else conv_bias.to(compute) - mean) * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(compute)
    return weight, shift.to(dtype)


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def conv_output_shape(input, weight, stride, padding, dilation):
    sizes = [input.size(0), weight.size(0)]
    for i in range(2):
        span = dilation[i] * (weight.size(2 + i) - 1) + 1
        sizes.append((input.size(2 + i) + 2 * padding[i] - span) // stride[i] + 1)
    return torch.Size(sizes)


def _fusable(input, weight, bias, residual, stride, padding, dilation):
    """Conditions every fused vendor entry point shares: none has an autograd formula,
    takes string padding or broadcasts the residual, and all want one dtype throughout."""
    if torch.compiler.is_compiling():
        return False  # the compiler fuses the plain ops itself
    if input.dim() != 4 or weight.dim() != 4 or input.numel() == 0 or isinstance(padding, str):
        return False
    if any(t is not None and t.dtype != input.dtype for t in (weight, bias, residual)):
        return False
    if _needs_grad(input, weight, bias, residual):
        return False
    return residual is None or residual.shape == conv_output_shape(
        input, weight, _pair(stride), _pair(padding), _pair(dilation)
    )


def _onednn_applies(input, residual, activation):
    """True if torch.ops.mkldnn._convolution_pointwise computes this call in one pass.

    Measured on ResNet-50 shapes (benchmarks/bench_conv_bn.py: onednn_postop_ms against
    conv_relu_ms), it is as fast as or faster than the convolution followed by an
    in-place activation, for contiguous and channels_last input alike.
    """
    if input.device.type != "cpu" or input.dtype not in _ONEDNN_DTYPES:
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if input.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    layout = _dense_layout(input)
    if layout is None:
        return False
    if residual is not None:
        # For some bfloat16 shapes the binary entry point falls back to at::add_relu, which
        # has no bfloat16 kernel.
        return (
            activation in ONEDNN_RESIDUAL_ACTIVATIONS
            and input.dtype == torch.float32
            and residual.is_contiguous(memory_format=layout)
        )
    return True


def _dense_layout(input):
    if input.is_contiguous():
        return torch.contiguous_format
    if input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def _cudnn_applies(input, residual, activation):
    """True if cuDNN's fused convolution + bias (+ add) + ReLU applies."""
    return (
        input.device.type == "cuda"
        and activation == "relu"
        and input.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and torch.backends.cudnn.is_available()
        and torch.backends.cudnn.enabled
    )


def onednn_unary(activation, negative_slope):
    """oneDNN's name and scalars of an activation."""
    if activation in (None, "identity"):
        return "none", []
    return activation, ([negative_slope] if activation == "leaky_relu" else [])


def _onednn_conv2d_bias_act(
    input, weight, bias, stride, padding, dilation, groups, activation, negative_slope, residual
):
    """conv2d_bias_act's oneDNN call, without its checks (_fusable, _onednn_applies)."""
    # oneDNN's order: padding first.
    args = (list(_pair(padding)), list(_pair(stride)), list(_pair(dilation)), groups)
    unary, scalars = onednn_unary(activation, negative_slope)
    if residual is None:
        return torch.ops.mkldnn._convolution_pointwise(
            input, weight, bias, *args, unary, scalars, ""
        )
    return torch.ops.mkldnn._convolution_pointwise.binary(
        input,
        residual,
        weight,
        bias,
        *args,
        "add",
        None,
        None if unary == "none" else unary,
        [],
        None,
    )


def conv2d_bias_act(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    activation="relu",
    negative_slope=0.01,
    residual=None,
):
    """act(conv2d(input, weight, bias, stride, padding, dilation, groups) [+ residual]).

    Without autograd, this is one vendor call with the bias, the residual add and the
    activation fused into the convolution: oneDNN's post-ops on CPU (float32/bfloat16,
    contiguous or channels_last input), cuDNN's conv-bias-(add-)ReLU on CUDA. Otherwise
    it is torch's convolution followed by the add and the activation in place on its
    fresh output (autograd-safe: the convolution's backward does not need its output).
    ``residual`` must have the output's shape and dtype; it is never modified.
    """
    check_activation(activation, negative_slope)
    if _fusable(input, weight, bias, residual, stride, padding, dilation):
        if _onednn_applies(input, residual, activation):
            return _onednn_conv2d_bias_act(
                input, weight, bias, stride, padding, dilation, groups, activation,
                negative_slope, residual,
            )
        if _cudnn_applies(input, residual, activation):
            args = (list(_pair(stride)), list(_pair(padding)), list(_pair(dilation)), groups)
            if residual is None:
                return torch.cudnn_convolution_relu(input, weight, bias, *args)
            return torch.cudnn_convolution_add_relu(input, weight, residual, 1.0, bias, *args)
    out = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        # The same rules as cnnkit.functional.batch_norm_act's residual: no broadcasting.
        if residual.shape != out.shape:
            raise ValueError(
                f"conv2d_bias_act: residual must have the output's shape {tuple(out.shape)}, "
                f"got {tuple(residual.shape)}"
            )
        if residual.dtype != out.dtype:
            raise TypeError(
                f"conv2d_bias_act: residual has dtype {residual.dtype} but the output has {out.dtype}"
            )
        out = out.add_(residual)
    return apply_activation_(out, activation, negative_slope)


# --------------------------------------------------------------------------------------
# Memory-saving conv(act(BN(x))) for training.


def _check_bn_act_conv_input(input, running_mean, running_var, conv_weight, groups, training):
    if input.dim() != 4:
        raise ValueError(f"bn_act_conv2d: expected 4D input (got {input.dim()}D input)")
    channels = input.size(1)
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is not None and stat.numel() != channels:
            raise RuntimeError(
                f"bn_act_conv2d: {name} should contain {channels} elements not {stat.numel()}"
            )
    if not training and (running_mean is None or running_var is None):
        raise ValueError(
            "bn_act_conv2d: running_mean and running_var are required when training=False"
        )
    if conv_weight.dim() != 4 or conv_weight.size(1) * groups != channels:
        raise RuntimeError(
            f"bn_act_conv2d: conv_weight of size {tuple(conv_weight.shape)} with groups={groups} "
            f"expects input with {conv_weight.size(1) * groups if conv_weight.dim() == 4 else '?'} "
            f"channels, but got {channels} channels"
        )
    if training:
        values_per_channel = input.size(0) * input.size(2) * input.size(3)
        if values_per_channel == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )


def _use_kernels(input, bn_weight, bn_bias):
    """cnnkit's BN-act kernels apply: compiled for this device, one dtype throughout."""
    return _ops.has_kernel("batch_norm_act", input.device.type) and all(
        t is None or t.dtype == input.dtype for t in (bn_weight, bn_bias)
    )


def _batch_stats(input, running_mean, running_var, momentum, kernels):
    """The batch mean and biased variance; updates the running statistics in place exactly
    as batch_norm does (unbiased running variance)."""
    if kernels:
        mean, var = torch.ops.cnnkit.batch_norm_stats(input)
        update_running_stats(
            running_mean, running_var, mean, var, input.numel() // input.size(1), momentum
        )
        return mean, var
    return torch.batch_norm_update_stats(input, running_mean, running_var, momentum)


def _bn_act(input, mean, invstd, bn_weight, bn_bias, activation, negative_slope, kernels):
    """act(BN(input)) from per-channel mean and 1/std: the same ops in forward and in the
    backward recomputation, so the recomputed activation mask equals the forward one."""
    if kernels:
        return torch.ops.cnnkit.batch_norm_act(
            input,
            bn_weight,
            bn_bias,
            None,
            mean,
            invstd,
            False,
            activation_code(activation),
            negative_slope,
        )[0]
    scale = invstd if bn_weight is None else invstd * bn_weight.to(invstd.dtype)
    shift = -mean * scale if bn_bias is None else bn_bias.to(invstd.dtype) - mean * scale
    view = (1, -1, 1, 1)
    out = torch.addcmul(shift.view(view), input, scale.view(view)).to(input.dtype)
    return apply_activation_(out, activation, negative_slope)


class _BNActConvSettings(NamedTuple):
    """bn_act_conv2d's arguments that are not tensors, passed to the autograd Function as
    one argument (so its backward returns one None for them all)."""

    training: bool
    momentum: float
    eps: float
    activation: str | None
    negative_slope: float
    stride: list
    padding: list
    dilation: list
    groups: int


class _BNActConv2d(torch.autograd.Function):
    """conv2d(act(BN(x))) saving x, the conv weight, the BN affine parameters and two
    per-channel vectors; act(BN(x)) is recomputed in backward.

    BN-act runs on cnnkit's fused kernels where they apply (one pass for the statistics,
    one for normalise + act, and the two-pass backward op), otherwise on torch ops."""

    @staticmethod
    def forward(
        ctx, input, running_mean, running_var, bn_weight, bn_bias, conv_weight, conv_bias, settings
    ):
        kernels = _use_kernels(input, bn_weight, bn_bias)
        opmath = stats_dtype(input)
        if settings.training:
            mean, var = _batch_stats(input, running_mean, running_var, settings.momentum, kernels)
        else:
            mean, var = running_mean, running_var
        mean = mean.to(opmath).contiguous()
        invstd = torch.rsqrt(var.to(opmath) + settings.eps)
        hidden = _bn_act(
            input, mean, invstd, bn_weight, bn_bias, settings.activation,
            settings.negative_slope, kernels,
        )
        out = torch.convolution(
            hidden, conv_weight, conv_bias, settings.stride, settings.padding, settings.dilation,
            False, [0, 0], settings.groups,
        )
        ctx.save_for_backward(input, mean, invstd, bn_weight, bn_bias, conv_weight)
        ctx.settings = settings
        ctx.kernels = kernels
        ctx.has_conv_bias = conv_bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        input, mean, invstd, bn_weight, bn_bias, conv_weight = ctx.saved_tensors
        settings, kernels = ctx.settings, ctx.kernels
        activation, negative_slope = settings.activation, settings.negative_slope
        needs = ctx.needs_input_grad
        need_bn = needs[0] or needs[3] or needs[4]
        hidden = _bn_act(
            input, mean, invstd, bn_weight, bn_bias, activation, negative_slope, kernels
        )
        grad_hidden, grad_conv_weight, grad_conv_bias = torch.ops.aten.convolution_backward(
            grad_out,
            hidden,
            conv_weight,
            [conv_weight.size(0)] if ctx.has_conv_bias else None,
            settings.stride,
            settings.padding,
            settings.dilation,
            False,
            [0, 0],
            settings.groups,
            [need_bn, needs[5], needs[6]],
        )
        grad_input = grad_bn_weight = grad_bn_bias = None
        if need_bn and kernels:
            del hidden  # the backward op recomputes the activation mask from input
            no_mask = input.new_empty((0,), dtype=torch.bool)
            grad_input, grad_bn_weight, grad_bn_bias, _ = torch.ops.cnnkit.batch_norm_act_backward(
                grad_hidden,
                input,
                bn_weight,
                bn_bias,
                no_mask,
                mean,
                invstd,
                settings.training,
                activation_code(activation),
                negative_slope,
                False,
            )
        elif need_bn:
            grad_bn_out = _activation_backward(grad_hidden, hidden, activation, negative_slope)
            del hidden, grad_hidden
            grad_input, grad_bn_weight, grad_bn_bias = _bn_backward(
                grad_bn_out,
                input,
                mean,
                invstd,
                bn_weight,
                settings.training,
                [needs[0], needs[3], needs[4]],
            )
        return (
            grad_input if needs[0] else None,
            None,
            None,
            grad_bn_weight if needs[3] else None,
            grad_bn_bias if needs[4] else None,
            grad_conv_weight,
            grad_conv_bias,
            None,
        )


def _activation_backward(grad, result, activation, negative_slope):
    """Gradient through act, from act's output (relu / leaky_relu with slope >= 0 keep the
    sign, so the output tells which side of zero the input was on)."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(grad, result, 0)
    if activation == "leaky_relu":
        return torch.where(result > 0, grad, grad * negative_slope)
    return grad


def _bn_backward(grad, input, mean, invstd, bn_weight, training, mask):
    """Gradients of BN(input) = (input - mean) * invstd * weight + bias (weight/bias optional).

    In training the batch statistics depend on input; in eval they are constants."""
    if training:
        return torch.ops.aten.native_batch_norm_backward(
            grad, input, bn_weight, None, None, mean, invstd, True, 0.0, mask
        )
    # native_batch_norm_backward's eval branch reads running_var and eps; hand it the
    # variance that reproduces our invstd exactly with eps = 0.
    var = invstd.reciprocal().square()
    return torch.ops.aten.native_batch_norm_backward(
        grad, input, bn_weight, mean, var, None, None, False, 0.0, mask
    )


def bn_act_conv2d(
    input,
    running_mean,
    running_var,
    bn_weight,
    bn_bias,
    conv_weight,
    conv_bias=None,
    training=False,
    momentum=0.1,
    eps=1e-5,
    activation="relu",
    negative_slope=0.01,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
):
    """conv2d(act(batch_norm(input)), conv_weight, conv_bias, stride, padding, dilation, groups)
    storing only ``input`` for backward.

    Arguments (in order):
      input: (N, C, H, W) tensor, contiguous or channels_last; the BN input, typically the
        previous convolution's output.
      running_mean, running_var: (C,) buffers or None, as in F.batch_norm; updated in place
        when ``training`` (momentum = the exponential-average factor, as F.batch_norm takes
        it: the module computes it from momentum / num_batches_tracked).
      bn_weight, bn_bias: (C,) BN affine parameters or None (affine=False).
      conv_weight: (O, C // groups, kH, kW); conv_bias: (O,) or None.
      training: use batch statistics (True) or the running statistics (False).
      momentum, eps: as F.batch_norm.
      activation: "relu", "leaky_relu" (with ``negative_slope`` >= 0), or None / "identity".
      stride, padding, dilation, groups: as F.conv2d (integer or pair padding only).

    Saved for backward: ``input``, the per-channel mean and 1/std (float32, float64 for
    float64 input), ``bn_weight``, ``bn_bias`` and ``conv_weight`` -- not BN's output nor
    the activation's, which eager keeps (the conv's input). Backward recomputes
    act(BN(input)) once (one elementwise pass), so a conv -> BN -> act -> conv chain keeps
    one activation-sized tensor per layer instead of two. Double backward is not supported.

    Returns the convolution's output; gradients flow to input, bn_weight, bn_bias,
    conv_weight and conv_bias.
    """
    check_activation(activation, negative_slope)
    if activation == "leaky_relu" and negative_slope < 0:
        raise ValueError(f"bn_act_conv2d: negative_slope must be >= 0, got {negative_slope}")
    if isinstance(padding, str):
        raise ValueError(
            f"bn_act_conv2d: padding must be an int or a pair of ints, got {padding!r}"
        )
    _check_bn_act_conv_input(input, running_mean, running_var, conv_weight, groups, training)
    if training and running_mean is None:
        momentum = 0.0  # nothing to update; batch_norm_update_stats accepts None buffers
    stride, padding, dilation = list(_pair(stride)), list(_pair(padding)), list(_pair(dilation))
    if input.numel() == 0:
        # No statistics to compute or save: eager ops give the empty result and zero grads.
        return reference.bn_act_conv2d(
            input, running_mean, running_var, bn_weight, bn_bias, conv_weight, conv_bias,
            training, momentum, eps, activation, negative_slope, stride, padding, dilation, groups,
        )
    settings = _BNActConvSettings(
        training, momentum, eps, activation, negative_slope, stride, padding, dilation, groups
    )
    return _BNActConv2d.apply(
        input, running_mean, running_var, bn_weight, bn_bias, conv_weight, conv_bias, settings
    )
