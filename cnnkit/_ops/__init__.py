"""Loads cnnkit._C and registers, for every op, its fake (meta) kernel and its autograd.

One module per op family, mirroring csrc/ops/<op>.cpp. The functional API asks
`has_kernel` before calling an op and otherwise falls back to cnnkit.reference, so cnnkit
stays usable (slowly) on a backend the extension was not built for.
"""

import importlib
import pkgutil

import torch

try:
    from cnnkit import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)

    LOAD_ERROR = None
except ImportError as error:  # a source checkout that was never built
    _C = None
    LOAD_ERROR = error


def registered_ops():
    """Names of the ops in the cnnkit namespace, as torch.ops.cnnkit.<name> (not the check
    ops, whose names start with an underscore)."""
    if _C is None:
        return []
    return sorted(
        name for name in (op.split("::", 1)[1] for op in torch._C._dispatch_get_all_op_names()
                          if op.startswith("cnnkit::"))
        if not name.startswith("_")
    )


def check(op_name, *args):
    """Runs the argument checks of torch.ops.cnnkit.<op_name> without running the op: the
    C++ checks its kernels run (csrc/ops/<family>.cpp), so the fake kernels and the fallback
    to cnnkit.reference raise exactly what the kernels raise. Composite ops, they run on any
    device and on the fake tensors of torch.compile and torch.export."""
    if _C is not None:
        getattr(torch.ops.cnnkit, f"_check_{op_name}")(*args)


def dense_memory_format(input):
    """The memory order of every kernel's activation-sized outputs: the input's own when it
    is dense channels-first or channels-last, channels-first otherwise (the C++ ops make
    such an input dense first: dense_input in csrc/ops/layout.cpp)."""
    if input.is_contiguous():
        return torch.contiguous_format
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _compiled_kernels():
    kernels = set()
    for name in registered_ops():
        for device_type, key in (("cpu", "CPU"), ("cuda", "CUDA")):
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"cnnkit::{name}", key):
                kernels.add((name, device_type))
    return frozenset(kernels)


# Fixed once the extension is loaded; a plain set so torch.compile traces the lookup.
COMPILED_KERNELS = _compiled_kernels()


def has_kernel(name, device_type):
    """True if torch.ops.cnnkit.<name> has a compiled kernel for this device type."""
    return (name, device_type) in COMPILED_KERNELS


if _C is not None:
    for _family in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{_family.name}")
