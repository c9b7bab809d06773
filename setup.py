"""Builds cnnkit._C: the CPU kernels always, the CUDA kernels when torch has CUDA.

Environment:
  CNNKIT_FORCE_CUDA=1/0   build the CUDA kernels even if detection says no (or skip them)
  CNNKIT_CPU_CAPABILITY   DEFAULT, AVX2 or AVX512: the SIMD level the CPU kernels are
                          compiled for (default: what torch detects on the build machine)
  TORCH_CUDA_ARCH_LIST    CUDA architectures (read by torch.utils.cpp_extension)
  MAX_JOBS                parallel compile jobs (read by torch.utils.cpp_extension)
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))

# Flags that make at::vec::Vectorized use the matching SIMD specialisations. The macros are
# the ones ATen itself defines when it compiles a kernel for a given capability.
CPU_CAPABILITY_FLAGS = {
    "DEFAULT": ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "AVX512": [
        "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
        "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
    ],
}


def env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    return value.strip().lower() in ("1", "true", "yes", "on")


def want_cuda():
    forced = env_flag("CNNKIT_FORCE_CUDA")
    if forced is not None:
        return forced
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def cpu_capability():
    capability = os.environ.get("CNNKIT_CPU_CAPABILITY") or torch.backends.cpu.get_cpu_capability()
    capability = capability.upper()
    # torch reports e.g. "AVX512" or "ZVECTOR"; anything we have no flags for builds portable.
    return capability if capability in CPU_CAPABILITY_FLAGS else "DEFAULT"


def cuda_archs():
    """The architectures nvcc will target, as torch.utils.cpp_extension chooses them
    (TORCH_CUDA_ARCH_LIST, else the visible GPUs), for `cnnkit info`."""
    flags = cpp_extension._get_cuda_arch_flags()
    return ",".join(sorted({f.split("code=")[-1] for f in flags if "code=" in f}))


def sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern)))


def make_extension():
    with_cuda = want_cuda()
    capability = cpu_capability()
    cxx_flags = ["-O3", "-fopenmp", *CPU_CAPABILITY_FLAGS[capability],
                 f'-DCNNKIT_CPU_CAPABILITY="{capability}"']
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    srcs = sources("module.cpp") + sources("ops/*.cpp") + sources("cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    if not with_cuda:
        return cpp_extension.CppExtension(
            "cnnkit._C", srcs, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"],
        )
    srcs += sources("cuda/*.cpp") + sources("cuda/*.cu")
    define_macros.append(("CNNKIT_WITH_CUDA", None))
    cxx_flags.append(f'-DCNNKIT_CUDA_ARCHS="{cuda_archs()}"')
    nvcc_flags = ["-O3", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "cnnkit._C", srcs, include_dirs=include_dirs, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
