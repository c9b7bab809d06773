"""Local Response Normalization in plain PyTorch: the oracle of the kernels' tests, and the
path taken where the extension has no kernel for the input's device."""

import torch

CONVENTIONS = ("torch", "caffe", "cudnn", "tf", "paper")


def lrn_window(size, convention):
    """(before, after): output channel c sums the squares of channels [c - before, c + after]."""
    if convention == "cudnn":
        return (size - 1) // 2, size // 2
    if convention == "tf":  # size is TensorFlow's depth_radius
        return size, size
    if convention == "paper":
        return size // 2, size // 2
    return size // 2, (size - 1) // 2  # torch; caffe (odd sizes only) is then centred


def lrn_alpha_coefficient(size, alpha, convention):
    """The coefficient of the window sum: alpha, or alpha / size where the convention divides."""
    return alpha if convention in ("tf", "paper") else alpha / size


def window_sum(values, before, after):
    """Sums `values` (N, C, *) over the channel window [c - before, c + after], zero-padded
    (a reach beyond the last channel adds only padding, so it is cut to C - 1)."""
    reach = max(values.size(1) - 1, 0)
    before, after = min(before, reach), min(after, reach)
    channels_last = values.movedim(1, -1)
    padded = torch.nn.functional.pad(channels_last, (before, after))
    return padded.unfold(-1, before + after + 1, 1).sum(-1).movedim(-1, 1)


def _scale(x, size, alpha, k, convention):
    before, after = lrn_window(size, convention)
    return k + lrn_alpha_coefficient(size, alpha, convention) * window_sum(x * x, before, after)


def _opmath(tensor):
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0, convention="torch"):
    x = _opmath(input)
    return (x * _scale(x, size, alpha, k, convention).pow(-beta)).to(input.dtype)


def local_response_norm_backward(grad_output, input, size, alpha, beta, k, convention="torch"):
    """dL/dx_j = g_j s_j^-beta - 2 a beta x_j sum_{c: j in window(c)} g_c x_c s_c^(-beta-1)."""
    x, g = _opmath(input), _opmath(grad_output)
    before, after = lrn_window(size, convention)
    a = lrn_alpha_coefficient(size, alpha, convention)
    s = k + a * window_sum(x * x, before, after)
    s_pow = s.pow(-beta)
    mirrored = window_sum(g * x * s_pow / s, after, before)
    return (g * s_pow - 2 * a * beta * x * mirrored).to(input.dtype)
