"""Local Response Normalization, functional form."""

import torch

from cnnkit import _ops, reference
from cnnkit.reference.lrn import CONVENTIONS


def _check(input, size, convention):
    if convention not in CONVENTIONS:
        raise ValueError(f"local_response_norm: convention must be one of {CONVENTIONS}, got {convention!r}")
    if input.dim() < 3:
        raise ValueError(f"Expected 3D or higher dimensionality input (got {input.dim()} dimensions)")
    if not input.is_floating_point():
        raise ValueError(f"local_response_norm: input must be a floating-point tensor, got {input.dtype}")
    if input.size(1) == 0:
        raise ValueError(f"local_response_norm: input must have at least one channel (dimension 1), got shape {tuple(input.shape)}")
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"local_response_norm: size must be an int, got {type(size).__name__}")
    smallest = 0 if convention == "tf" else 1
    if size < smallest:
        what = "size (the depth radius with the 'tf' convention)" if convention == "tf" else "size"
        raise ValueError(f"local_response_norm: {what} must be >= {smallest}, got {size}")
    if convention == "caffe" and size % 2 == 0:
        raise ValueError(f"local_response_norm: size must be odd with the 'caffe' convention, got {size}")


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0, *, convention="torch"):
    r"""Local Response Normalization across channels of an (N, C, \*) input.

    With the window W(c) = [c - before, c + after] clipped to the channels (zero padding
    counted, which changes nothing in a sum of squares)::

        y_c = x_c / (k + a * sum_{j in W(c)} x_j^2) ** beta

    ``convention`` picks the window and ``a``:

    - ``"torch"`` (default, torch.nn.functional.local_response_norm): a = alpha / size,
      W(c) = [c - size // 2, c + (size - 1) // 2].
    - ``"caffe"``: a = alpha / size, W(c) = [c - (size - 1) / 2, c + (size - 1) / 2]; odd size only.
    - ``"cudnn"``: a = alpha / size, W(c) = [c - (size - 1) // 2, c + size // 2] (cuDNN's
      lookBehind / lookAhead; differs from torch for even sizes).
    - ``"tf"`` (tf.nn.local_response_normalization): ``size`` is the depth radius r >= 0,
      a = alpha, W(c) = [c - r, c + r].
    - ``"paper"`` (Krizhevsky et al. 2012): a = alpha, W(c) = [c - size // 2, c + size // 2];
      the paper uses k = 2, size = 5, alpha = 1e-4, beta = 0.75.

    Runs cnnkit's kernel for CPU and CUDA tensors (float32, float64, bfloat16; float16 on
    CUDA), contiguous or channels_last, with a hand-written backward; elsewhere it falls back
    to cnnkit.reference.
    """
    _check(input, size, convention)
    if _ops.has_kernel("local_response_norm", input.device.type):
        return torch.ops.cnnkit.local_response_norm(input, size, alpha, beta, k, convention)
    return reference.local_response_norm(input, size, alpha, beta, k, convention)
