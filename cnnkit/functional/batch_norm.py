"""BatchNorm + activation (+ residual add), functional form."""

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from cnnkit import _ops
from cnnkit.reference import batch_norm as reference


def _check(input, running_mean, running_var, training, momentum, eps, synchronised=False):
    """torch.nn.functional.batch_norm's checks of its own arguments, in its order and with its
    exception types and wording. The op's checks (input, weight, bias, residual, devices)
    are the C++ kernels' own (csrc/ops/batch_norm.cpp), run here only where no kernel runs."""
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"batch_norm_act: momentum must be a float, got {type(momentum).__name__}")
    channels = input.size(1) if input.dim() >= 2 else None
    if training and not synchronised and channels:
        # A variance needs two values per channel (synchronised, the count over all ranks is
        # checked instead, as SyncBatchNorm does). torch checks this before the shapes.
        if input.numel() // channels == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    if training and eps <= 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not training and eps < 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if (running_mean is None) != (running_var is None):
        if not training:
            missing = "running_mean" if running_mean is None else "running_var"
            raise RuntimeError(f"{missing} must be defined in evaluation mode")
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if not training and running_mean is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    if not training and channels is not None:
        # In evaluation the running statistics reach the kernel as its mean and invstd.
        for name, tensor in (("running_mean", running_mean), ("running_var", running_var)):
            if tensor.numel() != channels:
                raise RuntimeError(f"{name} should contain {channels} elements not {tensor.numel()}")
            if tensor.device != input.device:
                raise RuntimeError(f"batch_norm_act: {name} is on {tensor.device} but input is on {input.device}")


def _has_kernel(input):
    # The CPU kernels cover float32, float64 and bfloat16; float16 on CPU runs the reference,
    # and so does the 1-D empty input torch.nn.functional.batch_norm takes (no channel axis).
    if (input.device.type == "cpu" and input.dtype == torch.float16) or (input.dim() < 2 and input.numel() == 0):
        return False
    return _ops.has_kernel("batch_norm_act", input.device.type)


def _reference_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps,
                              activation, negative_slope, residual):
    if input.dim() >= 2:  # what the kernel would raise (the statistics only need their shape here)
        stats = input.new_empty((input.size(1),), dtype=reference.stats_dtype(input))
        _ops.check("batch_norm_act", input, weight, bias, residual, stats, stats,
                   reference.activation_code(activation))
    return reference.batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                    activation, negative_slope, residual)


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
                   momentum=0.1, eps=1e-5, activation="relu", negative_slope=0.01, residual=None,
                   *, process_group=None):
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

    ``process_group`` (training only; torch.distributed's default group when it is
    ``dist.group.WORLD``): the batch statistics and the backward's reductions are all-reduced
    over the group's ranks, as torch.nn.SyncBatchNorm does (ranks may hold different batch
    sizes, even none); grad_weight and grad_bias stay per rank, for DDP to average.
    """
    code = reference.activation_code(activation)
    synchronised = training and process_group is not None and dist.get_world_size(process_group) > 1
    _check(input, running_mean, running_var, training, momentum, eps, synchronised)
    if synchronised:
        if not _has_kernel(input):
            raise NotImplementedError(f"batch_norm_act: no kernel for synchronised batch norm on {input.device.type}")
        return _SyncBatchNormAct.apply(input, weight, bias, residual, running_mean, running_var, momentum,
                                       eps, code, float(negative_slope), process_group)
    if not _has_kernel(input):
        return _reference_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum, eps,
                                         activation, negative_slope, residual)
    if training:
        with torch.no_grad():
            mean, invstd = torch.ops.cnnkit.batch_norm_train_stats(input, running_mean, running_var,
                                                                   float(momentum), float(eps))
    else:
        with torch.no_grad():
            mean = running_mean.to(reference.stats_dtype(input))
            invstd = torch.rsqrt(running_var.to(reference.stats_dtype(input)) + eps)
    output, _ = torch.ops.cnnkit.batch_norm_act(
        input, weight, bias, residual, mean, invstd, training, code, float(negative_slope)
    )
    return output


def _all_gather_stats(input, process_group):
    """(mean, biased var, count) over the whole group: each rank's (mean, var, count) merged
    with the parallel-variance formula, so ranks may hold different batch sizes."""
    mean, var = torch.ops.cnnkit.batch_norm_stats(input)
    count = torch.full((1,), input.numel() // input.size(1), dtype=mean.dtype, device=mean.device)
    local = torch.cat([mean, var, count])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(gathered, local, group=process_group)
    stacked = torch.stack(gathered)
    channels = mean.numel()
    means, vars_, counts = stacked[:, :channels], stacked[:, channels:-1], stacked[:, -1:]
    total = counts.sum()
    if total.item() == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    global_mean = (means * counts).sum(0) / total
    global_var = ((vars_ + (means - global_mean) ** 2) * counts).sum(0) / total
    return global_mean, global_var, int(total.item())


class _SyncBatchNormAct(torch.autograd.Function):
    """batch_norm_act in training with statistics and backward sums all-reduced over a group."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, running_mean, running_var, momentum, eps, code,
                negative_slope, process_group):
        mean, var, total = _all_gather_stats(input, process_group)
        update_running_stats(running_mean, running_var, mean, var, total, momentum)
        invstd = torch.rsqrt(var + eps)
        output, mask = torch.ops.cnnkit.batch_norm_act(input, weight, bias, residual, mean, invstd, True, code,
                                                       negative_slope)
        ctx.save_for_backward(input, weight, bias, mask, mean, invstd)
        ctx.args = (code, negative_slope, process_group, total, residual is not None)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, weight, bias, mask, mean, invstd = ctx.saved_tensors
        code, negative_slope, process_group, total, has_residual = ctx.args
        sum_g, sum_gx = torch.ops.cnnkit.batch_norm_act_backward_reduce(
            grad_output, input, weight, bias, mask, mean, invstd, code, negative_slope)
        # Per-rank parameter gradients, as torch.nn.SyncBatchNorm returns them.
        grad_weight = (sum_gx * invstd).to(weight.dtype) if weight is not None else None
        grad_bias = sum_g.to(bias.dtype) if bias is not None else None
        sums = torch.cat([sum_g, sum_gx])
        dist.all_reduce(sums, group=process_group)
        mean_g, mean_gx = (sums / total).chunk(2)
        grad_input, grad_residual = torch.ops.cnnkit.batch_norm_act_backward_apply(
            grad_output, input, weight, bias, mask, mean, invstd, mean_g.contiguous(), mean_gx.contiguous(),
            code, negative_slope, has_residual and ctx.needs_input_grad[3])
        return (grad_input, grad_weight, grad_bias, grad_residual if has_residual and ctx.needs_input_grad[3] else None,
                None, None, None, None, None, None, None)
