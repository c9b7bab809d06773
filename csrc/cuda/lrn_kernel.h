#pragma once
// Launchers of the LRN CUDA kernels: raw pointers, sizes and a stream; no torch types, so
// that nvcc compiles lrn_kernel.cu with nothing but the CUDA toolkit.
#include <cnnkit/cuda_types.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace cnnkit {
namespace cuda {

struct LrnShape {
  int64_t batch, channels, positions;
  bool channels_last;  // memory order (N, S, C) instead of (N, C, S)
};

struct LrnCoefficients {
  int convention;  // cnnkit::lrn::Convention
  int64_t size;
  double alpha, beta, k;
};

cudaError_t lrn_forward(ScalarType type, const void* input, void* output, LrnShape shape,
                        LrnCoefficients coefficients, cudaStream_t stream);

// `term` is float scratch of the input's element count (double for double inputs).
cudaError_t lrn_backward(ScalarType type, const void* grad_output, const void* input,
                         void* grad_input, void* term, LrnShape shape,
                         LrnCoefficients coefficients, cudaStream_t stream);

}  // namespace cuda
}  // namespace cnnkit
