#pragma once
// Test-only stand-in for <cuda_runtime.h>: the CUDA execution model on the CPU, so that the
// kernels of csrc/cuda compile with the host C++ compiler and run (tests/emulated_cuda.py).
// The CUDA toolkit's own headers give the types (dim3, cudaError_t, cudaStream_t, __half,
// __nv_bfloat16 and their host conversions); emulation.cpp gives threadIdx, blockIdx,
// blockDim, gridDim and __syncthreads, and runs launches (cuda/launch.cuh).
//
// What it models: every thread of a block, as a thread of its own that runs only at its
// turn; the turn passes at __syncthreads and at the kernel's end, in a fixed order, so
// threads interleave exactly at barriers and a missing barrier shows up deterministically.
// __shared__ variables are function statics, shared by the block (blocks run one at a time).
// Not modelled: warps (no kernel of csrc/cuda uses warp intrinsics or atomics), the GPU's
// memory model and caches, timing.
#include <cuda_runtime_api.h>
#include <vector_types.h>

#include <functional>

namespace cnnkit {
namespace cuda {
namespace emulation {

struct Coordinates {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};

// The calling emulated thread's coordinates; aborts outside a kernel.
const Coordinates& coordinates();

// __syncthreads: the caller's turn ends; it resumes once every live thread of its block has
// reached a barrier or returned.
void sync_threads();

// The order in which a block's threads take their turns between two barriers: forward
// (thread 0 first) exposes a thread reading what a later thread has not written yet,
// reverse the opposite.
enum class Schedule { kForward, kReverse };
void set_schedule(Schedule schedule);

// Runs body as the kernel of a launch of `grid` blocks of `block` threads and waits for it.
// A configuration CUDA would refuse returns cudaErrorInvalidConfiguration, as a launch would.
cudaError_t run(dim3 grid, dim3 block, const std::function<void()>& body);

}  // namespace emulation
}  // namespace cuda
}  // namespace cnnkit

#define threadIdx (::cnnkit::cuda::emulation::coordinates().thread)
#define blockIdx (::cnnkit::cuda::emulation::coordinates().block)
#define blockDim (::cnnkit::cuda::emulation::coordinates().block_dim)
#define gridDim (::cnnkit::cuda::emulation::coordinates().grid_dim)

// The toolkit's host_defines.h defines __shared__ away for host compilers.
#undef __shared__
#define __shared__ static

inline void __syncthreads() { ::cnnkit::cuda::emulation::sync_threads(); }
