#pragma once
// Marks the per-element math that both the CPU kernels and the CUDA kernels compile, so
// the two backends share one definition of every formula.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNNKIT_HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Always inlined on the host too: each CPU kernel build (csrc/cpu/capability.h) then runs
// the formula compiled for its own SIMD capability, never another build's out-of-line copy.
#define CNNKIT_HOST_DEVICE inline __attribute__((always_inline))
#else
#define CNNKIT_HOST_DEVICE inline
#endif
