"""What each SIMD build of cnnkit's CPU kernels buys: the same ops at every capability this
CPU runs, against the portable DEFAULT build.

The capability is fixed when cnnkit loads, so each one runs in a process of its own
(ATEN_CPU_CAPABILITY forced); the processes take turns, round after round, so that drift in
the machine's speed hits every capability alike, and each figure is the median of its rounds.

    python benchmarks/bench_cpu_capability.py            # writes results/bench_cpu_capability.*
    python benchmarks/bench_cpu_capability.py --rounds 1 --no-write
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

LEVELS = ["DEFAULT", "AVX2", "AVX512"]
# (op, shape, dtype, layout): AlexNet's first LRN and a ResNet-50 BatchNorm+ReLU at batch 8.
CASES = [
    ("local_response_norm forward", (8, 96, 55, 55), torch.float32, "contiguous"),
    ("local_response_norm backward", (8, 96, 55, 55), torch.float32, "contiguous"),
    ("batch_norm_relu train fwd+bwd", (8, 256, 28, 28), torch.float32, "contiguous"),
    ("batch_norm_relu train fwd+bwd", (8, 256, 28, 28), torch.float32, "channels_last"),
    ("batch_norm_relu train fwd+bwd", (8, 256, 28, 28), torch.bfloat16, "channels_last"),
]


def case_function(op, shape, dtype, layout):
    import cnnkit

    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, dtype=dtype).to(memory_format=memory_format)
    grad = torch.randn_like(x)
    if op.startswith("local_response_norm"):
        args = (5, 1e-4, 0.75, 2.0, "torch")
        if op.endswith("forward"):
            return lambda: torch.ops.cnnkit.local_response_norm(x, *args)
        return lambda: torch.ops.cnnkit.local_response_norm_backward(grad, x, *args)
    module = cnnkit.nn.BatchNormReLU2d(shape[1], dtype=dtype)
    x.requires_grad_()
    return lambda: module(x).backward(grad)


def worker():
    """Times every case once in this process: {case index: ms}."""
    fns = {str(i): case_function(*case) for i, case in enumerate(CASES)}
    print(json.dumps(harness.time_interleaved(fns, rounds=1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    native = torch.backends.cpu.get_cpu_capability()
    levels = LEVELS[: LEVELS.index(native) + 1] if native in LEVELS else ["DEFAULT"]
    samples = {level: [] for level in levels}
    for _ in range(args.rounds):
        for level in levels:
            env = dict(os.environ, ATEN_CPU_CAPABILITY=level.lower())
            out = subprocess.run([sys.executable, __file__, "--worker"], env=env, check=True,
                                 capture_output=True, text=True).stdout
            samples[level].append(json.loads(out.splitlines()[-1]))
    records = []
    for i, (op, shape, dtype, layout) in enumerate(CASES):
        ms = {level: statistics.median(run[str(i)] for run in samples[level]) for level in levels}
        for level in levels:
            records.append(harness.record(op, shape, dtype, layout, ms[level], ms["DEFAULT"],
                                          "cnnkit DEFAULT build", capability=level,
                                          rounds=args.rounds, commit=harness.git_revision()))
    columns = ["op", "shape", "dtype", "layout", "capability", "ours_ms", "baseline_ms", "ratio"]
    table = harness.markdown_table(records, columns)
    print(f"{harness.machine()}\n\n{table}")
    if not args.no_write:
        harness.write_results("bench_cpu_capability", records, table)


if __name__ == "__main__":
    main()
