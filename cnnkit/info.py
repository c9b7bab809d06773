"""`cnnkit info`: versions, the backends compiled into cnnkit._C, and the registered ops."""

import platform

import torch

import cnnkit
from cnnkit import _ops


def backends():
    """What the extension was built with: the CPU SIMD levels (and the one chosen when it
    loaded, from torch's: ATEN_CPU_CAPABILITY applies) and CUDA architectures, or why not."""
    if _ops._C is None:
        return {"extension": f"not built ({_ops.LOAD_ERROR})", "cpu": "reference only", "cuda": "no CUDA"}
    cuda_ops = sorted(name for name, device in _ops.COMPILED_KERNELS if device == "cuda")
    return {
        "extension": _ops._C.__file__,
        "cpu": f"{_ops._C.cpu_capability} SIMD kernels active, {torch.get_num_threads()} threads "
        f"(compiled: {_ops._C.cpu_capabilities.replace(',', ', ')}; "
        f"torch's capability: {torch.backends.cpu.get_cpu_capability()})",
        "cuda": f"kernels for {_ops._C.cuda_archs}" if cuda_ops else "no CUDA",
    }


def report():
    lines = [
        f"cnnkit {cnnkit.__version__}",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), Python {platform.python_version()}",
    ]
    lines += [f"{key}: {value}" for key, value in backends().items()]
    ops = _ops.registered_ops()
    lines.append(f"ops ({len(ops)}):")
    for name in ops:
        devices = sorted(device for op, device in _ops.COMPILED_KERNELS if op == name)
        lines.append(f"  torch.ops.cnnkit.{name} [{', '.join(devices) or 'no kernel'}]")
    return "\n".join(lines)


def main(argv=()):
    if argv:
        print("usage: cnnkit info")
        return 2
    print(report())
    return 0
