"""BatchNorm + ReLU and BatchNorm + residual add + ReLU, forward + backward, in training.

Contenders, measured in the same process and interleaved (benchmarks/harness.py):
  ours      cnnkit.nn.BatchNormReLU2d (one fused op forward, one backward op)
  eager     torch.nn.BatchNorm2d, then + residual, then torch.relu
  compile   the same eager function under torch.compile (default mode)
  floor     torch.add(x, r, out=preallocated): one same-size elementwise pass (memory bandwidth)

Shapes: the BatchNorm inputs of ResNet-50 at 224x224 (bn1/bn2 shapes with BN+ReLU, the bn3
shapes that end a block with BN+add+ReLU) at --batch, and 32x256x28x28 with both;
contiguous and channels_last. Also the bytes autograd saves for backward, ours and eager.
On a GPU "eager" is cuDNN's BatchNorm, timed by CUDA events; the defaults there are batch 256,
float32 and bfloat16. bench_batchnorm_passes.py times each kernel against a copy.

    python benchmarks/bench_batchnorm.py                # everything, writes results
    python benchmarks/bench_batchnorm.py --quick        # 32x256x28x28 only, no files
    python benchmarks/bench_batchnorm.py --threads 1    # results per thread count
    python benchmarks/bench_batchnorm.py --device cuda --no-compile
"""

import argparse
import copy
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import cnnkit.nn as cnn  # noqa: E402

# (channels, height/width, with residual) of ResNet-50's BatchNorms (torchvision layout).
RESNET50 = [
    (64, 112, False),
    (64, 56, False), (128, 56, False), (256, 56, True),
    (128, 28, False), (256, 28, False), (512, 28, True),
    (256, 14, False), (512, 14, False), (1024, 14, True),
    (512, 7, False), (2048, 7, True),
]


def cases(batch, quick):
    headline = [((32, 256, 28, 28), False), ((32, 256, 28, 28), True)]
    if quick:
        return headline
    return headline + [((batch, c, hw, hw), residual) for c, hw, residual in RESNET50]


def make_step(module, x, residual, grad, eager):
    """One training step's BN work: forward and backward (input and residual grads)."""
    def forward():
        if eager:
            out = module(x)
            return torch.relu(out + residual if residual is not None else out)
        return module(x, residual)

    def step(forward=forward):
        x.grad = None
        if residual is not None:
            residual.grad = None
        forward().backward(grad)

    return step, forward


def bench_case(shape, with_residual, channels_last, rounds, min_run_time, dtype=torch.float32, device="cpu",
               use_compile=True):
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def tensor(requires_grad):
        t = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        return t.requires_grad_(requires_grad)

    x = tensor(True)
    residual = tensor(True) if with_residual else None
    grad = tensor(False)
    reference = torch.nn.BatchNorm2d(shape[1]).to(device=device, dtype=dtype)
    ours_step, ours_forward = make_step(cnn.BatchNormReLU2d.from_torch(copy.deepcopy(reference)), x, residual, grad,
                                        eager=False)
    eager_step, eager_forward = make_step(reference, x, residual, grad, eager=True)
    out = torch.empty_like(grad)
    other = residual.detach() if residual is not None else grad
    contenders = {"ours": ours_step, "eager": eager_step,
                  "floor": lambda: torch.add(x.detach(), other, out=out)}
    if use_compile:
        compiled_forward = torch.compile(eager_forward)
        compile_step, _ = make_step(reference, x, residual, grad, eager=True)
        contenders["compile"] = lambda: compile_step(compiled_forward)
    times = harness.time_interleaved(contenders, rounds=rounds, min_run_time=min_run_time, device=device)
    saved_ours = harness.saved_tensor_bytes(ours_forward)
    saved_eager = harness.saved_tensor_bytes(eager_forward)
    op = "bn_add_relu" if with_residual else "bn_relu"
    layout = "channels_last" if channels_last else "contiguous"
    common = dict(
        saved_bytes_ours=saved_ours, saved_bytes_eager=saved_eager,
        peak_bytes_ours=harness.peak_memory_bytes(ours_step), peak_bytes_eager=harness.peak_memory_bytes(eager_step),
        floor_ms=round(times["floor"], 4), times_floor=round(times["ours"] / times["floor"], 2),
        commit=harness.git_revision(),
    )
    common["device"] = torch.device(device).type
    eager = "cuDNN (eager)" if common["device"] == "cuda" else "eager"
    records = [harness.record(f"{op} fwd+bwd", shape, dtype, layout, times["ours"], times["eager"], eager, **common)]
    if use_compile:
        records.append(harness.record(f"{op} fwd+bwd", shape, dtype, layout, times["ours"], times["compile"],
                                      "torch.compile", **common))
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES),
                        help="default: float32 on the CPU, float32 and bfloat16 on CUDA")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size of the ResNet-50 shapes (default 8 on the CPU, 256 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="32x256x28x28 only; print, write nothing")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--output", help="directory for the results (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cuda = torch.device(args.device).type == "cuda"
    dtypes = args.dtypes or (["float32", "bfloat16"] if on_cuda else ["float32"])
    batch = args.batch or (256 if on_cuda else 8)
    records = []
    for shape, with_residual in cases(batch, args.quick):
        for dtype, channels_last in itertools.product(dtypes, (False, True)):
            new = bench_case(shape, with_residual, channels_last, args.rounds, args.min_run_time, DTYPES[dtype],
                             args.device, not args.no_compile)
            records += new
            print(harness.markdown_table(new, COLUMNS).split("\n", 2)[2], flush=True)
    table = harness.markdown_table(records, COLUMNS)
    print(f"\nMachine: {harness.machine()}\n\n{table}")
    if not args.quick:
        name = "bench_batchnorm_cuda" if on_cuda else f"bench_batchnorm_cpu_{torch.get_num_threads()}threads"
        harness.write_results(name, records, table, args.output)
    return 0


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COLUMNS = ["op", "shape", "dtype", "layout", "ours_ms", "baseline", "baseline_ms", "ratio", "floor_ms", "times_floor",
           "saved_bytes_ours", "saved_bytes_eager"]

if __name__ == "__main__":
    sys.exit(main())
