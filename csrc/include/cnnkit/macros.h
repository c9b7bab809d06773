#pragma once
// Marks the per-element math that both the CPU kernels and the CUDA kernels compile, so
// the two backends share one definition of every formula.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CNNKIT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CNNKIT_HOST_DEVICE inline
#endif
