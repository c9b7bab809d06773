"""Local Response Normalization: cnnkit vs torch.nn.LocalResponseNorm (eager and
torch.compile), against a same-size elementwise floor.

    python benchmarks/bench_lrn.py [--quick] [--no-compile] [--output DIR]
    python benchmarks/bench_lrn.py --device cuda --dtype bfloat16    # CUDA events, results bench_lrn_cuda

Two elementwise floors of the same bytes: the forward reads x and writes y, like
`torch.mul(x, 2)`; forward+backward adds one that reads g and x and writes dx, like
`torch.addcmul(g, x, x)`. "floor" writes into preallocated outputs (memory speed, no page
faults); "alloc floor" allocates its outputs as the ops themselves must, so for large
tensors it pays the first-touch page faults the LRN pays too. "x floor" and
"x alloc floor" are ours / floor: 1.0 would be as fast as the floor.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import cnnkit  # noqa: E402

# AlexNet's two LRN layers (after conv1 and conv2) at batch 32; the paper's constants.
SHAPES = [(32, 96, 55, 55), (32, 256, 27, 27)]
QUICK_SHAPES = [(8, 96, 55, 55), (8, 256, 27, 27)]
LRN_ARGS = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


def forward_backward(module, x, grad):
    def run():
        x.grad = None
        module(x).backward(grad)

    return run


def forward_only(module, x):
    def run():
        with torch.no_grad():
            module(x)

    return run


def bench_case(shape, layout, compile_baseline, rounds, device="cpu", dtype=torch.float32):
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    grad = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    ours = cnnkit.nn.LocalResponseNorm(**LRN_ARGS)
    eager = torch.nn.LocalResponseNorm(**LRN_ARGS)
    out, out2 = torch.empty_like(x), torch.empty_like(x)
    records = []
    for mode in ("forward", "forward+backward"):
        xr = x.detach().requires_grad_(mode != "forward")
        make = (lambda m: forward_only(m, xr)) if mode == "forward" else (lambda m: forward_backward(m, xr, grad))
        fns = {"cnnkit": make(ours), "eager": make(eager)}
        if compile_baseline:
            fns["compile"] = make(torch.compile(eager, dynamic=False))
        if mode == "forward":
            fns["floor"] = lambda: torch.mul(x, 2, out=out)
            fns["alloc floor"] = lambda: torch.mul(x, 2)
        else:
            fns["floor"] = lambda: (torch.mul(x, 2, out=out), torch.addcmul(grad, x, x, out=out2))
            fns["alloc floor"] = lambda: (torch.mul(x, 2), torch.addcmul(grad, x, x))
        ms = harness.time_interleaved(fns, rounds=rounds, device=device)
        peak = {name: harness.peak_memory_bytes(fns[name]) for name in ("cnnkit", "eager")}
        extra = {
            "mode": mode,
            "compile_ms": round(ms["compile"], 3) if "compile" in ms else None,
            "vs_compile": round(ms["compile"] / ms["cnnkit"], 3) if "compile" in ms else None,
            "floor_ms": round(ms["floor"], 3),
            "x_floor": round(ms["cnnkit"] / ms["floor"], 3),
            "alloc_floor_ms": round(ms["alloc floor"], 3),
            "x_alloc_floor": round(ms["cnnkit"] / ms["alloc floor"], 3),
            "peak_mb": round(peak["cnnkit"] / 2**20, 1),
            "baseline_peak_mb": round(peak["eager"] / 2**20, 1),
            "device": torch.device(device).type,
        }
        records.append(harness.record("local_response_norm", shape, x.dtype, layout, ms["cnnkit"],
                                      ms["eager"], "torch.nn.LocalResponseNorm", **extra))
        print(harness.markdown_table(records[-1:], COLUMNS).splitlines()[-1], flush=True)
    return records


COLUMNS = ["shape", "dtype", "layout", "mode", "ours_ms", "baseline_ms", "ratio", "compile_ms", "vs_compile",
           "floor_ms", "x_floor", "alloc_floor_ms", "x_alloc_floor", "peak_mb", "baseline_peak_mb"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--output", help="directory for bench_lrn.json/.md (default benchmarks/results)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    print(f"# bench_lrn on {harness.machine()}\n")
    print(harness.markdown_table([], COLUMNS))
    on_cuda = torch.device(args.device).type == "cuda"
    records = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        if on_cuda and not args.quick:
            shape = (256, *shape[1:])  # a GPU's batch: AlexNet's 128 per GPU, two GPUs' worth
        for layout in ("contiguous", "channels_last"):
            records += bench_case(shape, layout, not args.no_compile, 3 if args.quick else 7, args.device,
                                  getattr(torch, args.dtype))
    name = "bench_lrn_cuda" if on_cuda else "bench_lrn"
    if args.dtype != "float32":
        name += f"_{args.dtype}"
    harness.write_results(name, records, harness.markdown_table(records, COLUMNS), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
