"""Max pooling for inference, functional form."""

import torch
import torch.nn.functional as F

from cnnkit import _ops


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """torch.nn.functional.max_pool2d's values (``return_indices=False``), by cnnkit's
    kernel where nothing needs the indices: a 4-D floating-point input that takes no
    gradient, outside torch.compile (which pools by itself). The kernel writes no int64
    indices (torch's writes twice the output's bytes of them in float32) and vectorises
    channels_last inputs across channels. Elsewhere, torch's max_pool2d."""
    if (input.dim() == 4 and input.is_floating_point()
            and not (input.requires_grad and torch.is_grad_enabled())
            and not torch.compiler.is_compiling()
            and _ops.has_kernel("max_pool2d", input.device.type)):
        return torch.ops.cnnkit.max_pool2d(
            input, _list(kernel_size), [] if stride is None else _list(stride), _list(padding),
            _list(dilation), ceil_mode)
    return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode)


def _list(value):
    return [value] if isinstance(value, int) else list(value)
