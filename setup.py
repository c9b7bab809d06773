"""Builds cnnkit._C: the CPU kernels always, the CUDA kernels when torch has CUDA.

The CPU kernels (csrc/cpu/*_kernel.cpp) are compiled once per SIMD capability of
csrc/cpu/capabilities.txt, and the one to run is chosen when cnnkit loads
(csrc/cpu/capability.h), so a build serves every x86-64 CPU.

Environment:
  CNNKIT_FORCE_CUDA=1/0   build the CUDA kernels even if detection says no (or skip them)
  CNNKIT_CPU_CAPABILITY   comma-separated capabilities to compile, e.g. "AVX2" (DEFAULT is
                          always compiled; default: all of capabilities.txt)
  CNNKIT_SANITIZE=1       build with AddressSanitizer and UBSan (-O1, into a build directory
                          of its own; scripts/sanitize.sh runs the op tests on such a build)
  TORCH_CUDA_ARCH_LIST    CUDA architectures (read by torch.utils.cpp_extension)
  MAX_JOBS                parallel compile jobs (read by torch.utils.cpp_extension)
"""

import glob
import os
import sysconfig

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def read_capability_flags():
    """{capability: compiler flags} from csrc/cpu/capabilities.txt, lowest first."""
    flags = {}
    with open(os.path.join(ROOT, "csrc", "cpu", "capabilities.txt")) as file:
        for line in file:
            words = line.split("#", 1)[0].split()
            if words:
                flags[words[0]] = words[1:]
    return flags


CAPABILITY_FLAGS = read_capability_flags()


def capability_macros(capability):
    """The macros ATen defines when it compiles a kernel for `capability`, which make
    at::vec::Vectorized use the matching SIMD specialisations."""
    return [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]


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


def extra_capabilities():
    """The capabilities above DEFAULT to compile: CNNKIT_CPU_CAPABILITY's, else all."""
    requested = os.environ.get("CNNKIT_CPU_CAPABILITY")
    if not requested:
        return [c for c in CAPABILITY_FLAGS if c != "DEFAULT"]
    names = {name.strip().upper() for name in requested.split(",") if name.strip()}
    unknown = names - set(CAPABILITY_FLAGS)
    if unknown:
        raise SystemExit(f"CNNKIT_CPU_CAPABILITY: unknown {sorted(unknown)}; "
                         f"expected some of {list(CAPABILITY_FLAGS)}")
    return [c for c in CAPABILITY_FLAGS if c in names and c != "DEFAULT"]


def cuda_archs():
    """The architectures nvcc will target, as torch.utils.cpp_extension chooses them
    (TORCH_CUDA_ARCH_LIST, else the visible GPUs), for `cnnkit info`."""
    flags = cpp_extension._get_cuda_arch_flags()
    return ",".join(sorted({f.split("code=")[-1] for f in flags if "code=" in f}))


def sources(pattern):
    return sorted(glob.glob(os.path.join("csrc", pattern)))


KERNEL_SOURCES = sources("cpu/*_kernel.cpp")


def make_extension():
    with_cuda = want_cuda()
    capabilities = extra_capabilities()
    # Everything but the extra capabilities' kernels is compiled portably, as DEFAULT.
    cxx_flags = ["-O1" if env_flag("CNNKIT_SANITIZE") else "-O3", "-fopenmp", *capability_macros("DEFAULT"),
                 *(f"-DCNNKIT_CPU_{c}" for c in capabilities)]
    link_flags = ["-fopenmp"]
    if env_flag("CNNKIT_SANITIZE"):
        # vptr is left out: its checks of torch's classes need RTTI that torch's libraries
        # hold in copies of their own.
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=undefined"]
        cxx_flags += [*sanitize, "-fno-omit-frame-pointer", "-g"]
        link_flags += sanitize
    define_macros = [("TORCH_EXTENSION_NAME", "_C")]
    srcs = sources("module.cpp") + sources("ops/*.cpp") + sources("cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    kind = cpp_extension.CppExtension
    extra_compile_args = {"cxx": cxx_flags}
    if with_cuda:
        srcs += sources("cuda/*.cpp") + sources("cuda/*.cu")
        define_macros.append(("CNNKIT_WITH_CUDA", None))
        cxx_flags.append(f'-DCNNKIT_CUDA_ARCHS="{cuda_archs()}"')
        extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
        kind = cpp_extension.CUDAExtension
    extension = kind("cnnkit._C", srcs, include_dirs=include_dirs, define_macros=define_macros,
                     extra_compile_args=extra_compile_args, extra_link_args=link_flags)
    extension.cpu_capabilities = capabilities
    return extension


class BuildExtension(cpp_extension.BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension, and two things more:
    - the kernels compiled again for each extra CPU capability, with its flags, into a
      directory of its own; linked after the portable objects, so that where the builds
      share an inline function from a header the linker keeps the portable copy;
    - a build directory that outlives pip's temporary one (an editable install builds in a
      new temporary directory each time), so that a second install recompiles nothing."""

    def finalize_options(self):
        super().finalize_options()
        tag = f"{sysconfig.get_platform()}-py{sysconfig.get_python_version()}-torch{torch.__version__}"
        if env_flag("CNNKIT_SANITIZE"):
            tag += "-sanitize"
        self.build_temp = os.path.join(ROOT, "build", f"temp.{tag}")

    def build_extension(self, ext):
        portable = ext.extra_compile_args["cxx"]  # with the flags torch's build_extensions added
        ext.extra_objects = []
        for capability in ext.cpu_capabilities:
            flags = [f for f in portable if f not in capability_macros("DEFAULT")]
            ext.extra_objects += self.compiler.compile(
                KERNEL_SOURCES, output_dir=os.path.join(self.build_temp, capability),
                macros=ext.define_macros, include_dirs=ext.include_dirs, depends=ext.depends,
                extra_postargs={"cxx": flags + CAPABILITY_FLAGS[capability] + capability_macros(capability)},
            )
        super().build_extension(ext)


setup(ext_modules=[make_extension()], cmdclass={"build_ext": BuildExtension})
