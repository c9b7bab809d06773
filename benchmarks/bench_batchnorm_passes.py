"""Each pass of cnnkit's fused BatchNorm on its own, in bytes per second against a copy.

The four kernels of a training step (torch.ops.cnnkit.*): the batch statistics (read x), the
forward (read x [and the residual], write y [and the mask]), the backward's per-channel sums
(read grad and x [and the mask]) and the backward's apply (read grad and x [and the mask],
write grad_input [and grad_residual]). Each one's bytes over its time, as a fraction of what
a same-size copy (`out.copy_(x)`, read and write) moves per second: the target is >= 0.8 in
every pass, dtype and layout. Times by CUDA events on a GPU, torch.utils.benchmark on the CPU.

    python benchmarks/bench_batchnorm_passes.py --device cuda
    python benchmarks/bench_batchnorm_passes.py --device cpu --quick     # a dry run
"""

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import cnnkit  # noqa: E402,F401  (registers torch.ops.cnnkit)
from bench_batchnorm import DTYPES, RESNET50  # noqa: E402

RELU = 1
ops = torch.ops.cnnkit


def passes(x, residual):
    """{pass: (callable, bytes it must move)} for one input."""
    channels = x.shape[1]
    stats = torch.float64 if x.dtype == torch.float64 else torch.float32
    weight = torch.ones(channels, device=x.device, dtype=stats)
    bias = torch.zeros(channels, device=x.device, dtype=stats)
    mean, var = ops.batch_norm_stats(x)
    invstd = (var + 1e-5).rsqrt()
    grad = torch.randn_like(x)
    _, mask = ops.batch_norm_act(x, weight, bias, residual, mean, invstd, True, RELU, 0.0)
    count = x.numel() // channels
    sums = ops.batch_norm_act_backward_reduce(grad, x, weight, bias, mask, mean, invstd, RELU, 0.0)
    mean_grad, mean_grad_centered = (s / count for s in sums)
    tensor = x.numel() * x.element_size()
    mask_bytes = mask.numel() * mask.element_size()
    with_residual = residual is not None
    return {
        "stats": (lambda: ops.batch_norm_stats(x), tensor),
        "forward": (lambda: ops.batch_norm_act(x, weight, bias, residual, mean, invstd, True, RELU, 0.0),
                    (3 if with_residual else 2) * tensor + mask_bytes),
        "backward reduce": (lambda: ops.batch_norm_act_backward_reduce(grad, x, weight, bias, mask, mean, invstd,
                                                                        RELU, 0.0),
                            2 * tensor + mask_bytes),
        "backward apply": (lambda: ops.batch_norm_act_backward_apply(
            grad, x, weight, bias, mask, mean, invstd, mean_grad, mean_grad_centered, RELU, 0.0, with_residual),
            (4 if with_residual else 3) * tensor + mask_bytes),
    }


def bench_case(shape, with_residual, dtype, channels_last, device, rounds, min_run_time):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    residual = torch.randn_like(x) if with_residual else None
    out = torch.empty_like(x)
    kernels = passes(x, residual)
    fns = {name: fn for name, (fn, _) in kernels.items()}
    fns["copy"] = lambda: out.copy_(x)
    ms = harness.time_interleaved(fns, rounds=rounds, min_run_time=min_run_time, device=device)
    copy_rate = 2 * x.numel() * x.element_size() / ms["copy"]  # bytes per ms
    layout = "channels_last" if channels_last else "contiguous"
    records = []
    for name, (_, nbytes) in kernels.items():
        rate = nbytes / ms[name]
        records.append(harness.record(
            f"batch_norm {name}" + (" (residual)" if with_residual else ""), shape, dtype, layout, ms[name],
            ms["copy"], "same-size copy", device=torch.device(device).type, GB_s=round(rate / 1e6, 1),
            copy_GB_s=round(copy_rate / 1e6, 1), of_copy=round(rate / copy_rate, 3), commit=harness.git_revision()))
    return records


COLUMNS = ["op", "shape", "dtype", "layout", "ours_ms", "GB_s", "copy_GB_s", "of_copy"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None,
                        help="default: float32 and bfloat16")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on CUDA, 8 on the CPU")
    parser.add_argument("--quick", action="store_true", help="one small shape; print, write nothing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.05)
    parser.add_argument("--output", help="directory for the results (default benchmarks/results)")
    args = parser.parse_args(argv)
    on_cuda = torch.device(args.device).type == "cuda"
    batch = args.batch or (256 if on_cuda else 8)
    shapes = [((2, 64, 28, 28), True)] if args.quick else [((batch, c, hw, hw), r) for c, hw, r in RESNET50]
    records = []
    for (shape, with_residual), dtype, channels_last in itertools.product(
            shapes, args.dtypes or ["float32", "bfloat16"], (False, True)):
        new = bench_case(shape, with_residual, DTYPES[dtype], channels_last, args.device, args.rounds,
                         args.min_run_time)
        records += new
        print(harness.markdown_table(new, COLUMNS).split("\n", 2)[2], flush=True)
    table = harness.markdown_table(records, COLUMNS)
    print(f"\nMachine: {harness.machine()}\n\n{table}")
    if not args.quick:
        harness.write_results(f"bench_batchnorm_passes_{torch.device(args.device).type}", records, table,
                              args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
