#pragma once
// BatchNorm + activation (+ residual add): argument checks and layout helpers shared by
// every backend.
#include <ATen/core/Tensor.h>

#include <c10/util/Optional.h>

#include "ops/layout.h"

namespace cnnkit {

// dense_layout(dense), but channels-last also with one position per sample.
DenseLayout batch_norm_layout(const at::Tensor& dense);

// The dtype of the statistics of an input: float64 for float64 input, float32 otherwise.
at::ScalarType batch_norm_stats_dtype(const at::Tensor& input);

void check_batch_norm_input(const at::Tensor& input);

// Checks of batch_norm_act: per-channel tensors, residual, statistics and activation.
void check_batch_norm_act(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                          const c10::optional<at::Tensor>& bias,
                          const c10::optional<at::Tensor>& residual, const at::Tensor& mean,
                          const at::Tensor& invstd, int64_t activation);

// Checks of the backward ops: the forward's checks plus grad_output and the saved mask.
void check_batch_norm_act_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                   const c10::optional<at::Tensor>& weight,
                                   const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                   const at::Tensor& mean, const at::Tensor& invstd,
                                   int64_t activation);

// Checks of batch_norm_act_backward_apply: the backward ops' checks plus the two means.
void check_batch_norm_act_backward_apply(const at::Tensor& grad_output, const at::Tensor& input,
                                         const c10::optional<at::Tensor>& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const at::Tensor& mask, const at::Tensor& mean,
                                         const at::Tensor& invstd, const at::Tensor& mean_grad,
                                         const at::Tensor& mean_grad_centered, int64_t activation);

// Checks of batch_norm_train_stats' running statistics (each optional): the input's device,
// one floating-point element per channel, not expanded, not requiring grad.
void check_running_stats(const at::Tensor& input, const c10::optional<at::Tensor>& running_mean,
                         const c10::optional<at::Tensor>& running_var);

// The rest of batch_norm_train_stats once the batch's (mean, biased var) over `count`
// values per channel are known: updates the running statistics in place as
// nn.BatchNorm2d does (unbiased variance, factor momentum; not at all for an empty batch)
// and returns (mean, invstd). The running statistics have passed check_running_stats.
std::tuple<at::Tensor, at::Tensor> batch_norm_finish_train_stats(
    const at::Tensor& mean, const at::Tensor& var, int64_t count,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    double momentum, double eps);

// True when `mask` holds a saved activation mask (an empty one means: recompute it).
inline bool has_saved_mask(const at::Tensor& mask) { return mask.sym_numel() > 0; }

// The per-channel tensors as contiguous float statistics of the stats dtype, with weight
// 1 and bias 0 standing in for missing ones.
struct ChannelParams {
  at::Tensor mean, invstd, weight, bias;
};
ChannelParams batch_norm_channel_params(const at::Tensor& input,
                                        const c10::optional<at::Tensor>& weight,
                                        const c10::optional<at::Tensor>& bias,
                                        const at::Tensor& mean, const at::Tensor& invstd);

// batch_norm_act's tensors as every backend's kernels take them (after its checks): the
// input dense and the residual in its memory order (undefined when none is given), the
// per-channel parameters, and the outputs allocated in that order: output, and the mask
// (pre-activation > 0) when save_mask (a residual and an activation are given), else an
// empty bool tensor.
struct BatchNormActTensors {
  at::Tensor input, residual, output, mask;
  DenseLayout layout;
  ChannelParams params;
  bool save_mask;
};
BatchNormActTensors batch_norm_act_tensors(const at::Tensor& input,
                                           const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           const c10::optional<at::Tensor>& residual,
                                           const at::Tensor& mean, const at::Tensor& invstd,
                                           int64_t activation);

// The backward passes' tensors as every backend's kernels take them (after the checks): the
// input dense, grad_output and the saved mask in its memory order, and the per-channel
// parameters. The mask is undefined where the pass recomputes the activation's sign (none
// saved, or no activation).
struct BatchNormBackwardTensors {
  at::Tensor input, grad_output, mask;
  DenseLayout layout;
  ChannelParams params;
};
BatchNormBackwardTensors batch_norm_backward_tensors(const at::Tensor& grad_output,
                                                     const at::Tensor& input,
                                                     const c10::optional<at::Tensor>& weight,
                                                     const c10::optional<at::Tensor>& bias,
                                                     const at::Tensor& mask, const at::Tensor& mean,
                                                     const at::Tensor& invstd, int64_t activation);

// batch_norm_act_backward on every backend: the reduce pass, the batch means of its sums,
// the apply pass and the parameter gradients, the two passes called through the dispatcher.
// Each backend registers it as its own kernel of the op, next to its kernels of the passes
// (not as CompositeExplicitAutograd: the op would then have no CPU or CUDA kernel of its
// own, which is what the Python side's has_kernel looks for).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mask, const at::Tensor& mean,
    const at::Tensor& invstd, bool batch_stats, int64_t activation, double negative_slope,
    bool residual_grad);

}  // namespace cnnkit
