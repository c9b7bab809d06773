// A block-wide sum in shared memory, with its barriers and without them: the tests check that
// the emulation gets the first right under every schedule and the second wrong under one,
// i.e. that a missing __syncthreads in a kernel of csrc/cuda would not go unnoticed.
#include <cuda_runtime.h>

#include "cuda/launch.cuh"

namespace {

constexpr int kThreads = 64;

template <bool kSynchronised>
__global__ void block_sum_kernel(const float* x, float* sums) {
  __shared__ float partial[kThreads];
  const unsigned t = threadIdx.x;
  partial[t] = x[blockIdx.x * kThreads + t];
  if (kSynchronised) __syncthreads();
  for (unsigned half = kThreads / 2; half > 0; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    if (kSynchronised) __syncthreads();
  }
  if (t == 0) sums[blockIdx.x] = partial[0];
}

}  // namespace

// x holds blocks * 64 floats; sums gets one per block.
extern "C" int emulation_block_sum(const float* x, float* sums, unsigned blocks, bool synchronised) {
  auto kernel = synchronised ? block_sum_kernel<true> : block_sum_kernel<false>;
  return cnnkit::cuda::launch(kernel, dim3(blocks), dim3(kThreads), nullptr, x, sums);
}
