// BatchNorm + activation (+ residual add), CUDA glue: tensors in, checks, stream, dtype,
// then the plain-CUDA launchers of batch_norm_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/batch_norm_kernel.h"
#include "cuda/launcher_types.h"
#include "ops/batch_norm.h"

namespace cnnkit {
namespace cuda {
namespace {

BatchNormChannels launcher_channels(const ChannelParams& p) {
  return {p.mean.const_data_ptr(), p.invstd.const_data_ptr(), p.weight.const_data_ptr(), p.bias.const_data_ptr()};
}

at::Tensor workspace_for(const at::Tensor& input, const DenseLayout& shape) {
  return at::empty({batch_norm_workspace_elements(shape)}, input.options().dtype(batch_norm_stats_dtype(input)));
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cuda(const at::Tensor& input_arg) {
  check_batch_norm_input(input_arg);
  const c10::cuda::CUDAGuard guard(input_arg.device());
  const at::Tensor input = dense_input(input_arg);
  const DenseLayout shape = batch_norm_layout(input);
  const auto options = input.options().dtype(batch_norm_stats_dtype(input));
  at::Tensor mean = at::empty({shape.channels}, options);
  at::Tensor var = at::empty({shape.channels}, options);
  at::Tensor workspace = workspace_for(input, shape);
  C10_CUDA_CHECK(batch_norm_stats(launcher_type(input.scalar_type(), "batch_norm_act"), input.const_data_ptr(),
                                  mean.mutable_data_ptr(), var.mutable_data_ptr(), workspace.mutable_data_ptr(),
                                  shape, c10::cuda::getCurrentCUDAStream()));
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_train_stats_cuda(const at::Tensor& input,
                                                               const c10::optional<at::Tensor>& running_mean,
                                                               const c10::optional<at::Tensor>& running_var,
                                                               double momentum, double eps) {
  check_running_stats(input, running_mean, running_var);
  auto [mean, var] = batch_norm_stats_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t count = input.numel() / std::max<int64_t>(input.size(1), 1);
  return batch_norm_finish_train_stats(mean, var, count, running_mean, running_var, momentum, eps);
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_cuda(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& residual, const at::Tensor& mean, const at::Tensor& invstd, bool batch_stats,
    int64_t activation, double negative_slope) {
  check_batch_norm_act(input, weight, bias, residual, mean, invstd, activation);
  const c10::cuda::CUDAGuard guard(input.device());
  const BatchNormActTensors t = batch_norm_act_tensors(input, weight, bias, residual, mean, invstd, activation);
  C10_CUDA_CHECK(batch_norm_act_forward(
      launcher_type(t.input.scalar_type(), "batch_norm_act"), t.input.const_data_ptr(),
      t.residual.defined() ? t.residual.const_data_ptr() : nullptr, t.output.mutable_data_ptr(),
      t.save_mask ? t.mask.mutable_data_ptr<bool>() : nullptr, launcher_channels(t.params), activation,
      negative_slope, t.layout, c10::cuda::getCurrentCUDAStream()));
  return {t.output, t.mask};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_backward_reduce_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mask, const at::Tensor& mean,
    const at::Tensor& invstd, int64_t activation, double negative_slope) {
  check_batch_norm_act_backward(grad_output, input, weight, bias, mask, mean, invstd, activation);
  const c10::cuda::CUDAGuard guard(input.device());
  const BatchNormBackwardTensors t =
      batch_norm_backward_tensors(grad_output, input, weight, bias, mask, mean, invstd, activation);
  const auto options = t.input.options().dtype(batch_norm_stats_dtype(t.input));
  at::Tensor sum_g = at::empty({t.layout.channels}, options);  // every channel is written
  at::Tensor sum_gx = at::empty({t.layout.channels}, options);
  at::Tensor workspace = workspace_for(t.input, t.layout);
  C10_CUDA_CHECK(batch_norm_act_backward_reduce(
      launcher_type(t.input.scalar_type(), "batch_norm_act"), t.grad_output.const_data_ptr(),
      t.input.const_data_ptr(), t.mask.defined() ? t.mask.const_data_ptr<bool>() : nullptr,
      launcher_channels(t.params), activation, negative_slope, sum_g.mutable_data_ptr(), sum_gx.mutable_data_ptr(),
      workspace.mutable_data_ptr(), t.layout, c10::cuda::getCurrentCUDAStream()));
  return {sum_g, sum_gx};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_backward_apply_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mask, const at::Tensor& mean,
    const at::Tensor& invstd, const at::Tensor& mean_grad, const at::Tensor& mean_grad_centered, int64_t activation,
    double negative_slope, bool residual_grad) {
  check_batch_norm_act_backward_apply(grad_output, input, weight, bias, mask, mean, invstd, mean_grad,
                                      mean_grad_centered, activation);
  const c10::cuda::CUDAGuard guard(input.device());
  const BatchNormBackwardTensors t =
      batch_norm_backward_tensors(grad_output, input, weight, bias, mask, mean, invstd, activation);
  const at::Tensor mg = mean_grad.contiguous(), mgx = mean_grad_centered.contiguous();
  at::Tensor grad_input = at::empty_like(t.input);
  at::Tensor grad_residual = residual_grad ? at::empty_like(t.input) : at::empty({0}, t.input.options());
  C10_CUDA_CHECK(batch_norm_act_backward_apply(
      launcher_type(t.input.scalar_type(), "batch_norm_act"), t.grad_output.const_data_ptr(),
      t.input.const_data_ptr(), t.mask.defined() ? t.mask.const_data_ptr<bool>() : nullptr,
      launcher_channels(t.params), mg.const_data_ptr(), mgx.const_data_ptr(), activation, negative_slope,
      grad_input.mutable_data_ptr(), residual_grad ? grad_residual.mutable_data_ptr() : nullptr, t.layout,
      c10::cuda::getCurrentCUDAStream()));
  return {grad_input, grad_residual};
}

}  // namespace
}  // namespace cuda
}  // namespace cnnkit

TORCH_LIBRARY_IMPL(cnnkit, CUDA, m) {
  m.impl("batch_norm_stats", &cnnkit::cuda::batch_norm_stats_cuda);
  m.impl("batch_norm_train_stats", &cnnkit::cuda::batch_norm_train_stats_cuda);
  m.impl("batch_norm_act", &cnnkit::cuda::batch_norm_act_cuda);
  m.impl("batch_norm_act_backward", &cnnkit::batch_norm_act_backward);
  m.impl("batch_norm_act_backward_reduce", &cnnkit::cuda::batch_norm_act_backward_reduce_cuda);
  m.impl("batch_norm_act_backward_apply", &cnnkit::cuda::batch_norm_act_backward_apply_cuda);
}
