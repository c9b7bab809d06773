"""Max pooling for inference: fake kernel for torch.ops.cnnkit.max_pool2d (no autograd: it
keeps no indices; training pools with torch's max_pool2d)."""

import torch

from cnnkit._ops import check, dense_memory_format
from cnnkit.reference.max_pool import pooled_size


@torch.library.register_fake("cnnkit::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    check("max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    def pair(values):
        return (values[0], values[0]) if len(values) == 1 else tuple(values)

    kernel, pad, dilation = pair(kernel_size), pair(padding), pair(dilation)
    stride = kernel if len(stride) == 0 else pair(stride)
    size = [pooled_size(input.size(2 + i), kernel[i], stride[i], pad[i], dilation[i], ceil_mode)
            for i in range(2)]
    return torch.empty((input.size(0), input.size(1), *size), dtype=input.dtype,
                       device=input.device, memory_format=dense_memory_format(input))
