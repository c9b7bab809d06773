"""Local Response Normalization, functional form."""

import torch

from cnnkit import _ops, reference


def _check_size(size):
    # The op's schema would take a float or a bool for `size` as an int.
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"local_response_norm: size must be an int, got {type(size).__name__}")


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
    _check_size(size)
    if _ops.has_kernel("local_response_norm", input.device.type):
        return torch.ops.cnnkit.local_response_norm(input, size, alpha, beta, k, convention)
    _ops.check("local_response_norm", input, size, k, convention)  # what the kernel would raise
    return reference.local_response_norm(input, size, alpha, beta, k, convention)
