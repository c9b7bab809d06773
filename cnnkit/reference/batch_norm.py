"""BatchNorm + activation (+ residual add): pure-PyTorch reference of the batch-norm ops.

``batch_norm_act`` is the oracle of cnnkit.functional.batch_norm_act, and the fallback for
devices without a compiled kernel. ``batch_norm_act_backward`` is the differentiable formula
of the backward op (double backward runs through it).
"""

import torch
import torch.nn.functional as F

# The `activation` codes of the compiled ops (csrc/include/cnnkit/batch_norm.h).
ACTIVATIONS = {None: 0, "identity": 0, "relu": 1, "leaky_relu": 2}


def stats_dtype(input):
    """The dtype of the per-channel statistics of an input, as the ops compute them."""
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def activation_code(activation):
    """The ops' integer code of an activation name, or a ValueError naming the choices."""
    try:
        return ACTIVATIONS[activation]
    except (KeyError, TypeError):
        raise ValueError(
            f"batch_norm_act: activation must be one of None, 'identity', 'relu', 'leaky_relu', "
            f"got {activation!r}"
        ) from None


def activate(pre, code, negative_slope):
    if code == 1:
        return torch.relu(pre)
    if code == 2:
        return F.leaky_relu(pre, negative_slope)
    return pre


def batch_norm_act(input, running_mean, running_var, weight=None, bias=None, training=False,
                   momentum=0.1, eps=1e-5, activation="relu", negative_slope=0.01, residual=None):
    """act(batch_norm(input) [+ residual]) with torch.nn.functional.batch_norm's arguments."""
    code = activation_code(activation)
    out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        out = out + residual
    return activate(out, code, negative_slope)


def activation_grad(grad_output, pre, code, negative_slope):
    """grad_output times act'(pre), with act' taken as 0 (relu) or the slope at pre <= 0."""
    if code == 0:
        return grad_output
    positive = pre > 0
    if code == 1:
        return torch.where(positive, grad_output, torch.zeros_like(grad_output))
    return torch.where(positive, grad_output, grad_output * negative_slope)


def batch_norm_act_backward(grad_output, input, weight, bias, mask, mean, invstd, training,
                            activation, negative_slope):
    """Gradients (input, weight, bias, residual) of cnnkit::batch_norm_act.

    ``mean`` and ``invstd`` are the per-channel statistics the forward normalised with;
    ``training`` says they were the batch's own (so they depend on ``input``). ``mask``, when
    not empty, is the saved ``pre-activation > 0`` of a residual forward; otherwise the mask
    is recomputed from ``input``.
    """
    shape = [1, -1] + [1] * (input.dim() - 2)
    opmath = stats_dtype(input)
    x = input.to(opmath)
    dy = grad_output.to(opmath)
    xhat = (x - mean.view(shape)) * invstd.view(shape)
    w = weight.to(opmath).view(shape) if weight is not None else None
    if activation == 0:
        g = dy
    elif mask is not None and mask.numel() > 0:
        g = torch.where(mask, dy, dy * (negative_slope if activation == 2 else 0.0))
    else:
        pre = xhat * w if w is not None else xhat
        if bias is not None:
            pre = pre + bias.to(opmath).view(shape)
        g = activation_grad(dy, pre, activation, negative_slope)
    dims = [0] + list(range(2, input.dim()))
    grad_bias = g.sum(dims)
    grad_weight = (g * xhat).sum(dims)
    scale = invstd.view(shape) * (w if w is not None else 1.0)
    if training:
        count = input.numel() // input.size(1)
        grad_input = scale * (g - grad_bias.view(shape) / count - xhat * grad_weight.view(shape) / count)
    else:
        grad_input = scale * g
    return (
        grad_input.to(input.dtype),
        grad_weight.to(weight.dtype) if weight is not None else None,
        grad_bias.to(bias.dtype) if bias is not None else None,
        g.to(input.dtype),
    )
