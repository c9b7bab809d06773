"""BatchNorm + activation (+ residual add), functional form."""

import torch

from cnnkit import _ops
from cnnkit.reference import batch_norm as reference


def _same_place(name, tensor, input):
    if tensor is None:
        return
    if tensor.device != input.device:
        raise RuntimeError(
            f"batch_norm_act: {name} is on {tensor.device} but input is on {input.device}; "
            "move them to the same device"
        )


def _check(input, running_mean, running_var, weight, bias, residual, training):
    if input.dim() < 2:
        raise ValueError(f"batch_norm_act: expected input of 2 or more dimensions (N, C, ...), got {input.dim()}D")
    if not input.is_floating_point():
        raise TypeError(f"batch_norm_act: input must be a floating-point tensor, got {input.dtype}")
    channels = input.size(1)
    for name, tensor in (("running_mean", running_mean), ("running_var", running_var),
                         ("weight", weight), ("bias", bias)):
        if tensor is None:
            continue
        _same_place(name, tensor, input)
        if tensor.numel() != channels:
            # torch.nn.functional.batch_norm's exception and wording for a channel mismatch.
            raise RuntimeError(f"{name} should contain {channels} elements not {tensor.numel()}")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.dtype != input.dtype:
            raise TypeError(f"batch_norm_act: {name} has dtype {tensor.dtype} but input has {input.dtype}")
    if residual is not None:
        _same_place("residual", residual, input)
        if residual.shape != input.shape:
            raise ValueError(
                f"batch_norm_act: residual must have the input's shape {tuple(input.shape)}, got {tuple(residual.shape)}"
            )
        if residual.dtype != input.dtype:
            raise TypeError(f"batch_norm_act: residual has dtype {residual.dtype} but input has {input.dtype}")
    if training:
        # torch.nn.functional.batch_norm's check: a variance needs two values per channel.
        values_per_channel = input.numel() // channels if channels else 0
        if values_per_channel == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    elif running_mean is None or running_var is None:
        raise RuntimeError("batch_norm_act: running_mean and running_var must be given when training=False")


def update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """nn.BatchNorm2d's update: exponential average (factor ``momentum``) of the batch mean
    and the unbiased batch variance. An empty batch leaves them as they are, as torch does."""
    if count == 0:
        return
    # momentum * batch + (1 - momentum) * running, in this order, as ATen computes it.
    if running_mean is not None:
        running_mean.copy_(momentum * mean + (1 - momentum) * running_mean)
    if running_var is not None:
        unbiased = var * (count / max(count - 1, 1))
        running_var.copy_(momentum * unbiased + (1 - momentum) * running_var)


def batch_norm_act(input, running_mean, running_var, weight=None, bias=None, training=False,
                   momentum=0.1, eps=1e-5, activation="relu", negative_slope=0.01, residual=None):
    """act(batch_norm(input) [+ residual]), act in {None/"identity", "relu", "leaky_relu"}.

    The leading arguments are torch.nn.functional.batch_norm's, with the same meaning:
    ``training`` normalises with the batch statistics and updates ``running_mean`` /
    ``running_var`` in place (when given) with the exponential-average factor ``momentum``
    and the unbiased batch variance; otherwise the running statistics normalise.
    ``residual`` (the input's shape) is added after the affine transform, before the
    activation, as at the end of a ResNet block.

    On CPU and CUDA one fused kernel reads the input (and residual) once and writes the
    output once. For backward it saves the input, the per-channel mean and 1/std, and,
    only when a residual is given, a one-byte-per-element mask of ``pre-activation > 0``;
    without a residual the activation mask is recomputed from the input. It never keeps
    the normalised or the activated tensor. Other devices run cnnkit.reference.
    """
    code = reference.activation_code(activation)
    _check(input, running_mean, running_var, weight, bias, residual, training)
    if not _ops.has_kernel("batch_norm_act", input.device.type):
        return reference.batch_norm_act(input, running_mean, running_var, weight, bias, training,
                                         momentum, eps, activation, negative_slope, residual)
    if training:
        with torch.no_grad():
            mean, var = torch.ops.cnnkit.batch_norm_stats(input)
            count = input.numel() // input.size(1)
            update_running_stats(running_mean, running_var, mean, var, count, momentum)
            invstd = torch.rsqrt(var + eps)
    else:
        opmath = torch.float64 if input.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            mean = running_mean.to(opmath)
            invstd = torch.rsqrt(running_var.to(opmath) + eps)
    output, _ = torch.ops.cnnkit.batch_norm_act(
        input, weight, bias, residual, mean, invstd, training, code, float(negative_slope)
    )
    return output
