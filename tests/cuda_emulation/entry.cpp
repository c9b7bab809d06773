// The C interface tests/emulated_cuda.py calls through ctypes: the launchers of csrc/cuda
// with DenseLayout and the channel arrays spelled out as plain arguments.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/batch_norm_kernel.h"
#include "cuda/lrn_kernel.h"

using cnnkit::DenseLayout;
using cnnkit::cuda::BatchNormChannels;
using cnnkit::cuda::ScalarType;

namespace {

DenseLayout layout(int64_t batch, int64_t channels, int64_t positions, bool channels_last) {
  return {batch, channels, positions, channels_last};
}

ScalarType scalar_type(int type) { return static_cast<ScalarType>(type); }

}  // namespace

extern "C" {

void emulation_set_schedule(int reverse) {
  using cnnkit::cuda::emulation::Schedule;
  cnnkit::cuda::emulation::set_schedule(reverse ? Schedule::kReverse : Schedule::kForward);
}

int64_t emulation_batch_norm_workspace_elements(int64_t n, int64_t c, int64_t s, bool cl) {
  return cnnkit::cuda::batch_norm_workspace_elements(layout(n, c, s, cl));
}

int emulation_batch_norm_stats(int type, const void* input, void* mean, void* var, void* workspace, int64_t n,
                               int64_t c, int64_t s, bool cl) {
  return cnnkit::cuda::batch_norm_stats(scalar_type(type), input, mean, var, workspace, layout(n, c, s, cl),
                                        nullptr);
}

int emulation_batch_norm_act_forward(int type, const void* input, const void* residual, void* output, bool* mask,
                                     const void* mean, const void* invstd, const void* weight, const void* bias,
                                     int64_t activation, double negative_slope, int64_t n, int64_t c, int64_t s,
                                     bool cl) {
  return cnnkit::cuda::batch_norm_act_forward(scalar_type(type), input, residual, output, mask,
                                              BatchNormChannels{mean, invstd, weight, bias}, activation,
                                              negative_slope, layout(n, c, s, cl), nullptr);
}

int emulation_batch_norm_act_backward_reduce(int type, const void* grad_output, const void* input,
                                             const bool* mask, const void* mean, const void* invstd,
                                             const void* weight, const void* bias, int64_t activation,
                                             double negative_slope, void* sum_grad, void* sum_grad_centered,
                                             void* workspace, int64_t n, int64_t c, int64_t s, bool cl) {
  return cnnkit::cuda::batch_norm_act_backward_reduce(
      scalar_type(type), grad_output, input, mask, BatchNormChannels{mean, invstd, weight, bias}, activation,
      negative_slope, sum_grad, sum_grad_centered, workspace, layout(n, c, s, cl), nullptr);
}

int emulation_batch_norm_act_backward_apply(int type, const void* grad_output, const void* input, const bool* mask,
                                            const void* mean, const void* invstd, const void* weight,
                                            const void* bias, const void* mean_grad,
                                            const void* mean_grad_centered, int64_t activation,
                                            double negative_slope, void* grad_input, void* grad_residual,
                                            int64_t n, int64_t c, int64_t s, bool cl) {
  return cnnkit::cuda::batch_norm_act_backward_apply(
      scalar_type(type), grad_output, input, mask, BatchNormChannels{mean, invstd, weight, bias}, mean_grad,
      mean_grad_centered, activation, negative_slope, grad_input, grad_residual, layout(n, c, s, cl), nullptr);
}

int emulation_lrn_forward(int type, const void* input, void* output, int64_t n, int64_t c, int64_t s, bool cl,
                          int convention, int64_t size, double alpha, double beta, double k) {
  return cnnkit::cuda::lrn_forward(scalar_type(type), input, output, layout(n, c, s, cl),
                                   {convention, size, alpha, beta, k}, nullptr);
}

int emulation_lrn_backward(int type, const void* grad_output, const void* input, void* grad_input, void* term,
                           int64_t n, int64_t c, int64_t s, bool cl, int convention, int64_t size, double alpha,
                           double beta, double k) {
  return cnnkit::cuda::lrn_backward(scalar_type(type), grad_output, input, grad_input, term, layout(n, c, s, cl),
                                    {convention, size, alpha, beta, k}, nullptr);
}

}  // extern "C"
