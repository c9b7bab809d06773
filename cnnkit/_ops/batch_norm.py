"""BatchNorm + activation (+ residual add): fake kernels and autograd of the batch-norm ops.

Autograd of cnnkit::batch_norm_act saves the input, the per-channel mean and invstd, and the
op's mask output (empty unless a residual was added: the mask of pre-activation > 0 is then
all backward needs of it). The statistics count as constants: when they are the batch's own
(``batch_stats``), the backward op adds their contribution to grad_input itself.
"""

import torch

from cnnkit._ops import check, dense_memory_format
from cnnkit.reference import batch_norm as reference
from cnnkit.reference.batch_norm import stats_dtype


def _like_input(input, dtype=None):
    return torch.empty_like(input, dtype=dtype, memory_format=dense_memory_format(input))


def _two_channel_stats(input):
    """Two per-channel tensors of the stats dtype, as the statistics and reduce ops return."""
    channels = input.size(1)
    return input.new_empty((channels,), dtype=stats_dtype(input)), input.new_empty((channels,), dtype=stats_dtype(input))


@torch.library.register_fake("cnnkit::batch_norm_stats")
def _batch_norm_stats_fake(input):
    check("batch_norm_input", input)
    return _two_channel_stats(input)


@torch.library.register_fake("cnnkit::batch_norm_train_stats")
def _batch_norm_train_stats_fake(input, running_mean, running_var, momentum, eps):
    check("batch_norm_running_stats", input, running_mean, running_var)  # the input's checks too
    return _two_channel_stats(input)


@torch.library.register_fake("cnnkit::batch_norm_act")
def _batch_norm_act_fake(input, weight, bias, residual, mean, invstd, batch_stats, activation, negative_slope):
    check("batch_norm_act", input, weight, bias, residual, mean, invstd, activation)
    if residual is not None and activation != 0:
        mask = _like_input(input, torch.bool)
    else:
        mask = input.new_empty((0,), dtype=torch.bool)
    return _like_input(input), mask


@torch.library.register_fake("cnnkit::batch_norm_act_backward")
def _batch_norm_act_backward_fake(grad_output, input, weight, bias, mask, mean, invstd, batch_stats,
                                  activation, negative_slope, residual_grad):
    check("batch_norm_act_backward", grad_output, input, weight, bias, mask, mean, invstd, activation)
    param_dtype = weight.dtype if weight is not None else input.dtype
    channels = input.size(1)
    grad_residual = _like_input(input) if residual_grad else input.new_empty((0,))
    return (_like_input(input), input.new_empty((channels,), dtype=param_dtype),
            input.new_empty((channels,), dtype=param_dtype), grad_residual)


@torch.library.register_fake("cnnkit::batch_norm_act_backward_reduce")
def _batch_norm_act_backward_reduce_fake(grad_output, input, weight, bias, mask, mean, invstd, activation,
                                         negative_slope):
    check("batch_norm_act_backward", grad_output, input, weight, bias, mask, mean, invstd, activation)
    return _two_channel_stats(input)


@torch.library.register_fake("cnnkit::batch_norm_act_backward_apply")
def _batch_norm_act_backward_apply_fake(grad_output, input, weight, bias, mask, mean, invstd, mean_grad,
                                        mean_grad_centered, activation, negative_slope, residual_grad):
    check("batch_norm_act_backward_apply", grad_output, input, weight, bias, mask, mean, invstd, mean_grad,
          mean_grad_centered, activation)
    grad_residual = _like_input(input) if residual_grad else input.new_empty((0,))
    return _like_input(input), grad_residual


def _differentiable_batch_stats(input, invstd):
    """The batch mean and invstd recomputed from ``input`` with autograd history, for double
    backward; eps is recovered from the saved invstd (invstd = (var + eps) ** -0.5)."""
    dims = [0] + list(range(2, input.dim()))
    x = input.to(invstd.dtype)
    var = x.var(dims, unbiased=False)
    eps = (invstd.pow(-2) - var).detach()
    return x.mean(dims), torch.rsqrt(var + eps)


def _setup_context(ctx, inputs, output):
    input, weight, bias, residual, mean, invstd, batch_stats, activation, negative_slope = inputs
    _, mask = output
    ctx.save_for_backward(input, weight, bias, mask, mean, invstd)
    ctx.args = (batch_stats, activation, negative_slope)
    ctx.has_residual = residual is not None
    # The mask is a bool output, never differentiated: without this autograd would fill a
    # zero gradient of its size (a full-size tensor when a residual is added) at every backward.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_output, _grad_mask):
    if grad_output is None:  # the output took no part in what is differentiated
        return (None,) * 9
    input, weight, bias, mask, mean, invstd = ctx.saved_tensors
    batch_stats, activation, negative_slope = ctx.args
    needs = ctx.needs_input_grad
    if torch.is_grad_enabled():
        # create_graph=True: the reference formula is differentiable, the kernel is not.
        if batch_stats:
            mean, invstd = _differentiable_batch_stats(input, invstd)
        grads = reference.batch_norm_act_backward(grad_output, input, weight, bias, mask, mean, invstd,
                                                  batch_stats, activation, negative_slope)
    else:
        grads = torch.ops.cnnkit.batch_norm_act_backward(
            grad_output, input, weight, bias, mask, mean, invstd, batch_stats, activation,
            negative_slope, ctx.has_residual and needs[3],
        )
    grad_input, grad_weight, grad_bias, grad_residual = grads
    return (
        grad_input if needs[0] else None,
        # torch.nn.functional.batch_norm takes weight and bias of any shape with one element per channel.
        grad_weight.view(weight.shape) if weight is not None and needs[1] else None,
        grad_bias.view(bias.shape) if bias is not None and needs[2] else None,
        grad_residual if ctx.has_residual and needs[3] else None,
        None, None, None, None, None,
    )


torch.library.register_autograd("cnnkit::batch_norm_act", _backward, setup_context=_setup_context)
