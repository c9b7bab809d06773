"""`cnnkit info`: versions, the backends compiled into cnnkit._C, and the registered ops."""

import os
import platform
import subprocess

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


def machine():
    """A one-line name of the machine figures are measured on: the GPU, or the CPU model
    with torch's SIMD capability and thread count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    simd = torch.backends.cpu.get_cpu_capability()
    return f"{model} ({simd}), {torch.get_num_threads()} threads (torch {torch.__version__})"


def git_revision():
    """The short git revision of the cnnkit source tree, or "unknown" outside a checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(cnnkit.__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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
