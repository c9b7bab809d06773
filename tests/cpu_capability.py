"""Runs a command as it would run on a CPU with less SIMD: `python tests/cpu_capability.py
avx2 python -m pytest` on an AVX-512 machine. One place for what "as on that CPU" means:

- ATEN_CPU_CAPABILITY caps torch's own kernels and, through them, cnnkit's (the build holds
  every capability and picks torch's when it loads: csrc/cpu/capability.h);
- ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS cap the convolutions and matrix products,
  whose summation order, and so rounding, follows the vector width;
- TORCHINDUCTOR_CACHE_DIR gets a directory per capability: torch.compile's cache does not
  key its compiled kernels on ATEN_CPU_CAPABILITY, and code cached at one level returned
  NaN at another (torch 2.13).
"""

import os
import sys
import tempfile

# ATEN_CPU_CAPABILITY value -> the oneDNN and MKL levels of a CPU that has no more.
LIBRARY_LEVELS = {
    "default": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
}


def environment(capability):
    """This process's environment as on a CPU of at most `capability`."""
    capability = capability.lower()
    if capability not in LIBRARY_LEVELS:
        raise ValueError(f"capability must be one of {list(LIBRARY_LEVELS)}, got {capability!r}")
    cache = os.path.join(tempfile.gettempdir(), f"torchinductor-{capability}")
    return {**os.environ, "ATEN_CPU_CAPABILITY": capability,
            "TORCHINDUCTOR_CACHE_DIR": cache, **LIBRARY_LEVELS[capability]}


def main(argv):
    if len(argv) < 2:
        print(f"usage: {sys.argv[0]} {{{'|'.join(LIBRARY_LEVELS)}}} COMMAND...", file=sys.stderr)
        return 2
    os.execvpe(argv[1], argv[1:], environment(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
