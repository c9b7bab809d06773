"""Every CUDA kernel of cnnkit once, on small shapes, checked against the CPU kernels: short
enough to run under compute-sanitizer (memcheck, racecheck), which scripts/gpu_check.sh does.

    python scripts/cuda_smoke.py                 # on the GPU
    python scripts/cuda_smoke.py --device cpu    # the same calls on the CPU (a dry run)
    python scripts/cuda_smoke.py --quick         # fewer, for racecheck

Each configuration runs BatchNorm(+add)+ReLU forward and backward in training and in eval, and
LRN forward and backward: float32, float16 and bfloat16, contiguous and channels_last, channel
counts below and above one block's 32 and not a multiple of it, and a batch large enough for
several slices of the reductions. Exits non-zero on the first mismatch.
"""

import argparse
import itertools
import sys

import torch

import cnnkit.nn as cnn
from cnnkit.functional import local_response_norm

SHAPES = [(2, 3, 5, 7), (4, 37, 9, 9), (16, 40, 20, 20)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FORMATS = [torch.contiguous_format, torch.channels_last]


def check(got, expected, dtype):
    """got (of `dtype`, any device) against the float32 CPU result. In half precision a ReLU
    input can land on the other side of zero now and then, changing one gradient element by
    the whole incoming gradient, so those are held to a relative L2 error of 3% instead of
    elementwise: a kernel that reads or writes wrong elements misses either bar by far."""
    got, expected = got.detach().float().cpu(), expected.detach().float()
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        return
    assert torch.isfinite(got).eq(torch.isfinite(expected)).all(), "non-finite values differ"
    error = (got - expected).norm() / expected.norm().clamp_min(1e-12)
    assert error < 3e-2, f"relative L2 error {error:.3g} in {dtype}"


def batch_norm_case(shape, dtype, memory_format, residual, training, device):
    """The module on `device` in `dtype` against the same module on the CPU in float32."""
    torch.manual_seed(0)
    cpu_module = cnn.BatchNormReLU2d(shape[1]).train(training)
    with torch.no_grad():
        cpu_module.weight.uniform_(0.5, 1.5)
        cpu_module.bias.uniform_(-0.2, 0.2)
        cpu_module.running_mean.uniform_(-0.1, 0.1)
    module = cnn.BatchNormReLU2d(shape[1]).to(device=device, dtype=dtype).train(training)
    module.load_state_dict(cpu_module.state_dict())
    x = torch.randn(shape).to(dtype).float().contiguous(memory_format=memory_format)
    r = torch.randn(shape).to(dtype).float().contiguous(memory_format=memory_format)
    g = torch.randn(shape).to(dtype).float().contiguous(memory_format=memory_format)
    results = []
    for m, dev, dt in ((cpu_module, "cpu", torch.float32), (module, device, dtype)):
        xi = x.to(device=dev, dtype=dt, copy=True).requires_grad_()
        ri = r.to(device=dev, dtype=dt, copy=True).requires_grad_() if residual else None
        y = m(xi, ri)
        y.backward(g.to(device=dev, dtype=dt))
        grads = [xi.grad, m.weight.grad, m.bias.grad] + ([ri.grad] if residual else [])
        results.append([y, m.running_mean, m.running_var, *grads])
    for expected, got in zip(*results):
        check(got, expected, dtype)


def lrn_case(shape, dtype, memory_format, device):
    x = torch.randn(shape).to(dtype).float().contiguous(memory_format=memory_format)
    g = torch.randn(shape).to(dtype).float().contiguous(memory_format=memory_format)
    results = []
    for dev, dt in (("cpu", torch.float32), (device, dtype)):
        xi = x.to(device=dev, dtype=dt, copy=True).requires_grad_()
        y = local_response_norm(xi, 5, 1e-2, 0.75, 2.0)
        y.backward(g.to(device=dev, dtype=dt))
        results.append([y, xi.grad])
    for expected, got in zip(*results):
        check(got, expected, dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true",
                        help="the two small shapes, float32 and bfloat16")
    args = parser.parse_args(argv)
    quick_or_cpu = args.quick or args.device == "cpu"  # the CPU has no float16 kernels
    dtypes = [torch.float32, torch.bfloat16] if quick_or_cpu else DTYPES
    count = 0
    shapes = SHAPES[:2] if args.quick else SHAPES
    for shape, dtype, fmt in itertools.product(shapes, dtypes, FORMATS):
        for residual, training in itertools.product((False, True), (True, False)):
            batch_norm_case(shape, dtype, fmt, residual, training, args.device)
            count += 1
        lrn_case(shape, dtype, fmt, args.device)
        count += 1
    if args.device != "cpu":
        torch.cuda.synchronize()
    print(f"cuda_smoke: {count} configurations on {args.device} match the CPU kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
