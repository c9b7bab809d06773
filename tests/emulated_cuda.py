"""The CUDA kernels of csrc/cuda, compiled with the host C++ compiler against the test-only
emulation of the CUDA execution model (tests/cuda_emulation), and called on CPU tensors.

The wrappers do what the CUDA glue (csrc/cuda/*_cuda.cpp) does around each launcher: dense
inputs, outputs of the right dtype and memory order, a workspace of the size the launcher
asks for. The workspace and outputs start as NaN, so a slot a kernel forgets to write shows.

With CNNKIT_SANITIZE=1 (scripts/sanitize.sh, whose Python has the sanitizer runtimes
preloaded) the library is built with AddressSanitizer and UBSan.
"""

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EMULATION = ROOT / "tests" / "cuda_emulation"
KERNELS = sorted((ROOT / "csrc" / "cuda").glob("*_kernel.cu"))

# cnnkit::cuda::ScalarType (csrc/include/cnnkit/cuda_types.h).
SCALAR_TYPES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
# cnnkit::lrn::Convention (csrc/include/cnnkit/lrn.h).
LRN_CONVENTIONS = {"torch": 0, "caffe": 1, "cudnn": 2, "tf": 3, "paper": 4}

_i64, _f64, _int = ctypes.c_int64, ctypes.c_double, ctypes.c_int
_ptr, _bool = ctypes.c_void_p, ctypes.c_bool
_SHAPE = [_i64, _i64, _i64, _bool]  # DenseLayout: N, C, S, channels_last
_LRN = [_int, _i64, _f64, _f64, _f64]  # LrnCoefficients: convention, size, alpha, beta, k
SIGNATURES = {  # tests/cuda_emulation/entry.cpp
    "set_schedule": [_int],
    "batch_norm_workspace_elements": _SHAPE,
    "batch_norm_stats": [_int, *[_ptr] * 4, *_SHAPE],
    "batch_norm_act_forward": [_int, *[_ptr] * 8, _i64, _f64, *_SHAPE],
    "batch_norm_act_backward_reduce": [_int, *[_ptr] * 7, _i64, _f64, *[_ptr] * 3, *_SHAPE],
    "batch_norm_act_backward_apply": [_int, *[_ptr] * 9, _i64, _f64, _ptr, _ptr, *_SHAPE],
    "lrn_forward": [_int, _ptr, _ptr, *_SHAPE, *_LRN],
    "lrn_backward": [_int, *[_ptr] * 4, *_SHAPE, *_LRN],
    "block_sum": [_ptr, _ptr, ctypes.c_uint, _bool],
}


def cuda_include_dir():
    """The CUDA toolkit's headers (cuda_fp16.h and the host parts of the runtime's), or None."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").is_file():
            return Path(home) / "include"
    return None


def sanitized():
    return os.environ.get("CNNKIT_SANITIZE", "").lower() in ("1", "true", "yes", "on")


def build_command(output, include):
    flags = ["-std=c++20", "-O1", "-g", "-fPIC", "-shared", "-pthread", "-DCNNKIT_CUDA_EMULATION",
             "-Wall", "-Werror", "-Wl,--no-undefined"]
    if sanitized():
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer"]
    includes = [EMULATION / "include", ROOT / "csrc", ROOT / "csrc" / "include", include]
    sources = [*KERNELS, *sorted(EMULATION.glob("*.cpp"))]
    return [os.environ.get("CXX", "g++"), *flags, *(f"-I{d}" for d in includes),
            "-x", "c++", *map(str, sources), "-o", str(output)]


def _fingerprint(command):
    digest = hashlib.sha256(" ".join(command).encode())
    for directory in (ROOT / "csrc", EMULATION):
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_library():
    """Builds (once per source version and flags, under build/cuda_emulation) and loads the
    emulated kernels."""
    include = cuda_include_dir()
    if include is None:
        raise FileNotFoundError("the CUDA toolkit's headers (cuda_fp16.h) were not found; "
                                "set CUDA_HOME")
    directory = ROOT / "build" / "cuda_emulation"
    probe = build_command(directory / "lib.so", include)
    library = directory / f"cnnkit_cuda_emulation_{_fingerprint(probe)}.so"
    if not library.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run(build_command(partial, include), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building the emulated CUDA kernels failed:\n"
                               f"{result.stderr[-4000:]}")
        shutil.move(partial, library)  # atomic: a concurrent run sees all of it or none
    lib = ctypes.CDLL(str(library))
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, f"emulation_{name}")
        function.argtypes = argtypes
        function.restype = _i64 if name.endswith("_elements") else _int
    lib.emulation_set_schedule.restype = None  # void
    return EmulatedKernels(lib)


def _stats_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _nan_like(x, dtype=None):
    return torch.full_like(x, math.nan, dtype=dtype)


def _nan_channels(x):
    return torch.full((x.shape[1],), math.nan, dtype=_stats_dtype(x))


class EmulatedKernels:
    """The launchers of csrc/cuda, run on CPU tensors (the same layout the CUDA glue passes)."""

    def __init__(self, lib):
        self.lib = lib

    def _call(self, name, *args):
        """Calls emulation_<name>: tensors go as their addresses, None as a null pointer."""
        values = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        code = getattr(self.lib, f"emulation_{name}")(*values)
        if code:  # a cudaError_t other than cudaSuccess; None for set_schedule
            raise RuntimeError(f"{name}: CUDA error {code}")

    def set_schedule(self, schedule):
        self._call("set_schedule", {"forward": 0, "reverse": 1}[schedule])

    @staticmethod
    def layout(x):
        """(N, C, S, channels_last) of a dense input, as csrc/ops/layout.cpp's dense_layout."""
        assert any(x.is_contiguous(memory_format=f) for f in
                   (torch.contiguous_format, torch.channels_last, torch.channels_last_3d))
        return x.shape[0], x.shape[1], math.prod(x.shape[2:]), not x.is_contiguous()

    def workspace_elements(self, x):
        return self.lib.emulation_batch_norm_workspace_elements(*self.layout(x))

    def _workspace(self, x):
        return torch.full((self.workspace_elements(x),), math.nan, dtype=_stats_dtype(x))

    def batch_norm_stats(self, x):
        mean, var = _nan_channels(x), _nan_channels(x)
        self._call("batch_norm_stats", SCALAR_TYPES[x.dtype], x, mean, var, self._workspace(x),
                   *self.layout(x))
        return mean, var

    def batch_norm_act(self, x, weight, bias, residual, mean, invstd, activation, slope, save_mask):
        y = _nan_like(x)
        mask = torch.ones_like(x, dtype=torch.bool) if save_mask else None
        self._call("batch_norm_act_forward", SCALAR_TYPES[x.dtype], x, residual, y, mask, mean,
                   invstd, weight, bias, activation, slope, *self.layout(x))
        return y, mask

    def batch_norm_act_backward_reduce(self, dy, x, mask, weight, bias, mean, invstd, activation,
                                       slope):
        sum_g, sum_gx = _nan_channels(x), _nan_channels(x)
        self._call("batch_norm_act_backward_reduce", SCALAR_TYPES[x.dtype], dy, x, mask, mean,
                   invstd, weight, bias, activation, slope, sum_g, sum_gx, self._workspace(x),
                   *self.layout(x))
        return sum_g, sum_gx

    def batch_norm_act_backward_apply(self, dy, x, mask, weight, bias, mean, invstd, mean_grad,
                                      mean_grad_centered, activation, slope, residual_grad):
        dx = _nan_like(x)
        dr = _nan_like(x) if residual_grad else None
        self._call("batch_norm_act_backward_apply", SCALAR_TYPES[x.dtype], dy, x, mask, mean,
                   invstd, weight, bias, mean_grad, mean_grad_centered, activation, slope, dx, dr,
                   *self.layout(x))
        return dx, dr

    def local_response_norm(self, x, size, alpha, beta, k, convention):
        y = _nan_like(x)
        self._call("lrn_forward", SCALAR_TYPES[x.dtype], x, y, *self.layout(x),
                   LRN_CONVENTIONS[convention], size, alpha, beta, k)
        return y

    def local_response_norm_backward(self, g, x, size, alpha, beta, k, convention):
        gx, term = _nan_like(x), _nan_like(x, _stats_dtype(x))
        self._call("lrn_backward", SCALAR_TYPES[x.dtype], g, x, gx, term, *self.layout(x),
                   LRN_CONVENTIONS[convention], size, alpha, beta, k)
        return gx

    def block_sum(self, x, synchronised):
        sums = torch.full((x.numel() // 64,), math.nan)
        self._call("block_sum", x, sums, sums.numel(), synchronised)
        return sums
