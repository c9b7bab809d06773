"""Conv + BatchNorm + ReLU: cnnkit.nn.ConvBNReLU2d and cnnkit.functional.bn_act_conv2d
against eager PyTorch, on ResNet-50's convolution shapes.

    python benchmarks/bench_conv_bn.py [--quick] [--threads N] [--sections eval train memory]
                                       [--output DIR]

Three tables:
- eval (no_grad): cnnkit.optimize_for_inference(ConvBNReLU2d) (BN folded, the ReLU as the
  oneDNN epilogue, the weight prepacked) and ConvBNReLU2d itself in eval (conv, then the
  fused BN-ReLU kernel on running statistics) vs eager Conv2d -> BatchNorm2d -> ReLU, vs torch.nn.utils.fusion.fuse_conv_bn_eval then an in-place ReLU, and against the
  floor: the bare convolution with the folded weight and bias (no activation). Also both
  ways of running the epilogue (oneDNN's fused post-op, conv then in-place ReLU), which is
  what conv2d_bias_act's choice per layout rests on.
- train: one forward + backward of ConvBNReLU2d vs the eager sequence.
- memory-saving: BN -> ReLU -> conv forward + backward with bn_act_conv2d vs eager, and
  the bytes each saves for backward.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit.nn.conv_bn import ConvBNReLU2d, bn_act_conv  # noqa: E402

# (in_channels, out_channels, kernel, spatial) of ResNet-50 convolutions.
SHAPES = [(64, 64, 3, 56), (256, 64, 1, 56), (128, 128, 3, 28), (2048, 512, 1, 7)]
BATCH, QUICK_BATCH = 8, 2


def make_modules(cin, cout, kernel, memory_format):
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    bn = nn.BatchNorm2d(cout)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    eager = nn.Sequential(conv, bn, nn.ReLU()).to(memory_format=memory_format)
    ours = ConvBNReLU2d(cin, cout, kernel, padding=kernel // 2).to(memory_format=memory_format)
    ours.load_state_dict(eager.state_dict())
    return ours, eager


def memory_format_of(layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def peak_mb(fns):
    """Peak memory of a run of ours and of the eager baseline, in MiB."""
    return {
        "peak_mb": round(harness.peak_memory_bytes(fns["cnnkit"]) / 2**20, 1),
        "baseline_peak_mb": round(harness.peak_memory_bytes(fns["eager"]) / 2**20, 1),
    }


def conv_bn_relu_record(shape, dtype, layout, ms, extra):
    """The record of an eval or train case: ConvBNReLU2d against the eager sequence."""
    return harness.record(
        "conv_bn_relu",
        shape,
        dtype,
        layout,
        ms["cnnkit"],
        ms["eager"],
        "Conv2d->BatchNorm2d->ReLU (eager)",
        **extra,
    )


def no_grad(fn):
    def run():
        with torch.no_grad():
            fn()

    return run


def eval_case(cin, cout, kernel, size, layout, batch, rounds):
    memory_format = memory_format_of(layout)
    ours, eager = make_modules(cin, cout, kernel, memory_format)
    ours.eval(), eager.eval()
    folded = fuse_conv_bn_eval(eager[0], eager[1])
    x = torch.randn(batch, cin, size, size).to(memory_format=memory_format)
    w, b, pad = folded.weight.detach(), folded.bias.detach(), kernel // 2
    args = ([pad, pad], [1, 1], [1, 1], 1)
    frozen = cnnkit.optimize_for_inference(ours, x)
    fns = {
        "cnnkit": no_grad(lambda: frozen(x)),
        "cnnkit_unfolded": no_grad(lambda: ours(x)),
        "eager": no_grad(lambda: eager(x)),
        "fuse_conv_bn_eval": no_grad(lambda: F.relu(folded(x), inplace=True)),
        "bare_conv": no_grad(lambda: F.conv2d(x, w, b, 1, pad)),
        "onednn_postop": no_grad(
            lambda: torch.ops.mkldnn._convolution_pointwise(x, w, b, *args, "relu", [], "")
        ),
        "conv_relu_": no_grad(lambda: F.conv2d(x, w, b, 1, pad).relu_()),
    }
    ms = harness.time_interleaved(fns, rounds=rounds)
    extra = {
        "mode": "eval",
        "unfolded_ms": round(ms["cnnkit_unfolded"], 3),
        "fuse_conv_bn_eval_ms": round(ms["fuse_conv_bn_eval"], 3),
        "vs_fuse_conv_bn_eval": round(ms["fuse_conv_bn_eval"] / ms["cnnkit"], 3),
        "floor_ms": round(ms["bare_conv"], 3),
        "x_floor": round(ms["cnnkit"] / ms["bare_conv"], 3),
        "onednn_postop_ms": round(ms["onednn_postop"], 3),
        "conv_relu_ms": round(ms["conv_relu_"], 3),
        **peak_mb(fns),
    }
    return conv_bn_relu_record((batch, cin, size, size, cout, kernel), x.dtype, layout, ms, extra)


def forward_backward(module, x, grad):
    def run():
        module(x).backward(grad)
        # Free the gradients inside the run: the peak-memory profile then sees every free
        # of what the run allocated, and nothing allocated before it.
        x.grad = None
        module.zero_grad(set_to_none=True)

    return run


def train_case(cin, cout, kernel, size, layout, batch, rounds):
    memory_format = memory_format_of(layout)
    ours, eager = make_modules(cin, cout, kernel, memory_format)
    x = torch.randn(batch, cin, size, size).to(memory_format=memory_format).requires_grad_()
    grad = torch.randn(batch, cout, size, size).to(memory_format=memory_format)
    fns = {"cnnkit": forward_backward(ours, x, grad), "eager": forward_backward(eager, x, grad)}
    ms = harness.time_interleaved(fns, rounds=rounds)
    extra = {
        "mode": "train fwd+bwd",
        **peak_mb(fns),
    }
    return conv_bn_relu_record((batch, cin, size, size, cout, kernel), x.dtype, layout, ms, extra)


def memory_saving_case(cin, cout, kernel, size, layout, batch, rounds):
    """BN(cin) -> ReLU -> conv(cin -> cout): the link inside a ResNet block."""
    memory_format = memory_format_of(layout)
    bn = nn.BatchNorm2d(cin)
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False).to(
        memory_format=memory_format
    )
    x = torch.randn(batch, cin, size, size).to(memory_format=memory_format).requires_grad_()
    grad = torch.randn(batch, cout, size, size).to(memory_format=memory_format)

    def step(forward):
        def run():
            forward().backward(grad)
            x.grad = None  # inside the run, as in forward_backward
            conv.zero_grad(set_to_none=True), bn.zero_grad(set_to_none=True)

        return run

    forwards = {
        "cnnkit": lambda: bn_act_conv(bn, conv, x),
        "eager": lambda: conv(torch.relu(bn(x))),
    }
    ms = harness.time_interleaved({name: step(f) for name, f in forwards.items()}, rounds=rounds)
    saved = {name: harness.saved_tensor_bytes(f) for name, f in forwards.items()}
    extra = {
        "mode": "bn_act_conv2d fwd+bwd",
        "saved_mb": round(saved["cnnkit"] / 2**20, 2),
        "baseline_saved_mb": round(saved["eager"] / 2**20, 2),
    }
    return harness.record(
        "bn_act_conv2d",
        (batch, cin, size, size, cout, kernel),
        x.dtype,
        layout,
        ms["cnnkit"],
        ms["eager"],
        "BatchNorm2d->ReLU->Conv2d (eager)",
        **extra,
    )


EVAL_COLUMNS = [
    "shape",
    "layout",
    "ours_ms",
    "baseline_ms",
    "ratio",
    "fuse_conv_bn_eval_ms",
    "vs_fuse_conv_bn_eval",
    "floor_ms",
    "x_floor",
    "onednn_postop_ms",
    "conv_relu_ms",
    "peak_mb",
    "baseline_peak_mb",
]
TRAIN_COLUMNS = [
    "shape",
    "layout",
    "mode",
    "ours_ms",
    "baseline_ms",
    "ratio",
    "peak_mb",
    "baseline_peak_mb",
]
MEMORY_COLUMNS = [
    "shape",
    "layout",
    "ours_ms",
    "baseline_ms",
    "ratio",
    "saved_mb",
    "baseline_saved_mb",
]


SECTIONS = {
    "eval": ("eval (no_grad)", eval_case, EVAL_COLUMNS),
    "train": ("train step (forward + backward)", train_case, TRAIN_COLUMNS),
    "memory": (
        "memory-saving BN -> ReLU -> conv (forward + backward)",
        memory_saving_case,
        MEMORY_COLUMNS,
    ),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 2, fewer rounds")
    parser.add_argument(
        "--output", help="directory for bench_conv_bn.json/.md (default benchmarks/results)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=list(SECTIONS),
        default=list(SECTIONS),
        help="which tables to measure (default: all)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch, rounds = (QUICK_BATCH, 3) if args.quick else (BATCH, 5)
    bn_kernel = cnnkit._ops.has_kernel("batch_norm_act", "cpu")
    print(f"# bench_conv_bn on {harness.machine()}, batch {batch}, float32")
    print(f"(BN-act op: {'compiled kernel' if bn_kernel else 'reference fallback'})\n")
    tables = []
    all_records = []
    for section in args.sections:
        title, case, columns = SECTIONS[section]
        print(f"## {title}\n\n{harness.markdown_table([], columns)}", flush=True)
        records = []
        for cin, cout, kernel, size in SHAPES:
            for layout in ("contiguous", "channels_last"):
                records.append(case(cin, cout, kernel, size, layout, batch, rounds))
                print(harness.markdown_table(records[-1:], columns).splitlines()[-1], flush=True)
        print()
        tables.append(f"## {title}\n\n{harness.markdown_table(records, columns)}")
        all_records += records
    # Shared machines: the load says how much the figures may be disturbed.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    header = (
        f"batch {batch}, float32, git {harness.git_revision()}, BN-act op: "
        f"{'compiled kernel' if bn_kernel else 'reference fallback'}, "
        f"load average at the end {load} on {os.cpu_count()} CPUs.\n"
        "ratio = eager / ours (> 1: ours faster); x_floor = ours / bare convolution.\n\n"
    )
    name = "bench_conv_bn" + (f"_{args.threads}thread" if args.threads else "")
    if args.sections != list(SECTIONS):
        name += "_" + "_".join(args.sections)
    harness.write_results(name, all_records, header + "\n\n".join(tables), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
