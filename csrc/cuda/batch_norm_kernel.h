#pragma once
// Launchers of the batch-norm CUDA kernels: raw pointers, sizes and a stream; no torch
// types, so that nvcc compiles batch_norm_kernel.cu with nothing but the CUDA toolkit.
// Per-channel arrays (mean, invstd, weight, bias, sums) are of the statistics type: double
// for double tensors, float otherwise; weight and bias are never null (the glue passes
// ones and zeros for a module without them).
#include <cnnkit/cuda_types.h>
#include <cnnkit/layout.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace cnnkit {
namespace cuda {

// Elements of the statistics type the reductions need as scratch.
int64_t batch_norm_workspace_elements(DenseLayout shape);

// Per-channel mean and biased variance (zero for an empty batch).
cudaError_t batch_norm_stats(ScalarType type, const void* input, void* mean, void* var, void* workspace,
                             DenseLayout shape, cudaStream_t stream);

struct BatchNormChannels {
  const void* mean;
  const void* invstd;
  const void* weight;
  const void* bias;
};

// output = act(input * scale + shift [+ residual]); mask (nullable) = pre-activation > 0.
cudaError_t batch_norm_act_forward(ScalarType type, const void* input, const void* residual, void* output,
                                   bool* mask, BatchNormChannels channels, int64_t activation,
                                   double negative_slope, DenseLayout shape, cudaStream_t stream);

// Per-channel sums of g = grad_output * act'(pre) and g * (input - mean); mask may be null.
cudaError_t batch_norm_act_backward_reduce(ScalarType type, const void* grad_output, const void* input,
                                           const bool* mask, BatchNormChannels channels, int64_t activation,
                                           double negative_slope, void* sum_grad, void* sum_grad_centered,
                                           void* workspace, DenseLayout shape, cudaStream_t stream);

// grad_input from the batch means of those sums; grad_residual (nullable) = g.
cudaError_t batch_norm_act_backward_apply(ScalarType type, const void* grad_output, const void* input,
                                          const bool* mask, BatchNormChannels channels, const void* mean_grad,
                                          const void* mean_grad_centered, int64_t activation,
                                          double negative_slope, void* grad_input, void* grad_residual,
                                          DenseLayout shape, cudaStream_t stream);

}  // namespace cuda
}  // namespace cnnkit
