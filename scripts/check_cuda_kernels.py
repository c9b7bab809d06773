"""Checks that a CUDA build of cnnkit registered a CUDA kernel for every op that csrc/cuda
implements (scripts/cuda_build.sh runs it): a glue file that failed to link or register would
otherwise go unnoticed on a machine without a GPU, where the CUDA tests skip."""

import pathlib
import re
import sys

import torch

import cnnkit

ROOT = pathlib.Path(__file__).resolve().parent.parent


def ops_with_cuda_sources():
    """The ops csrc/cuda/*_cuda.cpp register (m.impl("name", ...) in TORCH_LIBRARY_IMPL)."""
    names = set()
    for source in (ROOT / "csrc" / "cuda").glob("*_cuda.cpp"):
        names.update(re.findall(r'm\.impl\("(\w+)"', source.read_text()))
    return names


def main():
    expected = ops_with_cuda_sources()
    if torch.version.cuda is None:
        sys.exit(f"torch {torch.__version__} has no CUDA")
    if not expected:
        sys.exit("found no op in csrc/cuda/*_cuda.cpp")
    missing = sorted(name for name in expected if not cnnkit._ops.has_kernel(name, "cuda"))
    if missing:
        sys.exit(f"cnnkit built without CUDA kernels for: {', '.join(missing)}")
    print(
        f"CUDA kernels registered for {len(expected)} ops: {', '.join(sorted(expected))} "
        f"(torch {torch.__version__}, extension {cnnkit._ops._C.__file__})"
    )


if __name__ == "__main__":
    main()
