#pragma once
// Launchers of the LRN CUDA kernels: raw pointers, sizes and a stream; no torch types, so
// that nvcc compiles lrn_kernel.cu with nothing but the CUDA toolkit.
#include <cnnkit/cuda_types.h>
#include <cnnkit/layout.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace cnnkit {
namespace cuda {

struct LrnCoefficients {
  int convention;  // cnnkit::lrn::Convention
  int64_t size;
  double alpha, beta, k;
};

cudaError_t lrn_forward(ScalarType type, const void* input, void* output, DenseLayout shape,
                        LrnCoefficients coefficients, cudaStream_t stream);

// `term` is float scratch of the input's element count (double for double inputs).
cudaError_t lrn_backward(ScalarType type, const void* grad_output, const void* input,
                         void* grad_input, void* term, DenseLayout shape,
                         LrnCoefficients coefficients, cudaStream_t stream);

}  // namespace cuda
}  // namespace cnnkit
