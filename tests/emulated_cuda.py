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

_i64, _f64, _ptr, _bool = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_bool
_SHAPE = [_i64, _i64, _i64, _bool]
SIGNATURES = {
    "emulation_set_schedule": [ctypes.c_int],
    "emulation_batch_norm_workspace_elements": _SHAPE,
    "emulation_batch_norm_stats": [ctypes.c_int, *[_ptr] * 4, *_SHAPE],
    "emulation_batch_norm_act_forward": [ctypes.c_int, *[_ptr] * 8, _i64, _f64, *_SHAPE],
    "emulation_batch_norm_act_backward_reduce": [
        ctypes.c_int,
        *[_ptr] * 7,
        _i64,
        _f64,
        *[_ptr] * 3,
        *_SHAPE,
    ],
    "emulation_batch_norm_act_backward_apply": [
        ctypes.c_int,
        *[_ptr] * 9,
        _i64,
        _f64,
        _ptr,
        _ptr,
        *_SHAPE,
    ],
    "emulation_lrn_forward": [
        ctypes.c_int,
        _ptr,
        _ptr,
        *_SHAPE,
        ctypes.c_int,
        _i64,
        _f64,
        _f64,
        _f64,
    ],
    "emulation_lrn_backward": [
        ctypes.c_int,
        *[_ptr] * 4,
        *_SHAPE,
        ctypes.c_int,
        _i64,
        _f64,
        _f64,
        _f64,
    ],
    "emulation_block_sum": [_ptr, _ptr, ctypes.c_uint, _bool],
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
    flags = [
        "-std=c++20",
        "-O1",
        "-g",
        "-fPIC",
        "-shared",
        "-pthread",
        "-DCNNKIT_CUDA_EMULATION",
        "-Wall",
        "-Werror",
        "-Wl,--no-undefined",
    ]
    if sanitized():
        flags += [
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
        ]
    includes = [EMULATION / "include", ROOT / "csrc", ROOT / "csrc" / "include", include]
    sources = [*KERNELS, *sorted(EMULATION.glob("*.cpp"))]
    return [
        os.environ.get("CXX", "g++"),
        *flags,
        *(f"-I{d}" for d in includes),
        "-x",
        "c++",
        *map(str, sources),
        "-o",
        str(output),
    ]


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
        raise FileNotFoundError(
            "the CUDA toolkit's headers (cuda_fp16.h) were not found; set CUDA_HOME"
        )
    directory = ROOT / "build" / "cuda_emulation"
    probe = build_command(directory / "lib.so", include)
    library = directory / f"cnnkit_cuda_emulation_{_fingerprint(probe)}.so"
    if not library.exists():
        directory.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        result = subprocess.run(build_command(partial, include), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"building the emulated CUDA kernels failed:\n{result.stderr[-4000:]}"
            )
        shutil.move(partial, library)  # atomic: a concurrent run sees all of it or none
    lib = ctypes.CDLL(str(library))
    for name, argtypes in SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = _i64 if name.endswith("_elements") else ctypes.c_int
    lib.emulation_set_schedule.restype = None
    return EmulatedKernels(lib)


def _ptr_of(tensor):
    return None if tensor is None else tensor.data_ptr()


def _stats_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _nan(shape, dtype, like=None):
    if like is not None:
        return torch.full_like(like, math.nan, dtype=dtype)
    return torch.full(shape, math.nan, dtype=dtype)


class EmulatedKernels:
    """The launchers of csrc/cuda, run on CPU tensors (the same layout the CUDA glue passes)."""

    def __init__(self, lib):
        self.lib = lib

    def set_schedule(self, schedule):
        self.lib.emulation_set_schedule({"forward": 0, "reverse": 1}[schedule])

    @staticmethod
    def layout(x):
        """(N, C, S, channels_last) of a dense input, as csrc/ops/layout.cpp's dense_layout."""
        assert (
            x.is_contiguous()
            or x.is_contiguous(memory_format=torch.channels_last)
            or x.is_contiguous(memory_format=torch.channels_last_3d)
        )
        return x.shape[0], x.shape[1], math.prod(x.shape[2:]), not x.is_contiguous()

    def _check(self, code, what):
        if code != 0:
            raise RuntimeError(f"{what}: CUDA error {code}")

    def workspace_elements(self, x):
        return self.lib.emulation_batch_norm_workspace_elements(*self.layout(x))

    def _workspace(self, x):
        return _nan((self.workspace_elements(x),), _stats_dtype(x))

    def batch_norm_stats(self, x):
        channels, dtype = x.shape[1], _stats_dtype(x)
        mean, var = _nan((channels,), dtype), _nan((channels,), dtype)
        workspace = self._workspace(x)  # held: the call gets only its address
        self._check(
            self.lib.emulation_batch_norm_stats(
                SCALAR_TYPES[x.dtype],
                x.data_ptr(),
                mean.data_ptr(),
                var.data_ptr(),
                workspace.data_ptr(),
                *self.layout(x),
            ),
            "batch_norm_stats",
        )
        return mean, var

    def batch_norm_act(self, x, weight, bias, residual, mean, invstd, activation, slope, save_mask):
        y = _nan(None, x.dtype, like=x)
        mask = torch.ones_like(x, dtype=torch.bool) if save_mask else None
        self._check(
            self.lib.emulation_batch_norm_act_forward(
                SCALAR_TYPES[x.dtype],
                x.data_ptr(),
                _ptr_of(residual),
                y.data_ptr(),
                _ptr_of(mask),
                mean.data_ptr(),
                invstd.data_ptr(),
                weight.data_ptr(),
                bias.data_ptr(),
                activation,
                slope,
                *self.layout(x),
            ),
            "batch_norm_act_forward",
        )
        return y, mask

    def batch_norm_act_backward_reduce(
        self, dy, x, mask, weight, bias, mean, invstd, activation, slope
    ):
        channels, dtype = x.shape[1], _stats_dtype(x)
        sum_g, sum_gx = _nan((channels,), dtype), _nan((channels,), dtype)
        workspace = self._workspace(x)
        self._check(
            self.lib.emulation_batch_norm_act_backward_reduce(
                SCALAR_TYPES[x.dtype],
                dy.data_ptr(),
                x.data_ptr(),
                _ptr_of(mask),
                mean.data_ptr(),
                invstd.data_ptr(),
                weight.data_ptr(),
                bias.data_ptr(),
                activation,
                slope,
                sum_g.data_ptr(),
                sum_gx.data_ptr(),
                workspace.data_ptr(),
                *self.layout(x),
            ),
            "batch_norm_act_backward_reduce",
        )
        return sum_g, sum_gx

    def batch_norm_act_backward_apply(
        self,
        dy,
        x,
        mask,
        weight,
        bias,
        mean,
        invstd,
        mean_grad,
        mean_grad_centered,
        activation,
        slope,
        residual_grad,
    ):
        dx = _nan(None, x.dtype, like=x)
        dr = _nan(None, x.dtype, like=x) if residual_grad else None
        self._check(
            self.lib.emulation_batch_norm_act_backward_apply(
                SCALAR_TYPES[x.dtype],
                dy.data_ptr(),
                x.data_ptr(),
                _ptr_of(mask),
                mean.data_ptr(),
                invstd.data_ptr(),
                weight.data_ptr(),
                bias.data_ptr(),
                mean_grad.data_ptr(),
                mean_grad_centered.data_ptr(),
                activation,
                slope,
                dx.data_ptr(),
                _ptr_of(dr),
                *self.layout(x),
            ),
            "batch_norm_act_backward_apply",
        )
        return dx, dr

    def local_response_norm(self, x, size, alpha, beta, k, convention):
        y = _nan(None, x.dtype, like=x)
        self._check(
            self.lib.emulation_lrn_forward(
                SCALAR_TYPES[x.dtype],
                x.data_ptr(),
                y.data_ptr(),
                *self.layout(x),
                LRN_CONVENTIONS[convention],
                size,
                alpha,
                beta,
                k,
            ),
            "lrn_forward",
        )
        return y

    def local_response_norm_backward(self, g, x, size, alpha, beta, k, convention):
        gx = _nan(None, x.dtype, like=x)
        term = _nan(None, _stats_dtype(x), like=x)
        self._check(
            self.lib.emulation_lrn_backward(
                SCALAR_TYPES[x.dtype],
                g.data_ptr(),
                x.data_ptr(),
                gx.data_ptr(),
                term.data_ptr(),
                *self.layout(x),
                LRN_CONVENTIONS[convention],
                size,
                alpha,
                beta,
                k,
            ),
            "lrn_backward",
        )
        return gx

    def block_sum(self, x, synchronised):
        sums = _nan((x.numel() // 64,), torch.float32)
        self._check(
            self.lib.emulation_block_sum(x.data_ptr(), sums.data_ptr(), sums.numel(), synchronised),
            "block_sum",
        )
        return sums
