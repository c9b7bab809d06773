"""Local Response Normalization: fake kernel and autograd for torch.ops.cnnkit.local_response_norm."""

import torch

from cnnkit import reference
from cnnkit._ops import check, dense_memory_format


@torch.library.register_fake("cnnkit::local_response_norm")
def _local_response_norm_fake(input, size, alpha=1e-4, beta=0.75, k=1.0, convention="torch"):
    check("local_response_norm", input, size, k, convention)
    return torch.empty_like(input, memory_format=dense_memory_format(input))


@torch.library.register_fake("cnnkit::local_response_norm_backward")
def _local_response_norm_backward_fake(grad_output, input, size, alpha, beta, k, convention):
    check("local_response_norm_backward", grad_output, input, size, k, convention)
    return torch.empty_like(input, memory_format=dense_memory_format(input))


def _setup_context(ctx, inputs, output):
    input, size, alpha, beta, k, convention = inputs
    ctx.save_for_backward(input)
    ctx.args = (size, alpha, beta, k, convention)


def _backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True: the reference formula is differentiable, the kernel is not.
        grad_input = reference.local_response_norm_backward(grad_output, input, *ctx.args)
    else:
        grad_input = torch.ops.cnnkit.local_response_norm_backward(grad_output, input, *ctx.args)
    return grad_input, None, None, None, None, None


torch.library.register_autograd(
    "cnnkit::local_response_norm", _backward, setup_context=_setup_context
)
