"""Max pooling, reference: torch's own max_pool2d (its values; cnnkit's op drops the
indices), and the output size rule the fake kernel shares."""

import torch.nn.functional as F


def max_pool2d(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    return F.max_pool2d(input, kernel_size, stride or None, padding, dilation, ceil_mode)


def pooled_size(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling_output_shape: with ceil_mode the last window must start inside the
    input or its left padding."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out
